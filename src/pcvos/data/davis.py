"""DAVIS 2016 / 2017 reader (semi-supervised layout).

A DAVIS root looks like::

    ROOT/ImageSets/2017/val.txt            one sequence name per line (also 2016/, train.txt …)
    ROOT/ImageSets/480p/val.txt            DAVIS 2016 release form: "/JPEGImages/480p/bear/00000.jpg
                                           /Annotations/480p/bear/00000.png" per line
    ROOT/JPEGImages/480p/<seq>/00000.jpg …
    ROOT/Annotations/480p/<seq>/00000.png …

Everything is lazy: building a :class:`DavisDataset` reads only the image-set file, and
``ds[name]`` only lists the sequence's folders. A root with ``Annotations/`` but no
``JPEGImages/`` is fine (for evaluation); reading a frame then raises ``FileNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pcvos.data.frames import list_frames, natural_key, read_frame
from pcvos.data.io_utils import PathLike
from pcvos.data.masks import object_ids, read_mask
from pcvos.data.palette import VOID_LABEL

__all__ = ["DavisDataset", "Sequence"]

_LAYOUT_HINT = "expected a DAVIS root with ImageSets/, JPEGImages/, Annotations/"


class Sequence:
    """One video: ``name``, ``frame_paths``, ``mask_paths`` and lazy readers.

    ``len()`` is the number of frames (the number of annotations when there are no frames).
    ``mask(i)`` is the annotation of frame ``i`` (matched by file stem); ``binary=True`` (DAVIS
    2016) merges all objects into label 1 (255 = void stays 255), so 0/255 and 0/1 masks and
    multi-object masks all read as 0/1.
    """

    def __init__(
        self, name: str, frame_paths: list[Path], mask_paths: list[Path], *, binary: bool = False
    ) -> None:
        self.name = name
        self.frame_paths = list(frame_paths)
        self.mask_paths = list(mask_paths)
        self.binary = binary
        self._mask_by_stem = {p.stem: p for p in self.mask_paths}

    @property
    def frame_names(self) -> list[str]:
        """Frame names without extension (``"00000"`` …), from the frames or else the masks."""
        return [p.stem for p in (self.frame_paths or self.mask_paths)]

    def __len__(self) -> int:
        return len(self.frame_paths) if self.frame_paths else len(self.mask_paths)

    def __repr__(self) -> str:
        return f"Sequence({self.name!r}, {len(self.frame_paths)} frames, {len(self.mask_paths)} masks)"

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB."""
        if not self.frame_paths:
            raise FileNotFoundError(f"{self.name}: no JPEGImages for this sequence (annotations-only root)")
        return read_frame(self.frame_paths[index])

    def frames(self) -> np.ndarray:
        """All frames as one (T, H, W, 3) uint8 array (loads the whole sequence)."""
        first = self.frame(0)
        out = np.empty((len(self),) + first.shape, dtype=np.uint8)
        out[0] = first
        for i in range(1, len(self)):
            frame = self.frame(i)
            if frame.shape != first.shape:
                raise ValueError(
                    f"{self.frame_paths[i]}: frame shape {frame.shape} differs from {first.shape}"
                )
            out[i] = frame
        return out

    def has_mask(self, index: int) -> bool:
        """Whether frame ``index`` has an annotation file."""
        return self.frame_names[index] in self._mask_by_stem

    def mask_path(self, index: int) -> Path:
        """Annotation path of frame ``index`` (``FileNotFoundError`` if the frame has none)."""
        if not self.frame_paths:
            return self.mask_paths[index]
        stem = self.frame_names[index]
        try:
            return self._mask_by_stem[stem]
        except KeyError:
            raise FileNotFoundError(f"{self.name}: frame {index} ({stem}) has no annotation") from None

    def _read(self, path: Path) -> np.ndarray:
        labels = read_mask(path)
        if self.binary:
            labels = np.where(labels == VOID_LABEL, VOID_LABEL, labels != 0).astype(np.uint8)
        return labels

    def mask(self, index: int) -> np.ndarray:
        """Labels (H, W) uint8 of frame ``index``."""
        return self._read(self.mask_path(index))

    def masks(self) -> np.ndarray:
        """All annotations (``mask_paths`` order) as one (N, H, W) uint8 array."""
        if not self.mask_paths:
            raise FileNotFoundError(f"{self.name}: no annotations for this sequence")
        return np.stack([self._read(p) for p in self.mask_paths])

    def first_mask(self) -> np.ndarray:
        """Labels of the first annotation (frame 0 in DAVIS)."""
        if not self.mask_paths:
            raise FileNotFoundError(f"{self.name}: no annotations for this sequence")
        return self._read(self.mask_paths[0])

    @property
    def object_ids(self) -> list[int]:
        """Object ids in the first annotation (0 and 255 excluded)."""
        return object_ids(self.first_mask())

    @property
    def num_objects(self) -> int:
        """Number of distinct objects in the first annotation."""
        return len(self.object_ids)


