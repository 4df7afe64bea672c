"""pcvos.data low-level I/O: palette, atomic writes, masks, frames and video."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from pcvos.data.frames import (
    FrameFolder,
    VideoDecodeError,
    VideoReader,
    VideoWriter,
    list_frames,
    natural_key,
    open_frames,
    read_frame,
)
from pcvos.data.io_utils import atomic_write, save_indexed_png
from pcvos.data.masks import parse_mask, read_color_mask, read_mask, resize_labels
from pcvos.data.palette import DAVIS_PALETTE, colour_for

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAVIS16 = DATA / "davis2016-train"


def needs_davis16() -> Path:
    if not (DAVIS16 / "JPEGImages" / "480p" / "bear").is_dir():
        pytest.skip(f"real data not found at {DAVIS16}")
    return DAVIS16


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- palette


def test_palette_standard_entries():
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert colour_for(0) == (0, 0, 0)
    assert colour_for(1) == (128, 0, 0)
    assert colour_for(2) == (0, 128, 0)
    assert colour_for(3) == (128, 128, 0)
    assert colour_for(4) == (0, 0, 128)
    assert colour_for(255) == (224, 224, 192)
    assert len({tuple(c) for c in DAVIS_PALETTE}) == 256
    with pytest.raises(ValueError):
        colour_for(256)
    assert not DAVIS_PALETTE.flags.writeable


def test_palette_matches_real_annotations():
    root = needs_davis16()
    with Image.open(root / "Annotations" / "480p" / "bear" / "00000.png") as image:
        assert image.mode == "P"
        stored = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(stored, DAVIS_PALETTE[: len(stored)])


def test_indexed_png_round_trip(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 3:9] = 1
    labels[10:15, 5:25] = 7
    labels[0, :] = 255
    path = save_indexed_png(tmp_path / "sub" / "00000.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(np.asarray(image), labels)
    np.testing.assert_array_equal(palette, DAVIS_PALETTE)
    np.testing.assert_array_equal(read_mask(path), labels)
    assert leftovers(path.parent) == []


def test_save_indexed_png_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_indexed_png(tmp_path / "a.png", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        save_indexed_png(tmp_path / "a.png", np.full((2, 3), 300, np.int32))
    with pytest.raises(ValueError, match="integer"):
        save_indexed_png(tmp_path / "a.png", np.zeros((2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert list(tmp_path.iterdir()) == []

    target.write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_atomic_write_requires_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "x.bin", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_temp_keeps_extension(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.png", lambda tmp: (seen.append(tmp), Image.new("L", (2, 2)).save(tmp)))
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path


# ---------------------------------------------------------------- masks


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def test_mask_indexed_keeps_ids_and_void(tmp_path):
    labels = np.array([[0, 1, 4], [9, 255, 0]], np.uint8)
    path = save_indexed_png(tmp_path / "m.png", labels)
    out, description = parse_mask(path)
    np.testing.assert_array_equal(out, labels)
    assert out.dtype == np.uint8
    assert "indexed" in description and "[1, 4, 9]" in description and "void" in description


def test_mask_grayscale_binary_forms(tmp_path):
    a = np.array([[0, 255], [255, 0]], np.uint8)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "a.png", a)), a // 255)
    b = np.array([[0, 1], [1, 1]], np.uint8)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "b.png", b)), b)
    c = np.zeros((4, 4), np.uint8)  # empty mask
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "c.png", c)), c)
    d = a > 0  # 1-bit image
    Image.fromarray(d).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "1"
    np.testing.assert_array_equal(read_mask(tmp_path / "d.png"), a // 255)


def test_mask_grayscale_id_map_and_rejections(tmp_path):
    ids = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    labels, description = parse_mask(_save(tmp_path / "ids.png", ids))
    np.testing.assert_array_equal(labels, ids)
    assert "id map" in description
    soft = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # anti-aliased / soft mask
    with pytest.raises(ValueError, match=r"soft\.png: grayscale mask with 256 distinct values"):
        read_mask(_save(tmp_path / "soft.png", soft))
    stretched = np.array([[0, 128, 255]], np.uint8)  # ambiguous: not guessed
    with pytest.raises(ValueError, match="neither binary"):
        read_mask(_save(tmp_path / "stretched.png", stretched))
    # explicit modes resolve the ambiguity
    np.testing.assert_array_equal(parse_mask(tmp_path / "stretched.png", "binary")[0], [[0, 1, 1]])
    np.testing.assert_array_equal(parse_mask(tmp_path / "stretched.png", "ids")[0], stretched)


def test_mask_rgb_colours(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, :2] = (0, 255, 0)
    rgb[1, :3] = (255, 0, 0)
    rgb[3, 5] = (10, 20, 30)
    labels, colours = read_color_mask(_save(tmp_path / "c.png", rgb))
    # ids follow sorted colour order (by R, then G, then B)
    np.testing.assert_array_equal(colours, [[0, 0, 0], [0, 255, 0], [10, 20, 30], [255, 0, 0]])
    assert labels[0, 0] == 1 and labels[1, 0] == 3 and labels[3, 5] == 2 and labels[2, 2] == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), labels)

    # a later frame keeps the ids of the first one; a new colour gets the next id
    rgb2 = np.zeros((4, 6, 3), np.uint8)
    rgb2[0, 0] = (255, 0, 0)
    rgb2[2, 2] = (0, 0, 200)
    labels2, colours2 = read_color_mask(_save(tmp_path / "c2.png", rgb2), colours=colours)
    assert labels2[0, 0] == 3 and labels2[2, 2] == 4
    np.testing.assert_array_equal(colours2[4], [0, 0, 200])


def test_mask_rgb_in_davis_colours_uses_palette_ids(tmp_path):
    labels = np.array([[0, 2, 5], [255, 1, 0]], np.uint8)
    rgb = DAVIS_PALETTE[labels]
    out, colours = read_color_mask(_save(tmp_path / "davis_rgb.png", rgb))
    np.testing.assert_array_equal(out, labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "davis_rgb.png"), labels)
    assert colours.shape == (256, 3)


def test_mask_rgba_transparent_is_background(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)
    rgba[0, 1] = (0, 255, 0, 0)  # invisible
    labels = read_mask(_save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 0, 0]])


def test_mask_errors(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 4)).save(cmyk)
    with pytest.raises(
        ValueError, match=r"cmyk\.jpg: expected an indexed, grayscale or RGB mask, got mode CMYK"
    ):
        read_mask(cmyk)
    photo = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"photo\.png: RGB mask has \d+ distinct non-black colours"):
        read_mask(_save(tmp_path / "photo.png", photo))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image"):
        read_mask(text)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="unknown mask mode"):
        parse_mask(text, mode="weird")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected an indexed"):
        parse_mask(_save(tmp_path / "g.png", np.zeros((2, 2), np.uint8)), mode="indexed")


def test_real_frame_is_not_a_mask():
    root = needs_davis16()
    with pytest.raises(ValueError, match="distinct non-black colours"):
        read_mask(root / "JPEGImages" / "480p" / "bear" / "00000.jpg")


def test_real_annotation_reads_as_ids():
    root = needs_davis16()
    labels, description = parse_mask(root / "Annotations" / "480p" / "bear" / "00000.png")
    assert labels.shape == (480, 854) and set(np.unique(labels)) == {0, 1}
    assert description.startswith("indexed PNG")


def test_resize_labels_nearest():
    labels = np.array([[1, 2], [3, 255]], np.uint8)
    up = resize_labels(labels, (4, 4))
    np.testing.assert_array_equal(up, np.kron(labels, np.ones((2, 2), np.uint8)))
    down = resize_labels(up, (2, 2))
    np.testing.assert_array_equal(down, labels)
    odd = resize_labels(np.arange(35, dtype=np.uint8).reshape(5, 7), (13, 3))
    assert odd.shape == (13, 3) and set(np.unique(odd)) <= set(range(35))
    with pytest.raises(ValueError):
        resize_labels(labels.astype(np.float32), (4, 4))


# ---------------------------------------------------------------- frames


def test_natural_key():
    names = ["10.jpg", "2.jpg", "1.jpg", "img_010.png", "img_9.png", "IMG_11.png", "a.jpg"]
    assert sorted(names, key=natural_key) == [
        "1.jpg",
        "2.jpg",
        "10.jpg",
        "a.jpg",
        "img_9.png",
        "img_010.png",
        "IMG_11.png",
    ]
    # mixed shapes of names never compare int with str
    assert sorted(["a1b", "a1", "a1b2", "a"], key=natural_key) == ["a", "a1", "a1b", "a1b2"]


def test_list_frames_and_folder_source(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, name in enumerate(["10.png", "2.jpg", "1.JPG"]):
        Image.fromarray(np.full((6, 8, 3), 20 * i, np.uint8)).save(
            frames / name, format="PNG" if name.endswith("png") else "JPEG"
        )
    (frames / "notes.txt").write_text("x")
    (frames / ".hidden.jpg").write_bytes(b"")
    assert [p.name for p in list_frames(frames)] == ["1.JPG", "2.jpg", "10.png"]

    source = open_frames(frames)
    assert isinstance(source, FrameFolder)
    assert len(source) == 3 and source.fps is None and source.size == (6, 8)
    assert source.names == ["1", "2", "10"]
    got = list(source)
    assert len(got) == 3 and all(f.shape == (6, 8, 3) and f.dtype == np.uint8 for f in got)
    np.testing.assert_array_equal(got[2], np.zeros((6, 8, 3), np.uint8))

    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(frames / "11.png")
    with pytest.raises(ValueError, match=r"11\.png: frame size 5x8 differs"):
        list(open_frames(frames))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no frames found"):
        list_frames(empty)
    with pytest.raises(FileNotFoundError):
        list_frames(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "nope.mp4")


def test_read_frame_modes(tmp_path):
    Image.fromarray(np.full((3, 4), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((3, 4, 4), 9, np.uint8)).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        frame = read_frame(tmp_path / name)
        assert frame.shape == (3, 4, 3) and frame.dtype == np.uint8 and frame.flags.writeable
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        read_frame(tmp_path / "bad.jpg")


# ---------------------------------------------------------------- video


def _davis_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    root = needs_davis16()
    paths = list_frames(root / "JPEGImages" / "480p" / "bear")[:count]
    return [cv2.resize(read_frame(p), (size[1], size[0]), interpolation=cv2.INTER_AREA) for p in paths]


def test_real_sequence_mp4_round_trip(tmp_path):
    frames = _davis_frames(8, (120, 214))
    path = tmp_path / "bear.mp4"
    with VideoWriter(path, fps=24, size=(120, 214)) as writer:
        for frame in frames:
            writer.write(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bear.mp4"]

    reader = open_frames(path)
    assert isinstance(reader, VideoReader)
    assert reader.size == (120, 214) and reader.fps == pytest.approx(24)
    assert reader.num_frames == 8 and len(reader) == 8
    decoded = list(reader)
    assert len(decoded) == 8 and reader.frames_read == 8
    assert all(f.shape == (120, 214, 3) and f.dtype == np.uint8 for f in decoded)
    error = np.mean(
        [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, frames, strict=True)]
    )
    assert error < 8, error
    assert len(list(reader)) == 8  # iterable more than once


def test_video_writer_pads_odd_sizes_and_webm(tmp_path):
    frame = np.random.default_rng(1).integers(0, 256, (21, 33, 3), dtype=np.uint8)
    with VideoWriter(tmp_path / "odd.mp4", fps=10) as writer:
        for _ in range(3):
            writer.write(frame)
    reader = VideoReader(tmp_path / "odd.mp4")
    assert reader.size == (22, 34) and len(list(reader)) == 3
    with VideoWriter(tmp_path / "clip.webm", fps=10) as writer:
        writer.write(frame[:20, :32])
    assert len(list(open_frames(tmp_path / "clip.webm"))) == 1


def test_video_writer_leaves_nothing_on_error(tmp_path):
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", fps=5) as writer:
            writer.write(frame)
            raise RuntimeError("crash")
    with pytest.raises(ValueError, match="expected 16x16"):
        with VideoWriter(tmp_path / "v.mp4", fps=5) as writer:
            writer.write(frame)
            writer.write(np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "v.mp4", fps=5):
            pass
    assert list(tmp_path.iterdir()) == []


def _noise_video(path: Path, count: int, options: dict[str, str] | None = None) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(count):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_mp4_header_at_end_is_a_clean_error(tmp_path):
    path = tmp_path / "cut.mp4"
    _noise_video(path, 20)
    _truncate(path, 0.5)
    with pytest.raises(ValueError, match=r"cut\.mp4: not a readable video file"):
        open_frames(path)


def test_truncated_mp4_breaks_part_way(tmp_path):
    path = tmp_path / "cut.mp4"
    _noise_video(path, 20, {"movflags": "faststart"})  # index first, so the cut hits the frames
    _truncate(path, 0.5)
    reader = VideoReader(path)
    assert reader.num_frames == 20
    frames = []
    with pytest.raises(VideoDecodeError) as info:
        for frame in reader:
            frames.append(frame)
    assert 0 < info.value.frame_index < 20 and info.value.frame_index == len(frames)
    assert "cut.mp4" in str(info.value) and f"frame {len(frames)}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_mkv_is_noticed(tmp_path):
    path = tmp_path / "cut.mkv"
    _noise_video(path, 20)
    _truncate(path, 0.5)
    with pytest.warns(RuntimeWarning, match="truncated"):
        count = sum(1 for _ in VideoReader(path))
    assert 0 < count < 20
    with pytest.raises(VideoDecodeError) as info:
        for _ in VideoReader(path, strict=True):
            pass
    assert info.value.frame_index == count


def test_non_video_inputs(tmp_path):
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(ValueError, match=r"clip\.mp4: not a readable video file"):
        VideoReader(fake)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: neither a readable video file nor a folder"):
        open_frames(other)
    image = tmp_path / "one.png"
    Image.new("RGB", (4, 4)).save(image)
    with pytest.raises(ValueError, match="single image"):
        open_frames(image)
    with pytest.raises(FileNotFoundError):
        VideoReader(tmp_path / "missing.mp4")

    audio = tmp_path / "sound.mkv"  # a real media file without a video stream
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(ValueError, match=r"sound\.mkv: no video stream"):
        open_frames(audio)


def test_strict_reader_allows_an_edit_list_gap_only(tmp_path):
    from pcvos.data.frames import EDIT_LIST_SLACK

    path = tmp_path / "clip.mp4"
    _noise_video(path, 8)
    reader = VideoReader(path, strict=True)
    assert reader.num_frames_exact and reader.num_frames == 8
    reader.num_frames = 8 + EDIT_LIST_SLACK  # as if an edit list hid two declared frames
    with pytest.warns(RuntimeWarning, match="truncated"):
        assert sum(1 for _ in reader) == 8
    reader.num_frames = 8 + EDIT_LIST_SLACK + 1  # more than an edit list hides: a cut file
    with pytest.raises(VideoDecodeError, match="declares 11"):
        for _ in reader:
            pass
    assert open_frames(path, strict=True).strict and not open_frames(path).strict
