"""What the studio does, without HTTP: edits, one background job at a time, progress events.

:class:`Studio` ties a :class:`~pcvos.studio.workspace.Workspace` (the truth on disk) to a
:class:`pcvos.Session` (the model's view: keyframes and propagation). Jobs (propagation, export)
run in a worker thread; their progress goes to every subscriber of :class:`EventHub`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image

from pcvos import mask_from_prompts, prepare_prompts
from pcvos.data.export_formats import EXPORT_FORMATS, parse_export_formats
from pcvos.data.masks import object_ids, parse_mask
from pcvos.data.palette import VOID_LABEL
from pcvos.studio.exporter import ExportCancelled, export_workspace
from pcvos.studio.workspace import MAX_OBJECTS, UPLOAD_NAME, Workspace, WorkspaceError

__all__ = ["Studio", "EventHub", "BusyError", "DIRECTIONS", "UNTIL"]

log = logging.getLogger("pcvos.studio")

DIRECTIONS = ("both", "forward", "backward")
UNTIL = ("keyframe", "end")
#: workspace.json is rewritten at most this often during a propagation (every mask PNG is written at once).
SAVE_EVERY_S = 2.0
#: Smallest box side in pixels, inside the frame (a box is drawn around an object, not a dot).
MIN_BOX_SIDE = 4
#: Most clicks one prompt holds (a mask takes a few; the cap keeps a request's work bounded).
MAX_PROMPT_POINTS = 100
#: Frames the page marks for review after a propagation, and the most one request may ask for.
SUGGEST_K = 3
MAX_SUGGEST = 100


def _shown(value: Any) -> str:
    """A JSON value as the user sent it, shortened for a message."""
    return json.dumps(value)[:40]


def _is_number(v: Any) -> bool:
    """A finite JSON number (an int of any size is finite; bools are not numbers here)."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def _check_points(points: Any, width: int, height: int) -> list[tuple[float, float]]:
    """[[x, y], ...] in pixels, every point inside the frame: else a message naming ``points``."""
    if points is None:
        return []
    if not isinstance(points, list):
        raise WorkspaceError(f"points must be a list of [x, y] pairs, got {_shown(points)}")
    if len(points) > MAX_PROMPT_POINTS:
        raise WorkspaceError(f"points holds {len(points)} clicks; at most {MAX_PROMPT_POINTS}")
    out = []
    for n, p in enumerate(points):
        if not isinstance(p, list) or len(p) != 2 or not all(_is_number(v) for v in p):
            raise WorkspaceError(f"points[{n}] must be [x, y], two finite numbers, got {_shown(p)}")
        x, y = p
        if not (0 <= x < width and 0 <= y < height):
            raise WorkspaceError(f"points[{n}] = {_shown(p)} is outside the {width}x{height} frame")
        out.append((float(x), float(y)))
    return out


def _check_point_labels(labels: Any, count: int) -> list[int]:
    """One 1 (object) or 0 (background) per point; default: every point on the object."""
    if labels is None:
        return [1] * count
    if (
        not isinstance(labels, list)
        or len(labels) != count
        or not all(isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in labels)
    ):
        raise WorkspaceError(
            f"labels must be a list of {count} values, each 1 (object) or 0 (background), "
            f"got {_shown(labels)}"
        )
    return labels


def _check_formats(formats: Any) -> tuple[str, ...]:
    """A list of export format names (null or [] for none): else a message naming ``formats``."""
    if formats is None:
        return ()
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise WorkspaceError(
            f"formats must be a list of names ({', '.join(EXPORT_FORMATS)}), got {_shown(formats)}"
        )
    try:
        return tuple(dict.fromkeys(name for f in formats for name in parse_export_formats(f)))
    except ValueError as exc:
        raise WorkspaceError(f"formats: {exc}") from None


