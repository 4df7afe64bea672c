"""Training augmentation with OpenCV/numpy: geometric warps applied identically to images and
masks, colour jitter, and the two pipelines used by the training datasets.

Every random choice comes from an explicit ``numpy.random.Generator`` so a sample is a pure
function of its seed (needed for exact resume and for identical data across worker layouts).

- :class:`VideoAugment` (video training, STCN-style): one random resized crop and flip for the
  whole sequence, a small per-frame affine jitter, a sequence-level plus a small per-frame colour
  jitter, occasional grayscale; optionally (off by default) a zoom that grows or shrinks the
  object across the sequence and a per-frame motion blur, aimed at fast motion and scale change.
- :class:`StaticAugment` (static-image pre-training): several frames synthesised from one image by
  an independent random affine transform, a thin-plate-spline warp, a random resized crop and a
  colour jitter per frame; the mask goes through the same geometry.
- Both can (off by default, ``thin_crop_prob``) place their crop on an object's thin parts
  (:func:`thin_pixels`: bike frames and wheels, kite lines, ropes), which a random crop of a
  large area fraction mostly dilutes among the object's bulk or cuts off.

Images are (H, W, 3) uint8 RGB; masks are (H, W) uint8 label maps (0 background, 255 void).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import overload

import cv2
import numpy as np

__all__ = [
    "affine_matrix",
    "resized_crop_matrix",
    "warp_affine",
    "tps_maps",
    "remap",
    "ColorJitter",
    "color_jitter",
    "resize_short",
    "motion_blur",
    "thin_pixels",
    "THIN_REL_WIDTH",
    "VideoAugment",
    "StaticAugment",
]

Size = tuple[int, int]  # (height, width)

#: Parts of an object narrower than this fraction of the square root of its area are thin
#: (:func:`thin_pixels`). Relative, so a part is thin whatever the resolution; at 0.1 the survey
#: of the DAVIS 2016 training annotations picks out bmx-bumps' wheels and frame, kite-walk's lines,
#: swing's ropes and boat's masts, and little of bear or car-turn.
THIN_REL_WIDTH = 0.1
#: Candidate positions for a thin crop (:func:`_thin_box`): enough to prefer a crop that holds most
#: of the thin parts over one that holds a stray thin pixel, few enough that the position stays random.
THIN_CROP_CANDIDATES = 4


# -- geometry -----------------------------------------------------------------------------------
def affine_matrix(
    center: tuple[float, float],
    angle: float = 0.0,
    scale: float = 1.0,
    shear: tuple[float, float] = (0.0, 0.0),
    translate: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """3x3 forward map (x, y) -> (x', y'): rotate by ``angle`` degrees, shear (degrees, x then y)
    and scale about ``center``, then translate (pixels)."""
    cx, cy = center
    a = math.radians(angle)
    sx, sy = (math.tan(math.radians(s)) for s in shear)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    sh = np.array([[1, sx, 0], [sy, 1, 0], [0, 0, 1]])
    sc = np.diag([scale, scale, 1.0])
    to0 = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx + translate[0]], [0, 1, cy + translate[1]], [0, 0, 1]])
    return back @ rot @ sh @ sc @ to0


def resized_crop_matrix(
    box: tuple[float, float, float, float], out_size: Size, flip: bool = False
) -> np.ndarray:
    """3x3 forward map from source pixels to an ``out_size`` crop of ``box = (x0, y0, w, h)``."""
    x0, y0, bw, bh = box
    oh, ow = out_size
    m = np.array([[ow / bw, 0, -x0 * ow / bw], [0, oh / bh, -y0 * oh / bh], [0, 0, 1]])
    if flip:
        m = np.array([[-1, 0, ow - 1], [0, 1, 0], [0, 0, 1]]) @ m
    return m


@overload
def warp_affine(
    image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, out_size: Size
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def warp_affine(
    image: np.ndarray, mask: None, matrix: np.ndarray, out_size: Size
) -> tuple[np.ndarray, None]: ...
def warp_affine(
    image: np.ndarray,
    mask: np.ndarray | None,
    matrix: np.ndarray,
    out_size: Size,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Warp an image (bilinear) and a label mask (nearest, 0 outside) by a 3x3 forward matrix."""
    oh, ow = out_size
    m = matrix[:2].astype(np.float64)
    img = cv2.warpAffine(image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    msk = None
    if mask is not None:
        msk = cv2.warpAffine(
            mask, m, (ow, oh), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return img, msk


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        k = r2 * np.log(r2)
    return np.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0)


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) matrix of linear interpolation from m corner-aligned samples to n."""
    if m == n:
        return np.eye(n)
    pos = np.linspace(0, m - 1, n)
    lo = np.clip(np.floor(pos).astype(int), 0, m - 2)
    frac = pos - lo
    w = np.zeros((n, m))
    w[np.arange(n), lo] = 1 - frac
    w[np.arange(n), lo + 1] += frac
    return w


def tps_maps(
    rng: np.random.Generator,
    size: Size,
    grid: int = 4,
    magnitude: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """A random thin-plate-spline warp as ``cv2.remap`` maps (output pixel -> source pixel).

    Control points on a ``grid`` x ``grid`` lattice (normalised coordinates, border included) are
    displaced by up to ``magnitude`` of the image size; the border points stay put. The spline is
    solved exactly, evaluated on a coarse grid and interpolated linearly.
    """
    h, w = size
    g = np.linspace(0, 1, grid)
    ctrl = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # (n, 2) x, y
    border = (ctrl == 0) | (ctrl == 1)
    disp = rng.uniform(-magnitude, magnitude, ctrl.shape) * ~border.any(1, keepdims=True)
    src = ctrl + disp
    n = ctrl.shape[0]
    d2 = ((ctrl[:, None] - ctrl[None]) ** 2).sum(-1)
    p = np.concatenate([np.ones((n, 1)), ctrl], 1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n] = _tps_kernel(d2)
    a[:n, n:] = p
    a[n:, :n] = p.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src
    coef = np.linalg.solve(a + 1e-9 * np.eye(n + 3), rhs)
    # evaluate on a corner-aligned coarse grid, then interpolate linearly (the warp is smooth)
    hc, wc = min(h, 33), min(w, 33)
    gy, gx = np.linspace(0, 1, hc), np.linspace(0, 1, wc)
    q = np.stack(np.meshgrid(gx, gy, indexing="xy"), -1).reshape(-1, 2)
    qd2 = ((q[:, None] - ctrl[None]) ** 2).sum(-1)
    out = _tps_kernel(qd2) @ coef[:n] + np.concatenate([np.ones((len(q), 1)), q], 1) @ coef[n:]
    wy, wx = _interp_matrix(h, hc), _interp_matrix(w, wc)
    mx = (wy @ out[:, 0].reshape(hc, wc) @ wx.T).astype(np.float32)
    my = (wy @ out[:, 1].reshape(hc, wc) @ wx.T).astype(np.float32)
    return mx * (w - 1), my * (h - 1)


@overload
def remap(
    image: np.ndarray, mask: np.ndarray, maps: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def remap(image: np.ndarray, mask: None, maps: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, None]: ...
def remap(
    image: np.ndarray, mask: np.ndarray | None, maps: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    mx, my = maps
    img = cv2.remap(image, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    msk = None
    if mask is not None:
        msk = cv2.remap(
            mask, mx, my, interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return img, msk


@overload
def resize_short(image: np.ndarray, mask: np.ndarray, short: int) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def resize_short(image: np.ndarray, mask: None, short: int) -> tuple[np.ndarray, None]: ...
def resize_short(
    image: np.ndarray, mask: np.ndarray | None, short: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so the shorter side is ``short`` (area interpolation when shrinking, nearest for masks)."""
    h, w = image.shape[:2]
    s = short / min(h, w)
    if abs(s - 1) < 1e-6:
        return image, mask
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    msk = None if mask is None else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    return img, msk


