"""Interactive segmentation of one video: keyframes, propagation both ways, corrections.

A :class:`Session` holds one video and its masks. Frames given a mask with :meth:`Session.set_mask`
are *keyframes*: they hold exactly the user's map and no propagation ever changes them. A run
(:meth:`Session.propagate`) starts at a keyframe and goes forward, backward or both, until the
neighbouring keyframes or to the video's ends, reading all keyframes (both sides of the start)
plus its own per-clip memory, as MiVOS does. Correcting a frame is ``set_mask`` then
``propagate`` from it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Container, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch

from pcvos.data.frames import FrameFolder, VideoDecodeError, open_frames, read_frame
from pcvos.data.palette import VOID_LABEL
from pcvos.inference.api import Segmenter, _check_frame, _processing_size
from pcvos.inference.engine import InferenceConfig, InferenceCore, Precision, is_whole
from pcvos.inference.review import clip_uncertainty, subsample_labels, suggest_frames
from pcvos.model.network import PCVOS, unpad

Direction = Literal["both", "forward", "backward"]
Until = Literal["keyframe", "end"]

# Frames a path-backed session keeps decoded: two clips of L = 16, about 30 MB at 480p. A run
# reads frames in order, so a small cache filled a window at a time decodes each frame about once.
DEFAULT_CACHE_FRAMES = 32


class _FrameCache:
    """Random access to a video's (H, W, 3) uint8 frames, read a window at a time into an LRU cache.

    Subclasses read ``[lo, hi]`` in :meth:`_read_window`; the window follows the direction of the
    last access, so forward and backward runs both decode each frame about once.
    """

    def __init__(self, num_frames: int, size: tuple[int, int], capacity: int) -> None:
        if not is_whole(capacity) or capacity < 1:
            raise ValueError(f"cache_frames must be a positive whole number, got {capacity!r}")
        self.num_frames, self.size, self.capacity = num_frames, size, capacity
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._last: int | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        with self._lock:
            frame = self._cache.get(index)
            if frame is None:
                span = max(1, self.capacity // 2)
                backward = self._last is not None and index < self._last
                lo = max(0, index - span + 1) if backward else index
                hi = index if backward else min(self.num_frames - 1, index + span - 1)
                for i, f in self._read_window(lo, hi).items():
                    self._put(i, f)
                frame = self._cache.get(index)
                if frame is None:  # the decoder ended before it (a file changed since it was opened)
                    raise ValueError(f"frame {index} could not be read")
            else:
                self._cache.move_to_end(index)
            self._last = index
            return frame

    def _put(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    def _read_window(self, lo: int, hi: int) -> dict[int, np.ndarray]:
        raise NotImplementedError

    @property
    def cached(self) -> int:
        """Frames held decoded right now (at most ``capacity``)."""
        return len(self._cache)


class _FolderFrames(_FrameCache):
    def __init__(self, folder: FrameFolder, capacity: int) -> None:
        self.folder = folder
        super().__init__(len(folder), folder.size, capacity)

    def _read_window(self, lo: int, hi: int) -> dict[int, np.ndarray]:
        out = {}
        for i in range(lo, hi + 1):
            path = self.folder.frame_paths[i]
            frame = read_frame(path)
            if frame.shape[:2] != self.size:
                raise ValueError(
                    f"{path}: frame size {frame.shape[0]}x{frame.shape[1]} differs from the first "
                    f"frame's {self.size[0]}x{self.size[1]}"
                )
            out[i] = frame
        return out


class _VideoFrames(_FrameCache):
    """A video file read by seeking. Opening decodes the stream once, without converting or
    keeping a frame, to learn each frame's timestamp: frame numbers are then exactly those of a
    plain decode (what ``pcvos segment`` sees), whatever the container declares."""

    def __init__(self, path: Path, size: tuple[int, int], capacity: int) -> None:
        self.path = path
        pts: list[int | None] = []
        with contextlib.closing(av.open(str(path))) as container:
            stream = container.streams.video[0]
            try:
                for frame in container.decode(stream):
                    pts.append(frame.pts)
            except av.FFmpegError as err:
                raise VideoDecodeError(path, len(pts), str(err)) from err
        if not pts:
            raise ValueError(f"{path}: the video stream holds no decodable frames")
        # seeking needs distinct, increasing timestamps; otherwise windows decode from the start
        stamps = [p for p in pts if p is not None]
        self._seekable = len(stamps) == len(pts) and all(a < b for a, b in pairwise(stamps))
        self._pts = stamps  # every frame's when seekable
        # looked up by decoded frames' pts, which may be None
        self._index: dict[int | None, int] = {p: i for i, p in enumerate(stamps)} if self._seekable else {}
        super().__init__(len(pts), size, capacity)

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        h, w = self.size
        if frame.height != h or frame.width != w:  # resolution change mid-stream, as VideoReader
            frame = frame.reformat(width=w, height=h)
        return frame.to_ndarray(format="rgb24")

    def _read_window(self, lo: int, hi: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with contextlib.closing(av.open(str(self.path))) as container:
            stream = container.streams.video[0]
            try:
                if self._seekable:
                    container.seek(self._pts[lo], stream=stream, backward=True, any_frame=False)
                    for frame in container.decode(stream):
                        i = self._index.get(frame.pts)
                        if i is None or i < lo:
                            continue
                        out[i] = self._rgb(frame)
                        if i >= hi:
                            break
                    if all(i in out for i in range(lo, hi + 1)):
                        return out
                    out.clear()  # the seek landed past the window: decode from the start instead
                    container.seek(0, stream=stream, backward=True, any_frame=False)
                for i, frame in enumerate(container.decode(stream)):
                    if i >= lo:
                        out[i] = self._rgb(frame)
                    if i >= hi:
                        break
            except av.FFmpegError as err:
                raise VideoDecodeError(self.path, lo, str(err)) from err
        return out


class _ArrayFrames:
    def __init__(self, frames: np.ndarray | torch.Tensor) -> None:
        arr = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(
                f"frames: expected a uint8 array of shape (T, H, W, 3), got dtype {arr.dtype} "
                f"and shape {tuple(arr.shape)}"
            )
        if arr.shape[0] == 0:
            raise ValueError("frames: the video has no frames")
        self._arr = arr
        self.num_frames = int(arr.shape[0])
        self.size = (int(arr.shape[1]), int(arr.shape[2]))

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int) -> np.ndarray:
        return self._arr[index]


def _open_source(
    frames: np.ndarray | torch.Tensor | str | os.PathLike, cache_frames: int
) -> _ArrayFrames | _FrameCache:
    if isinstance(frames, (str, os.PathLike)):
        source = open_frames(frames)  # checks the path: missing, not a video, no frames
        if isinstance(source, FrameFolder):
            return _FolderFrames(source, cache_frames)
        return _VideoFrames(Path(frames), source.size, cache_frames)
    return _ArrayFrames(frames)


class Session:
    """One video and its masks, for interactive work: keyframes, propagation both ways, corrections.

    ``frames``: a (T, H, W, 3) uint8 RGB array (numpy or torch), or the path of a video file or a
    folder of frames, read lazily: at most ``cache_frames`` decoded frames are held at a time.
    The other arguments are those of :class:`pcvos.Segmenter`; ``size`` is the processing
    shorter side (None: the input's), results are always at the input size.

    - :meth:`set_mask` makes a frame a keyframe holding exactly the given label map;
      :meth:`remove_keyframe` undoes that; :meth:`set_labels` restores a frame's labels (saved
      work) without making it a keyframe.
    - :meth:`propagate` returns an iterator of ``(index, labels)``; consuming it does the work.
      :meth:`cancel` stops it; :attr:`running` says whether one is being consumed.
    - :meth:`labels`, :attr:`keyframes`, :attr:`object_ids`, :attr:`num_frames`, :attr:`size`.
    - :meth:`plan` lists the frames a ``propagate`` call will touch, in its order, so a caller can
      show progress as ``done / len(plan(...))``.

    A video file is decoded once when the session opens (timestamps only, nothing kept), so that
    frames can later be read by seeking; a run then decodes each frame about once.

    Threads: every method may be called from any thread. The state is guarded by a lock, so
    :meth:`labels` from one thread sees each frame either before or after a run updated it while
    another thread consumes :meth:`propagate`; :meth:`cancel` stops a run from another thread.
    One run at a time: consuming a second :meth:`propagate` iterator while one runs raises
    ``RuntimeError``.

    Labels are kept for every segmented frame at the input size (uint8, H*W bytes a frame).
    """

    def __init__(
        self,
        model: PCVOS,
        frames: np.ndarray | torch.Tensor | str | os.PathLike,
        *,
        clip_length: int = 5,
        size: int | None = None,
        device: str | torch.device | None = None,
        precision: Precision = "fp32",
        memory_every: int | None = None,
        pmm_segment: int | None = 5,
        refine: bool = True,
        top_k: int = 20,
        max_memory_frames: int | None = InferenceConfig.max_memory_frames,
        frame_batch: int | None = None,
        cache_frames: int = DEFAULT_CACHE_FRAMES,
    ) -> None:
        if not is_whole(cache_frames) or cache_frames < 1:
            raise ValueError(f"cache_frames must be a positive whole number, got {cache_frames!r}")
        # the Segmenter validates the settings, places the model and owns the frame and mask
        # preprocessing, so a session computes exactly what pcvos.segment does
        self._seg = Segmenter(
            model,
            clip_length=clip_length,
            memory_every=memory_every,
            pmm_segment=pmm_segment,
            refine=refine,
            top_k=top_k,
            size=size,
            max_memory_frames=max_memory_frames,
            device=device,
            frame_batch=frame_batch,
            precision=precision,
        )
        self._frames = _open_source(frames, cache_frames)
        self._seg._shape = self._frames.size
        self._seg._proc = _processing_size(*self._frames.size, size)
        self._keyframes: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # guards _keyframes, _labels, _cancels
        self._run_lock = threading.Lock()  # one run at a time
        self._cancels: set[threading.Event] = set()
        # keyframe memory (keys, values) by (frame, object ids), with the mask it was encoded
        # from: a run reads every keyframe, so corrections would otherwise re-encode them all
        self._encoded: dict[
            tuple[int, tuple[int, ...]], tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]
        ] = {}
        # per propagated frame, the decoder's doubt from the run that last produced it (suggest())
        self._doubt: dict[int, float] = {}

    # -- facts ------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """T, the number of frames."""
        return len(self._frames)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames, masks and labels."""
        return self._frames.size

    @property
    def config(self) -> InferenceConfig:
        return self._seg.config

    @property
    def keyframes(self) -> list[int]:
        """Frames holding a user's mask, ascending."""
        with self._lock:
            return sorted(self._keyframes)

    @property
    def object_ids(self) -> list[int]:
        """Every object id in any keyframe, ascending."""
        with self._lock:
            masks = list(self._keyframes.values())
        ids: set[int] = set()
        for m in masks:
            ids.update(int(i) for i in np.unique(m) if i != 0)
        return sorted(ids)

    @property
    def running(self) -> bool:
        """Whether a propagate iterator is being consumed now."""
        return self._run_lock.locked()

    def _check_index(self, t: int, what: str = "frame") -> int:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise ValueError(f"{what} index must be an integer, got {t!r}")
        if not 0 <= int(t) < self.num_frames:
            raise ValueError(
                f"{what} {t} out of range: the video has {self.num_frames} frames (0..{self.num_frames - 1})"
            )
        return int(t)

    # -- masks ------------------------------------------------------------------------------------
    def _check_map(self, t: int, label_map: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
        arr = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map)
        if arr.ndim != 2:
            raise ValueError(f"{what} for frame {t}: expected a (H, W) label map, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{what} for frame {t}: expected integer labels, got dtype {arr.dtype}")
        if arr.shape != self.size:
            raise ValueError(
                f"{what} for frame {t}: size {arr.shape[1]}x{arr.shape[0]} differs from the video's "
                f"{self.size[1]}x{self.size[0]}"
            )
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{what} for frame {t}: labels must lie in 0..255")
        # void is not an object (DAVIS, pcvos segment, Segmenter.add_mask); always a copy: the
        # caller may go on editing its array
        return np.where(arr == VOID_LABEL, 0, arr).astype(np.uint8)

    def set_mask(self, t: int, label_map: np.ndarray | torch.Tensor) -> None:
        """Make frame ``t`` a keyframe holding exactly ``label_map``: (H, W) integer ids, 0 = background.

        Ids are the user's (1..254, need not be contiguous); an object may be new at any keyframe,
        and an object missing from a keyframe is absent there. An all-background map is allowed.
        255 is void, as everywhere in pcvos (DAVIS's convention, ``pcvos segment``'s mask files,
        :meth:`pcvos.Segmenter.add_mask`, the studio): not an object, its pixels are stored as
        background.
        """
        t = self._check_index(t)
        arr = self._check_map(t, label_map, "mask")
        with self._lock:
            self._keyframes[t] = arr
            self._labels[t] = arr
            self._forget_encoded(t)

    def set_labels(self, t: int, label_map: np.ndarray | torch.Tensor) -> None:
        """Store ``label_map`` as frame ``t``'s labels *without* making it a keyframe (restoring
        saved work, or results from elsewhere): runs may change it, and ``objects=`` runs keep
        the other objects' pixels from it. 255 is void, stored as background (see :meth:`set_mask`).
        ``ValueError`` if ``t`` is a keyframe."""
        t = self._check_index(t)
        arr = self._check_map(t, label_map, "labels")
        with self._lock:
            if t in self._keyframes:
                raise ValueError(f"frame {t} is a keyframe: change it with set_mask")
            self._labels[t] = arr

    def remove_keyframe(self, t: int) -> None:
        """Frame ``t`` is no longer a keyframe; its labels stay until a run changes them."""
        t = self._check_index(t)
        with self._lock:
            if t not in self._keyframes:
                raise ValueError(f"frame {t} is not a keyframe")
            del self._keyframes[t]
            self._forget_encoded(t)

    def _forget_encoded(self, t: int) -> None:
        for key in [key for key in self._encoded if key[0] == t]:
            del self._encoded[key]

    def labels(self, t: int) -> np.ndarray | None:
        """Frame ``t``'s (H, W) uint8 label map (a copy), or None if it was never segmented."""
        t = self._check_index(t)
        with self._lock:
            lab = self._labels.get(t)
        return None if lab is None else lab.copy()

    # -- runs -------------------------------------------------------------------------------------
    def _check_run(self, t: int, direction: str, until: str) -> tuple[int, list[int]]:
        t = self._check_index(t)
        steps = {"forward": [1], "backward": [-1], "both": [1, -1]}.get(direction)
        if steps is None:
            raise ValueError(f"direction must be 'both', 'forward' or 'backward', got {direction!r}")
        if until not in ("keyframe", "end"):
            raise ValueError(f"until must be 'keyframe' or 'end', got {until!r}")
        return t, steps

    @staticmethod
    def _frames_of(t: int, step: int, until: str, keyframes: Container[int], n: int) -> list[int]:
        out = []
        i = t + step
        while 0 <= i < n:
            if i in keyframes:
                if until == "keyframe":
                    break
            else:
                out.append(i)
            i += step
        return out

    def plan(self, t: int, direction: Direction = "both", until: Until = "keyframe") -> list[int]:
        """The frames ``propagate(t, direction=..., until=...)`` would update, in its order
        (forward part first for ``"both"``): its iterator yields exactly these, so
        ``len(plan(...))`` is the total for a progress bar. Keyframes are never in it."""
        t, steps = self._check_run(t, direction, until)
        with self._lock:
            keys = set(self._keyframes)
        return [i for s in steps for i in self._frames_of(t, s, until, keys, self.num_frames)]

    def propagate(
        self,
        t: int,
        *,
        direction: Direction = "both",
        until: Until = "keyframe",
        objects: Sequence[int] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Propagate from keyframe ``t``; returns an iterator of ``(index, labels)`` in processing order.

        Consuming it does the work, clip by clip; each yielded frame is already stored (see
        :meth:`labels`). ``direction``: ``"forward"``, ``"backward"`` or ``"both"`` (forward
        first). ``until="keyframe"`` stops before the nearest keyframe in each direction;
        ``"end"`` runs to the video's ends, passing through keyframes without changing them
        (their masks restart the memory schedule there). The memory of each direction's run is
        every keyframe (both sides of ``t``) plus that run's per-clip memory.

        ``objects=[ids]`` re-propagates only those objects: on the touched frames the other
        objects keep their labels except where a re-propagated object claims the pixel, and
        pixels the re-propagated objects held and no longer claim become background.

        Arguments are checked here (``ValueError``: ``t`` out of range or holding no mask, an
        unknown object id); a keyframe set while the run goes keeps its mask.
        """
        t, steps = self._check_run(t, direction, until)
        with self._lock:
            if t not in self._keyframes:
                raise ValueError(f"frame {t} holds no mask: make it a keyframe with set_mask({t}, ...) first")
            keyframes = dict(self._keyframes)
        known = self.object_ids
        if objects is not None:
            chosen = sorted({int(i) for i in objects})
            if not chosen:
                raise ValueError("objects: empty list (use None for all objects)")
            unknown = [i for i in chosen if i not in known]
            if unknown:
                raise ValueError(f"objects: unknown object id {unknown[0]} (the keyframes hold {known})")
            ids, subset = chosen, True
        else:
            ids, subset = known, False
        if not ids:
            raise ValueError("no object in any keyframe: give a mask with at least one object first")
        cancel = threading.Event()
        with self._lock:
            self._cancels.add(cancel)
        return self._run(t, steps, until, ids, subset, keyframes, cancel)

    def cancel(self) -> None:
        """Stop the running (and any not yet started) propagation: thread-safe. The run stops
        before its next clip; every frame is either as before the run or fully updated."""
        with self._lock:
            for event in self._cancels:
                event.set()

    def _run(
        self,
        t: int,
        steps: list[int],
        until: str,
        ids: list[int],
        subset: bool,
        keyframes: dict[int, np.ndarray],
        cancel: threading.Event,
    ) -> Iterator[tuple[int, np.ndarray]]:
        if not self._run_lock.acquire(blocking=False):
            with self._lock:
                self._cancels.discard(cancel)
            raise RuntimeError("another propagation is running on this session; cancel() it or wait")
        try:
            for step in steps:
                if cancel.is_set():
                    return
                if not self._frames_of(t, step, until, keyframes, self.num_frames):
                    continue
                yield from self._run_direction(t, step, until, ids, subset, keyframes, cancel)
        finally:
            with self._lock:
                self._cancels.discard(cancel)
            self._run_lock.release()

    def _frame(self, i: int) -> torch.Tensor:
        return _check_frame(torch.from_numpy(np.ascontiguousarray(self._frames[i])), i)

    @torch.inference_mode()
    def _run_direction(
        self,
        t: int,
        step: int,
        until: str,
        ids: list[int],
        subset: bool,
        keyframes: dict[int, np.ndarray],
        cancel: threading.Event,
    ) -> Iterator[tuple[int, np.ndarray]]:
        seg = self._seg
        core = InferenceCore(seg.model, seg.config)
        # every keyframe, farthest first and the start last (the memory schedule counts from it);
        # an order that mirrors with the direction, so a backward run of a reversed video adds
        # the same memory in the same order as the forward run and computes the same numbers
        for k in sorted(keyframes, key=lambda k: (-abs(k - t), step * (k - t))):
            cache_key = (k, tuple(ids))
            with self._lock:
                hit = self._encoded.get(cache_key)
            if hit is not None and hit[0] is keyframes[k]:
                core.add_keyframe(k, None, (None, ids), encoded=hit[1])
                continue
            encoded = core.add_keyframe(
                k, seg._prepare([self._frame(k)]), seg._prepare_mask(keyframes[k], ids)
            )
            with self._lock:
                if self._keyframes.get(k) is keyframes[k]:  # not replaced while this run encoded it
                    self._encoded[cache_key] = (keyframes[k], encoded)
        clip: list[int] = []
        images: list[torch.Tensor] = []

        def flush() -> Iterator[tuple[int, np.ndarray]]:
            if not clip or cancel.is_set():  # cancelled: the clip is dropped, its frames stay as they were
                return
            probs = core.process_clip(clip, seg._prepare(images), None)
            self._keep_doubt(clip, unpad(probs, seg._pad))
            labels = core.objects.labels(seg._finish(probs, core)).cpu().numpy()
            yield from self._store(clip, labels, ids, subset)

        i = t + step
        while 0 <= i < self.num_frames and not cancel.is_set():
            if i in keyframes:
                if until == "keyframe":
                    break
                yield from flush()
                clip, images = [], []
                core.pass_keyframe(i)
            else:
                clip.append(i)
                images.append(self._frame(i))
                if len(clip) == seg.config.clip_length:
                    yield from flush()
                    clip, images = [], []
            i += step
        if clip:
            yield from flush()

    def _store(
        self, clip: list[int], labels: np.ndarray, ids: list[int], subset: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Write a clip's labels in one step under the lock, then yield them."""
        done = []
        with self._lock:
            for j, index in enumerate(clip):
                if index in self._keyframes:  # made a keyframe while the run went: it wins
                    continue
                new = labels[j]
                if subset:
                    old = self._labels.get(index)
                    merged = np.zeros_like(new) if old is None else old.copy()
                    merged[np.isin(merged, ids)] = 0
                    claimed = new > 0
                    merged[claimed] = new[claimed]
                    new = merged
                else:
                    new = new.copy()  # not a view of the clip's array: each frame stands alone
                self._labels[index] = new
                done.append((index, new))
        for index, lab in done:
            yield index, lab.copy()

    # -- review -----------------------------------------------------------------------------------
    def _keep_doubt(self, clip: list[int], probs: torch.Tensor) -> None:
        doubt = clip_uncertainty(probs)
        with self._lock:
            for index, value in zip(clip, doubt, strict=True):
                self._doubt[index] = float(value)

    def suggest(self, k: int = 3) -> list[int]:
        """The ``k`` frames most likely wrong after propagation, most suspicious first: where to
        look (and correct with :meth:`set_mask` + :meth:`propagate`) before scrubbing the video.

        Only segmented frames that are not keyframes are suggested, and the picks are spread
        out (at least about ``num_frames / (4 k)`` frames apart while enough frames allow).
        The ranking combines the decoder's doubt, kept per frame as runs produce it, with how
        much each mask jumps from its neighbours (:mod:`pcvos.inference.review`, which also
        offers area drift and keyframe distance); no frame is read or run again. Fewer than ``k``
        frames come back when fewer are candidates (none before the first run). ``ValueError``
        unless ``k`` is a positive integer.
        """
        if not is_whole(k) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        with self._lock:
            labels = dict(self._labels)
            keys = sorted(self._keyframes)
            doubt = dict(self._doubt)
        keyset = set(keys)
        candidates = [i for i in labels if i not in keyset]
        if not candidates:
            return []
        # subsampled before stacking (the signals compare whole masks): a few MB for any video
        blank = subsample_labels(np.zeros(self.size, np.uint8))  # never segmented (a partial run): empty
        stack = np.stack(
            [blank if i not in labels else subsample_labels(labels[i]) for i in range(self.num_frames)]
        )
        unc = np.array([doubt.get(i, np.nan) for i in range(self.num_frames)])
        return suggest_frames(stack, keys, unc, int(k), candidates=candidates)
