"""DAVIS region (J) and boundary (F) measures and their per-sequence statistics.

The definitions follow the official ``davis2017-evaluation`` toolkit
(``davis2017/metrics.py`` and ``davis2017/utils.py``) number for number:

* **J** (Jaccard / region similarity) of one frame is ``|A ∩ B| / |A ∪ B|`` counted over the
  pixels that are not void; when the union is empty the value is ``1``.
* **F** (boundary F-measure): both masks (void pixels removed) are turned into one-pixel-wide
  boundary maps with :func:`seg2bmap`; a boundary pixel of one map is *matched* when a
  boundary pixel of the other map lies within a disk of radius
  ``bound_pix = ceil(bound_th * ||(H, W)||)`` (``bound_th = 0.008``, so 8 px at 480p),
  computed with ``cv2.dilate`` and the same disk footprint as ``skimage.morphology.disk``.
  Precision and recall are the matched fractions, ``F = 2PR / (P + R)``, with the toolkit's
  special cases: no boundary in the prediction but some in the ground truth -> ``P=1, R=0``;
  the converse -> ``P=0, R=1``; neither -> ``P=R=1``; ``P + R = 0`` -> ``F = 0``.
* :func:`db_statistics` turns per-frame values into mean, recall (fraction of frames with
  value ``> 0.5``) and decay (mean of the first minus the last of four overlapping temporal
  bins).

The implementation is our own and faster than the toolkit's: IoU is vectorised over frames,
and boundary maps and dilations are computed only on a window around the masks
(:func:`crop_box`), which gives exactly the same counts.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import TypeAlias

import cv2
import numpy as np

__all__ = [
    "BOUND_TH",
    "disk",
    "bound_pixels",
    "seg2bmap",
    "crop_box",
    "db_eval_iou",
    "f_measure",
    "db_eval_boundary",
    "db_statistics",
]

#: Boundary tolerance of the DAVIS toolkit, as a fraction of the image diagonal.
BOUND_TH: float = 0.008

ArrayOrFloat: TypeAlias = np.ndarray | float


@lru_cache(maxsize=32)
def _disk_cached(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    fp = (xx * xx + yy * yy <= radius * radius).astype(np.uint8)
    fp.setflags(write=False)
    return fp


def disk(radius: int) -> np.ndarray:
    """Disk footprint of ``radius`` (``uint8``, shape ``(2r+1, 2r+1)``).

    Identical to ``skimage.morphology.disk(radius)``: a pixel belongs to the disk when its
    Euclidean distance to the centre is ``<= radius``.
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"disk radius must be >= 0, got {radius}")
    return _disk_cached(radius)


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Dilation radius used by the F measure for an image of ``shape = (H, W)``.

    ``bound_th`` values ``>= 1`` are taken as a radius in pixels (as in the toolkit); smaller
    values are a fraction of the image diagonal, rounded up.
    """
    if bound_th >= 1:
        if float(bound_th) != int(bound_th):
            raise ValueError(f"a bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}")
        return int(bound_th)
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm(shape[-2:])))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (or of a stack ``(..., H, W)`` of masks).

    A pixel is a boundary pixel when its value differs from its right (east), bottom (south)
    or bottom-right (south-east) neighbour, where pixels outside the image count as
    background. As in the toolkit (after D. Martin's ``seg2bmap``) the last row only compares
    with the east neighbour, the last column only with the south neighbour, and the
    bottom-right pixel is never a boundary pixel. Any non-zero value is foreground.

    Only the toolkit's default (``width``/``height`` equal to the mask size) is supported.
    """
    s = np.asarray(seg).astype(bool, copy=False)
    if s.ndim < 2:
        raise ValueError(f"seg2bmap needs at least a 2-D mask, got shape {s.shape}")
    b = np.zeros(s.shape, dtype=bool)
    # interior: compare with E, S and SE neighbours
    c = s[..., :-1, :-1]
    b[..., :-1, :-1] = (c != s[..., :-1, 1:]) | (c != s[..., 1:, :-1]) | (c != s[..., 1:, 1:])
    # last row (except the corner): only the east neighbour
    b[..., -1, :-1] = s[..., -1, :-1] != s[..., -1, 1:]
    # last column (except the corner): only the south neighbour
    b[..., :-1, -1] = s[..., :-1, -1] != s[..., 1:, -1]
    # bottom-right corner stays False
    return b


