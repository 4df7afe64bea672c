"""COCO (RLE) and YOLO-seg export: round trips on real DAVIS masks, and `pcvos segment --export`.

tests/data/export_masks holds four DAVIS 2016 annotations (854x480): bmx-bumps 20 (a bike with
holes), dance-jump 40 (many small parts), kite-walk 20 (thin parts), bear 40 (one blob).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pcvos.cli import main
from pcvos.data import export_formats as ef
from pcvos.data.io_utils import save_indexed_png

mask_utils = pytest.importorskip("pycocotools.mask")

MASKS = sorted((Path(__file__).resolve().parent / "data" / "export_masks").glob("*.png"))


def _binary(path: Path) -> np.ndarray:
    return (np.array(Image.open(path)) > 0).astype(np.uint8)


def _two_objects() -> np.ndarray:
    """A real two-object label map: bear's mask as object 3, bmx-bumps' (with holes) as 7 over it."""
    labels = _binary(MASKS[0]) * 3
    labels[_binary(MASKS[1]) > 0] = 7
    return labels.astype(np.uint8)


def _rasterise(polys: list[tuple[int, np.ndarray]], shape: tuple[int, int], cls: int) -> np.ndarray:
    """Fill the polygons of one class as YOLO tools do: coordinates times the size, truncated."""
    h, w = shape
    out = np.zeros(shape, np.uint8)
    for c, poly in polys:
        if c == cls:
            cv2.fillPoly(out, [np.floor(poly * [w, h]).astype(np.int32)], 1)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_real_masks_are_there():
    assert len(MASKS) == 4


@pytest.mark.parametrize("path", MASKS, ids=lambda p: p.stem)
def test_coco_rle_decodes_to_exactly_the_mask(path):
    mask = _binary(path)
    doc = ef.coco_dataset([mask], [1], ["frame.jpg"])
    json.dumps(doc)  # JSON-ready: counts are text, numbers are Python numbers
    (ann,) = doc["annotations"]
    assert np.array_equal(mask_utils.decode(ann["segmentation"]), mask)
    assert ann["area"] == int(mask.sum())
    ys, xs = np.nonzero(mask)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_coco_document_of_a_video_with_two_objects():
    labels = _two_objects()
    empty = np.zeros_like(labels)
    only7 = np.where(labels == 7, 7, 0).astype(np.uint8)
    doc = ef.coco_dataset([labels, empty, only7], [3, 7], ["a.jpg", "b.jpg", "c.jpg"])
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert [im["file_name"] for im in doc["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert (doc["images"][0]["height"], doc["images"][0]["width"]) == labels.shape
    assert [c["id"] for c in doc["categories"]] == [3, 7]
    anns = doc["annotations"]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 3), (1, 7), (3, 7)]
    assert [a["id"] for a in anns] == [1, 2, 3]
    for a in anns:
        frame = [labels, empty, only7][a["image_id"] - 1]
        assert np.array_equal(
            mask_utils.decode(a["segmentation"]), (frame == a["category_id"]).astype(np.uint8)
        )


@pytest.mark.parametrize("path", MASKS, ids=lambda p: p.stem)
def test_yolo_polygons_rasterise_back(path):
    mask = _binary(path)
    polys = ef.yolo_polygons(mask, [1])
    assert polys and all(0 <= p.min() and p.max() <= 1 for _, p in polys)
    assert _iou(_rasterise(polys, mask.shape, 0), mask) > 0.9


def test_yolo_holes_stay_holes_and_classes_follow_the_id_order():
    labels = _two_objects()
    polys = ef.yolo_polygons(labels, [7, 3])  # class 0 = object 7, class 1 = object 3
    for cls, obj in ((0, 7), (1, 3)):
        # bmx-bumps' wheels are holes: filled in, its IoU would be far below this
        assert _iou(_rasterise(polys, labels.shape, cls), (labels == obj).astype(np.uint8)) > 0.98


def test_yolo_text_and_names(tmp_path):
    labels = _two_objects()
    text = ef.yolo_seg_text(labels, [3, 7])
    lines = text.splitlines()
    assert text.endswith("\n") and lines
    parsed = []
    for line in lines:
        cls, *coords = line.split()
        assert cls in ("0", "1") and len(coords) % 2 == 0 and len(coords) >= 6
        parsed.append((int(cls), np.array(coords, float).reshape(-1, 2)))
    assert _iou(_rasterise(parsed, labels.shape, 1), (labels == 7).astype(np.uint8)) > 0.98
    assert ef.yolo_seg_text(np.zeros_like(labels), [3, 7]) == ""
    ef.write_yolo_names(tmp_path / "classes.txt", [3, 7])
    assert (tmp_path / "classes.txt").read_text() == "object_3\nobject_7\n"
    assert not list(tmp_path.glob(".*.tmp*"))


def test_bad_arguments():
    assert ef.parse_export_formats(" COCO, yolo,coco") == ("coco", "yolo")
    for bad in ("png", "coco,", "coco,,yolo", ""):
        with pytest.raises(ValueError, match="unknown export format"):
            ef.parse_export_formats(bad)
    labels = _two_objects()
    with pytest.raises(ValueError, match="object_ids"):
        ef.yolo_polygons(labels, [3, 3])
    with pytest.raises(ValueError, match="object_ids"):
        ef.coco_annotations(labels, [0], 1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ef.yolo_seg_text(labels[None], [3])
    with pytest.raises(ValueError, match="file_names"):
        ef.coco_dataset([labels, labels], [3], ["a.jpg"])


# -- pcvos segment --export ----------------------------------------------------------------------
N = 4
SIZE = (120, 216)  # (h, w): small, so the stand-in network is quick


@pytest.fixture(scope="module")
def frames_and_mask(davis_root, tmp_path_factory):
    """A tiny real video: bmx-bumps' first frames as a frame folder, and frame 0's mask."""
    folder = tmp_path_factory.mktemp("frames")
    seq = "bmx-bumps"
    for i in range(N):
        im = Image.open(davis_root / f"JPEGImages/480p/{seq}/{i:05d}.jpg").convert("RGB")
        im.resize(SIZE[::-1], Image.BILINEAR).save(folder / f"{i:05d}.jpg")
    mask = np.array(Image.open(davis_root / f"Annotations/480p/{seq}/00000.png").resize(SIZE[::-1]))
    mask_png = save_indexed_png(folder.parent / "mask.png", (mask > 0).astype(np.uint8) * 5)
    return folder, mask_png


def _segment(*args) -> int:
    return main(["segment", *map(str, args), "--quiet", "--size", "native"])


def test_segment_exports_coco_and_yolo_beside_the_pngs(tmp_path, frames_and_mask):
    folder, mask_png = frames_and_mask
    out = tmp_path / "out"
    assert _segment(folder, "--mask", mask_png, "--out", out, "--export", "coco,yolo") == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(N)]
    doc = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == [f"{i:05d}.jpg" for i in range(N)]
    assert [c["id"] for c in doc["categories"]] == [5]
    by_image = {a["image_id"]: a for a in doc["annotations"]}
    yolo = out / "yolo"
    assert (yolo / "classes.txt").read_text() == "object_5\n"
    for i, png in enumerate(pngs):
        labels = np.array(Image.open(png))
        obj = (labels == 5).astype(np.uint8)
        if obj.any():
            assert np.array_equal(mask_utils.decode(by_image[i + 1]["segmentation"]), obj)
        else:
            assert i + 1 not in by_image
        lines = (yolo / f"{png.stem}.txt").read_text().splitlines()
        polys = [(int(c), np.array(v, float).reshape(-1, 2)) for c, *v in (ln.split() for ln in lines)]
        if obj.sum() > 100:  # tiny predictions aside, the polygons are the mask
            assert _iou(_rasterise(polys, obj.shape, 0), obj) > 0.9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["coco"] == str(out / "coco.json")
    assert summary["outputs"]["yolo"] == str(yolo)
    assert not list(tmp_path.rglob(".*.tmp*"))
    # the exports are pcvos' files: --overwrite replaces them, and a run without --export removes them
    assert _segment(folder, "--mask", mask_png, "--out", out, "--overwrite") == 0
    assert not (out / "coco.json").exists() and not list(yolo.glob("*.txt"))
    assert len(list(out.glob("*.png"))) == N


def test_a_video_file_exports_its_frames_as_numbered_images(tmp_path, frames_and_mask):
    from pcvos.data.frames import VideoWriter

    folder, mask_png = frames_and_mask
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, fps=10) as w:
        for path in sorted(folder.glob("*.jpg")):
            w.write(np.array(Image.open(path)))
    out = tmp_path / "out"
    assert _segment(video, "--mask", mask_png, "--out", out, "--export", "coco") == 0
    doc = json.loads((out / "coco.json").read_text())
    assert [(im["file_name"], im["frame_index"]) for im in doc["images"]] == [
        (f"{i:05d}.jpg", i) for i in range(N)
    ]
    assert not (out / "yolo").exists()


def test_unknown_export_format_exits_2_and_writes_nothing(tmp_path, frames_and_mask, capsys):
    folder, mask_png = frames_and_mask
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        _segment(folder, "--mask", mask_png, "--out", out, "--export", "coco,shapefile")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--export" in err and "'shapefile'" in err and "coco, yolo" in err
    assert "Traceback" not in err
    assert not out.exists()