# -- colour -------------------------------------------------------------------------------------
@dataclass
class ColorJitter:
    """Ranges of a colour jitter (torchvision's meaning).

    Factors in [1-x, 1+x], hue shift in [-h, h] turns.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        def f(x: float) -> float:
            return float(rng.uniform(max(0.0, 1 - x), 1 + x)) if x > 0 else 1.0

        return (
            f(self.brightness),
            f(self.contrast),
            f(self.saturation),
            (float(rng.uniform(-self.hue, self.hue)) if self.hue > 0 else 0.0),
        )


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def color_jitter(
    image: np.ndarray, params: tuple[float, float, float, float], gray: bool = False
) -> np.ndarray:
    """Apply (brightness, contrast, saturation, hue) factors to an RGB image (float32 0..255 or uint8)."""
    b, c, s, hshift = params
    img = image.astype(np.float32)
    if b != 1.0:
        img = img * b
    if c != 1.0:
        mean = float((img @ _GRAY).mean())
        img = (img - mean) * c + mean
    if s != 1.0:
        g = (img @ _GRAY)[..., None]
        img = (img - g) * s + g
    img = np.clip(img, 0, 255)
    if hshift != 0.0:
        hsv = cv2.cvtColor(img / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + hshift * 360.0) % 360.0
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if gray:
        img = np.repeat((img @ _GRAY)[..., None], 3, axis=2)
    return np.clip(img, 0, 255)


def _sample_box(
    rng: np.random.Generator,
    h: int,
    w: int,
    out_size: Size,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[float, float, float, float]:
    """A random crop box (x0, y0, bw, bh) of area fraction ``scale`` and aspect ``ratio`` times the
    output's."""
    oh, ow = out_size
    area = h * w
    for _ in range(10):
        a = rng.uniform(*scale) * area
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))) * (ow / oh)
        bw, bh = math.sqrt(a * r), math.sqrt(a / r)
        if bw <= w and bh <= h:
            return float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh
    # fall back to the largest box of the output aspect
    r = ow / oh
    bw, bh = (w, w / r) if w / h < r else (h * r, h)
    return (w - bw) / 2, (h - bh) / 2, bw, bh


