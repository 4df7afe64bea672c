"""Training data: sources (DAVIS, YouTube-VOS, static image folders, generated videos), the
per-clip / frame-wise / static samplers and the batch sampler used by the trainer.

**Sources** give frames and label masks:

- :func:`davis_source` — ``JPEGImages/480p/<seq>/*.jpg`` + ``Annotations/480p/<seq>/*.png`` with the
  sequence list in ``ImageSets/2017|2016/<subset>.txt`` (or ``ImageSets/480p`` of the DAVIS 2016 release);
- :func:`youtube_source` — YouTube-VOS ``train/JPEGImages/<video>/*.jpg`` +
  ``train/Annotations/<video>/*.png`` (``train/meta.json`` optional); frames without an annotation
  are not used;
- :class:`ImageFolderSource` — static image/mask pairs: ``root/images/*.jpg`` + ``root/masks/*.png``, or
  same-stem ``x.jpg`` + ``x.png`` pairs anywhere under ``root`` (ECSSD, DUTS, FSS-1000 style);
- :class:`pcvos.data.synthetic.SyntheticVideos` / :class:`~pcvos.data.synthetic.SyntheticImages`.

**Samples** (:class:`VideoClipDataset`, :class:`StaticDataset`) are dicts of tensors:
``frames`` (T, 3, H, W) in [0, 1]; ``masks`` (T, K, H, W) 0/1 for up to K = ``max_objects`` objects
(padded with zeros); ``labels`` (T, H, W) class indices 0..k; ``valid`` (K,) which object slots are
used; ``num_objects``; ``frame_indices`` (T,); ``name``. Frame 0 is the reference frame.

Per-clip sampling (PCVOS): reference + ``num_clips`` clips of ``clip_len`` frames (2N + 1 = 7 by
default). Consecutive frames inside a clip are 1..``max_skip`` (5) frames apart; the gap from the
reference to the first clip and from one clip's last frame to the next clip's first frame is
1..G frames, where G follows the curriculum :func:`gap_at` of training progress (5 -> 15 -> 5).
Frame-wise sampling (STCN, "Trad."): three frames, each 1..G after the previous, G from the
same kind of schedule. Every sample is a pure function of its key ``(index, seed, position,
progress)``, so data never depends on worker count or process layout and resumes exactly.

**Batches**: :class:`TrainBatchSampler` draws epoch permutations from the seed and gives each
process of a distributed run its own contiguous share of every global batch
(DistributedSampler-style sharding); its state is the iteration number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from pcvos.data.augment import StaticAugment, VideoAugment, affine_matrix, warp_affine

__all__ = [
    "VideoSource",
    "FolderVideoSource",
    "davis_source",
    "youtube_source",
    "ImageSource",
    "ImageFolderSource",
    "read_label_mask",
    "gap_at",
    "DEFAULT_GAP_SCHEDULE",
    "STCN_SKIP_SCHEDULE",
    "sample_clip_indices",
    "VideoClipDataset",
    "StaticDataset",
    "SampleDataset",
    "MixedDataset",
    "TrainBatchSampler",
    "SampleKey",
]

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# (progress fraction, maximum gap): the value of the last entry whose fraction <= progress.
# Grows 5 -> 15 over the first 40 % of training, anneals back to 5 for the last 10 %.
DEFAULT_GAP_SCHEDULE: tuple[tuple[float, int], ...] = (
    (0.0, 5),
    (0.1, 8),
    (0.2, 10),
    (0.3, 12),
    (0.4, 15),
    (0.9, 5),
)
# STCN's max-skip curriculum for the frame-wise ("Trad.") sampler.
STCN_SKIP_SCHEDULE: tuple[tuple[float, int], ...] = (
    (0.0, 5),
    (0.1, 10),
    (0.2, 15),
    (0.3, 20),
    (0.4, 25),
    (0.9, 5),
)


# -- sources ------------------------------------------------------------------------------------
class VideoSource(Protocol):
    def __len__(self) -> int: ...
    def name(self, v: int) -> str: ...
    def num_frames(self, v: int) -> int: ...
    def frame(self, v: int, t: int) -> np.ndarray: ...
    def mask(self, v: int, t: int) -> np.ndarray: ...


class ImageSource(Protocol):
    """Static image/mask pairs: ``item(i)`` -> (H, W, 3) uint8 RGB, (H, W) uint8 labels."""

    def __len__(self) -> int: ...
    def name(self, i: int) -> str: ...
    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


def read_label_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as a (H, W) uint8 label map.

    Indexed ("P") PNGs give their indices (DAVIS 2017 / YouTube-VOS; 255 = void). Anything else
    (grayscale 0/255 as in DAVIS 2016 and saliency sets, RGB black/white as in FSS-1000) is a
    single object: pixels brighter than 127 are 1.
    """
    with Image.open(path) as im:
        if im.mode == "P":
            return np.array(im, dtype=np.uint8)
        if im.mode in ("1", "L", "I", "I;16", "F"):
            arr = np.array(im)
        else:
            arr = np.array(im.convert("L"))
    return (arr > 127).astype(np.uint8)


