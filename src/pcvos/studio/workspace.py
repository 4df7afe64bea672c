"""A studio workspace: one video's cached frames, its masks and objects, in one folder.

Layout (everything written by pcvos, each file atomically)::

    workspace.json        source, frame count, size, fps, objects, keyframes, propagated frames
    frames/00000.jpg      the video decoded once (original resolution)
    masks/00000.png       indexed PNG (DAVIS palette) per frame that has labels
    export/               the latest export (see :mod:`pcvos.studio.exporter`)

``workspace.json`` is written last when a workspace is created, so a folder without it is an
unfinished decode that the next open redoes. Frames on disk are the truth for labels: a mask PNG
that exists and is not a keyframe is a propagated frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pcvos.data.frames import open_frames
from pcvos.data.io_utils import PathLike, atomic_write, atomic_write_text, save_indexed_png
from pcvos.data.masks import object_ids
from pcvos.data.palette import VOID_LABEL, colour_for
from pcvos.studio.exporter import EXPORT_ENTRIES, EXPORT_MARKER

__all__ = ["WorkspaceError", "Workspace", "MAX_OBJECT_ID", "MAX_OBJECTS", "FRAME_SUFFIX"]

WORKSPACE_FILE = "workspace.json"
WORKSPACE_FORMAT = 1
FRAME_SUFFIX = ".jpg"
#: JPEG quality of the cached frames: visually lossless, ~10x smaller than PNG and faster to serve.
JPEG_QUALITY = 95
#: Object ids 1..254: 0 is background and 255 the DAVIS void label.
MAX_OBJECT_ID = VOID_LABEL - 1
#: Most objects one workspace holds. Propagation's time and memory grow with every object (each is a
#: plane through the whole network), and a hand-annotated video rarely has more than a dozen; an
#: indexed PNG with ids 1..254 would otherwise add 254 objects at once.
MAX_OBJECTS = 32
#: Longest object name kept (names are labels in a list, not documents).
MAX_NAME_LENGTH = 80
#: Threads encoding cached frames; more than a few only queue behind the single decoding thread.
MAX_ENCODE_WORKERS = 4
#: Frames encoded ahead of the one being reported: bounds the decoded frames held in memory.
ENCODE_AHEAD_PER_WORKER = 4
#: What the studio writes under hidden names and a killed process may leave (group 1: the writer's pid):
#: export folders being built or swapped out (exporter), upload folders (:meth:`Workspace.upload_folder`)
#: and atomic-write temporaries (:func:`pcvos.data.io_utils.temp_path_for`).
EXPORT_LEFTOVER = re.compile(r"\.export-(?:old-)?(\d+)-[0-9a-f]{8}")
UPLOAD_LEFTOVER = re.compile(r"\.import-(\d+)-[a-z0-9_]{8}")
TEMP_LEFTOVER = re.compile(r"\..+\.(\d+)-[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9]+)?")
UPLOAD_NAME = "upload.png"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, OSError):
        return False
    return True


def _others_leftover(pid: str) -> bool:
    """A leftover whose writer is another live process may still be in use: keep it."""
    return int(pid) != os.getpid() and _process_alive(int(pid))


class WorkspaceError(ValueError):
    """A request the workspace cannot honour; the message says why (shown to the user).

    ``status`` is the HTTP status the server answers with: 404 for a frame or object that does
    not exist, 400 otherwise.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _frame_name(index: int) -> str:
    return f"{index:05d}"


