"""Clicks (and a previous mask) -> mask with the click network :class:`pcvos.model.clicknet.ClickNet`.

The network sees a square crop resized to ``side`` x ``side``: the whole frame for a first click
without a previous mask or box, the box with some context when a box is given, otherwise the
bounding box of the previous mask and the clicks with ``margin`` context on each side (RITM's
zoom-in). Its logits are upsampled to the crop, optionally snapped to the full-resolution image's
edges with the guided filter of :mod:`pcvos.inference.mask_ops`, and pasted back into the frame.

The training script (scripts/train_clicknet.py) draws its guidance maps with
:func:`guidance_maps`, so training and inference encode clicks the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pcvos.inference.mask_ops import components_with, guided_filter

__all__ = [
    "CLICK_RADIUS",
    "ClickNetParams",
    "ClickNetModel",
    "guidance_maps",
    "merge_local",
    "square_region",
]

#: the ImageNet normalisation the encoder's weights expect (as U²-Net-p's in pcvos.inference.prompts)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

#: click disk radius in the network's input pixels (at the training side, 224)
CLICK_RADIUS = 3


def guidance_maps(
    previous: np.ndarray | None,
    points: Sequence[tuple[float, float]] | np.ndarray,
    positive: Sequence[bool] | np.ndarray,
    side_hw: tuple[int, int],
    radius: int = CLICK_RADIUS,
) -> np.ndarray:
    """(3, H, W) float32: previous mask (0/1; zeros if None), positive-click disks, negative-click disks.

    ``points`` are (x, y) in the network's input pixels.
    """
    h, w = side_hw
    out = np.zeros((3, h, w), dtype=np.float32)
    if previous is not None:
        out[0] = previous.astype(np.float32)
    for (x, y), pos in zip(np.asarray(points, dtype=np.float64).reshape(-1, 2), positive, strict=True):
        cx, cy = int(round(float(x))), int(round(float(y)))
        cv2.circle(out[1 if pos else 2], (cx, cy), radius, 1.0, thickness=-1)
    return out


def square_region(
    x0: float, y0: float, x1: float, y1: float, h: int, w: int, margin: float, min_side: int
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels: the box with ``margin`` x its side on each side, at least
    ``min_side`` wide and high (grown around its centre), clipped to the (h, w) frame."""
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rw = max(bw * (1 + 2 * margin), min(min_side, w))
    rh = max(bh * (1 + 2 * margin), min(min_side, h))
    ax0 = int(np.floor(max(0.0, cx - rw / 2)))
    ay0 = int(np.floor(max(0.0, cy - rh / 2)))
    ax1 = int(np.ceil(min(float(w), cx + rw / 2)))
    ay1 = int(np.ceil(min(float(h), cy + rh / 2)))
    return ax0, ay0, max(ax1, ax0 + 2), max(ay1, ay0 + 2)


@dataclass(frozen=True)
class ClickNetParams:
    """How :class:`ClickNetModel` crops, and how its answer is upsampled."""

    #: the network's input side (trained at 224; 256 chosen on select, docs/results/clicknet.md)
    side: int = 256
    #: context around the previous mask and the clicks (or the box), as a fraction of its side
    margin: float = 0.4
    #: the crop is at least this many pixels wide and high (small objects keep some context)
    min_side: int = 64
    #: guided-filter snapping of the upsampled probabilities (radius in full-resolution pixels; 0: off)
    guided_radius: int = 0
    guided_eps: float = 1e-3
    #: keep only the connected parts holding a positive click
    keep_clicked: bool = False
    #: probability threshold
    threshold: float = 0.5
    #: how a correction meets the previous mask: "replace" (the network's answer inside its crop) or
    #: "local" (only the changed part that holds the newest click flips, so detail the low-resolution
    #: answer would blur elsewhere is kept; FocalClick's progressive merge)
    merge: str = "replace"
    #: after the answer, a second one on a square around the newest click of this fraction of the
    #: crop's side (at least min_side), pasted over it (0: off)
    focus: float = 0.0

    def __post_init__(self) -> None:
        if self.side < 32 or self.side % 16:
            raise ValueError(f"side must be a multiple of 16, at least 32, got {self.side}")
        if self.margin < 0 or self.min_side < 2 or self.guided_radius < 0:
            raise ValueError("margin and guided_radius must be at least 0, min_side at least 2")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.focus <= 1.0:
            raise ValueError(f"focus must be between 0 and 1, got {self.focus}")
        if self.merge not in ("replace", "local"):
            raise ValueError(f"merge must be 'replace' or 'local', got {self.merge!r}")


