"""Generated videos of moving coloured shapes with their masks (for tests and smoke runs).

Every video is a pure function of ``(seed, index)``: a textured background and 1..K textured
shapes (ellipses, rectangles, triangles) that move, grow or shrink and occlude one another in a
fixed depth order. Masks are label maps (0 = background, 1..K = objects, no void).

- :func:`make_video` generates one video as arrays;
- :class:`SyntheticVideos` is an in-memory video source for :mod:`pcvos.data.train_datasets`;
- :class:`SyntheticImages` is a static image/mask source (one object per image);
- :func:`write_davis_layout` writes videos as a DAVIS-layout folder (JPEGImages/Annotations/ImageSets).
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pcvos.data.io_utils import atomic_write, atomic_write_text, save_indexed_png

__all__ = ["make_video", "SyntheticVideos", "SyntheticImages", "write_davis_layout"]

_SHAPES = ("ellipse", "rect", "triangle")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    if rng.random() < 0.5:
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = c0 * (1 - t) + c1 * t
    img = np.broadcast_to(img, (h, w, 3)).astype(np.float32)
    noise = cv2.resize(
        rng.normal(0, 25, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_LINEAR,
    )
    return np.clip(img + noise, 0, 255)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(0, 255, 3).astype(np.float32)
    stripes = rng.random() < 0.5
    tex = np.zeros((h, w, 3), np.float32) + base
    if stripes:
        period = rng.uniform(4, 12)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None]
        tex = tex + wave * rng.uniform(15, 50)
    tex = tex + rng.normal(0, 8, (h, w, 3))
    return np.clip(tex, 0, 255)


def _draw(shape: str, h: int, w: int, cx: float, cy: float, rx: float, ry: float, angle: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if shape == "ellipse":
        cv2.ellipse(
            m, (int(round(cx)), int(round(cy))), (max(int(rx), 1), max(int(ry), 1)), angle, 0, 360, 1, -1
        )
    else:
        if shape == "rect":
            pts = np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]], np.float32)
        else:
            pts = np.array([[0, -ry], [rx, ry], [-rx, ry]], np.float32)
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
        pts = pts @ rot.T + np.array([cx, cy], np.float32)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def make_video(
    seed: int, num_frames: int = 12, size: tuple[int, int] = (64, 64), num_objects: int = 2, index: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One video: frames (T, H, W, 3) uint8 and masks (T, H, W) uint8 labels 0..num_objects."""
    rng = np.random.default_rng([int(seed), int(index)])
    h, w = size
    bg = _background(rng, h, w)
    bg_shift = rng.uniform(-0.5, 0.5, 2)
    objs: list[dict[str, Any]] = []
    for _ in range(num_objects):
        r = rng.uniform(0.12, 0.25) * min(h, w)
        objs.append(
            dict(
                shape=_SHAPES[rng.integers(len(_SHAPES))],
                tex=_texture(rng, h, w),
                c=np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h]),
                v=rng.uniform(-1, 1, 2) * min(h, w) * 0.04,
                r=np.array([r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)]),
                grow=rng.uniform(-0.01, 0.01),
                angle=rng.uniform(0, 180),
                spin=rng.uniform(-6, 6),
            )
        )
    frames = np.zeros((num_frames, h, w, 3), np.uint8)
    masks = np.zeros((num_frames, h, w), np.uint8)
    for t in range(num_frames):
        m_bg = np.array([[1, 0, bg_shift[0] * t], [0, 1, bg_shift[1] * t]], np.float32)
        img = cv2.warpAffine(bg, m_bg, (w, h), borderMode=cv2.BORDER_REFLECT)
        lab = np.zeros((h, w), np.uint8)
        for k, o in enumerate(objs):  # later objects are in front
            c = o["c"] + o["v"] * t
            # bounce off the borders so objects stay in view
            for d, lim in ((0, w), (1, h)):
                span = lim - 2 * o["r"][d]
                if span > 0:
                    p = (c[d] - o["r"][d]) % (2 * span)
                    c[d] = o["r"][d] + (p if p < span else 2 * span - p)
            r = o["r"] * (1 + o["grow"] * t)
            m = _draw(o["shape"], h, w, c[0], c[1], r[0], r[1], o["angle"] + o["spin"] * t)
            img[m] = o["tex"][m]
            lab[m] = k + 1
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        masks[t] = lab
    return frames, masks


class SyntheticVideos:
    """An in-memory video source of generated videos (the interface of the training video sources)."""

    def __init__(
        self,
        num_videos: int = 8,
        num_frames: int = 24,
        size: tuple[int, int] = (64, 64),
        max_objects: int = 2,
        seed: int = 0,
    ) -> None:
        self.num_videos = int(num_videos)
        self.length = int(num_frames)
        h, w = size  # a list (from a config file) becomes a tuple
        self.size = (int(h), int(w))
        self.max_objects = int(max_objects)
        self.seed = int(seed)
        self._get = lru_cache(maxsize=64)(self._make)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_get", None)  # the cache does not pickle (DataLoader workers under spawn/forkserver)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._get = lru_cache(maxsize=64)(self._make)

    def _make(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        k = 1 + (v % self.max_objects)
        return make_video(self.seed, self.length, self.size, k, index=v)

    def __len__(self) -> int:
        return self.num_videos

    def name(self, v: int) -> str:
        return f"synthetic-{v:04d}"

    def num_frames(self, v: int) -> int:
        return self.length

    def frame(self, v: int, t: int) -> np.ndarray:
        return self._get(v)[0][t]

    def mask(self, v: int, t: int) -> np.ndarray:
        return self._get(v)[1][t]


class SyntheticImages:
    """A static image/mask source: the first frame of generated one-object videos."""

    def __init__(self, num_images: int = 16, size: tuple[int, int] = (64, 64), seed: int = 0) -> None:
        self.n = int(num_images)
        h, w = size
        self.size = (int(h), int(w))
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"synthetic-image-{i:04d}"

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        frames, masks = make_video(self.seed + 7919, 1, self.size, 1, index=i)
        return frames[0], masks[0]


def write_davis_layout(
    root: str | Path,
    num_videos: int = 4,
    num_frames: int = 12,
    size: tuple[int, int] = (64, 64),
    max_objects: int = 2,
    seed: int = 0,
    subset: str = "train",
    year: str = "2017",
) -> list[str]:
    """Write generated videos as ``root/JPEGImages/480p/<seq>/00000.jpg``,
    ``Annotations/480p/<seq>/00000.png`` (indexed PNGs) and ``ImageSets/<year>/<subset>.txt``.
    Returns the sequence names."""
    root = Path(root)
    src = SyntheticVideos(num_videos, num_frames, size, max_objects, seed)
    names = []
    for v in range(len(src)):
        name = src.name(v)
        names.append(name)
        jd = root / "JPEGImages" / "480p" / name
        ad = root / "Annotations" / "480p" / name
        for t in range(num_frames):
            frame = Image.fromarray(src.frame(v, t))
            atomic_write(jd / f"{t:05d}.jpg", partial(frame.save, quality=95))
            save_indexed_png(ad / f"{t:05d}.png", src.mask(v, t))
    text = "".join(n + "\n" for n in names)
    atomic_write_text(root / "ImageSets" / str(year) / f"{subset}.txt", text)
    return names
