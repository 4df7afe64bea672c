"""Training losses: bootstrapped cross-entropy per frame and the clip-level Dice loss.

- :class:`BootstrappedCE` (STCN): cross-entropy over the K + 1 aggregated classes of one frame,
  averaged over all pixels of the batch before ``start_warm``; from then on only the hardest
  fraction p of the pixels (the largest per-pixel losses) is averaged, p decaying linearly from 1
  at ``start_warm`` to ``top_p`` (0.15) at ``end_warm`` and staying there. Optionally (off by
  default) each pixel's loss is first multiplied by a weight: ``1 + boundary_weight`` in the
  :func:`boundary_band` of the ground truth, 1 elsewhere, so edges and thin parts count more.
- :func:`clip_dice_loss` (PCVOS): for each object, 1 − Dice between its soft probabilities and
  its ground truth, with the sums taken over all frames and pixels of the clip at once, summed
  over the object's of a sample and averaged over the batch:
  ``Dice = (2 Σ p·m + s) / (Σ p + Σ m + s)`` with a smoothing constant s (1 by default).
- :func:`compute_losses` puts them together for a training forward's output:
  ``L_image = Σ_frames CE_frame``, ``L_clip = Σ_clips mean_batch Σ_k (1 − Dice_k)``,
  total = ``clip_weight · L_clip + image_weight · L_image`` (both weights 1: L_clip + L_image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BootstrappedCE",
    "boundary_band",
    "clip_dice_loss",
    "iou_per_object",
    "LossConfig",
    "compute_losses",
]


class BootstrappedCE:
    """Bootstrapped cross-entropy; ``p_at(it)`` is the fraction of pixels kept at iteration ``it``."""

    def __init__(self, start_warm: int = 20000, end_warm: int = 70000, top_p: float = 0.15) -> None:
        if end_warm < start_warm:
            raise ValueError("end_warm must be >= start_warm")
        self.start_warm = int(start_warm)
        self.end_warm = int(end_warm)
        self.top_p = float(top_p)

    def p_at(self, it: int) -> float:
        if it < self.start_warm:
            return 1.0
        if it >= self.end_warm or self.end_warm == self.start_warm:
            return self.top_p
        frac = (self.end_warm - it) / (self.end_warm - self.start_warm)
        return self.top_p + (1 - self.top_p) * frac

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, it: int, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """``logits`` (B, C, H, W), ``target`` (B, H, W) class indices -> (loss, p).

        ``weight`` (B, H, W) multiplies each pixel's loss *before* the hardest fraction p is chosen:
        a weighted pixel is then both more likely to be kept and counts more once kept. Weighting
        after the choice would leave the choice alone, and once p is down to 0.15 a thin part or an
        edge that is only moderately wrong would stay outside the kept pixels, weight or not. The
        mean stays over all (or k) pixels rather than over the weights' sum, so weights only add:
        with every pixel kept (p = 1), the unweighted pixels keep exactly the gradient they had,
        however much of the image the weighted ones cover.
        """
        p = self.p_at(it)
        if weight is None:  # the unweighted path, unchanged
            if p >= 1.0:
                return F.cross_entropy(logits, target), 1.0
            raw = F.cross_entropy(logits, target, reduction="none").flatten()
            k = max(1, int(raw.numel() * p))
            return raw.topk(k, sorted=False).values.mean(), p
        raw = (F.cross_entropy(logits, target, reduction="none") * weight).flatten()
        if p >= 1.0:
            return raw.mean(), 1.0
        k = max(1, int(raw.numel() * p))
        return raw.topk(k, sorted=False).values.mean(), p


def boundary_band(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Bool, the shape of ``labels`` (..., H, W) class indices: pixels whose (2r+1)² square
    neighbourhood holds more than one class, i.e. the ``radius`` pixels on either side of every
    edge between two classes (object and background, or two objects; any number of objects).

    The grey-level dilation (max) and erosion (min) of the label map differ exactly there; that
    is the same as dilating and eroding each class of the one-hot map, without its K + 1 channels.
    Max-pooling pads with -inf, so the image border is no edge.
    """
    if radius < 1:
        raise ValueError(f"boundary radius must be at least 1 pixel, got {radius}")
    h, w = labels.shape[-2:]
    x = labels.reshape(-1, 1, h, w).float()  # class indices are small whole numbers: exact in float32
    size = 2 * radius + 1
    dilated = F.max_pool2d(x, size, stride=1, padding=radius)
    eroded = -F.max_pool2d(-x, size, stride=1, padding=radius)
    return (dilated != eroded).reshape(labels.shape)


