"""pcvos.data dataset readers: DAVIS 2016/2017 and YouTube-VOS, and the YouTube-VOS submission writer."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcvos.data.davis import DavisDataset
from pcvos.data.io_utils import save_indexed_png
from pcvos.data.masks import read_mask
from pcvos.data.palette import DAVIS_PALETTE
from pcvos.data.youtube import YouTubeVOSDataset, write_youtube_submission

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAVIS16 = DATA / "davis2016-train"


@pytest.fixture
def davis16() -> Path:
    if not (DAVIS16 / "ImageSets" / "2016" / "train.txt").is_file():
        pytest.skip(f"real data not found at {DAVIS16}")
    return DAVIS16


def _jpeg(path: Path, value: int, size: tuple[int, int] = (12, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path, quality=95)


# ---------------------------------------------------------------- DAVIS, real data


def test_davis_real_names_form(davis16):
    ds = DavisDataset(davis16, year="2016", subset="train")
    assert len(ds) == 30 and ds.sequences[0] == "bear" and "train" in ds.sequences
    seq = ds["bear"]
    assert seq.name == "bear" and len(seq) == 82 == len(seq.frame_paths) == len(seq.mask_paths)
    assert seq.frame_paths[0].name == "00000.jpg" and seq.frame_paths[10].name == "00010.jpg"
    frame = seq.frame(3)
    assert frame.shape == (480, 854, 3) and frame.dtype == np.uint8
    mask = seq.mask(3)
    assert mask.shape == (480, 854) and set(np.unique(mask)) == {0, 1}
    assert seq.num_objects == 1 and seq.object_ids == [1]
    np.testing.assert_array_equal(seq.first_mask(), seq.mask(0))
    assert seq.frame_names[:2] == ["00000", "00001"]


def test_davis_real_2016_release_form(davis16, tmp_path):
    root = tmp_path / "DAVIS"
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(davis16 / "JPEGImages")
    (root / "Annotations").symlink_to(davis16 / "Annotations")
    lines = []
    for name, count in (("boat", 3), ("bear", 4)):
        lines += [
            f"/JPEGImages/480p/{name}/{i:05d}.jpg /Annotations/480p/{name}/{i:05d}.png" for i in range(count)
        ]
    (root / "ImageSets" / "480p" / "val.txt").write_text("\n".join(lines) + "\n")
    ds = DavisDataset(root, year=2016, subset="val")
    assert ds.sequences == ["boat", "bear"]
    seq = ds["bear"]
    assert len(seq) == 4 and [p.name for p in seq.mask_paths] == [f"{i:05d}.png" for i in range(4)]
    assert seq.frame(3).shape == (480, 854, 3) and set(np.unique(seq.mask(3))) == {0, 1}
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/val\.txt not found under"):
        DavisDataset(root, year="2017", subset="val")


def test_davis_real_annotations_only(davis16, tmp_path):
    root = tmp_path / "gt"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\nboat\n")
    (root / "Annotations").symlink_to(davis16 / "Annotations")
    ds = DavisDataset(root)
    seq = ds["boat"]
    assert seq.frame_paths == [] and len(seq) == len(seq.mask_paths) > 0
    assert seq.mask(0).shape == (480, 854) and seq.num_objects == 1
    with pytest.raises(FileNotFoundError, match="annotations-only"):
        seq.frame(0)


# ---------------------------------------------------------------- DAVIS, generated


@pytest.fixture
def tiny_davis(tmp_path) -> Path:
    """A 2017-style root: 'multi' with ids 1, 2 (P mode), 'gray' with 2016-style 0/255 grayscale masks."""
    root = tmp_path / "DAVIS"
    for i in range(3):
        _jpeg(root / "JPEGImages" / "480p" / "multi" / f"{i:05d}.jpg", 40 * i)
        labels = np.zeros((12, 16), np.uint8)
        labels[:4, :4] = 1
        labels[6:, 8:] = 2
        save_indexed_png(root / "Annotations" / "480p" / "multi" / f"{i:05d}.png", labels)
        _jpeg(root / "JPEGImages" / "480p" / "gray" / f"{i:05d}.jpg", 10)
        gray = np.zeros((12, 16), np.uint8)
        gray[2:5, 2:5] = 255
        (root / "Annotations" / "480p" / "gray").mkdir(parents=True, exist_ok=True)
        Image.fromarray(gray).save(root / "Annotations" / "480p" / "gray" / f"{i:05d}.png")
    for year in ("2016", "2017"):
        (root / "ImageSets" / year).mkdir(parents=True)
        (root / "ImageSets" / year / "val.txt").write_text("multi\ngray\n")
    return root


def test_davis_generated_years(tiny_davis):
    ds17 = DavisDataset(tiny_davis, year="2017", subset="val")
    multi = ds17["multi"]
    assert multi.num_objects == 2 and multi.object_ids == [1, 2]
    frames = multi.frames()
    assert frames.shape == (3, 12, 16, 3) and frames.dtype == np.uint8
    assert abs(int(frames[2].mean()) - 80) <= 2
    assert multi.masks().shape == (3, 12, 16)
    gray = ds17["gray"]
    assert set(np.unique(gray.mask(1))) == {0, 1}  # 0/255 → 0/1

    ds16 = DavisDataset(tiny_davis, year="2016", subset="val")
    merged = ds16["multi"].mask(0)  # DAVIS 2016 is single-object: all ids merge into 1
    assert set(np.unique(merged)) == {0, 1} and ds16["multi"].num_objects == 1
    assert [s.name for s in ds16] == ["multi", "gray"]


def test_davis_errors(tiny_davis, tmp_path):
    with pytest.raises(FileNotFoundError, match="DAVIS root not found"):
        DavisDataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError, match="expected a DAVIS root with ImageSets/, JPEGImages/, Annotations/"
    ):
        DavisDataset(empty)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/2017/train\.txt not found under"):
        DavisDataset(tiny_davis, subset="train")
    with pytest.raises(ValueError, match="year"):
        DavisDataset(tiny_davis, year="2018")
    (tiny_davis / "ImageSets" / "2017" / "bad.txt").write_text("/some/thing odd here\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected a sequence name"):
        DavisDataset(tiny_davis, subset="bad")
    (tiny_davis / "ImageSets" / "2017" / "ghost.txt").write_text("ghost\n")
    ds = DavisDataset(tiny_davis, subset="ghost")
    with pytest.raises(FileNotFoundError, match="neither JPEGImages/480p/ghost/ nor Annotations/480p/ghost/"):
        ds["ghost"]
    with pytest.raises(KeyError, match="nope"):
        DavisDataset(tiny_davis)["nope"]
    (tiny_davis / "Annotations" / "480p" / "multi" / "00002.png").unlink()
    seq = DavisDataset(tiny_davis)["multi"]
    assert seq.has_mask(1) and not seq.has_mask(2)
    with pytest.raises(FileNotFoundError, match=r"multi: frame 2 \(00002\) has no annotation"):
        seq.mask(2)


# ---------------------------------------------------------------- YouTube-VOS


@pytest.fixture
def tiny_youtube(tmp_path) -> Path:
    """Two videos of 20 frames: 'vidA' has objects 1, 3 at frame 0 and object 5 from frame 10;
    'vidB' starts being annotated at frame 5 with object 2."""
    root = tmp_path / "ytvos"
    meta = {"videos": {}}
    for video, annotated in (("vidA", {0: [1, 3], 10: [5]}), ("vidB", {5: [2]})):
        for i in range(20):
            name = f"{i:05d}"
            _jpeg(root / "valid_all_frames" / "JPEGImages" / video / f"{name}.jpg", i * 10)
            if i % 5 == 0:
                _jpeg(root / "valid" / "JPEGImages" / video / f"{name}.jpg", i * 10)
        objects = {}
        for frame, ids in annotated.items():
            labels = np.zeros((12, 16), np.uint8)
            for k, obj in enumerate(ids):
                labels[k * 3 : k * 3 + 2, 2:6] = obj
                objects[str(obj)] = {"frames": [f"{f:05d}" for f in range(frame, 20, 5)]}
            save_indexed_png(root / "valid" / "Annotations" / video / f"{frame:05d}.png", labels)
        meta["videos"][video] = {"objects": objects}
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    return root


def test_youtube_every_fifth_frame(tiny_youtube):
    ds = YouTubeVOSDataset(tiny_youtube)
    assert ds.videos == ["vidA", "vidB"] and len(ds) == 2
    video = ds["vidA"]
    assert video.frame_names == ["00000", "00005", "00010", "00015"]
    assert sorted(video.masks) == [0, 2]
    assert video.objects_first_frame == {1: 0, 3: 0, 5: 2}
    assert video.object_ids == [1, 3, 5]
    assert set(np.unique(video.masks[2])) == {0, 5}
    assert video.scored_frames == [0, 1, 2, 3]
    assert video.frame(1).shape == (12, 16, 3)
    assert video.frames().shape == (4, 12, 16, 3)
    assert "1" in video.meta["objects"]
    later = ds["vidB"]
    assert later.objects_first_frame == {2: 1} and later.scored_frames == [1, 2, 3]


def test_youtube_all_frames(tiny_youtube):
    ds = YouTubeVOSDataset(tiny_youtube, all_frames=True)
    video = ds["vidA"]
    assert len(video) == 20 and video.frame_names[7] == "00007"
    assert sorted(video.masks) == [0, 10]
    assert video.objects_first_frame == {1: 0, 3: 0, 5: 10}
    assert video.scored_frames == [0, 5, 10, 15]
    assert ds["vidB"].scored_frames == [5, 10, 15]
    assert abs(int(video.frame(7).mean()) - 70) <= 2


def test_youtube_errors(tiny_youtube, tmp_path):
    with pytest.raises(FileNotFoundError, match="YouTube-VOS root not found"):
        YouTubeVOSDataset(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"valid/JPEGImages/ not found"):
        YouTubeVOSDataset(tmp_path / "bare")
    only_valid = tmp_path / "only_valid"
    only_valid.mkdir()
    (only_valid / "valid").symlink_to(tiny_youtube / "valid")
    assert len(YouTubeVOSDataset(only_valid)["vidA"]) == 4
    with pytest.raises(FileNotFoundError, match=r"valid_all_frames/JPEGImages/ not found .*all_frames=True"):
        YouTubeVOSDataset(only_valid, all_frames=True)
    with pytest.raises(KeyError, match="vidZ"):
        YouTubeVOSDataset(tiny_youtube)["vidZ"]


def test_youtube_without_meta_lists_folders(tiny_youtube):
    (tiny_youtube / "valid" / "meta.json").unlink()
    ds = YouTubeVOSDataset(tiny_youtube)
    assert ds.videos == ["vidA", "vidB"] and ds["vidA"].meta == {}


# ---------------------------------------------------------------- submission


def _results():
    rng = np.random.default_rng(0)
    out = {}
    for video in ("vidA", "vidB"):
        for frame in ("00000", "00005"):
            labels = rng.integers(0, 4, (12, 16), dtype=np.uint8)
            labels[0, 0] = 5
            out[(video, frame)] = labels
    return out


def test_submission_zip_round_trip(tmp_path):
    results = _results()
    path = write_youtube_submission(
        tmp_path / "sub.zip", ((v, f + ".png" if v == "vidB" else f, lab) for (v, f), lab in results.items())
    )
    assert path == tmp_path / "sub.zip" and sorted(p.name for p in tmp_path.iterdir()) == ["sub.zip"]
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = sorted(archive.namelist())
        assert names == sorted(f"Annotations/{v}/{f}.png" for v, f in results)
        for (video, frame), labels in results.items():
            with Image.open(io.BytesIO(archive.read(f"Annotations/{video}/{frame}.png"))) as image:
                assert image.mode == "P"
                palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
                np.testing.assert_array_equal(palette, DAVIS_PALETTE)
                np.testing.assert_array_equal(np.asarray(image), labels)


def test_submission_folder_and_failures(tmp_path):
    results = _results()
    out = write_youtube_submission(tmp_path / "sub", ((v, f, lab) for (v, f), lab in results.items()))
    for (video, frame), labels in results.items():
        np.testing.assert_array_equal(read_mask(out / "Annotations" / video / f"{frame}.png"), labels)

    labels = results[("vidA", "00000")]
    with pytest.raises(ValueError, match="duplicate submission entry Annotations/vidA/00000.png"):
        write_youtube_submission(tmp_path / "dup.zip", [("vidA", "00000", labels), ("vidA", "00000", labels)])

    def crashing():
        yield "vidA", "00000", labels
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        write_youtube_submission(tmp_path / "crash.zip", crashing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    with pytest.raises(ValueError, match="invalid video or frame name"):
        write_youtube_submission(tmp_path / "bad.zip", [("../x", "00000", labels)])
