"""Where to review a propagated video: rank frames by how likely their masks are wrong.

No ground truth is available, so the ranking combines signals propagation produces anyway:

- ``uncertainty``: the decoder's own doubt. Per frame, the probability mass the aggregated
  prediction does not give its winning label, summed over pixels, per pixel of the predicted
  objects (a lost or half-lost object has a large doubtful area next to a small mask). Computed
  from each clip's probabilities as the run produces them (:func:`clip_uncertainty`), one batch
  per clip.
- ``jump``: how much the mask changes from the neighbouring frames (1 - IoU of the foreground
  labels with the previous and with the next frame, the larger). Objects move smoothly; a
  propagation that drifts or switches objects does not.
- ``area``: how far the foreground area has moved from the nearest keyframe's, on a log scale
  (an object that shrinks to nothing or leaks into the background).
- ``distance``: frames to the nearest keyframe, as a share of the video (errors accumulate away
  from the user's masks).

Each signal is turned into its rank within the video (0 = least suspicious, 1 = most), so their
scales need not agree, and the score is a weighted mean of the ranks (:data:`DEFAULT_WEIGHTS`,
chosen on the protocol's ``select`` split: ``docs/results/suggest.md``; by default doubt and
jump, equally weighted). :func:`pick_spread` then takes the best-scored frames, skipping frames
too close to one already taken, because one correction also fixes its neighbours when it is
propagated.

Forward/backward disagreement is not among the signals: a session run fills each frame from one
side only (it stops at the neighbouring keyframe), so two predictions of one frame only exist
after an extra pass, which this ranking avoids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

SIGNALS: tuple[str, ...] = ("uncertainty", "jump", "area", "distance")
# Weights of the signals' within-video ranks in the score: the best of the grid {0, 1, 2}^4 on
# the select split, by the mean J of the suggested frames (docs/results/suggest.md). Area drift
# and keyframe distance lowered it there, so they are off by default (callers may weigh them).
DEFAULT_WEIGHTS: dict[str, float] = {"uncertainty": 1.0, "jump": 1.0, "area": 0.0, "distance": 0.0}
# The jump and area signals are computed on label maps subsampled to about this longer side:
# they compare whole masks, for which a few thousand pixels are plenty.
SIGNAL_SIDE = 128
# Pixels added to both areas before the area ratio, as a share of the frame: an object of a few
# pixels that loses half of them is not a drift.
AREA_FLOOR = 1e-3
# Suppression radius of pick_spread, as a share of the video per pick: k picks on a T-frame
# video keep at least T / (SPREAD_DIVISOR * k) frames apart (a quarter of the even spacing).
SPREAD_DIVISOR = 4


def clip_uncertainty(probs: torch.Tensor) -> np.ndarray:
    """(1 + S, L, H, W) aggregated probabilities of one clip -> (L,) doubt per frame.

    The doubt of a frame is sum over pixels of (1 - the winning probability), divided by the
    pixels whose winner is an object plus ``AREA_FLOOR`` of the frame (see the module notes).
    """
    win, label = probs.float().max(dim=0)  # (L, H, W)
    doubt = (1.0 - win).flatten(1).sum(1)
    objects = (label > 0).flatten(1).sum(1).float()
    floor = AREA_FLOOR * label[0].numel()
    return (doubt / (objects + floor)).cpu().numpy().astype(np.float64)


def subsample_labels(labels: np.ndarray) -> np.ndarray:
    """A view of ``labels`` (..., H, W) with its longer side subsampled to about ``SIGNAL_SIDE``."""
    step = max(1, int(np.ceil(max(labels.shape[-2:]) / SIGNAL_SIDE)))
    return labels[..., ::step, ::step]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Within-video rank in [0, 1] (ties share their mean rank); constant input gives 0.5."""
    n = len(values)
    if n <= 1 or np.all(values == values[0]):
        return np.full(n, 0.5)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    # ties: the mean rank of the tied group, so equal values score equally
    uniq, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    return (sums / counts)[inverse] / (n - 1)