class Workspace:
    """Open an existing workspace folder (see :meth:`open_or_create` to make one from a video)."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root).resolve()
        path = self.root / WORKSPACE_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise WorkspaceError(f"{self.root}: not a pcvos studio workspace (no {WORKSPACE_FILE})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"{path}: unreadable workspace file ({exc})") from exc
        if meta.get("format") != WORKSPACE_FORMAT:
            raise WorkspaceError(f"{path}: workspace format {meta.get('format')!r} is not {WORKSPACE_FORMAT}")
        self._lock = threading.RLock()
        self.source: str = meta["source"]
        self.num_frames: int = int(meta["num_frames"])
        self.height: int = int(meta["height"])
        self.width: int = int(meta["width"])
        self.fps: float | None = meta.get("fps")
        self.objects: list[dict[str, Any]] = list(meta.get("objects", []))
        self.keyframes: set[int] = {int(t) for t in meta.get("keyframes", [])}
        # the PNGs on disk are the truth: a crash after a mask write but before the JSON save loses nothing
        on_disk = {int(p.stem) for p in self.masks_dir.glob("*.png") if p.stem.isdigit()}
        self.keyframes &= on_disk
        self.propagated: set[int] = on_disk - self.keyframes

    # -- creation ---------------------------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls,
        root: PathLike,
        source: PathLike | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Workspace:
        """Open ``root``, or decode ``source`` (a video or frame folder) into a new workspace there.

        A ``source`` that differs from the one the workspace was made from is an error, as is a
        ``root`` that holds other files (pcvos writes only into folders it made).
        """
        root = Path(root)
        if (root / WORKSPACE_FILE).is_file():
            ws = cls(root)
            if source is not None and Path(source).resolve() != Path(ws.source):
                raise WorkspaceError(
                    f"{root}: this workspace belongs to {ws.source}, not {Path(source).resolve()}; "
                    "choose another --workspace"
                )
            return ws
        if source is None:
            raise WorkspaceError(
                f"{root}: not a pcvos studio workspace; give a video or frame folder to start one"
            )
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root}: exists and is not a folder; choose another --workspace")
        if root.is_dir():
            others = [p.name for p in root.iterdir() if p.name not in ("frames", "masks")]
            if others:
                raise WorkspaceError(
                    f"{root}: folder holds other files ({others[0]}, ...); choose an empty or new --workspace"
                )
        cls._decode(root, Path(source), progress)
        return cls(root)

    @staticmethod
    def _decode(root: Path, source: Path, progress: Callable[[int, int | None], None] | None) -> None:
        try:
            frames = open_frames(source, strict=True)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError) as exc:
            raise WorkspaceError(str(exc)) from exc
        try:
            total: int | None = len(frames)
        except TypeError:
            total = None
        frames_dir = root / "frames"
        frames_dir.mkdir(parents=True, exist_ok=True)

        def encode(index: int, frame: np.ndarray) -> None:
            ok, data = cv2.imencode(
                FRAME_SUFFIX, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            if not ok:
                raise WorkspaceError(f"{source}: frame {index} could not be encoded")
            atomic_write(
                frames_dir / f"{_frame_name(index)}{FRAME_SUFFIX}",
                lambda tmp: tmp.write_bytes(data.tobytes()),
            )

        # JPEG encoding and writing (OpenCV and file I/O release the GIL) overlap with decoding the
        # next frames: most of a new workspace's wait is this loop
        workers = max(1, min(MAX_ENCODE_WORKERS, os.cpu_count() or 1))
        pending: deque[Future] = deque()
        count = 0

        def finish_one() -> None:
            nonlocal count
            pending.popleft().result()
            count += 1
            if progress is not None:
                progress(count, total)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pcvos-decode") as pool:
            try:
                for index, frame in enumerate(frames):
                    pending.append(pool.submit(encode, index, frame))
                    while len(pending) > workers * ENCODE_AHEAD_PER_WORKER:
                        finish_one()
                while pending:
                    finish_one()
            except ValueError as exc:  # VideoDecodeError and unreadable frames
                raise WorkspaceError(str(exc)) from exc
            finally:  # on an error, frames not yet encoded are dropped (redone on the next open)
                for future in pending:
                    future.cancel()
        h, w = frames.size
        meta = {
            "format": WORKSPACE_FORMAT,
            "source": str(source.resolve()),
            "num_frames": count,
            "height": h,
            "width": w,
            "fps": frames.fps,
            "objects": [],
            "keyframes": [],
            "propagated": [],
        }
        atomic_write_text(root / WORKSPACE_FILE, json.dumps(meta, indent=1))

    # -- paths ------------------------------------------------------------------------------------
    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def frame_path(self, t: int) -> Path:
        return self.frames_dir / f"{_frame_name(self.check_index(t))}{FRAME_SUFFIX}"

    def mask_path(self, t: int) -> Path:
        return self.masks_dir / f"{_frame_name(self.check_index(t))}.png"

    # -- leftovers --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def upload_folder(self):
        """A hidden scratch folder in the workspace for one upload, removed afterwards."""
        with tempfile.TemporaryDirectory(dir=self.root, prefix=f".import-{os.getpid()}-") as tmp:
            yield Path(tmp)

    def remove_leftovers(self) -> list[str]:
        """Remove what a killed studio left in this workspace; returns the names removed.

        Only the studio's own hidden names count (see ``EXPORT_LEFTOVER``, ``UPLOAD_LEFTOVER``,
        ``TEMP_LEFTOVER``), only with the contents the studio writes there (an export folder holds
        its marker or only export files), and never one of another live process. Links are never
        followed. If a kill came between swapping the old export out and the new one in, the old
        one is put back as ``export/``.
        """
        removed: list[str] = []

        def entries(folder: Path) -> list[Path]:
            try:
                return sorted(folder.iterdir())
            except OSError:
                return []

        def ours_export(folder: Path) -> bool:
            names = {p.name for p in entries(folder)}
            return EXPORT_MARKER in names or all(
                n in EXPORT_ENTRIES or TEMP_LEFTOVER.fullmatch(n) for n in names
            )

        old_exports = []
        for path in entries(self.root):
            name = path.name
            is_dir = path.is_dir() and not path.is_symlink()
            if (m := EXPORT_LEFTOVER.fullmatch(name)) and is_dir and not _others_leftover(m.group(1)):
                if ours_export(path):
                    if name.startswith(".export-old-") and (path / EXPORT_MARKER).is_file():
                        old_exports.append(path)
                        continue
                    shutil.rmtree(path)
                    removed.append(name)
            elif (m := UPLOAD_LEFTOVER.fullmatch(name)) and is_dir and not _others_leftover(m.group(1)):
                if {p.name for p in entries(path)} <= {UPLOAD_NAME}:
                    shutil.rmtree(path)
                    removed.append(name)
        for path in old_exports:  # the newest complete export the user had, if export/ is gone
            if not self.export_dir.exists() and not self.export_dir.is_symlink():
                os.replace(path, self.export_dir)
            else:
                shutil.rmtree(path)
                removed.append(path.name)
        for folder in (self.root, self.masks_dir, self.frames_dir):
            for path in entries(folder):
                m = TEMP_LEFTOVER.fullmatch(path.name)
                if m and path.is_file() and not path.is_symlink() and not _others_leftover(m.group(1)):
                    path.unlink()
                    removed.append(str(path.relative_to(self.root)))
        return removed

    # -- checks -----------------------------------------------------------------------------------
    def check_index(self, t: int) -> int:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.num_frames:
            raise WorkspaceError(f"frame {t!r} is out of range (0..{self.num_frames - 1})", status=404)
        return t

    def object_ids(self) -> list[int]:
        with self._lock:
            return sorted(o["id"] for o in self.objects)

    def check_object(self, object_id: Any) -> int:
        if (
            not isinstance(object_id, int)
            or isinstance(object_id, bool)
            or object_id not in self.object_ids()
        ):
            raise WorkspaceError(
                f"unknown object id {object_id!r} (objects: {self.object_ids()})", status=404
            )
        return object_id

    def check_labels(self, labels: np.ndarray) -> np.ndarray:
        """A (H, W) uint8 map whose ids are all known objects (or 0)."""
        if labels.shape != (self.height, self.width) or labels.dtype != np.uint8:
            raise WorkspaceError(
                f"labels must be {self.width}x{self.height} uint8, got shape {labels.shape} {labels.dtype}"
            )
        unknown = sorted(set(object_ids(labels)) - set(self.object_ids()))
        if unknown:
            raise WorkspaceError(f"labels hold unknown object id(s) {unknown}; add the objects first")
        if (labels == VOID_LABEL).any():  # callers map void to background first (Studio.set_labels)
            raise WorkspaceError(f"labels hold the void label {VOID_LABEL}; store it as background (0)")
        return labels

    # -- frames and labels ------------------------------------------------------------------------
    def read_frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as (H, W, 3) uint8 RGB."""
        image = cv2.imread(str(self.frame_path(t)), cv2.IMREAD_COLOR)
        if image is None:
            raise WorkspaceError(f"{self.frame_path(t)}: cached frame missing or unreadable")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def read_labels(self, t: int) -> np.ndarray | None:
        """Labels of frame ``t``, or None when it has none."""
        path = self.mask_path(t)
        try:
            with Image.open(path) as image:
                return np.array(image)
        except FileNotFoundError:
            return None

    def write_labels(self, t: int, labels: np.ndarray, *, keyframe: bool) -> None:
        """Store labels of frame ``t`` (atomically); ``keyframe`` marks a user-made mask."""
        save_indexed_png(self.mask_path(t), labels)
        with self._lock:
            if keyframe:
                self.keyframes.add(t)
                self.propagated.discard(t)
            elif t not in self.keyframes:
                self.propagated.add(t)

    # -- objects ----------------------------------------------------------------------------------
    def add_object(self, name: str | None = None, object_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            used = set(self.object_ids())
            if len(used) >= MAX_OBJECTS:
                raise WorkspaceError(
                    f"a workspace holds at most {MAX_OBJECTS} objects; remove one before adding another"
                )
            if object_id is None:
                free = [i for i in range(1, MAX_OBJECT_ID + 1) if i not in used]
                if not free:
                    raise WorkspaceError(f"at most {MAX_OBJECT_ID} objects")
                object_id = free[0]
            elif not 1 <= object_id <= MAX_OBJECT_ID or object_id in used:
                raise WorkspaceError(f"object id {object_id} is taken or outside 1..{MAX_OBJECT_ID}")
            obj = {
                "id": object_id,
                "name": self._clean_name(name, object_id),
                "colour": list(colour_for(object_id)),
            }
            self.objects.append(obj)
            self.objects.sort(key=lambda o: o["id"])
            self.save()
            return obj

    @staticmethod
    def _clean_name(name: Any, object_id: int) -> str:
        if name is None or (isinstance(name, str) and not name.strip()):
            return f"object {object_id}"
        if not isinstance(name, str):
            raise WorkspaceError("an object name must be text")
        return name.strip()[:MAX_NAME_LENGTH]

    def rename_object(self, object_id: int, name: Any) -> dict[str, Any]:
        with self._lock:
            self.check_object(object_id)
            obj = next(o for o in self.objects if o["id"] == object_id)
            obj["name"] = self._clean_name(name, object_id)
            self.save()
            return obj

    def remove_object(self, object_id: int) -> list[int]:
        """Forget an object and clear its pixels from every mask; returns the keyframes changed."""
        with self._lock:
            self.check_object(object_id)
            self.objects = [o for o in self.objects if o["id"] != object_id]
            frames = sorted(self.keyframes | self.propagated)
        changed = []
        for t in frames:
            labels = self.read_labels(t)
            if labels is not None and (labels == object_id).any():
                labels[labels == object_id] = 0
                self.write_labels(t, labels, keyframe=t in self.keyframes)
                if t in self.keyframes:
                    changed.append(t)
        self.save()
        return changed

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "source": Path(self.source).name,
                "num_frames": self.num_frames,
                "width": self.width,
                "height": self.height,
                "fps": self.fps,
                "objects": [dict(o) for o in self.objects],
                "keyframes": sorted(self.keyframes),
                "propagated": sorted(self.propagated),
            }

    def save(self) -> None:
        """Write ``workspace.json`` atomically."""
        with self._lock:
            meta = {
                "format": WORKSPACE_FORMAT,
                "source": self.source,
                "num_frames": self.num_frames,
                "height": self.height,
                "width": self.width,
                "fps": self.fps,
                "objects": self.objects,
                "keyframes": sorted(self.keyframes),
                "propagated": sorted(self.propagated),
            }
            text = json.dumps(meta, indent=1)
            atomic_write_text(self.root / WORKSPACE_FILE, text)
