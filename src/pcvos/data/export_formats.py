"""Label maps -> the formats other tools read: COCO instance JSON with RLE masks, YOLO-seg polygons.

Pure functions of ``(H, W)`` label maps (0 = background, object ids 1..254) and the object ids,
plus writers that write atomically (:mod:`pcvos.data.io_utils`):

- COCO: :func:`coco_dataset` builds one instance-segmentation document for a video (one image per
  frame, one annotation per object present in a frame, its mask as a compressed RLE that
  ``pycocotools.mask.decode`` turns back into exactly the label map's pixels); the category of
  an object is its id, and ``track_id`` repeats it so the frames of one object can be linked.
  :func:`write_coco_json` writes it.
- YOLO-seg: :func:`yolo_seg_text` gives a frame's ``.txt`` (one line per polygon,
  ``class x1 y1 x2 y2 ...`` with coordinates divided by the width and height), the class index
  being the object's position in ``object_ids`` (slot order); :func:`yolo_names_text` the names
  file (line ``i`` names class ``i``). Polygons are the outer contours of each object's parts
  (``cv2.findContours``) with their holes spliced in through zero-width cuts (the format has
  no holes), and an object in several parts gives one line per part (nor multi-part polygons).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pcvos.data.io_utils import PathLike, atomic_write_text

__all__ = [
    "COCO_NAME",
    "EXPORT_FORMATS",
    "YOLO_FOLDER",
    "YOLO_NAMES",
    "coco_annotations",
    "coco_dataset",
    "coco_document",
    "coco_image",
    "object_name",
    "parse_export_formats",
    "write_coco_json",
    "write_yolo_frame",
    "write_yolo_names",
    "yolo_names_text",
    "yolo_polygons",
    "yolo_seg_text",
]

EXPORT_FORMATS: tuple[str, ...] = ("coco", "yolo")
COCO_NAME = "coco.json"  # beside the masks in the output folder
YOLO_FOLDER = "yolo"  # <folder>/<frame>.txt and the names file
YOLO_NAMES = "classes.txt"
# Decimals of the normalised YOLO coordinates: 1e-6 of a side is far below a pixel at any size.
YOLO_DECIMALS = 6
# A contour needs three points to enclose an area; fewer (a one-pixel part, a one-pixel-wide
# line seen edge-on) is not a polygon the format can hold.
MIN_POLYGON_POINTS = 3


def object_name(object_id: int) -> str:
    """The category / class name of an object: pcvos knows ids, not what the objects are."""
    return f"object_{int(object_id)}"


def _name(object_id: int, names: Mapping[int, str] | None) -> str:
    return names[object_id] if names is not None else object_name(object_id)


def parse_export_formats(text: str) -> tuple[str, ...]:
    """``"coco,yolo"`` -> ``("coco", "yolo")``: comma-separated, case-insensitive, duplicates
    dropped, in the given order. ``ValueError`` naming an unknown or empty format."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if name not in EXPORT_FORMATS:
            shown = repr(part.strip()) if part.strip() else "an empty name"
            raise ValueError(f"unknown export format {shown}; choose from {', '.join(EXPORT_FORMATS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a (H, W) label map, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{what}: expected integer labels, got dtype {arr.dtype}")
    return arr


def _check_ids(object_ids: Sequence[int]) -> list[int]:
    ids = [int(i) for i in object_ids]
    if len(set(ids)) != len(ids) or any(not 1 <= i <= 254 for i in ids):
        raise ValueError(f"object_ids must be distinct ids in 1..254, got {list(object_ids)}")
    return ids


def coco_annotations(
    labels: np.ndarray, object_ids: Sequence[int], image_id: int, first_id: int = 1
) -> list[dict[str, Any]]:
    """COCO annotations of one frame: one per object of ``object_ids`` present in ``labels``,
    numbered from ``first_id``; the mask is a compressed RLE (``counts`` as text, JSON-ready)."""
    # imported here: an install without pycocotools still segments and exports YOLO
    from pycocotools import mask as mask_utils

    arr = _check_labels(labels, f"image {image_id}")
    ids = [i for i in _check_ids(object_ids) if np.any(arr == i)]
    if not ids:
        return []
    # one encode call for all of the frame's objects: (H, W, N) in Fortran order, as pycocotools wants
    planes = np.asfortranarray(np.stack([arr == i for i in ids], axis=-1).astype(np.uint8))
    rles = mask_utils.encode(planes)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for n, (obj, rle) in enumerate(zip(ids, rles, strict=True)):
        out.append(
            {
                "id": first_id + n,
                "image_id": int(image_id),
                "category_id": obj,
                "track_id": obj,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(areas[n]),
                "bbox": [float(v) for v in boxes[n]],
                "iscrowd": 0,
            }
        )
    return out


def coco_image(index: int, file_name: str, height: int, width: int) -> dict[str, Any]:
    """The COCO image entry of frame ``index``: image id ``index + 1`` (COCO ids start at 1)."""
    return {
        "id": int(index) + 1,
        "file_name": str(file_name),
        "height": int(height),
        "width": int(width),
        "frame_index": int(index),
    }