def motion_blur(image: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Blur along a line of ``length`` pixels at ``angle`` degrees, as a camera or object moving
    during the exposure does; the image's size and dtype are kept."""
    line = np.zeros((length, length), np.float32)
    line[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1.0)
    k = cv2.warpAffine(line, rot, (length, length), flags=cv2.INTER_LINEAR)
    total = float(k.sum())
    if total <= 0:
        return image
    return cv2.filter2D(image, -1, np.asarray(k / total, np.float32), borderType=cv2.BORDER_REFLECT)


# -- thin structures -----------------------------------------------------------------------------
def thin_pixels(mask: np.ndarray, rel_width: float = THIN_REL_WIDTH) -> np.ndarray:
    """(H, W) bool: the pixels of each object of a label map that a morphological opening removes.

    Each object (labels other than 0 and 255, the void) is opened with a disk of odd diameter
    ``max(3, round(rel_width * sqrt(area)))``: what the disk cannot fit in (lines, spokes, legs,
    sharp tips) is thin. The diameter follows the object's size so a bike's frame is thin at any
    resolution while a person's torso is not.
    """
    out = np.zeros(mask.shape, bool)
    ids, counts = np.unique(mask, return_counts=True)
    for i, area in zip(ids, counts, strict=True):
        if i in (0, 255):
            continue
        obj = (mask == i).astype(np.uint8)
        d = max(3, round(rel_width * math.sqrt(float(area)))) | 1
        opened = cv2.morphologyEx(obj, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d)))
        out |= (obj > opened).astype(bool)
    return out


def _thin_points(masks: list[np.ndarray]) -> np.ndarray:
    """(N, 2) float x, y of the thin pixels of all ``masks`` (a pixel thin in several frames counts
    once per frame: the crop is shared, so a part thin throughout weighs more)."""
    pts = [np.argwhere(thin_pixels(m))[:, ::-1] for m in masks]
    return np.concatenate(pts).astype(np.float64) if pts else np.zeros((0, 2))