class ClickNetModel:
    """The click network on the CPU: ``model.predict(image, points, positive, previous, box)``.

    ``weights`` is a state_dict file of :class:`pcvos.model.clicknet.ClickNet` (fp16 or fp32).
    """

    def __init__(self, weights: str | Path, threads: int | None = None) -> None:
        import torch

        from pcvos.model.clicknet import ClickNet

        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        net = ClickNet()
        net.load_state_dict({k: v.float() for k, v in state.items()})
        self.net = net.eval()
        self.threads = threads
        self._lock = threading.Lock()

    def logits(self, crop: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        """(S, S) logits for an (S, S, 3) uint8 crop and its (3, S, S) guidance."""
        import torch

        x = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
        gt = torch.from_numpy(guidance[None])
        with self._lock, torch.inference_mode():
            before = torch.get_num_threads()
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            try:
                out = self.net(xt, gt)[0, 0].numpy()
            finally:
                torch.set_num_threads(before)
        return out

    def _answer(
        self,
        image: np.ndarray,
        region: tuple[int, int, int, int],
        prev: np.ndarray | None,
        pts: np.ndarray,
        pos: np.ndarray,
        p: ClickNetParams,
    ) -> np.ndarray:
        """Bool mask of ``region`` (x0, y0, x1, y1): the network's answer on it, resized to ``p.side``."""
        x0, y0, x1, y1 = region
        crop = image[y0:y1, x0:x1]
        ch, cw = crop.shape[:2]
        s = p.side
        small = cv2.resize(
            crop, (s, s), interpolation=cv2.INTER_AREA if max(ch, cw) > s else cv2.INTER_LINEAR
        )
        prev_s = None
        if prev is not None:
            prev_s = (
                cv2.resize(prev[y0:y1, x0:x1].astype(np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
                >= 0.5
            )
        sp = np.stack([(pts[:, 0] - x0 + 0.5) * s / cw - 0.5, (pts[:, 1] - y0 + 0.5) * s / ch - 0.5], axis=1)
        guide = guidance_maps(prev_s, sp, pos, (s, s))
        logit = self.logits(small, guide)
        prob = 1.0 / (1.0 + np.exp(-cv2.resize(logit, (cw, ch), interpolation=cv2.INTER_LINEAR)))
        if p.guided_radius > 0:
            prob = guided_filter(crop, prob.astype(np.float32), p.guided_radius, p.guided_eps)
        fg = prob >= p.threshold
        if p.keep_clicked and fg.any():
            seeds = [
                (int(y) - y0, int(x) - x0)
                for (x, y), q in zip(pts, pos, strict=True)
                if q and x0 <= x < x1 and y0 <= y < y1
            ]
            fg = components_with(fg, seeds)
        return fg

    def predict(
        self,
        image: np.ndarray,
        points: np.ndarray,
        positive: np.ndarray,
        previous: np.ndarray | None = None,
        box: tuple[float, float, float, float] | None = None,
        params: ClickNetParams | None = None,
    ) -> np.ndarray:
        """Bool (H, W) mask from already-checked prompts (see :func:`pcvos.mask_from_prompts`)."""
        p = params or ClickNetParams()
        h, w = image.shape[:2]
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        pos = np.asarray(positive, dtype=bool).reshape(-1)
        prev = previous if previous is not None and previous.any() else None
        if box is not None:
            region = square_region(*box, h, w, p.margin, p.min_side)
        elif prev is not None:
            ys, xs = np.nonzero(prev)
            xs = np.concatenate([xs, pts[:, 0]])
            ys = np.concatenate([ys, pts[:, 1]])
            region = square_region(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, h, w, p.margin, p.min_side)
        else:
            region = (0, 0, w, h)
        x0, y0, x1, y1 = region
        fg = self._answer(image, region, prev, pts, pos, p)
        out = np.zeros((h, w), dtype=bool)
        out[y0:y1, x0:x1] = fg
        if box is None and prev is not None and p.focus > 0 and len(pts):
            # a second look around the newest click at a finer scale (FocalClick's focus crop)
            cx, cy = pts[-1]
            side = p.focus * max(x1 - x0, y1 - y0)
            fx0, fy0, fx1, fy1 = square_region(cx, cy, cx, cy, h, w, 0.0, max(p.min_side, int(side)))
            out[fy0:fy1, fx0:fx1] = self._answer(image, (fx0, fy0, fx1, fy1), out, pts, pos, p)
        if box is not None:
            bi = np.zeros((h, w), dtype=bool)
            bi[int(np.floor(box[1])) : int(np.ceil(box[3])), int(np.floor(box[0])) : int(np.ceil(box[2]))] = (
                True
            )
            out &= bi
        elif prev is not None and p.merge == "local" and len(pts):
            out = merge_local(prev, out, pts[-1])
        return out


def merge_local(previous: np.ndarray, answer: np.ndarray, click: Sequence[float]) -> np.ndarray:
    """``previous`` with only the connected part of its difference to ``answer`` that holds ``click``
    (x, y) flipped; ``answer`` itself when the answer did not change the clicked pixel."""
    h, w = previous.shape
    cx = min(max(int(click[0]), 0), w - 1)
    cy = min(max(int(click[1]), 0), h - 1)
    previous = previous.astype(bool)
    diff = previous != answer
    if not diff[cy, cx]:
        return answer
    _, comp = cv2.connectedComponents(diff.astype(np.uint8), connectivity=8)
    return previous ^ (comp == comp[cy, cx])