class DavisDataset:
    """``DavisDataset(root, year="2017", subset="val", resolution="480p")``.

    ``year`` is "2016" or "2017" (ints accepted); ``subset`` names the image-set file
    ("train", "val", "test-dev", …); ``resolution`` is "480p" or "Full-Resolution" (DAVIS 2016's
    "1080p" works too). For ``year="2016"`` the ``ImageSets/2016/<subset>.txt`` name list is used
    when present, else the DAVIS 2016 release form ``ImageSets/<resolution>/<subset>.txt``; masks
    are then read as single-object 0/1 (see :class:`Sequence`).

    ``.sequences`` lists the names in file order; ``ds[name]`` gives a lazy :class:`Sequence`;
    ``len(ds)``, ``name in ds`` and iteration (over :class:`Sequence` objects) work too.
    """

    def __init__(
        self,
        root: PathLike,
        year: str | int = "2017",
        subset: str = "val",
        resolution: str = "480p",
    ) -> None:
        self.root = Path(root)
        self.year = str(year)
        self.subset = subset
        self.resolution = resolution
        if self.year not in ("2016", "2017"):
            raise ValueError(f"year must be '2016' or '2017', got {year!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: DAVIS root not found; {_LAYOUT_HINT}")
        if not (self.root / "JPEGImages").is_dir() and not (self.root / "Annotations").is_dir():
            raise FileNotFoundError(
                f"{self.root}: neither JPEGImages/ nor Annotations/ found; {_LAYOUT_HINT}"
            )
        self._listed: dict[str, tuple[list[Path], list[Path]]] = {}
        self.image_set = self._find_image_set()
        self.sequences: list[str] = self._read_image_set(self.image_set)
        if not self.sequences:
            raise ValueError(f"{self.image_set}: the image set lists no sequences")

    def _find_image_set(self) -> Path:
        names = self.root / "ImageSets" / self.year / f"{self.subset}.txt"
        if names.is_file():
            return names
        tried = [names]
        if self.year == "2016":
            res_dirs = [self.resolution] + (["1080p"] if self.resolution == "Full-Resolution" else [])
            for res in res_dirs:
                candidate = self.root / "ImageSets" / res / f"{self.subset}.txt"
                if candidate.is_file():
                    return candidate
                tried.append(candidate)
        shown = " or ".join(str(p.relative_to(self.root)) for p in tried)
        raise FileNotFoundError(f"{shown} not found under {self.root}; {_LAYOUT_HINT}")

    def _read_image_set(self, path: Path) -> list[str]:
        sequences: list[str] = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) == 1 and "/" not in tokens[0]:
                if tokens[0] not in self._listed:
                    sequences.append(tokens[0])
                    self._listed[tokens[0]] = ([], [])
                continue
            # DAVIS 2016 form: "/JPEGImages/480p/<seq>/<frame>.jpg [/Annotations/480p/<seq>/<frame>.png]"
            parts = Path(tokens[0].lstrip("/")).parts
            if len(tokens) > 2 or len(parts) < 3 or parts[0] != "JPEGImages":
                raise ValueError(
                    f"{path}:{number}: expected a sequence name or "
                    "'/JPEGImages/<res>/<seq>/<frame>.jpg /Annotations/<res>/<seq>/<frame>.png', "
                    f"got {line!r}"
                )
            name = parts[-2]
            if name not in self._listed:
                sequences.append(name)
                self._listed[name] = ([], [])
            frames, masks = self._listed[name]
            frames.append(self.root / tokens[0].lstrip("/"))
            if len(tokens) == 2:
                masks.append(self.root / tokens[1].lstrip("/"))
        return sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __contains__(self, name: object) -> bool:
        return name in self._listed

    def __iter__(self) -> Iterator[Sequence]:
        return (self[name] for name in self.sequences)

    def __getitem__(self, name: str) -> Sequence:
        if name not in self._listed:
            raise KeyError(f"{name!r} is not in {self.image_set.relative_to(self.root)}")
        binary = self.year == "2016"
        frames, masks = self._listed[name]
        if frames:  # explicit file lists (DAVIS 2016 form)
            have_frames = frames[0].parent.is_dir()
            if not have_frames and not (masks and masks[0].parent.is_dir()):
                raise FileNotFoundError(
                    f"{name}: neither {frames[0].parent} nor the annotation folder found under {self.root}"
                )
            return Sequence(name, frames if have_frames else [], masks, binary=binary)
        image_dir = self.root / "JPEGImages" / self.resolution / name
        mask_dir = self.root / "Annotations" / self.resolution / name
        frame_paths = list_frames(image_dir) if image_dir.is_dir() else []
        mask_paths = (
            sorted(mask_dir.glob("*.png"), key=lambda p: natural_key(p.name)) if mask_dir.is_dir() else []
        )
        if not frame_paths and not mask_paths:
            raise FileNotFoundError(
                f"{name}: neither JPEGImages/{self.resolution}/{name}/ nor "
                f"Annotations/{self.resolution}/{name}/ found under {self.root}"
            )
        return Sequence(name, frame_paths, mask_paths, binary=binary)

    def __repr__(self) -> str:
        return (
            f"DavisDataset({str(self.root)!r}, year={self.year!r}, subset={self.subset!r}, "
            f"{len(self)} sequences)"
        )