def _thin_box(
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    points: np.ndarray,
    h: int,
    w: int,
) -> tuple[float, float, float, float]:
    """``box``'s size, moved to hold thin ``points``: of :data:`THIN_CROP_CANDIDATES` positions, each
    drawn uniformly among those whose box holds a random thin pixel, the one holding the most.

    The size stays that of the normal random crop, so only the crop's place changes: the scale
    distribution of training samples is the same with or without thin crops.
    """
    _, _, bw, bh = box
    xs, ys = points[:, 0], points[:, 1]
    best, most = box, -1
    for j in rng.integers(len(points), size=THIN_CROP_CANDIDATES):
        px, py = points[j]
        # the box covers source pixels x0 .. x0 + bw - 1 (resized_crop_matrix); both ranges are
        # non-empty because bw <= w, bh <= h and the pixel lies inside the image
        x0 = float(rng.uniform(max(0.0, px - bw + 1), min(w - bw, px)))
        y0 = float(rng.uniform(max(0.0, py - bh + 1), min(h - bh, py)))
        held = int(((xs >= x0) & (xs <= x0 + bw - 1) & (ys >= y0) & (ys <= y0 + bh - 1)).sum())
        if held > most:
            best, most = (x0, y0, bw, bh), held
    return best


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


# -- pipelines ----------------------------------------------------------------------------------
@dataclass
class VideoAugment:
    """Consistent augmentation of a sequence of frames (see the module docstring)."""

    crop: Size = (384, 384)
    resize_short: int | None = None  # resize source frames first (e.g. 480 for 720p YouTube-VOS)
    scale: tuple[float, float] = (0.36, 1.0)  # crop area fraction
    ratio: tuple[float, float] = (0.75, 1.333)
    flip_prob: float = 0.5
    frame_degrees: float = 0.0  # per-frame jitter
    frame_shear: float = 10.0
    frame_scale: tuple[float, float] = (0.95, 1.05)
    seq_jitter: ColorJitter = field(default_factory=lambda: ColorJitter(0.1, 0.03, 0.03, 0.0))
    frame_jitter: ColorJitter = field(default_factory=lambda: ColorJitter(0.01, 0.01, 0.01, 0.0))
    grayscale_prob: float = 0.05
    # zoom from 1 at the first frame to z at the last, z drawn log-uniformly from this range: objects
    # that approach or recede (scale change between memory and query); (1, 1) turns it off
    zoom_range: tuple[float, float] = (1.0, 1.0)
    motion_blur_prob: float = 0.0  # per frame
    motion_blur_max: int = 9  # longest blur, pixels of the output crop
    # chance that the sequence's crop is placed on the objects' thin parts (_thin_box; the normal
    # crop when they have none)
    thin_crop_prob: float = 0.0

    def __post_init__(self) -> None:
        _check_prob("thin_crop_prob", self.thin_crop_prob)

    def sequence_params(
        self, rng: np.random.Generator, h: int, w: int, masks: list[np.ndarray] | None = None
    ) -> dict:
        """The sequence-level draws; ``masks`` (the source label maps) are read only by a thin crop."""
        box = _sample_box(rng, h, w, self.crop, self.scale, self.ratio)
        p = {
            "box": box,
            "flip": bool(rng.random() < self.flip_prob),
            "color": self.seq_jitter.sample(rng),
            "gray": bool(rng.random() < self.grayscale_prob),
        }
        if tuple(self.zoom_range) != (1.0, 1.0):  # drawn only when on: the default stream is unchanged
            lo, hi = self.zoom_range
            p["zoom"] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        # drawn only when on, as the zoom is; the box's size is the normal crop's (drawn above)
        if self.thin_crop_prob > 0 and rng.random() < self.thin_crop_prob and masks:
            points = _thin_points(masks)
            if len(points):
                p["box"] = _thin_box(rng, box, points, h, w)
        return p

    def __call__(
        self,
        rng: np.random.Generator,
        frames: list[np.ndarray],
        masks: list[np.ndarray],
        params: dict | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> frames (T, h, w, 3) float32 0..255, masks (T, h, w) uint8."""
        if self.resize_short:
            pairs = [resize_short(f, m, self.resize_short) for f, m in zip(frames, masks, strict=True)]
            frames, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        h, w = frames[0].shape[:2]
        p = params or self.sequence_params(rng, h, w, masks)
        oh, ow = self.crop
        base = resized_crop_matrix(p["box"], self.crop, p["flip"])
        out_f = np.empty((len(frames), oh, ow, 3), np.float32)
        out_m = np.empty((len(frames), oh, ow), np.uint8)
        zoom = float(p.get("zoom", 1.0))
        last = max(1, len(frames) - 1)
        for t, (f, m) in enumerate(zip(frames, masks, strict=True)):
            jit = affine_matrix(
                ((ow - 1) / 2, (oh - 1) / 2),
                angle=rng.uniform(-self.frame_degrees, self.frame_degrees),
                scale=rng.uniform(*self.frame_scale) * zoom ** (t / last),
                shear=(rng.uniform(-self.frame_shear, self.frame_shear), 0.0),
            )
            img, msk = warp_affine(f, m, jit @ base, self.crop)
            fp = self.frame_jitter.sample(rng)
            col = tuple(
                a * b if i < 3 else a + b for i, (a, b) in enumerate(zip(p["color"], fp, strict=True))
            )
            out_f[t] = color_jitter(img, col, p["gray"])
            if self.motion_blur_prob > 0 and rng.random() < self.motion_blur_prob:
                length = int(rng.integers(3, max(3, self.motion_blur_max) + 1))
                out_f[t] = motion_blur(out_f[t], length, float(rng.uniform(0, 180)))
            out_m[t] = msk
        return out_f, out_m


@dataclass
class StaticAugment:
    """Synthesises ``num_frames`` deformed views of one image (see the module docstring)."""

    crop: Size = (384, 384)
    resize_short: int | None = 384  # the image's shorter side before warping (None: keep)
    degrees: float = 20.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0
    translate: float = 0.05
    tps_prob: float = 1.0
    tps_grid: int = 4
    tps_magnitude: float = 0.05
    crop_scale: tuple[float, float] = (0.36, 1.0)
    ratio: tuple[float, float] = (0.75, 1.333)
    flip_prob: float = 0.5
    jitter: ColorJitter = field(default_factory=lambda: ColorJitter(0.1, 0.05, 0.05, 0.02))
    grayscale_prob: float = 0.05
    # chance that a sample's crops are placed on the object's thin parts (_thin_box; the normal
    # crop for a frame whose view of the image holds none)
    thin_crop_prob: float = 0.0

    def __post_init__(self) -> None:
        _check_prob("thin_crop_prob", self.thin_crop_prob)

    def __call__(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        mask: np.ndarray,
        num_frames: int = 3,
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> frames (T, h, w, 3) float32 0..255, masks (T, h, w) uint8."""
        if self.resize_short:
            image, mask = resize_short(image, mask, self.resize_short)
        h, w = image.shape[:2]
        oh, ow = self.crop
        flip = bool(rng.random() < self.flip_prob)
        gray = bool(rng.random() < self.grayscale_prob)
        # drawn only when on, so the default stream is unchanged; one draw for the sample, so all
        # its frames (one simulated video) show the thin parts
        thin = self.thin_crop_prob > 0 and rng.random() < self.thin_crop_prob
        points = _thin_points([mask]) if thin else None
        out_f = np.empty((num_frames, oh, ow, 3), np.float32)
        out_m = np.empty((num_frames, oh, ow), np.uint8)
        for t in range(num_frames):
            aff = affine_matrix(
                ((w - 1) / 2, (h - 1) / 2),
                angle=rng.uniform(-self.degrees, self.degrees),
                scale=rng.uniform(*self.scale_range),
                shear=(rng.uniform(-self.shear, self.shear), rng.uniform(-self.shear, self.shear)),
                translate=(
                    rng.uniform(-self.translate, self.translate) * w,
                    rng.uniform(-self.translate, self.translate) * h,
                ),
            )
            box = _sample_box(rng, h, w, self.crop, self.crop_scale, self.ratio)
            if points is not None and len(points):
                # the box is placed in the affine-warped image: move the thin pixels there too
                moved = points @ aff[:2, :2].T + aff[:2, 2]
                inside = (
                    (moved[:, 0] >= 0) & (moved[:, 0] <= w - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= h - 1)
                )
                if inside.any():
                    box = _thin_box(rng, box, moved[inside], h, w)
            m = resized_crop_matrix(box, self.crop, flip) @ aff
            img, msk = warp_affine(image, mask, m, self.crop)
            if rng.random() < self.tps_prob:
                img, msk = remap(img, msk, tps_maps(rng, self.crop, self.tps_grid, self.tps_magnitude))
            out_f[t] = color_jitter(img, self.jitter.sample(rng), gray)
            out_m[t] = msk
        return out_f, out_m