def coco_document(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    object_ids: Sequence[int],
    names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Wrap images and annotations (from :func:`coco_image` / :func:`coco_annotations`) in a
    COCO document; each object is a category (id = the object id, name from ``names``, else
    ``object_<id>``)."""
    return {
        "info": {"description": "pcvos video object segmentation", "version": "1.0"},
        "images": sorted(images, key=lambda im: im["id"]),
        "annotations": annotations,
        "categories": [
            {"id": i, "name": _name(i, names), "supercategory": "object"} for i in _check_ids(object_ids)
        ],
    }


class CocoBuilder:
    """A video's COCO document built frame by frame, for writers that stream their frames."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, index: int, file_name: str, labels: np.ndarray, object_ids: Sequence[int]) -> None:
        """Frame ``index`` (image id ``index + 1``) named ``file_name``, with its objects' masks."""
        arr = _check_labels(labels, f"frame {index}")
        self.images.append(coco_image(index, file_name, *arr.shape))
        self.annotations.extend(coco_annotations(arr, object_ids, index + 1, len(self.annotations) + 1))

    def document(self, object_ids: Sequence[int], names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The :func:`coco_document` of the frames added so far."""
        return coco_document(self.images, self.annotations, object_ids, names)


def coco_dataset(
    label_maps: Iterable[np.ndarray], object_ids: Sequence[int], file_names: Sequence[str]
) -> dict[str, Any]:
    """One COCO instance-segmentation document for a video: image ``i + 1`` is frame ``i``
    (``file_name`` from ``file_names``, ``frame_index`` = i), categories are the objects."""
    ids = _check_ids(object_ids)
    builder = CocoBuilder()
    for index, labels in enumerate(label_maps):
        if index >= len(file_names):
            raise ValueError(f"file_names: {len(file_names)} names for more frames than that")
        builder.add(index, file_names[index], labels, ids)
    if len(builder.images) != len(file_names):
        raise ValueError(f"file_names: {len(file_names)} names for {len(builder.images)} frames")
    return builder.document(ids)


def write_coco_json(path: PathLike, dataset: dict[str, Any]) -> Path:
    """Write a :func:`coco_dataset` document to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(dataset, separators=(",", ":")))


def _with_holes(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One polygon for an outer contour and its holes: each hole is spliced in through a
    zero-width cut to its nearest point, going round the hole and back along the cut, so that
    filling the polygon (even-odd or non-zero) leaves the hole empty. YOLO-seg has no holes."""
    poly = outer
    for hole in holes:
        dist = ((poly[:, None, :].astype(np.int64) - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(dist.argmin()), dist.shape)
        poly = np.concatenate([poly[: i + 1], np.roll(hole, -j, axis=0), hole[j : j + 1], poly[i:]])
    return poly


def yolo_polygons(labels: np.ndarray, object_ids: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """``(class, (N, 2) float array of x, y in [0, 1])`` for every part of every object of
    ``object_ids`` in ``labels`` (its outer contour, holes spliced in); class = the object's
    index in ``object_ids``. Points are pixel centres over the width and height, so
    ``floor(x * W), floor(y * H)`` gives back the contour's pixels."""
    arr = _check_labels(labels, "labels")
    h, w = arr.shape
    scale = np.array([w, h], dtype=np.float64)
    out = []
    for cls, obj in enumerate(_check_ids(object_ids)):
        mask = (arr == obj).astype(np.uint8)
        if not mask.any():
            continue
        # two levels: outer contours and their holes (a part inside a hole is an outer contour again)
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for n, contour in enumerate(contours):
            if hierarchy[0, n, 3] != -1 or len(contour) < MIN_POLYGON_POINTS:
                continue
            holes = [c[:, 0, :] for c, hier in zip(contours, hierarchy[0], strict=True) if hier[3] == n]
            poly = _with_holes(contour[:, 0, :], [h for h in holes if len(h) >= MIN_POLYGON_POINTS])
            # contour points are pixel indices; pixel i spans [i, i + 1), so its centre is i + 0.5
            out.append((cls, (poly.astype(np.float64) + 0.5) / scale))
    return out


def yolo_seg_text(labels: np.ndarray, object_ids: Sequence[int]) -> str:
    """A frame's YOLO-seg label file: ``class x1 y1 x2 y2 ...`` per polygon, newline-terminated
    (empty when no object is present, which YOLO reads as a background image)."""
    lines = []
    for cls, poly in yolo_polygons(labels, object_ids):
        coords = " ".join(f"{v:.{YOLO_DECIMALS}f}" for v in poly.reshape(-1))
        lines.append(f"{cls} {coords}\n")
    return "".join(lines)


def yolo_names_text(object_ids: Sequence[int], names: Mapping[int, str] | None = None) -> str:
    """The names file: line ``i`` is class ``i``'s name (from ``names``, else ``object_<id>``)."""
    return "".join(f"{_name(i, names)}\n" for i in _check_ids(object_ids))


def write_yolo_frame(path: PathLike, labels: np.ndarray, object_ids: Sequence[int]) -> Path:
    """Write one frame's :func:`yolo_seg_text` to ``path`` atomically."""
    return atomic_write_text(path, yolo_seg_text(labels, object_ids))


def write_yolo_names(
    path: PathLike, object_ids: Sequence[int], names: Mapping[int, str] | None = None
) -> Path:
    """Write :func:`yolo_names_text` to ``path`` atomically."""
    return atomic_write_text(path, yolo_names_text(object_ids, names))