def _check_box(box: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1] in pixels, corners in any order, clipped to the frame (a drag may leave it)."""
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise WorkspaceError(
            f"box must be [x0, y0, x1, y1]: four finite numbers, in pixels, got {_shown(box)}"
        )
    x0, x1 = sorted((max(0, min(width, round(box[0]))), max(0, min(width, round(box[2])))))
    y0, y1 = sorted((max(0, min(height, round(box[1]))), max(0, min(height, round(box[3])))))
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        raise WorkspaceError(f"box must be at least {MIN_BOX_SIDE}x{MIN_BOX_SIDE} pixels inside the frame")
    return x0, y0, x1, y1


class BusyError(RuntimeError):
    """Another job is running (HTTP 409)."""


class EventHub:
    """Fan-out of job events (dicts) from worker threads to asyncio subscribers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = [(lp, q) for lp, q in self._subscribers if q is not queue]

    def publish(self, event: dict[str, Any] | None) -> None:
        """Send ``event`` to everyone (None tells subscribers to stop)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that subscriber's loop has closed
                self.unsubscribe(queue)


class Studio:
    """One workspace, its session and its jobs. Methods raise ``WorkspaceError``/``ValueError`` for
    bad requests and :class:`BusyError` when a job is running."""

    def __init__(self, workspace: Workspace, session: Any, hub: EventHub | None = None) -> None:
        self.ws = workspace
        self.session = session
        self.hub = hub or EventHub()
        self._job_lock = threading.Lock()
        self._job: dict[str, Any] = {"id": 0, "kind": None, "state": "idle"}
        self._thread: threading.Thread | None = None
        # one event per job, made when the job starts: a refused start (409) never touches the
        # running job's cancel request
        self._cancel = threading.Event()
        self.interrupted = False  # set by interrupt(): a job was running when the server was stopped
        self._version = 0  # counts changes to objects and labels: pages tell their view is stale by it
        self._version_lock = threading.Lock()
        removed = self.ws.remove_leftovers()  # what a killed studio left (an export half-built, ...)
        if removed:
            log.info("removed what an earlier studio left in %s: %s", self.ws.root, ", ".join(removed))
        self._restore()

    def _restore(self) -> None:
        """Give the session the workspace's keyframes (reopening restores the model's memory)."""
        for t in sorted(self.ws.keyframes):
            labels = self.ws.read_labels(t)
            if labels is not None:
                self.session.set_mask(t, labels)

    # -- state ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def job(self) -> dict[str, Any]:
        job = dict(self._job)
        if job["kind"] is not None:
            job["cancel_requested"] = self._cancel.is_set()
        return job

    def state(self) -> dict[str, Any]:
        return {**self.ws.state(), "job": self.job(), "version": self._version}

    def changed(self, frames: list[int] | None = None, by: str | None = None) -> int:
        """Say that objects or labels changed (``frames``: whose labels; None: any frame may have):
        every page gets a ``changed`` event with the new version and ``by``, the client that made
        the change (so that page need not reload what it already shows). Returns the version."""
        with self._version_lock:
            self._version += 1
            version = self._version
        self.hub.publish({"type": "changed", "version": version, "frames": frames, "by": by})
        return version

    def _check_idle(self, what: str) -> None:
        if self.busy:
            raise BusyError(f"a {self._job['kind']} is running; wait for it or cancel it before you {what}")

    # -- edits ------------------------------------------------------------------------------------
    def set_labels(self, t: int, labels: np.ndarray) -> None:
        """Frame ``t`` becomes a keyframe holding exactly ``labels``; 255 is void (stored as background,
        as :meth:`pcvos.Session.set_mask` and ``pcvos segment`` read it)."""
        self.ws.check_index(t)
        labels = np.where(labels == VOID_LABEL, 0, labels).astype(np.uint8)
        self.ws.check_labels(labels)
        with self._job_lock:  # no run may start between the check and the write
            self._check_idle("edit masks")
            self.session.set_mask(t, labels)
            self.ws.write_labels(t, labels, keyframe=True)
        self.ws.save()

    def add_object(self, name: str | None = None) -> dict[str, Any]:
        return self.ws.add_object(name)

    def rename_object(self, object_id: int, name: Any) -> dict[str, Any]:
        return self.ws.rename_object(object_id, name)

    def remove_object(self, object_id: int) -> None:
        self.ws.check_object(object_id)
        with self._job_lock:
            self._check_idle("remove objects")
            for t in self.ws.remove_object(object_id):
                self.session.set_mask(t, self.ws.read_labels(t))

    def prompt(
        self,
        t: int,
        object_id: Any,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        previous: Any = False,
    ) -> np.ndarray:
        """Object ``object_id``'s mask on frame ``t`` from clicks and/or a box, by
        :func:`pcvos.mask_from_prompts`: (H, W) uint8 0/1; nothing is stored (the page merges it).

        ``points`` are [[x, y], ...] in pixels inside the frame with ``labels`` 1 = object, 0 =
        background (default all 1); ``box`` is [x0, y0, x1, y1] (clipped to the frame); with
        ``previous`` true the object's stored mask on frame ``t`` is refined rather than started
        again. No points and no box: the frame's most salient object (the "auto" button).
        """
        self.ws.check_index(t)
        object_id = self.ws.check_object(object_id)
        pts = _check_points(points, self.ws.width, self.ws.height)
        labs = _check_point_labels(labels, len(pts))
        b = None if box is None else _check_box(box, self.ws.width, self.ws.height)
        if not isinstance(previous, bool):
            raise WorkspaceError(f"previous must be true or false, got {_shown(previous)}")
        prev = None
        if previous:
            stored = self.ws.read_labels(t)
            if stored is not None and (stored == object_id).any():
                prev = stored == object_id
        mask = mask_from_prompts(
            self.ws.read_frame(t),
            box=b,
            points=pts if pts else None,
            point_labels=labs if pts else None,
            previous=prev,
        )
        return mask.astype(np.uint8)

    def prepare(self, t: int) -> None:
        """Run the saliency network on frame ``t`` now (:func:`pcvos.prepare_prompts`), so that a
        first click or Auto there skips it; nothing is stored but the prompts' cache."""
        self.ws.check_index(t)
        prepare_prompts(self.ws.read_frame(t))

    def suggest(self, k: Any = SUGGEST_K) -> list[int]:
        """The ``k`` frames the session finds most likely wrong (:meth:`pcvos.Session.suggest`),
        most suspicious first; none before a propagation in this studio."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_SUGGEST:
            raise WorkspaceError(f"k must be a whole number in 1..{MAX_SUGGEST}, got {_shown(k)}")
        return [int(t) for t in self.session.suggest(k)]

    def import_mask(self, data: bytes, object_id: int | None) -> np.ndarray:
        """Read an uploaded mask image into labels of the frame size.

        An indexed PNG keeps its ids (unknown ids become new objects); any other mask with a
        single object is painted as ``object_id``; colour masks with several objects keep their ids.
        Label 255 is void: not an object, read as background. The mask must have the frames' exact
        size (it is never stretched), and the objects it brings may not take the workspace over
        ``MAX_OBJECTS``; either is refused before anything changes.
        """
        frame_size = f"{self.ws.width}x{self.ws.height}"
        try:  # the header alone: a wrong size is refused before the pixels are decoded
            with Image.open(io.BytesIO(data)) as probe:
                declared = probe.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            declared = None  # parse_mask below says what is wrong with it
        if declared is not None and sorted(declared) != sorted((self.ws.width, self.ws.height)):
            raise WorkspaceError(
                f"uploaded mask is {declared[0]}x{declared[1]} but the frames are {frame_size}; "
                "masks are not resized: export it at the frame size"
            )
        with self.ws.upload_folder() as tmp:
            path = tmp / UPLOAD_NAME
            path.write_bytes(data)
            try:
                labels, kind = parse_mask(path)
            except ValueError as exc:
                raise WorkspaceError(str(exc).replace(str(path), "uploaded mask")) from None
        if labels.shape != (self.ws.height, self.ws.width):
            raise WorkspaceError(
                f"uploaded mask is {labels.shape[1]}x{labels.shape[0]} but the frames are {frame_size}; "
                "masks are not resized: export it at the frame size"
            )
        labels = np.where(labels == VOID_LABEL, 0, labels).astype(np.uint8)
        ids = object_ids(labels)
        if not ids:
            raise WorkspaceError("uploaded mask holds no object (every pixel is background)")
        if not kind.startswith("indexed") and len(ids) == 1:
            return np.where(labels > 0, self.ws.check_object(object_id), 0).astype(np.uint8)
        known = self.ws.object_ids()
        new = [i for i in ids if i not in known]
        if len(known) + len(new) > MAX_OBJECTS:
            raise WorkspaceError(
                f"uploaded mask holds {len(ids)} objects ({len(new)} new); a workspace holds at most "
                f"{MAX_OBJECTS} and has {len(known)}: merge or remove objects first"
            )
        for i in new:
            self.ws.add_object(object_id=i)
        return labels

    # -- jobs -------------------------------------------------------------------------------------
    def _start(self, kind: str, work: Callable[[threading.Event], str], **info: Any) -> dict[str, Any]:
        """Run ``work(cancel)`` in a worker thread as the new job; it returns the final state."""
        with self._job_lock:
            self._check_idle(f"start a {kind}")
            self._cancel = cancel = threading.Event()
            # the id tells a client polling /api/job this job from the one before it
            self._job = {
                "id": self._job["id"] + 1,
                "kind": kind,
                "state": "running",
                "done": 0,
                "total": info.pop("total", None),
                "fps": None,
                "eta_s": None,
                "error": None,
                **info,
            }
            self._started = time.perf_counter()
            self._thread = threading.Thread(
                target=self._run, args=(work, cancel), name=f"pcvos-studio-{kind}", daemon=True
            )
            self._thread.start()
            self.hub.publish({"type": "job", **self.job()})
            return self.job()

    def _run(self, work: Callable[[threading.Event], str], cancel: threading.Event) -> None:
        try:
            state = work(cancel)
            error = None
        except Exception as exc:  # reported to the page; the server keeps running
            log.exception("studio %s failed", self._job["kind"])
            state, error = "error", f"{type(exc).__name__}: {exc}"
        # jobs are replaced, never mutated: readers in other threads copy them at any time
        self._job = {**self._job, "state": state, "error": error, "eta_s": 0 if state == "done" else None}
        self.ws.save()
        self.hub.publish({"type": "job", **self.job()})

    def _progress(self, done: int, total: int | None, frame: int | None = None) -> None:
        elapsed = time.perf_counter() - self._started
        fps = done / elapsed if elapsed > 0 else None
        eta = (total - done) / fps if fps and total is not None else None
        self._job = {**self._job, "done": done, "total": total, "fps": fps, "eta_s": eta}
        self.hub.publish({"type": "progress", **self.job(), "frame": frame})

    def propagate(
        self, t: Any, direction: Any = "both", until: Any = "keyframe", objects: Iterable[Any] | None = None
    ) -> dict[str, Any]:
        """Start propagating from frame ``t`` in the background; returns the job."""
        self.ws.check_index(t)
        if direction not in DIRECTIONS:
            raise WorkspaceError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if until not in UNTIL:
            raise WorkspaceError(f"until must be one of {', '.join(UNTIL)}, got {until!r}")
        if objects is not None:
            if not isinstance(objects, list) or not objects:
                raise WorkspaceError("objects must be a non-empty list of object ids, or null for all")
            objects = [self.ws.check_object(o) for o in objects]
        self._check_idle("start a propagation")
        if t not in self.session.keyframes:
            raise WorkspaceError(
                f"frame {t} is not a keyframe: draw or correct its mask first, then propagate"
            )
        total = len(self.session.plan(t, direction, until))
        iterator = self.session.propagate(t, direction=direction, until=until, objects=objects)

        def work(cancel: threading.Event) -> str:
            done, last_save = 0, time.perf_counter()
            for index, labels in iterator:
                if objects is not None:
                    labels = self._merge_subset(index, labels, objects)
                self.ws.write_labels(index, labels, keyframe=False)
                done += 1
                self._progress(done, total, frame=index)
                if time.perf_counter() - last_save > SAVE_EVERY_S:
                    self.ws.save()
                    last_save = time.perf_counter()
            return "cancelled" if cancel.is_set() else "done"

        return self._start(
            "propagation", work, total=total, start=t, direction=direction, until=until, objects=objects
        )

    def _merge_subset(self, t: int, labels: np.ndarray, objects: list[int]) -> np.ndarray:
        """Re-propagated ``objects`` over frame ``t``'s labels on disk: the session merges with what it
        holds, which after a reopen is only the keyframes, so the disk is the reference here."""
        old = self.ws.read_labels(t)
        if old is None:
            return labels
        merged = old.copy()
        merged[np.isin(merged, objects)] = 0
        claimed = np.isin(labels, objects)
        merged[claimed] = labels[claimed]
        return merged

    def export(self, formats: Any = None) -> dict[str, Any]:
        """Start writing the export (see :mod:`pcvos.studio.exporter`) in the background; ``formats``
        (a list of ``"coco"``, ``"yolo"``) are written beside the PNGs."""
        chosen = _check_formats(formats)

        def work(cancel: threading.Event) -> str:
            try:
                export_workspace(
                    self.ws, progress=lambda d, n: self._progress(d, n), cancel=cancel, formats=chosen
                )
            except ExportCancelled:
                return "cancelled"
            return "done"

        return self._start("export", work, total=self.ws.num_frames, formats=list(chosen))

    def cancel(self) -> dict[str, Any]:
        """Ask the running job to stop (a propagation stops within a clip)."""
        with self._job_lock:
            if self.busy:
                self._cancel.set()
                if self._job["kind"] == "propagation":
                    self.session.cancel()
        return self.job()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the current job ends (for tests and scripts)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.job()

    def interrupt(self) -> None:
        """Stop quickly (Ctrl+C): cancel the running job and end the event streams; does not wait.
        :attr:`interrupted` then says whether a job was running."""
        self.interrupted = self.busy
        self.cancel()
        self.hub.publish(None)

    def close(self) -> None:
        """Cancel any job and wait for it (server shutdown)."""
        self.cancel()
        self.wait()
        self.hub.publish(None)