def frame_signals(
    labels: np.ndarray, keyframes: Sequence[int], uncertainty: np.ndarray
) -> dict[str, np.ndarray]:
    """Raw signals for every frame of ``labels`` (T, H, W) uint8 (the whole video, every frame
    segmented). ``keyframes``: their indices; ``uncertainty`` (T,): :func:`clip_uncertainty`'s
    value per frame, NaN where unknown (the frame's labels were restored, not propagated)."""
    small = subsample_labels(np.asarray(labels))
    t = small.shape[0]
    fg = small > 0
    area = fg.reshape(t, -1).sum(1).astype(np.float64)
    # IoU of consecutive frames' foreground, a pixel counting as shared only if its label agrees
    same = (small[1:] == small[:-1]) & fg[1:]
    union = (fg[1:] | fg[:-1]).reshape(t - 1, -1).sum(1)
    inter = same.reshape(t - 1, -1).sum(1)
    step_jump = np.where(union > 0, 1.0 - inter / np.maximum(union, 1), 0.0)
    jump = np.zeros(t)
    if t > 1:
        jump[1:] = step_jump
        jump[:-1] = np.maximum(jump[:-1], step_jump)
    frames = np.arange(t)
    keys = np.asarray(sorted(keyframes), dtype=np.int64)
    if len(keys):
        nearest = keys[np.abs(frames[:, None] - keys[None, :]).argmin(1)]
        distance = np.abs(frames - nearest) / max(t - 1, 1)
        floor = AREA_FLOOR * small[0].size
        area_drift = np.abs(np.log((area + floor) / (area[nearest] + floor)))
    else:
        distance = np.zeros(t)
        area_drift = np.zeros(t)
    unc = np.asarray(uncertainty, dtype=np.float64)
    if np.isnan(unc).all():
        unc = np.zeros(t)
    else:  # unknown doubt counts as typical for the video
        unc = np.where(np.isnan(unc), np.nanmedian(unc), unc)
    return {"uncertainty": unc, "jump": jump, "area": area_drift, "distance": distance}


def score_frames(
    signals: Mapping[str, np.ndarray], candidates: np.ndarray, weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """Score of each candidate frame (indices into the signals), higher = more likely wrong: the
    weighted mean of each signal's rank among the candidates."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(SIGNALS)
    if unknown:
        raise ValueError(f"weights: unknown signal {min(unknown)!r}; choose from {', '.join(SIGNALS)}")
    total = sum(float(w) for w in weights.values())
    if total <= 0 or any(float(w) < 0 for w in weights.values()):
        raise ValueError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
    score = np.zeros(len(candidates))
    for name, w in weights.items():
        if w:
            score += float(w) * _ranks(np.asarray(signals[name])[candidates])
    return score / total


def pick_spread(candidates: np.ndarray, scores: np.ndarray, k: int, num_frames: int) -> list[int]:
    """The ``k`` best-scored candidates, each at least ``num_frames / (SPREAD_DIVISOR * k)``
    frames from those taken before it; where the spacing leaves fewer than ``k``, the best of
    the rest fill up (so ``min(k, len(candidates))`` frames come back), best first."""
    order = [int(candidates[i]) for i in np.argsort(-scores, kind="stable")]
    radius = max(1, round(num_frames / (SPREAD_DIVISOR * max(k, 1))))
    picks: list[int] = []
    for frame in order:
        if len(picks) == k:
            break
        if all(abs(frame - p) >= radius for p in picks):
            picks.append(frame)
    for frame in order:
        if len(picks) >= k:
            break
        if frame not in picks:
            picks.append(frame)
    return picks


def suggest_frames(
    labels: np.ndarray,
    keyframes: Sequence[int],
    uncertainty: np.ndarray,
    k: int,
    candidates: Sequence[int] | None = None,
    weights: Mapping[str, float] | None = None,
) -> list[int]:
    """The ``k`` frames of a propagated video most likely wrong, best first (see the module notes).

    ``labels`` (T, H, W): every frame's labels; ``candidates``: the frames that may be picked
    (default: all but the keyframes). Fewer than ``k`` come back if there are fewer candidates.
    """
    keys = {int(i) for i in keyframes}
    if candidates is None:
        cand = np.array([i for i in range(len(labels)) if i not in keys], dtype=np.int64)
    else:
        cand = np.array(sorted({int(i) for i in candidates} - keys), dtype=np.int64)
    if k < 1 or not len(cand):
        return []
    signals = frame_signals(labels, sorted(keys), uncertainty)
    return pick_spread(cand, score_frames(signals, cand, weights), k, len(labels))