def clip_dice_loss(
    probs: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """Σ_k (1 − Dice) per sample, averaged over the batch.

    ``probs`` and ``gt`` (B, K, L, H, W): object probabilities and 0/1 ground truth over a clip of
    L frames; ``valid`` (B, K) marks the object slots in use (default: all).
    """
    dims = tuple(range(2, probs.ndim))
    inter = (probs * gt).sum(dims)
    total = probs.sum(dims) + gt.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)
    loss = 1 - dice
    if valid is not None:
        loss = loss * valid.to(loss.dtype)
    return loss.sum(1).mean()


@torch.no_grad()
def iou_per_object(pred_labels: torch.Tensor, gt_labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean IoU over the valid objects of hard label maps (B, ..., H, W); an object absent from
    both prediction and ground truth of a frame counts as IoU 1."""
    ious = []
    for k in range(valid.shape[1]):
        p, g = pred_labels == k + 1, gt_labels == k + 1
        dims = tuple(range(1, p.ndim))
        inter = (p & g).sum(dims).float()
        union = (p | g).sum(dims).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        ious.append(iou[valid[:, k]])
    allv = torch.cat(ious)
    return allv.mean() if allv.numel() else torch.tensor(float("nan"))


@dataclass
class LossConfig:
    start_warm: int = 20000
    end_warm: int = 70000
    top_p: float = 0.15
    image_weight: float = 1.0
    clip_weight: float = 1.0  # 0 turns the clip-level supervision off (ablation)
    dice_smooth: float = 1.0
    # per-pixel CE weight 1 + boundary_weight within boundary_radius pixels of a ground-truth edge
    # (boundary_band); 0 leaves the loss as it was. Aimed at thin parts and edges (low boundary F).
    boundary_weight: float = 0.0
    # 3 px on either side: the band stays at the edge (DAVIS' boundary F tolerance, 0.008 of the
    # diagonal, is about 8 px at 480p); thin parts up to 6 px wide lie wholly inside it
    boundary_radius: int = 3

    def __post_init__(self) -> None:
        if not self.boundary_weight >= 0:  # also NaN
            raise ValueError(f"loss.boundary_weight must be at least 0, got {self.boundary_weight}")
        if self.boundary_radius < 1:
            raise ValueError(f"loss.boundary_radius must be at least 1 pixel, got {self.boundary_radius}")


def compute_losses(
    out: dict[str, Any], batch: dict[str, Any], it: int, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """Losses for a training forward's output.

    ``out["logits"]`` (B, F, K+1, H, W) aggregated logits of the F predicted frames (frames 1..F of
    the sample), ``out["probs"]`` their softmax, ``out["clips"]`` a list of frame-index ranges (into
    the F predicted frames) forming each clip. ``batch["labels"]`` (B, 1+F, H, W), ``batch["masks"]``
    (B, 1+F, K, H, W), ``batch["valid"]`` (B, K).
    """
    ce = BootstrappedCE(cfg.start_warm, cfg.end_warm, cfg.top_p)
    logits = out["logits"].float()
    probs = out["probs"].float()
    labels = batch["labels"][:, 1:]
    masks = batch["masks"][:, 1:].float()
    valid = batch["valid"]
    nf = logits.shape[1]
    weight = None
    if cfg.boundary_weight > 0:
        # every frame at once; labels hold no void (the datasets map it to background) and unused
        # object slots have no pixels, so the band needs no mask of its own
        weight = 1.0 + cfg.boundary_weight * boundary_band(labels, cfg.boundary_radius).to(logits.dtype)
    image = logits.new_zeros(())
    p = 1.0
    for f in range(nf):
        frame_loss, p = ce(logits[:, f], labels[:, f], it, None if weight is None else weight[:, f])
        image = image + frame_loss
    clip = logits.new_zeros(())
    if cfg.clip_weight != 0:
        for frames in out["clips"]:
            sl = slice(frames[0], frames[-1] + 1)
            # (B, L, K, H, W) -> (B, K, L, H, W); object channels are 1..K of the K+1 classes
            pc = probs[:, sl, 1:].transpose(1, 2)
            gc = masks[:, sl].transpose(1, 2)
            clip = clip + clip_dice_loss(pc, gc, valid, cfg.dice_smooth)
    total = cfg.image_weight * image + cfg.clip_weight * clip
    with torch.no_grad():
        iou = iou_per_object(probs.argmax(2), labels, valid)
    return {
        "total": total,
        "image": image.detach(),
        "clip": clip.detach(),
        "iou": iou,
        "top_p": torch.tensor(p),
    }