def _as_bool(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(bool, copy=False)


def db_eval_iou(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
) -> ArrayOrFloat:
    """Region similarity J (Jaccard index) of binary masks.

    Args:
        annotation: ground-truth mask(s), ``(H, W)`` or a stack ``(T, H, W)``; non-zero is
            foreground.
        segmentation: predicted mask(s), same shape.
        void_pixels: optional mask of pixels to ignore, same shape.

    Returns:
        A float for a single frame, otherwise a ``float64`` array of shape ``(T,)``
        (or the leading shape of the inputs). A frame whose (non-void) union is empty
        gets ``1.0``.
    """
    annotation = _as_bool(annotation)
    segmentation = _as_bool(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} shapes differ")
    inter = annotation & segmentation
    union = annotation | segmentation
    if void_pixels is not None:
        void = _as_bool(void_pixels)
        if void.shape != annotation.shape:
            raise ValueError(f"annotation {annotation.shape} and void {void.shape} shapes differ")
        keep = ~void
        inter &= keep
        union &= keep
    n_inter = np.count_nonzero(inter, axis=(-2, -1))
    n_union = np.count_nonzero(union, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(n_union == 0, 1.0, n_inter / np.maximum(n_union, 1))
    j = np.asarray(j, dtype=np.float64)
    if j.ndim == 0:
        return float(j)
    return j


def crop_box(nonzero: np.ndarray) -> tuple[slice, slice] | None:
    """Window of a 2-D frame that holds every boundary pixel of every mask inside ``nonzero``.

    ``nonzero`` must cover all foreground pixels of the masks of interest. The window is the
    bounding box of ``nonzero`` grown by one pixel on every side (clipped to the image): the
    extra top/left row/column holds the boundary pixels that :func:`seg2bmap` puts just
    before a mask, and the extra bottom/right row/column (all background) makes the
    last-row / last-column rules of :func:`seg2bmap` inside the window agree with those of
    the full frame. Outside the window no pixel is a boundary pixel, and the dilations used
    by the F measure only matter on boundary pixels, so J and F computed on the window are
    exactly those of the full frame. Returns ``None`` when ``nonzero`` is empty.
    """
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(nonzero).view(np.uint8))
    if w == 0 or h == 0:
        return None
    H, W = nonzero.shape
    return slice(max(y - 1, 0), min(y + h + 1, H)), slice(max(x - 1, 0), min(x + w + 1, W))


def _f_from_boundaries(fg_b: np.ndarray, gt_b: np.ndarray, radius: int) -> float:
    """F measure of two 2-D boolean boundary maps with tolerance ``radius`` (pixels).

    The maps may be any window of the frames that contains all boundary pixels (see
    :func:`crop_box`): ``cv2.dilate`` treats pixels outside the array as background, and the
    dilated maps are only read at boundary pixels.
    """
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        fg_c = np.ascontiguousarray(fg_b)
        gt_c = np.ascontiguousarray(gt_b)
        if radius > 0:
            kernel = disk(radius)
            fg_dil = cv2.dilate(fg_c.view(np.uint8), kernel).view(bool)
            gt_dil = cv2.dilate(gt_c.view(np.uint8), kernel).view(bool)
        else:
            fg_dil, gt_dil = fg_c, gt_c
        n_fg_match = int(np.count_nonzero(fg_c & gt_dil))
        n_gt_match = int(np.count_nonzero(gt_c & fg_dil))
        precision = n_fg_match / float(n_fg)
        recall = n_gt_match / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _f_frame(fg: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """F of two 2-D boolean masks (void already removed), computed on their crop window."""
    box = crop_box(fg | gt)
    if box is None:
        return 1.0  # no boundary in either mask
    return _f_from_boundaries(seg2bmap(fg[box]), seg2bmap(gt[box]), radius)


def f_measure(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> float:
    """Boundary F-measure of one frame (argument order as in the toolkit: prediction first).

    Args:
        foreground_mask: predicted binary mask ``(H, W)``.
        gt_mask: ground-truth binary mask ``(H, W)``.
        void_pixels: optional ``(H, W)`` mask; these pixels are set to background in both
            masks before the boundaries are extracted.
        bound_th: boundary tolerance (fraction of the diagonal, or pixels if ``>= 1``).
    """
    fg = _as_bool(foreground_mask)
    gt = _as_bool(gt_mask)
    if fg.ndim != 2 or fg.shape != gt.shape:
        raise ValueError(f"f_measure needs two 2-D masks of equal shape, got {fg.shape} and {gt.shape}")
    if void_pixels is not None:
        keep = ~_as_bool(void_pixels)
        fg = fg & keep
        gt = gt & keep
    return _f_frame(fg, gt, bound_pixels(fg.shape, bound_th))


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = BOUND_TH,
) -> ArrayOrFloat:
    """Boundary measure F of binary masks, ``(H, W)`` or stacks ``(T, H, W)``.

    Returns a float for one frame, otherwise a ``float64`` array ``(T,)``.
    """
    annotation = _as_bool(annotation)
    segmentation = _as_bool(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} shapes differ")
    if annotation.ndim not in (2, 3):
        raise ValueError(f"db_eval_boundary supports 2-D or 3-D inputs, got {annotation.ndim}-D")
    if void_pixels is not None:
        void = _as_bool(void_pixels)
        if void.shape != annotation.shape:
            raise ValueError(f"annotation {annotation.shape} and void {void.shape} shapes differ")
        keep = ~void
        annotation = annotation & keep
        segmentation = segmentation & keep
    radius = bound_pixels(annotation.shape[-2:], bound_th)
    if annotation.ndim == 2:
        return _f_frame(segmentation, annotation, radius)
    out = np.empty(annotation.shape[0], dtype=np.float64)
    for t in range(annotation.shape[0]):
        out[t] = _f_frame(segmentation[t], annotation[t], radius)
    return out


def db_statistics(per_frame_values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame J or F values.

    * mean: ``nanmean`` of the values;
    * recall: fraction of frames whose value is ``> 0.5`` (a NaN frame counts as a miss);
    * decay: the frames are split into four overlapping bins at
      ``ids = round(linspace(1, N, 5) + 1e-10) - 1`` (bin ``i`` is ``values[ids[i]:ids[i+1]+1]``)
      and decay is ``nanmean(bin 0) - nanmean(bin 3)``.

    NaN is returned for empty input (as the toolkit's ``nanmean`` does). The toolkit casts
    ``ids`` to ``uint8``, which overflows for 256 or more evaluated frames (its decay is then
    NaN or taken from wrong bins, depending on the NumPy version); here the indices are exact,
    so the results agree for every sequence of up to 255 evaluated frames (all of DAVIS).
    """
    v = np.asarray(per_frame_values, dtype=np.float64).ravel()
    n = v.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v)) if n else math.nan
        recall = float(np.mean(v > 0.5)) if n else math.nan
        if n == 0:
            return mean, recall, math.nan
        ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
        first = v[ids[0] : ids[1] + 1]
        last = v[ids[3] : ids[4] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay
