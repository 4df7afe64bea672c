"""YouTube-VOS 2018 / 2019 ``valid`` (or ``test``) reader and submission writer.

Layout::

    ROOT/valid/JPEGImages/<video>/<frame>.jpg             every 5th frame (the scored ones)
    ROOT/valid_all_frames/JPEGImages/<video>/<frame>.jpg  optional: all frames (all_frames=True)
    ROOT/valid/Annotations/<video>/<frame>.png            a mask on each frame where objects first appear
    ROOT/valid/meta.json                                  the objects' frames:
        {"videos": {vid: {"objects": {"1": {"frames": [...]}}}}}

Object ids are not contiguous and objects may first appear after the first frame; the annotation
PNG of a frame holds the objects that first appear there.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from pcvos.data.frames import list_frames, natural_key, read_frame
from pcvos.data.io_utils import PathLike, atomic_write, encode_indexed_png, save_indexed_png
from pcvos.data.masks import object_ids, read_mask
from pcvos.data.palette import DAVIS_PALETTE

__all__ = ["YouTubeVOSDataset", "YouTubeVideo", "write_youtube_submission"]


class YouTubeVideo:
    """One YouTube-VOS video.

    ``frame_names`` / ``frame_paths``: the frames this reader iterates (all frames when
    ``all_frames=True``, else the every-5th frames of ``valid/JPEGImages``), in natural order;
    indices below refer to this list. ``frame(i)``, ``frames()`` load lazily.

    ``masks``: ``{frame_index: labels}`` for the annotated frames (read on first access);
    ``objects_first_frame``: ``{object_id: frame_index}`` where each object first appears;
    ``scored_frames``: indices of the frames the benchmark scores (those in ``valid/JPEGImages``
    from the first annotated frame on); ``meta``: this video's ``meta.json`` entry (or ``{}``).
    """

    def __init__(
        self,
        name: str,
        frame_paths: list[Path],
        annotation_paths: list[Path],
        scored_names: set[str],
        meta: dict | None = None,
    ) -> None:
        self.name = name
        self.frame_paths = frame_paths
        self.frame_names = [p.stem for p in frame_paths]
        self.annotation_paths = annotation_paths
        self.meta = meta or {}
        self._scored_names = scored_names
        index_of = {n: i for i, n in enumerate(self.frame_names)}
        self.annotated_frames: list[int] = []
        for path in annotation_paths:
            if path.stem not in index_of:
                raise ValueError(f"{path}: annotation for a frame that is not among the video's frames")
            self.annotated_frames.append(index_of[path.stem])

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __repr__(self) -> str:
        return f"YouTubeVideo({self.name!r}, {len(self)} frames, annotated {self.annotated_frames})"

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB."""
        return read_frame(self.frame_paths[index])

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Frames one at a time."""
        return (read_frame(p) for p in self.frame_paths)

    def frames(self) -> np.ndarray:
        """All frames as one (T, H, W, 3) uint8 array."""
        return np.stack(list(self.iter_frames()))

    @cached_property
    def masks(self) -> dict[int, np.ndarray]:
        """``{frame_index: labels (H, W) uint8}`` for the annotated frames (ids as stored)."""
        return {i: read_mask(p) for i, p in zip(self.annotated_frames, self.annotation_paths, strict=True)}

    @cached_property
    def objects_first_frame(self) -> dict[int, int]:
        """``{object_id: index of the first frame whose annotation shows it}``, sorted by id."""
        first: dict[int, int] = {}
        for index in sorted(self.masks):
            for obj in object_ids(self.masks[index]):
                first.setdefault(obj, index)
        return dict(sorted(first.items()))

    @property
    def object_ids(self) -> list[int]:
        """All object ids of the video, sorted."""
        return list(self.objects_first_frame)

    @property
    def scored_frames(self) -> list[int]:
        """Indices of the scored frames: in ``valid/JPEGImages``, from the first annotated frame on."""
        start = min(self.annotated_frames, default=len(self))
        return [i for i in range(start, len(self)) if self.frame_names[i] in self._scored_names]


class YouTubeVOSDataset:
    """``YouTubeVOSDataset(root, split="valid", all_frames=False)``.

    ``.videos``: video ids (``meta.json`` order if present, else sorted folder names);
    ``ds[video]`` gives a :class:`YouTubeVideo`; ``len()``, ``in`` and iteration work too.
    ``all_frames=True`` reads frames from ``ROOT/<split>_all_frames/JPEGImages``.
    """

    def __init__(self, root: PathLike, split: str = "valid", all_frames: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.all_frames = all_frames
        split_dir = self.root / split
        hint = f"expected ROOT/{split}/JPEGImages/ and ROOT/{split}/Annotations/ (YouTube-VOS layout)"
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: YouTube-VOS root not found; {hint}")
        self.image_dir = split_dir / "JPEGImages"
        self.annotation_dir = split_dir / "Annotations"
        for folder in (self.image_dir, self.annotation_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{folder.relative_to(self.root)}/ not found under {self.root}; {hint}"
                )
        self.all_frames_dir = self.root / f"{split}_all_frames" / "JPEGImages"
        if all_frames and not self.all_frames_dir.is_dir():
            raise FileNotFoundError(
                f"{self.all_frames_dir.relative_to(self.root)}/ not found under {self.root} "
                "(needed for all_frames=True)"
            )
        meta_path = split_dir / "meta.json"
        self.meta: dict = {}
        if meta_path.is_file():
            try:
                self.meta = json.loads(meta_path.read_text()).get("videos", {})
            except (json.JSONDecodeError, AttributeError) as err:
                raise ValueError(f"{meta_path}: not a YouTube-VOS meta.json ({err})") from err
        if self.meta:
            self.videos = list(self.meta)
        else:
            self.videos = sorted(
                (p.name for p in self.annotation_dir.iterdir() if p.is_dir()), key=natural_key
            )
        if not self.videos:
            raise ValueError(f"{split_dir}: no videos found")

    def __len__(self) -> int:
        return len(self.videos)

    def __contains__(self, video: object) -> bool:
        return video in self.videos

    def __iter__(self) -> Iterator[YouTubeVideo]:
        return (self[v] for v in self.videos)

    def __getitem__(self, video: str) -> YouTubeVideo:
        if video not in self.videos:
            raise KeyError(f"{video!r} is not a video of {self.root / self.split}")
        scored_paths = list_frames(self.image_dir / video)
        frame_paths = list_frames(self.all_frames_dir / video) if self.all_frames else scored_paths
        annotation_dir = self.annotation_dir / video
        if not annotation_dir.is_dir():
            raise FileNotFoundError(f"{annotation_dir}: no annotation folder for video {video}")
        annotations = sorted(annotation_dir.glob("*.png"), key=lambda p: natural_key(p.name))
        if not annotations:
            raise ValueError(f"{annotation_dir}: no annotation PNGs for video {video}")
        return YouTubeVideo(
            video, frame_paths, annotations, {p.stem for p in scored_paths}, self.meta.get(video, {})
        )

    def __repr__(self) -> str:
        return f"YouTubeVOSDataset({str(self.root)!r}, split={self.split!r}, {len(self)} videos)"


def _entry_name(video: str, frame: str) -> str:
    frame = Path(frame).stem if Path(frame).suffix.lower() in (".png", ".jpg", ".jpeg") else frame
    for part in (video, frame):
        if not part or "/" in part or "\\" in part or part in (".", ".."):
            raise ValueError(f"invalid video or frame name {part!r} for a submission entry")
    return f"Annotations/{video}/{frame}.png"


def write_youtube_submission(
    out: PathLike,
    results: Iterable[tuple[str, str, np.ndarray]],
    palette: np.ndarray = DAVIS_PALETTE,
) -> Path:
    """Write ``(video, frame_name, labels)`` results as a YouTube-VOS submission.

    Each result becomes ``Annotations/<video>/<frame_name>.png``, an indexed PNG with ``palette``
    (``frame_name`` may carry a .png/.jpg extension, which is dropped). If ``out`` ends in
    ``.zip`` a zip archive is written (atomically: a crash leaves no partial zip), else the files
    go under the folder ``out`` (each PNG written atomically). Duplicate entries are an error.
    Returns ``Path(out)``.
    """
    out = Path(out)
    seen: set[str] = set()

    def entries() -> Iterator[tuple[str, np.ndarray]]:
        for video, frame, labels in results:
            name = _entry_name(video, frame)
            if name in seen:
                raise ValueError(f"{out}: duplicate submission entry {name}")
            seen.add(name)
            yield name, labels

    if out.suffix.lower() == ".zip":

        def write_zip(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
                for name, labels in entries():
                    archive.writestr(name, encode_indexed_png(labels, palette, name=name))

        return atomic_write(out, write_zip)
    for name, labels in entries():
        save_indexed_png(out / name, labels, palette)
    return out
