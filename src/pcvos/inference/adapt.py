"""Test-time adaptation: fine-tune a copy of the network on one video's annotated frames.

Before propagating, :func:`adapt` trains a deep copy of the model for a few steps on clips
synthesised from the video's own keyframes, with the stage-1 (static-image) machinery of
training: each sample is ``1 + 2 * clip_len`` views of one annotated frame, made by
:class:`~pcvos.data.augment.StaticAugment` (random affine and thin-plate-spline warps, crops,
colour jitter); the training forward is :class:`~pcvos.train.wrapper.PerClipTrainer` (a reference
view, then clips read from memory, BatchNorm statistics frozen as in training) and the loss is
training's cross-entropy plus clip-level Dice (:func:`~pcvos.train.losses.compute_losses`).

The model passed in (and the file it came from) is never changed. The result is a pure function
of the model, the keyframes, ``steps`` and ``seed`` (same device and thread count): every sample
is drawn from numpy generators keyed by ``(seed, step)`` and each step runs under its own
seeded torch RNG, so torch's global RNG state is left as it was. The learning rate is constant,
so the model after N steps of a longer run is the model ``adapt(..., steps=N)`` returns
(:class:`Adaptation` exposes that stepwise form to the benchmark).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm import tqdm

from pcvos.data.augment import StaticAugment
from pcvos.data.palette import VOID_LABEL
from pcvos.data.train_datasets import StaticDataset, TrainBatchSampler
from pcvos.inference.objects import ObjectRegistry
from pcvos.inference.sizing import _processing_size
from pcvos.model.network import PCVOS
from pcvos.train.losses import LossConfig, compute_losses
from pcvos.train.wrapper import PerClipTrainer

__all__ = [
    "adapt",
    "Adaptation",
    "read_keyframes",
    "default_crop",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "DEFAULT_CLIP_LEN",
    "CROP_FRACTION",
]

# Steps of `pcvos segment --adapt` without a number: chosen on the protocol's select split
# (docs/results/adapt.md).
DEFAULT_STEPS = 25
# Adam's learning rate: the rate pcvos-lite was trained with (configs/lite.yaml); chosen on the
# protocol's select split (docs/results/adapt.md).
DEFAULT_LR = 1e-4
# Frames per clip of a synthetic sample (a reference view + 2 clips): 1 is stage 1's three views.
DEFAULT_CLIP_LEN = 1
NUM_CLIPS = 2
# Square training crops of this fraction of the processing size's shorter side, a multiple of
# 16: both training recipes crop that way (192 of 240 for pcvos-lite, 384 of 480 for the paper).
CROP_FRACTION = 0.8
_CROP_MULTIPLE = 16
# An object needs this many pixels in a sample's reference view (training's default).
MIN_PIXELS = 20
# Objects per sample: every object of a keyframe up to this (cost grows with it).
MAX_OBJECTS = 4
# Bootstrapping never starts: a few hundred steps at most, all on plain cross-entropy.
_LOSS = LossConfig(start_warm=sys.maxsize, end_warm=sys.maxsize)
# When a draw finds no object (a crop missed a small one 20 times), redraw under a new key this often.
_REDRAWS = 8
_REDRAW_OFFSET = 1 << 40


class _Keyframes:
    """The annotated frames at the processing size, as a static image/mask source."""

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], names: list[str]) -> None:
        self.images, self.labels, self.names = images, labels, names

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.names[i]

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.labels[i]


def _keyframes(frames: Any, masks: Mapping[int, np.ndarray], size: int | None) -> tuple[_Keyframes, int]:
    """Annotated frames and their masks (user ids -> 1..K) resized to the processing size."""
    if not masks:
        raise ValueError("masks: no mask given")
    ids = sorted(
        {int(i) for m in masks.values() for i in np.unique(np.asarray(m)) if i not in (0, VOID_LABEL)}
    )
    if not ids:
        raise ValueError("masks: contain no object (all background)")
    registry = ObjectRegistry()
    registry.add(ids, 0)
    # contiguous channels 1..K (the training data read 255 as void); void pixels (255), as for
    # pcvos.segment, are background
    lut = registry.channel_lut()
    images, labels, names = [], [], []
    for index in sorted(masks):
        frame = frames[index]
        img = np.asarray(frame.cpu() if isinstance(frame, torch.Tensor) else frame)
        given = masks[index]
        lab = np.asarray(given.cpu() if isinstance(given, torch.Tensor) else given)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(
                f"frame {index}: expected a uint8 RGB array of shape (H, W, 3), got dtype "
                f"{img.dtype} and shape {img.shape}"
            )
        if lab.shape != img.shape[:2]:
            raise ValueError(
                f"mask for frame {index}: shape {lab.shape} differs from the frame's {img.shape[:2]}"
            )
        h, w = _processing_size(img.shape[0], img.shape[1], size)
        if (h, w) != img.shape[:2]:
            img = cv2.resize(
                img, (w, h), interpolation=cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR
            )
            lab = cv2.resize(lab.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        images.append(np.ascontiguousarray(img))
        labels.append(lut[lab.astype(np.uint8)])
        names.append(f"frame {index}")
    return _Keyframes(images, labels, names), len(ids)


def read_keyframes(source: Any, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """The frames ``indices`` of a frame source (indexable, or read in order up to the last one)."""
    want = sorted({int(i) for i in indices})
    if hasattr(source, "__getitem__"):
        return {i: source[i] for i in want}
    found: dict[int, np.ndarray] = {}
    count = 0
    for i, frame in enumerate(source):
        count = i + 1
        if i in want:
            found[i] = frame
            if len(found) == len(want):
                break
    if len(found) < len(want):
        missing = min(set(want) - set(found))
        raise ValueError(f"mask given for frame {missing} but the video has only {count} frames")
    return found


def default_crop(height: int, width: int) -> int:
    """The square crop side for frames processed at ``height`` x ``width`` (:data:`CROP_FRACTION`)."""
    return max(_CROP_MULTIPLE, int(CROP_FRACTION * min(height, width)) // _CROP_MULTIPLE * _CROP_MULTIPLE)


class Adaptation:
    """One adaptation run, step by step: :meth:`step` trains once, :meth:`result` gives the model.

    :func:`adapt` is ``Adaptation(...)`` followed by ``steps`` calls of :meth:`step`; the
    benchmark uses this form to score the same run after several numbers of steps.
    """

    def __init__(
        self,
        model: PCVOS,
        frames: Any,
        masks: Mapping[int, np.ndarray],
        *,
        seed: int = 0,
        size: int | None = None,
        lr: float = DEFAULT_LR,
        clip_len: int = DEFAULT_CLIP_LEN,
        crop: int | None = None,
        batch_size: int = 1,
    ) -> None:
        if lr <= 0 or clip_len < 1 or batch_size < 1:
            raise ValueError(
                f"adaptation needs lr > 0, clip_len >= 1, batch_size >= 1 "
                f"(got {lr}, {clip_len}, {batch_size})"
            )
        source, num_objects = _keyframes(frames, masks, size)
        h, w = source.images[0].shape[:2]
        side = int(crop) if crop is not None else default_crop(h, w)
        if side < _CROP_MULTIPLE or side % _CROP_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {_CROP_MULTIPLE}, got {side}")
        augment = StaticAugment(
            crop=(side, side), resize_short=None
        )  # frames are at the processing size already
        self.dataset = StaticDataset(
            source,
            (side, side),
            1 + NUM_CLIPS * clip_len,
            max_objects=min(num_objects, MAX_OBJECTS),
            min_pixels=MIN_PIXELS,
            augment=augment,
        )
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        # sampler positions depend only on (seed, step): total_iterations only sets "progress",
        # which static samples ignore
        self.sampler = TrainBatchSampler(len(self.dataset), self.batch_size, 1, self.seed)
        self.device = next(model.parameters()).device
        self.net = copy.deepcopy(model)
        self._requires_grad = [p.requires_grad for p in model.parameters()]
        self.trainer = PerClipTrainer(self.net, clip_len=clip_len, freeze_bn=True)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=float(lr))
        self.steps_done = 0

    def _sample(self, key: tuple[int, int, int, float]) -> dict[str, Any]:
        index, seed, position, progress = key
        for redraw in range(_REDRAWS):
            try:
                return self.dataset[(index, seed, position + redraw * _REDRAW_OFFSET, progress)]
            except RuntimeError:
                continue  # no object survived the crops of that draw
        raise ValueError(
            "test-time adaptation: no object is visible in the synthesised views of the "
            "annotated frames (objects too small at this processing size?)"
        )

    def _rng_devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    def step(self) -> dict[str, float]:
        """One optimiser step; returns its losses."""
        batch = default_collate([self._sample(k) for k in self.sampler.batch(self.steps_done)])
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        for p in self.net.parameters():
            p.requires_grad_(True)  # result() may have restored the input model's flags
        with torch.random.fork_rng(devices=self._rng_devices()), torch.enable_grad():
            # nothing in the forward is meant to draw from torch's RNG; seeding makes sure of it
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.steps_done]).generate_state(1)[0]))
            self.trainer.train()
            out = self.trainer(batch["frames"], batch["masks"], batch["valid"])
            losses = compute_losses(out, batch, self.steps_done, _LOSS)
            self.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.optimizer.step()
        self.steps_done += 1
        self.net.eval()
        return {k: float(v.detach()) for k, v in losses.items()}

    def result(self) -> PCVOS:
        """The adapted network, in eval mode with the input model's ``requires_grad`` flags.

        It is the object this run trains: a later :meth:`step` changes it.
        """
        self.net.eval()
        for p, flag in zip(self.net.parameters(), self._requires_grad, strict=True):
            p.grad = None
            p.requires_grad_(flag)
        return self.net


def adapt(
    model: PCVOS,
    frames: Any,
    masks: Mapping[int, np.ndarray],
    steps: int,
    *,
    seed: int = 0,
    size: int | None = None,
    lr: float = DEFAULT_LR,
    clip_len: int = DEFAULT_CLIP_LEN,
    crop: int | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> PCVOS:
    """A copy of ``model`` fine-tuned for ``steps`` steps on the video's annotated frames.

    ``frames``: the video as a uint8 (T, H, W, 3) array, or any mapping / sequence indexable by
    the annotated frame numbers; ``masks``: {frame index: (H, W) label map}, as for
    :func:`pcvos.segment`. ``size`` is the processing shorter side the copy will run at (None:
    the input resolution): training views are cropped from the frames at that size, squares of
    :data:`CROP_FRACTION` of it. ``seed`` fixes the synthesised clips; the same seed gives
    bitwise the same weights on the same device and thread count. ``steps=0`` returns an
    unchanged copy. ``progress`` shows a tqdm bar.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    run = Adaptation(
        model, frames, masks, seed=seed, size=size, lr=lr, clip_len=clip_len, crop=crop, batch_size=batch_size
    )
    with tqdm(total=int(steps), desc="adapting", unit="step", disable=not progress, leave=False) as bar:
        for _ in range(int(steps)):
            losses = run.step()
            bar.set_postfix(loss=f"{losses['total']:.3f}", refresh=False)
            bar.update(1)
    return run.result()
