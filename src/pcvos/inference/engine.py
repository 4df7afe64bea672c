"""The per-clip inference engine.

It holds a network (it does not inherit from it) and the state of one video: the object slots,
the permanent memory and the frame waiting to become memory. The caller hands it clips of
preprocessed frames in processing order; it returns each clip's aggregated probabilities.

Direction is only an order: a backward run hands the clips over with decreasing frame numbers
(each clip's frames in that order too) and everything else — the memory schedule, PMM's
segments, ICR's temporal window — runs unchanged along the processing order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES, Eviction, MemoryStore
from pcvos.inference.objects import ObjectRegistry
from pcvos.model.memory import MemoryBlock
from pcvos.model.network import PCVOS, KeyFeatures, aggregate

Precision = Literal["fp32", "bf16", "fp16"]
# Longest clip accepted: a clip's features all stay in memory until it is decoded, so RAM grows
# with L (about 9 MB a frame for pcvos-lite at 240p, several times that at 480p). Twice the
# longest clip the paper evaluates (25); beyond it clips are not faster (README, Speed).
MAX_CLIP_LENGTH = 50
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_whole(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool or a float."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass
class InferenceConfig:
    """Schedule of the per-clip inference. The defaults are the released PCVOS settings at L = 5.

    ``memory_every=None`` means every ``clip_length`` frames; ``pmm_segment=None`` turns
    progressive memory matching off; ``clip_length=1, memory_every=5, pmm_segment=None,
    refine=False`` is STCN's per-frame inference.

    ``max_memory_frames`` bounds the memory on long videos (None: unbounded); beyond it the
    least-used memory frame that is neither annotated nor among the newest is dropped
    (``memory_eviction="oldest"``: the oldest such frame). The default keeps every memory frame
    of videos shorter than ``DEFAULT_MAX_MEMORY_FRAMES`` memory intervals: every DAVIS sequence at
    the default schedule (see ``memory_store``).
    """

    clip_length: int = 5
    memory_every: int | None = None
    pmm_segment: int | None = 5
    refine: bool = True
    top_k: int = 20
    max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES
    memory_eviction: Eviction = "usage"
    frame_batch: int | None = None  # frames per encoder/decoder call; None: automatic (see below)
    cpu_pixels_per_call: int = 480 * 864  # automatic CPU micro-batch: frames per call ~ this / (H*W)
    precision: Precision = "fp32"  # "bf16"/"fp16": the network's convolutions and matmuls autocast to it

    def validate(self, device_type: str | None = None) -> None:
        """Raise ValueError on a bad setting; with ``device_type``, also on one that device cannot run.

        Counts are whole numbers only (int or a numpy integer; not bool, not 2.5 or 5.0): a float
        clip length would otherwise be truncated in one place and compared as a float in another."""
        for name in ("clip_length", "top_k"):
            value = getattr(self, name)
            if not is_whole(value) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.clip_length > MAX_CLIP_LENGTH:
            raise ValueError(
                f"clip_length must be at most {MAX_CLIP_LENGTH} (a clip's features stay in memory "
                f"until it is decoded, so RAM grows with it), got {self.clip_length}"
            )
        if self.memory_eviction not in ("usage", "oldest"):
            raise ValueError(f"memory_eviction must be 'usage' or 'oldest', got {self.memory_eviction!r}")
        for name in ("memory_every", "pmm_segment", "max_memory_frames", "frame_batch"):
            value = getattr(self, name)
            if value is not None and (not is_whole(value) or value < 1):
                raise ValueError(f"{name} must be a positive whole number or None, got {value!r}")
        if self.precision not in ("fp32", *_AUTOCAST_DTYPES):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if device_type is not None and self.precision == "fp16" and device_type != "cuda":
            raise ValueError("fp16 precision needs a CUDA device; on the CPU use bf16")

    @property
    def memory_interval(self) -> int:
        return self.memory_every if self.memory_every is not None else self.clip_length


@dataclass
class _Candidate:
    """A frame that becomes memory once it is known not to be the last frame."""

    index: int
    image: torch.Tensor  # (1, 3, H, W) normalised, padded
    key: torch.Tensor  # (HW, C_k)
    f16: torch.Tensor  # (1, C16, h, w)
    probs: torch.Tensor  # (S, H, W) object probabilities


def _flat_keys(key: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C), the memory layout, in fp32 whatever the network computed in."""
    return key.permute(0, 2, 3, 1).reshape(-1, key.shape[1]).float()