def _read_rgb(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


class FolderVideoSource:
    """Videos as lists of (frame path, mask path) pairs."""

    def __init__(self, videos: Sequence[tuple[str, Sequence[Path], Sequence[Path]]]) -> None:
        self.videos = [(n, list(f), list(m)) for n, f, m in videos if len(f) > 0]
        if not self.videos:
            raise ValueError("no video with annotated frames found")

    def __len__(self) -> int:
        return len(self.videos)

    def name(self, v: int) -> str:
        return self.videos[v][0]

    def num_frames(self, v: int) -> int:
        return len(self.videos[v][1])

    def frame(self, v: int, t: int) -> np.ndarray:
        return _read_rgb(self.videos[v][1][t])

    def mask(self, v: int, t: int) -> np.ndarray:
        return read_label_mask(self.videos[v][2][t])


def _stem_key(p: Path) -> tuple:
    s = p.stem
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def _paired(frame_dir: Path, mask_dir: Path) -> tuple[list[Path], list[Path]]:
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"} if mask_dir.is_dir() else {}
    frames = sorted(
        (p for p in frame_dir.iterdir() if p.suffix.lower() in _IMAGE_EXT and p.stem in masks), key=_stem_key
    )
    return frames, [masks[p.stem] for p in frames]


def _read_list(path: Path) -> list[str]:
    names: list[str] = []
    for line in path.read_text().splitlines():
        tok = line.strip().split()
        if not tok:
            continue
        name = tok[0]
        if "/" in name:  # DAVIS 2016 release form: /JPEGImages/480p/<seq>/00000.jpg ...
            name = [p for p in name.split("/") if p][-2]
        if name not in names:
            names.append(name)
    return names


def davis_source(
    root: str | os.PathLike,
    subset: str = "train",
    year: str | None = None,
    sequences: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    resolution: str = "480p",
) -> FolderVideoSource:
    """DAVIS-layout training videos (every frame with a mask is used)."""
    root = Path(root)
    if sequences is None:
        years = [str(year)] if year else ["2017", "2016", "480p"]
        lists = [root / "ImageSets" / y / f"{subset}.txt" for y in years]
        found = next((p for p in lists if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{root}: no sequence list (tried {', '.join(map(str, lists))})")
        sequences = _read_list(found)
    skip = set(exclude or ())
    videos = []
    for name in sequences:
        if name in skip:
            continue
        fdir = root / "JPEGImages" / resolution / name
        if not fdir.is_dir():
            raise FileNotFoundError(f"{fdir}: frames of sequence {name!r} not found")
        f, m = _paired(fdir, root / "Annotations" / resolution / name)
        videos.append((name, f, m))
    return FolderVideoSource(videos)


def youtube_source(
    root: str | os.PathLike, videos: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> FolderVideoSource:
    """YouTube-VOS training videos: ``root`` is the dataset root (with ``train/``) or ``train/`` itself."""
    root = Path(root)
    if (root / "train" / "JPEGImages").is_dir():
        root = root / "train"
    jroot, aroot = root / "JPEGImages", root / "Annotations"
    if not jroot.is_dir():
        raise FileNotFoundError(f"{root}: expected train/JPEGImages and train/Annotations")
    if videos is None:
        meta = root / "meta.json"
        if meta.is_file():
            videos = sorted(json.loads(meta.read_text())["videos"])
        else:
            videos = sorted(p.name for p in jroot.iterdir() if p.is_dir())
    skip = set(exclude or ())
    out = []
    for name in videos:
        if name in skip or not (jroot / name).is_dir():
            continue
        f, m = _paired(jroot / name, aroot / name)
        out.append((name, f, m))
    return FolderVideoSource(out)


class ImageFolderSource:
    """Static image/mask pairs: ``root/images`` + ``root/masks`` (matched by stem), else same-stem
    image + ``.png`` mask pairs anywhere under ``root`` (recursively)."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found")
        pairs: list[tuple[Path, Path]] = []
        for idir, mdir in (("images", "masks"), ("Images", "Masks"), ("im", "gt")):
            if (root / idir).is_dir() and (root / mdir).is_dir():
                masks = {p.stem: p for p in (root / mdir).rglob("*.png")}
                pairs = [
                    (p, masks[p.stem])
                    for p in sorted((root / idir).rglob("*"))
                    if p.suffix.lower() in _IMAGE_EXT and p.stem in masks
                ]
                break
        if not pairs:
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() in (".jpg", ".jpeg") and p.with_suffix(".png").is_file():
                    pairs.append((p, p.with_suffix(".png")))
        if not pairs:
            raise ValueError(f"{root}: no image/mask pairs (expected images/ + masks/ or x.jpg + x.png)")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return str(self.pairs[i][0])

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, msk = _read_rgb(self.pairs[i][0]), read_label_mask(self.pairs[i][1])
        if msk.shape != img.shape[:2]:
            msk = cv2.resize(msk, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        return img, msk


class VideoFramesSource:
    """The annotated frames of videos as static image/mask pairs, for stage-1 training.

    ``every`` keeps one frame in that many per video: neighbouring frames are near-duplicates.
    """

    def __init__(self, videos: FolderVideoSource, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        self.videos = videos
        self.items = [(v, t) for v in range(len(videos)) for t in range(0, videos.num_frames(v), every)]

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        v, t = self.items[i]
        return f"{self.videos.name(v)}/{t}"

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        v, t = self.items[i]
        return self.videos.frame(v, t), self.videos.mask(v, t)


# -- frame sampling -----------------------------------------------------------------------------
def gap_at(progress: float, schedule: Sequence[Sequence[float]] = DEFAULT_GAP_SCHEDULE) -> int:
    """The maximum gap at training ``progress`` in [0, 1].

    It is the value of the last entry whose fraction <= progress.
    """
    value = int(schedule[0][1])
    for frac, v in schedule:
        if progress >= frac:
            value = int(v)
    return value


def sample_clip_indices(
    rng: np.random.Generator,
    num_frames: int,
    clip_len: int = 3,
    num_clips: int = 2,
    max_gap: int = 5,
    max_skip: int = 5,
) -> list[int]:
    """Frame indices of one sample: reference, then ``num_clips`` clips of ``clip_len`` frames.

    Steps inside a clip are in 1..``max_skip``; the step from the reference (or a clip's last frame)
    to the next clip's first frame is in 1..``max_gap``. When the video is too short for the drawn
    steps they are shortened at random, never below 1. Raises ``ValueError`` for a video shorter
    than the sample.
    """
    n = 1 + clip_len * num_clips
    if num_frames < n:
        raise ValueError(f"video has {num_frames} frames, a sample needs {n}")
    drawn: list[int] = []
    for _ in range(num_clips):
        drawn.append(int(rng.integers(1, max(1, max_gap) + 1)))
        for _ in range(clip_len - 1):
            drawn.append(int(rng.integers(1, max(1, max_skip) + 1)))
    steps = np.array(drawn)
    excess = int(steps.sum()) - (num_frames - 1)
    while excess > 0:
        cand = np.flatnonzero(steps > 1)
        steps[cand[rng.integers(len(cand))]] -= 1
        excess -= 1
    start = int(rng.integers(0, num_frames - int(steps.sum())))
    return [start] + list(start + np.cumsum(steps))


# -- samples ------------------------------------------------------------------------------------
SampleKey = tuple[int, int, int, float]  # (index, seed, position in the sample stream, progress)


def _as_key(key: Any) -> SampleKey:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1]), int(key[2]), float(key[3])
    return int(key), 0, int(key), 0.0


def _pack(
    frames: np.ndarray,
    labels: np.ndarray,
    ids: list[int],
    max_objects: int,
    indices: Sequence[int],
    name: str,
) -> dict[str, Any]:
    """Augmented frames (T,h,w,3) float 0..255 + label maps -> the sample dict (objects ``ids`` -> 1..k)."""
    t, h, w = labels.shape
    masks = np.zeros((t, max_objects, h, w), np.float32)
    cls = np.zeros((t, h, w), np.int64)
    for j, i in enumerate(ids):
        m = labels == i
        masks[:, j] = m
        cls[m] = j + 1
    valid = np.zeros(max_objects, bool)
    valid[: len(ids)] = True
    return {
        "frames": torch.from_numpy(
            np.ascontiguousarray(frames.transpose(0, 3, 1, 2) / 255.0, dtype=np.float32)
        ),
        "masks": torch.from_numpy(masks),
        "labels": torch.from_numpy(cls),
        "valid": torch.from_numpy(valid),
        "num_objects": len(ids),
        "frame_indices": torch.tensor(list(indices), dtype=torch.int64),
        "name": name,
    }


def _present(labels0: np.ndarray, min_pixels: int) -> list[int]:
    ids, counts = np.unique(labels0, return_counts=True)
    return [int(i) for i, c in zip(ids, counts, strict=True) if i not in (0, 255) and c >= min_pixels]


def _composite(
    rng: np.random.Generator,
    frames: np.ndarray,
    labels: np.ndarray,
    ids: list[int],
    other_f: np.ndarray,
    other_m: np.ndarray,
    min_pixels: int,
    scale: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """Paste the object ``other_m`` (T,h,w bool) of another sample over this one as a new object.

    The pasted sample is shrunk and moved by one random affine transform shared by all frames, so
    its own motion is kept. Returns None when the result would hide an object or show too little
    of the new one in the reference frame.
    """
    t, h, w = labels.shape
    m = affine_matrix(
        ((w - 1) / 2, (h - 1) / 2),
        scale=rng.uniform(*scale),
        translate=(rng.uniform(-0.3, 0.3) * w, rng.uniform(-0.3, 0.3) * h),
    )
    pf = np.empty_like(other_f)
    pm = np.empty((t, h, w), np.uint8)
    for i in range(t):
        pf[i], pm[i] = warp_affine(other_f[i], other_m[i].astype(np.uint8), m, (h, w))
    paste = pm.astype(bool)
    if paste[0].sum() < min_pixels:
        return None
    new_id = max([i for i in np.unique(labels) if i != 255] + ids + [0]) + 1
    if new_id >= 255:
        return None
    out_l = labels.copy()
    out_l[paste] = new_id
    if any((out_l[0] == i).sum() < min_pixels for i in ids):
        return None
    out_f = np.where(paste[..., None], pf, frames)
    return out_f, out_l, ids + [int(new_id)]


class SampleDataset(Protocol):
    """A training dataset: ``len`` samples of ``num_sample_frames`` frames, keyed by a
    :data:`SampleKey`."""

    @property
    def num_sample_frames(self) -> int: ...
    def __len__(self) -> int: ...
    def __getitem__(self, key: Any) -> dict[str, Any]: ...


class _Base(Dataset):
    max_objects: int
    min_pixels: int
    composite_prob: float
    composite_scale: tuple[float, float]

    def __len__(self) -> int:
        raise NotImplementedError

    def _draw(
        self, rng: np.random.Generator, index: int, progress: float, max_objects: int
    ) -> tuple[np.ndarray, np.ndarray, list[int], list[int], str]:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, seed, position, progress = _as_key(key)
        rng = np.random.default_rng([seed, position, index])
        frames, labels, ids, indices, name = self._draw(rng, index, progress, self.max_objects)
        if len(ids) < self.max_objects and self.composite_prob > 0 and rng.random() < self.composite_prob:
            other = int(rng.integers(len(self)))
            of, ol, oids, _, oname = self._draw(rng, other, progress, 1)
            res = _composite(
                rng, frames, labels, ids, of, ol == oids[0], self.min_pixels, self.composite_scale
            )
            if res is not None:
                frames, labels, ids = res
                name = f"{name}+{oname}"
        return _pack(frames, labels, ids, self.max_objects, indices, name)


class VideoClipDataset(_Base):
    """Per-clip (``mode="per_clip"``) or frame-wise (``mode="frame_wise"``, STCN) video samples."""

    def __init__(
        self,
        source: VideoSource,
        crop: tuple[int, int] = (384, 384),
        clip_len: int = 3,
        num_clips: int = 2,
        mode: str = "per_clip",
        max_objects: int = 3,
        max_skip: int = 5,
        gap_schedule: Sequence[Sequence[float]] = DEFAULT_GAP_SCHEDULE,
        min_pixels: int = 20,
        composite_prob: float = 0.0,
        composite_scale: tuple[float, float] = (0.4, 0.9),
        reverse_prob: float = 0.0,
        augment: VideoAugment | None = None,
        max_tries: int = 20,
    ) -> None:
        if mode not in ("per_clip", "frame_wise"):
            raise ValueError(f"mode must be 'per_clip' or 'frame_wise', got {mode!r}")
        self.source = source
        self.mode = mode
        self.clip_len = 1 if mode == "frame_wise" else int(clip_len)
        self.num_clips = int(num_clips)
        self.max_objects = int(max_objects)
        self.max_skip = int(max_skip)
        self.gap_schedule = tuple(tuple(x) for x in gap_schedule)
        self.min_pixels = int(min_pixels)
        self.composite_prob = float(composite_prob)
        lo, hi = composite_scale  # a list (from a config file) becomes a tuple
        self.composite_scale = (lo, hi)
        self.reverse_prob = float(reverse_prob)
        self.augment = augment or VideoAugment(crop=(crop[0], crop[1]))
        self.max_tries = int(max_tries)
        need = 1 + self.clip_len * self.num_clips
        self.usable = [v for v in range(len(source)) if source.num_frames(v) >= need]
        if not self.usable:
            raise ValueError(f"no video has the {need} frames a sample needs")

    @property
    def num_sample_frames(self) -> int:
        return 1 + self.clip_len * self.num_clips

    def __len__(self) -> int:
        return len(self.usable)

    def _draw(self, rng, index, progress, max_objects):
        gap = gap_at(progress, self.gap_schedule)
        v = self.usable[index % len(self.usable)]
        for attempt in range(self.max_tries):
            if attempt:
                v = self.usable[int(rng.integers(len(self.usable)))]
            n = self.source.num_frames(v)
            idx = sample_clip_indices(rng, n, self.clip_len, self.num_clips, gap, self.max_skip)
            if self.reverse_prob > 0 and rng.random() < self.reverse_prob:
                idx = [n - 1 - i for i in idx]
            frames = [self.source.frame(v, t) for t in idx]
            masks = [self.source.mask(v, t) for t in idx]
            f, m = self.augment(rng, frames, masks)
            present = _present(m[0], self.min_pixels)
            if present:
                pick = rng.permutation(present)[:max_objects].tolist()
                return f, m, [int(i) for i in pick], idx, self.source.name(v)
        raise RuntimeError(
            f"no object visible in {self.max_tries} tries (last video {self.source.name(v)!r}); "
            "check the masks or lower min_pixels"
        )


class StaticDataset(_Base):
    """Static-image samples: ``num_frames`` deformed views of one image and its mask."""

    def __init__(
        self,
        source: ImageSource,
        crop: tuple[int, int] = (384, 384),
        num_frames: int = 3,
        max_objects: int = 1,
        min_pixels: int = 20,
        composite_prob: float = 0.0,
        composite_scale: tuple[float, float] = (0.4, 0.9),
        augment: StaticAugment | None = None,
        max_tries: int = 20,
    ) -> None:
        self.source = source
        self.num_frames = int(num_frames)
        self.max_objects = int(max_objects)
        self.min_pixels = int(min_pixels)
        self.composite_prob = float(composite_prob)
        lo, hi = composite_scale  # a list (from a config file) becomes a tuple
        self.composite_scale = (lo, hi)
        self.augment = augment or StaticAugment(crop=(crop[0], crop[1]))
        self.max_tries = int(max_tries)

    @property
    def num_sample_frames(self) -> int:
        return self.num_frames

    def __len__(self) -> int:
        return len(self.source)

    def _draw(self, rng, index, progress, max_objects):
        i = index % len(self.source)
        for attempt in range(self.max_tries):
            if attempt:
                i = int(rng.integers(len(self.source)))
            img, msk = self.source.item(i)
            f, m = self.augment(rng, img, msk, self.num_frames)
            present = _present(m[0], self.min_pixels)
            if present:
                pick = rng.permutation(present)[:max_objects].tolist()
                return f, m, [int(x) for x in pick], list(range(self.num_frames)), self.source.name(i)
        raise RuntimeError(
            f"no object visible in {self.max_tries} tries; check the masks or lower min_pixels"
        )


class MixedDataset(Dataset):
    """Several datasets, each repeated ``repeat`` times (STCN-style source weighting)."""

    def __init__(self, parts: Sequence[tuple[SampleDataset, int]]) -> None:
        self.parts = [(d, int(r)) for d, r in parts if int(r) > 0]
        if not self.parts:
            raise ValueError("no training data")
        frames = {d.num_sample_frames for d, _ in self.parts}
        if len(frames) > 1:
            raise ValueError(f"datasets give different numbers of frames per sample: {sorted(frames)}")
        self.num_sample_frames = frames.pop()
        self.offsets = np.cumsum([0] + [len(d) * r for d, r in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, seed, position, progress = _as_key(key)
        p = int(np.searchsorted(self.offsets, index, side="right") - 1)
        d, _ = self.parts[p]
        local = (index - int(self.offsets[p])) % len(d)
        return d[(local, seed, position, progress)]


# -- batches ------------------------------------------------------------------------------------
@dataclass
class TrainBatchSampler(Sampler):
    """Yields, for iterations ``start_iteration`` .. ``total_iterations - 1``, this process's batch of
    sample keys ``(index, seed, position, progress)``.

    The global sample stream is a sequence of seeded permutations of the dataset; global batch
    ``it`` covers stream positions ``it * world * batch`` onwards and process ``rank`` takes the
    ``batch`` positions starting at ``(it * world + rank) * batch``. The stream does not depend
    on the number of data workers, and the state needed to resume is the iteration number.
    """

    dataset_len: int
    batch_size: int
    total_iterations: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    start_iteration: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.dataset_len < 1:
            raise ValueError("empty dataset")
        self._perm = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.dataset_len)
        return np.random.default_rng([self.seed, 7, epoch]).permutation(self.dataset_len)

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.dataset_len)
        return int(self._perm(epoch)[offset])

    def batch(self, iteration: int) -> list[SampleKey]:
        base = (iteration * self.world_size + self.rank) * self.batch_size
        progress = iteration / max(1, self.total_iterations)
        return [(self.index_at(p), self.seed, p, progress) for p in range(base, base + self.batch_size)]

    def __iter__(self):
        for it in range(self.start_iteration, self.total_iterations):
            yield self.batch(it)

    def __len__(self) -> int:
        return max(0, self.total_iterations - self.start_iteration)

    def state_dict(self, iteration: int) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "iteration": int(iteration),
            "dataset_len": self.dataset_len,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }
