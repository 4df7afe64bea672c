"""Public inference API: :class:`Segmenter` (streaming) and :func:`segment` (one call)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pcvos.data.palette import VOID_LABEL
from pcvos.inference.adapt import adapt as adapt_model
from pcvos.inference.engine import InferenceConfig, InferenceCore, Precision
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
from pcvos.inference.sizing import _processing_size, _resize_mask
from pcvos.model.network import PCVOS, pad_to_multiple, unpad

Output = Literal["labels", "probs"]
FrameLike = np.ndarray | torch.Tensor


def _check_frame(frame: FrameLike, index: int) -> torch.Tensor:
    t = torch.as_tensor(frame) if not isinstance(frame, torch.Tensor) else frame
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(
            f"frame {index}: expected a uint8 RGB array of shape (H, W, 3), "
            f"got dtype {t.dtype} and shape {tuple(t.shape)}"
        )
    return t


class Segmenter:
    """Streaming per-clip segmentation of one video.

    Give the masks with :meth:`add_mask` (a label map per frame where objects are given; 0 is
    background), then iterate :meth:`process` over the frames: it yields ``(index, result)`` as
    each clip finishes, so at most ``clip_length - 1`` frames wait and a long video never sits in
    memory. ``result`` is a (H, W) uint8 label map with the user's ids (``output="labels"``) or
    float32 probabilities (1 + K, H, W), background first, objects by ascending id
    (``output="probs"``; K counts every id given so far, zeros where an object is not yet given).

    ``size`` resizes frames so the shorter side has ``size`` pixels for processing (None: the
    input resolution); results are always at the input resolution. ``max_memory_frames`` bounds
    the memory, and so RAM and time per frame, on long videos (None: unbounded). The default,
    ``DEFAULT_MAX_MEMORY_FRAMES`` (21, what the longest DAVIS sequence makes at the default
    interval of 5), keeps every memory frame of a video shorter than 21 memory intervals; beyond
    it, annotated frames and the two newest memory frames always stay and the frame the memory
    reads have used least is dropped, so time per frame stays flat.

    ``precision="bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA) runs the network's convolutions and
    matrix products in that precision (autocast); the memory read, aggregation and outputs stay
    fp32. About twice as fast on CPUs with bf16 instructions and on GPUs, with a small accuracy
    cost (measured in docs/benchmarks.md); the default ``"fp32"`` reproduces the released model exactly.
    """

    def __init__(
        self,
        model: PCVOS,
        *,
        clip_length: int = 5,
        memory_every: int | None = None,
        pmm_segment: int | None = 5,
        refine: bool = True,
        top_k: int = 20,
        size: int | None = None,
        max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES,
        output: Output = "labels",
        device: str | torch.device | None = None,
        frame_batch: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if output not in ("labels", "probs"):
            raise ValueError(f"output must be 'labels' or 'probs', got {output!r}")
        self.config = InferenceConfig(
            clip_length=clip_length,
            memory_every=memory_every,
            pmm_segment=pmm_segment,
            refine=refine,
            top_k=top_k,
            max_memory_frames=max_memory_frames,
            frame_batch=frame_batch,
            precision=precision,
        )
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.config.validate(self.device.type)  # before the model moves: bad settings fail fast
        if size is not None:
            _processing_size(16, 16, size)  # the same check, before any frame arrives
        self.model = model.to(self.device).eval()
        self.size = size
        self.output = output
        self._masks: dict[int, np.ndarray] = {}
        self._consumed = 0  # frames process() has taken from its iterator
        self._shape: tuple[int, int] | None = None

    # -- masks ------------------------------------------------------------------------------------
    def add_mask(self, frame_index: int, label_map: np.ndarray | torch.Tensor) -> None:
        """Give objects at ``frame_index``: a (H, W) integer label map, 0 = background.

        Ids need not be contiguous (1..254); an id given again at a later frame replaces its
        prediction there. 255 is void, as in DAVIS and as ``pcvos segment`` reads mask files: not an
        object, its pixels count as background. A frame that :meth:`process` has already taken
        from the frame iterator cannot get a mask any more (``ValueError``).
        """
        arr = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map)
        if arr.ndim != 2:
            raise ValueError(
                f"mask for frame {frame_index}: expected a (H, W) label map, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise ValueError(f"mask for frame {frame_index}: expected integer labels, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"mask for frame {frame_index}: labels must lie in 0..255")
        if frame_index < 0:
            raise ValueError(f"mask frame index must be >= 0, got {frame_index}")
        if frame_index < self._consumed:
            raise ValueError(
                f"mask for frame {frame_index}: that frame has already been processed (frames up to "
                f"{self._consumed - 1} have been read); give masks before process() reaches their frame"
            )
        arr = np.where(arr == VOID_LABEL, 0, arr)  # void is not an object
        if not (arr > 0).any():
            raise ValueError(f"mask for frame {frame_index}: contains no object (all background)")
        if self._shape is not None and arr.shape != self._shape:
            raise ValueError(
                f"mask for frame {frame_index}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                f"the frames' {self._shape[1]}x{self._shape[0]}"
            )
        self._masks[int(frame_index)] = arr.astype(np.uint8)

    @property
    def object_ids(self) -> list[int]:
        """Every id given so far, ascending."""
        ids: set[int] = set()
        for m in self._masks.values():
            ids.update(int(i) for i in np.unique(m) if i != 0)
        return sorted(ids)

    # -- frames -----------------------------------------------------------------------------------
    def _prepare(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """A clip's uint8 (H, W, 3) frames -> normalised, resized, padded (L, 3, Hp, Wp) on the device."""
        # one batch per clip: a GPU gets one host-to-device copy (from pinned memory, so it runs
        # asynchronously) and one launch per step instead of one per frame
        pinned = self.device.type == "cuda" and not frames[0].is_cuda
        x = (
            torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=True)
            if pinned
            else None
        )
        x = torch.stack(frames, out=x) if len(frames) > 1 or pinned else frames[0].unsqueeze(0)
        x = x.to(self.device, non_blocking=pinned).permute(0, 3, 1, 2)
        h, w = self._proc
        if (h, w) == tuple(frames[0].shape[:2]):
            x = x.float().div_(255)
        else:  # frame by frame: a clip of large frames in float would be 4x its uint8 size at once
            x = torch.cat(
                [
                    F.interpolate(
                        f.float().div_(255), size=(h, w), mode="bilinear", align_corners=False, antialias=True
                    )
                    for f in x.split(1)
                ]
            )
        x, self._pad = pad_to_multiple(self.model.normalize(x), 16)
        return x

    def _prepare_mask(
        self, labels: np.ndarray, ids: list[int] | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """A label map -> one-hot planes (n, Hp, Wp) at the processing size, and their ids.

        ``ids`` None: the objects present after resizing; else exactly those planes, in that
        order, zero where an id is absent (a keyframe says where an object is not)."""
        m, _ = pad_to_multiple(_resize_mask(torch.from_numpy(labels).to(self.device), self._proc), 16)
        if ids is None:
            ids = [int(i) for i in torch.unique(m).tolist() if i != 0]
            if not ids:
                raise ValueError(
                    "a mask lost all its objects when resized to the processing size; use a larger size"
                )
        onehot = torch.stack([(m == i) for i in ids]).float()
        return onehot, ids

    def _finish(self, probs: torch.Tensor, core: InferenceCore) -> torch.Tensor:
        """(1 + S, L, Hp, Wp) slot-order probabilities -> (1 + S, L, H, W) at the input size."""
        p = unpad(probs, self._pad)
        if tuple(p.shape[-2:]) != self._shape:
            p = F.interpolate(
                p.transpose(0, 1), size=self._shape, mode="bilinear", align_corners=False
            ).transpose(0, 1)
        return p

    def _emit(
        self, indices: list[int], probs: torch.Tensor, core: InferenceCore
    ) -> Iterator[tuple[int, np.ndarray]]:
        p = self._finish(probs, core)
        if self.output == "labels":
            labels = core.objects.labels(p).cpu().numpy()
            for j, t in enumerate(indices):
                lab = labels[j]
                if t in self._masks:
                    given = self._masks[t]
                    lab = np.where(given > 0, given, lab) if t != min(self._masks) else given
                yield t, lab
            return
        ids = self.object_ids
        out = torch.zeros(1 + len(ids), *p.shape[1:], dtype=torch.float32, device=p.device)
        out[0] = p[0]
        for slot, obj in enumerate(core.objects.ids):
            out[1 + ids.index(obj)] = p[1 + slot]
        result = out.cpu().numpy()
        for j, t in enumerate(indices):
            yield t, result[:, j]

    def _background(self, index: int, shape: tuple[int, int]) -> tuple[int, np.ndarray]:
        h, w = shape
        if self.output == "labels":
            return index, np.zeros((h, w), np.uint8)
        out = np.zeros((1 + len(self.object_ids), h, w), np.float32)
        out[0] = 1
        return index, out

    def process(self, frames: Iterable[FrameLike]) -> Iterator[tuple[int, np.ndarray]]:
        """Segment ``frames`` (uint8 RGB (H, W, 3) each, in order); yields ``(index, result)`` per frame."""
        if not self._masks:
            raise ValueError("no mask given: call add_mask(frame_index, label_map) first")
        core = InferenceCore(self.model, self.config)
        self._consumed = 0
        buf_idx: list[int] = []
        buf_img: list[torch.Tensor] = []
        n = 0
        for t, frame in enumerate(frames):
            n = self._consumed = t + 1
            f = _check_frame(frame, t)
            if self._shape is None:
                self._shape = (int(f.shape[0]), int(f.shape[1]))
                self._proc = _processing_size(*self._shape, self.size)
                for i, given in self._masks.items():
                    if given.shape != self._shape:
                        raise ValueError(
                            f"mask for frame {i}: size {given.shape[1]}x{given.shape[0]} differs from the "
                            f"frames' {self._shape[1]}x{self._shape[0]}"
                        )
            elif tuple(f.shape[:2]) != self._shape:
                raise ValueError(
                    f"frame {t}: size {f.shape[1]}x{f.shape[0]} differs from the first frame's "
                    f"{self._shape[1]}x{self._shape[0]}"
                )
            if t < min(self._masks):  # a mask may still arrive for an earlier frame while streaming
                yield self._background(t, self._shape)
                continue
            buf_idx.append(t)
            buf_img.append(f)
            mask = self._masks.get(t)
            if mask is not None or len(buf_idx) == self.config.clip_length:
                m = self._prepare_mask(mask) if mask is not None else None
                probs = core.process_clip(buf_idx, self._prepare(buf_img), m)
                yield from self._emit(buf_idx, probs, core)
                buf_idx, buf_img = [], []
        if buf_idx:
            probs = core.process_clip(buf_idx, self._prepare(buf_img), None)
            yield from self._emit(buf_idx, probs, core)
        late = [i for i in self._masks if i >= n]
        if late:
            raise ValueError(f"mask given for frame {min(late)} but the video has only {n} frames")


def segment(
    model: PCVOS,
    frames: np.ndarray | torch.Tensor,
    masks: Mapping[int, np.ndarray],
    *,
    clip_length: int = 5,
    memory_every: int | None = None,
    pmm_segment: int | None = 5,
    refine: bool = True,
    top_k: int = 20,
    output: Output = "labels",
    size: int | None = None,
    max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES,
    device: str | torch.device | None = None,
    frame_batch: int | None = None,
    precision: Precision = "fp32",
    adapt: int = 0,
    adapt_seed: int = 0,
) -> np.ndarray:
    """Segment a whole video in one call.

    ``frames``: uint8 (T, H, W, 3) RGB (numpy or torch); ``masks``: {frame index: (H, W) uint8
    label map}. Returns (T, H, W) uint8 labels with the user's ids (``output="labels"``) or
    (1 + K, T, H, W) float32 probabilities, background first, objects by ascending id
    (``output="probs"``). ``adapt=N`` first fine-tunes a copy of the model for N steps on the
    annotated frames (:func:`pcvos.adapt`, seeded by ``adapt_seed``; ``model`` is not changed).
    See :class:`Segmenter` for the other arguments.
    """
    arr = frames if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or (arr.dtype != np.uint8 and arr.dtype != torch.uint8):
        raise ValueError(
            f"frames: expected a uint8 array of shape (T, H, W, 3), got dtype {arr.dtype} "
            f"and shape {tuple(arr.shape)}"
        )
    t, h, w = int(arr.shape[0]), int(arr.shape[1]), int(arr.shape[2])
    if t == 0:
        raise ValueError("frames: the video has no frames")
    if not masks:
        raise ValueError("masks: no mask given")
    seg = Segmenter(
        model,
        clip_length=clip_length,
        memory_every=memory_every,
        pmm_segment=pmm_segment,
        refine=refine,
        top_k=top_k,
        size=size,
        max_memory_frames=max_memory_frames,
        output=output,
        device=device,
        frame_batch=frame_batch,
        precision=precision,
    )
    for index, m in masks.items():
        if not 0 <= int(index) < t:
            raise ValueError(f"masks: frame index {index} out of range for a video of {t} frames")
        m_arr = np.asarray(m)
        if m_arr.shape != (h, w):
            raise ValueError(f"masks: mask for frame {index} has shape {m_arr.shape}, frames are {(h, w)}")
        seg.add_mask(int(index), m_arr)
    if adapt:
        # after the checks above, so bad input fails before any training
        seg.model = adapt_model(seg.model, arr, masks, adapt, seed=adapt_seed, size=size).eval()
    if output == "labels":
        out = np.zeros((t, h, w), np.uint8)
        for i, lab in seg.process(arr):
            out[i] = lab
        return out
    probs = np.zeros((1 + len(seg.object_ids), t, h, w), np.float32)
    for i, p in seg.process(arr):
        probs[:, i] = p
    return probs