class InferenceCore:
    """Per-clip inference over one video. Frames come in processing order: increasing frame
    numbers (forward) or decreasing ones (backward), never both in one engine."""

    def __init__(self, network: PCVOS, config: InferenceConfig | None = None) -> None:
        self.net = network
        self.config = config = config or InferenceConfig()
        self._device_type = next(network.parameters()).device.type
        config.validate(self._device_type)
        if config.refine and not network.has_refiner:
            raise ValueError(
                "this model has no intra-clip refinement (an STCN checkpoint?); use refine=False"
            )
        self.objects = ObjectRegistry()
        self.memory = MemoryStore(
            network.config.key_dim, network.config.value_dim, config.max_memory_frames, config.memory_eviction
        )
        self.last_memory_frame: int | None = None
        self._pending: _Candidate | None = None

    # -- stages ---------------------------------------------------------------------------------
    def _net_precision(self) -> contextlib.AbstractContextManager:
        """Autocast for the network's stages. The memory read stays in fp32 in any case: top-k
        selection over affinities of magnitude ~100 needs more than bf16's 8 mantissa bits."""
        dtype = _AUTOCAST_DTYPES.get(self.config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device_type, dtype=dtype)

    def _frame_step(self, length: int, pixels: int, device: torch.device) -> int:
        # A GPU wants the whole clip in one call. CPU convolutions slow down once a call's working
        # set outgrows the caches: batch about one 480p frame's worth of pixels per call.
        if self.config.frame_batch is not None:
            return self.config.frame_batch
        if device.type != "cpu":
            return length
        return max(1, min(length, self.config.cpu_pixels_per_call // pixels))

    def _encode_keys(
        self, images: torch.Tensor
    ) -> tuple[list[KeyFeatures], torch.Tensor, torch.Tensor | None]:
        """Key features in micro-batches, plus the clip's matching and local keys joined.

        The large decoder features (f4, f8) stay in their micro-batches: joining them would copy
        about a gigabyte per 25-frame 480p clip for nothing.
        """
        step = self._frame_step(images.shape[0], images.shape[-2] * images.shape[-1], images.device)
        with self._net_precision():
            parts = [
                self.net.encode_key(images[i : i + step], with_local=self.config.refine)
                for i in range(0, images.shape[0], step)
            ]
        key = torch.cat([p.key for p in parts]) if len(parts) > 1 else parts[0].key
        pieces = [p.local for p in parts if p.local is not None]  # every part's exactly with refine
        local = (torch.cat(pieces) if len(pieces) > 1 else pieces[0]) if pieces else None
        return parts, key, local

    def _add_memory(
        self,
        index: int,
        image: torch.Tensor,
        key: torch.Tensor,
        f16: torch.Tensor,
        probs: torch.Tensor,
        annotated: bool,
    ) -> torch.Tensor:
        with self._net_precision():
            values = self.net.encode_value(image, f16, probs)  # (S, C_v, h, w)
        values = values.permute(2, 3, 0, 1).reshape(key.shape[0], -1).float()  # (HW, S * C_v)
        self.memory.add(index, key, values, annotated)
        self.last_memory_frame = index
        return values

    def _commit_pending(self) -> None:
        c = self._pending
        if c is not None:
            self._add_memory(c.index, c.image, c.key, c.f16, c.probs, annotated=False)
            self._pending = None

    def _read_clip(self, key: torch.Tensor) -> torch.Tensor:
        """Memory read with PMM: clip keys (L, C_k, h, w) -> read-outs (S, L, C_v, h, w)."""
        cfg = self.config
        length, _, h, w = key.shape
        hw = h * w
        queries = _flat_keys(key)
        groups = self.objects.groups()
        seg = cfg.pmm_segment or length
        out = []
        temp_keys: list[torch.Tensor] = []
        temp_vals: list[torch.Tensor] = []
        for start in range(0, length, seg):
            stop = min(start + seg, length)
            temp = None
            if temp_keys:
                temp = MemoryBlock.from_keys(torch.cat(temp_keys), torch.cat(temp_vals))
            r = self.memory.read(queries[start * hw : stop * hw], groups, cfg.top_k, temp)  # (n*hw, S, C_v)
            out.append(r)
            if cfg.pmm_segment is not None and stop - start == seg and stop < length:
                # the segment's last frame joins a temporary memory read by the rest of the clip
                temp_keys.append(queries[(stop - 1) * hw : stop * hw])
                temp_vals.append(r[-hw:].reshape(hw, -1))
        r = torch.cat(out) if len(out) > 1 else out[0]
        s, cv = r.shape[1], r.shape[2]
        return r.view(length, h, w, s, cv).permute(3, 0, 4, 1, 2)

    def _decode(self, readout: torch.Tensor, parts: list[KeyFeatures]) -> torch.Tensor:
        """Object probabilities (S, L, H, W), decoded in the key encoder's micro-batches."""
        out = []
        start = 0
        for feats in parts:
            n = feats.key.shape[0]
            with self._net_precision():
                logits = self.net.decode(readout[:, start : start + n], feats)
            out.append(torch.sigmoid(logits.float()))
            start += n
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    # -- the clip step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def process_clip(
        self, indices: list[int], images: torch.Tensor, mask: tuple[torch.Tensor, list[int]] | None = None
    ) -> torch.Tensor:
        """Segment one clip.

        ``indices``: the clip's frame numbers in processing order; ``images`` (L, 3, H, W) normalised and
        padded; ``mask``: optional ``(onehot (n, H, W), ids)`` given for the clip's last frame.
        Returns aggregated probabilities (1 + slots, L, H, W), slot order (see ``objects``).
        """
        if mask is None and len(self.objects) == 0:
            raise ValueError("no object has been given yet: the first clip must end with a mask")
        self._commit_pending()
        parts, key, local = self._encode_keys(images)
        length = images.shape[0]
        if len(self.objects):
            readout = self._read_clip(key)
            if local is not None:  # config.refine
                with self._net_precision():
                    readout = self.net.refine(local, readout)
            probs = aggregate(self._decode(readout, parts), dim=0)  # (1 + S, L, H, W)
        else:
            probs = images.new_zeros(1, length, *images.shape[-2:])
            probs[0] = 1
        last = indices[-1]
        keys_last = _flat_keys(key[-1:])
        f16_last = parts[-1].f16[-1:]
        del parts  # the clip's decoder features are no longer needed
        if mask is not None:
            probs = self._merge_mask(probs, mask, last)
            self._add_memory(last, images[-1:], keys_last, f16_last, probs[1:, -1], annotated=True)
        elif (
            self.last_memory_frame is not None
            and abs(last - self.last_memory_frame) >= self.config.memory_interval
        ):  # either direction
            # copies, so the clip's tensors are freed while the candidate waits
            self._pending = _Candidate(
                last, images[-1:].clone(), keys_last, f16_last.clone(), probs[1:, -1].clone()
            )
        return probs

    @torch.inference_mode()
    def add_keyframe(
        self,
        index: int,
        image: torch.Tensor | None,
        mask: tuple[torch.Tensor | None, list[int]],
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Put an annotated frame into memory as it is, without predicting it.

        ``image`` (1, 3, H, W) normalised and padded; ``mask``: ``(onehot (n, H, W), ids)``, which
        may hold all-zero planes: an object absent from a keyframe is known to be absent there.
        The memory values are those ``process_clip`` gives a mask frame, so a run that starts
        with one keyframe computes what a run handed that mask in its first clip does.
        Returns the frame's memory ``(keys, values)``; handing them back as ``encoded`` to an
        engine whose objects were registered in the same order skips the encoders (``image``
        and the onehot are then not needed).
        """
        onehot, ids = mask
        slots = self.objects.add(ids, index)
        if encoded is not None:
            self.memory.add(index, encoded[0], encoded[1], annotated=True)
            self.last_memory_frame = index
            return encoded
        if image is None or onehot is None:
            raise ValueError("add_keyframe: an image and a onehot mask are needed without encoded")
        obj = onehot.new_zeros(len(self.objects), *onehot.shape[1:])
        obj[slots] = onehot.to(obj.dtype)
        probs = aggregate(obj, dim=0)
        parts, key, _ = self._encode_keys(image)
        keys = _flat_keys(key[-1:])
        return keys, self._add_memory(index, image, keys, parts[-1].f16[-1:], probs[1:], annotated=True)

    def pass_keyframe(self, index: int) -> None:
        """The run reached a frame already in memory as a keyframe: the memory schedule restarts
        there, as after a mask frame (the waiting candidate is no longer the last frame)."""
        self._commit_pending()
        self.last_memory_frame = index

    def _merge_mask(
        self, probs: torch.Tensor, mask: tuple[torch.Tensor, list[int]], index: int
    ) -> torch.Tensor:
        """Write the given masks into the last frame: given objects take their mask, others are
        zeroed inside it and keep their prediction elsewhere; then re-aggregate."""
        onehot, ids = mask
        slots = self.objects.add(ids, index)
        obj = probs[1:, -1]
        n = len(self.objects)
        if obj.shape[0] < n:
            obj = torch.cat([obj, obj.new_zeros(n - obj.shape[0], *obj.shape[1:])])
        inside = onehot.sum(0) > 0.5
        obj = obj.masked_fill(inside, 0)
        obj[slots] = onehot.to(obj.dtype)
        if probs.shape[0] < n + 1:
            probs = torch.cat([probs, probs.new_zeros(n + 1 - probs.shape[0], *probs.shape[1:])])
        probs[:, -1] = aggregate(obj, dim=0)
        return probs
