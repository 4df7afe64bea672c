"""Issue 15, reader items: 16-bit frames (2), complete MKVs that are not truncated (4), decompression
bombs (7), rotation metadata and EXIF orientation (10). Every input is generated here."""

from __future__ import annotations

import struct
import warnings
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pcvos.cli import main
from pcvos.data.frames import VideoDecodeError, VideoReader, container_truncated, open_frames, read_frame
from pcvos.data.masks import read_mask

H, W = 48, 64
N = 12


def _codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _frame(i: int) -> np.ndarray:
    f = np.full((H, W, 3), 30, np.uint8)
    f[8:28, 8 + i : 28 + i] = (230, 40, 40)  # a red square moving right
    return f


def make_video(
    path: Path, n: int = N, *, vfr: bool = False, audio_seconds: float = 0.0, rotation: int = 0
) -> Path:
    """A real encoded video: optionally variable frame rate, a longer audio track or display rotation."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(_codec(), rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if vfr:
            s.time_base = Fraction(1, 1000)
        if rotation:
            s.set_display_rotation(rotation)
        audio = c.add_stream("aac", rate=44100) if audio_seconds else None
        pts = 0
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(_frame(i), format="rgb24")
            if vfr:  # frame gaps of 40 ms and 400 ms: the duration says nothing about the count
                vf.pts, vf.time_base = pts, Fraction(1, 1000)
                pts += 40 if i % 3 else 400
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if audio is not None:
            step = audio.frame_size or 1024
            for k in range(0, int(audio_seconds * 44100), step):
                af = av.AudioFrame.from_ndarray(np.zeros((1, step), np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts = 44100, k
                for p in audio.encode(af):
                    c.mux(p)
            for p in audio.encode():
                c.mux(p)
    return path


def _strict_count(path: Path) -> tuple[int, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = sum(1 for _ in VideoReader(path, strict=True))
    return count, [str(w.message) for w in caught]


# -- item 2: 16-bit grayscale frames ------------------------------------------------------------------


def test_16bit_grayscale_frame_is_scaled_not_white(tmp_path):
    gray16 = np.full((H, W), 4000, np.uint16)
    gray16[10:30, 10:30] = 60000  # the object: bright on a dark background, both above 255
    Image.fromarray(gray16).save(tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").mode.startswith("I;16")
    frame = read_frame(tmp_path / "f.png")
    assert frame.dtype == np.uint8 and frame.shape == (H, W, 3)
    assert frame[0, 0, 0] == round(4000 / 257) and frame[20, 20, 0] == round(60000 / 257)


def test_16bit_frames_segment_like_their_8bit_copy(tmp_path):
    deep, flat = tmp_path / "frames16", tmp_path / "frames8"
    deep.mkdir()
    flat.mkdir()
    for i in range(4):
        g = np.full((H, W), 3000, np.uint16)
        g[10:30, 10 + i : 30 + i] = 62000
        Image.fromarray(g).save(deep / f"{i}.png")
        Image.fromarray(np.rint(g / 257).astype(np.uint8)).save(flat / f"{i}.png")
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    for folder in (deep, flat):
        assert (
            main(
                [
                    "segment",
                    str(folder),
                    "--mask",
                    str(tmp_path / "m.png"),
                    "--out",
                    str(tmp_path / f"out_{folder.name}"),
                    "--quiet",
                ]
            )
            == 0
        )
    for i in range(4):  # a white 16-bit frame would give other masks than the same frame in 8 bits
        a = np.array(Image.open(tmp_path / "out_frames16" / f"{i}.png"))
        b = np.array(Image.open(tmp_path / "out_frames8" / f"{i}.png"))
        assert np.array_equal(a, b) and a.any()


def test_16bit_binary_mask_reads_as_one_object(tmp_path):
    m = np.zeros((H, W), np.uint16)
    m[5:9, 5:9] = 65535
    Image.fromarray(m).save(tmp_path / "m16.png")
    labels = read_mask(tmp_path / "m16.png")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1} and labels[6, 6] == 1


# -- item 4: complete MKVs are not "truncated" -------------------------------------------------------


@pytest.mark.parametrize("kind", ["vfr", "long_audio"])
def test_complete_mkv_is_not_truncated(tmp_path, kind):
    path = make_video(tmp_path / f"{kind}.mkv", vfr=kind == "vfr", audio_seconds=4.0 * (kind == "long_audio"))
    reader = VideoReader(path, strict=True)
    assert not reader.num_frames_exact and reader.num_frames != N  # the estimate is wrong, by design here
    assert not container_truncated(path)
    count, messages = _strict_count(path)
    assert count == N and messages == []


def test_complete_mkv_segments_every_frame(tmp_path):
    path = make_video(tmp_path / "long_audio.mkv", audio_seconds=4.0)
    mask = np.zeros((H, W), np.uint8)
    mask[8:28, 8:28] = 1
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    out = tmp_path / "out"
    assert main(["segment", str(path), "--mask", str(tmp_path / "m.png"), "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("*.png"))) == N and (out / "summary.json").exists()


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi"])
def test_cut_containers_are_still_truncated(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w") as c:
        codec = {"webm": "libvpx-vp9", "avi": "mpeg4"}.get(suffix[1:], _codec())
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(30):
            for p in s.encode(
                av.VideoFrame.from_ndarray(
                    np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8), format="rgb24"
                )
            ):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert not container_truncated(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    assert container_truncated(path)
    with pytest.raises(ValueError, match=f"clip\\{suffix}"):  # VideoDecodeError, or unreadable at open
        for _ in VideoReader(path, strict=True):
            pass


# -- item 7: decompression bombs -----------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny file whose header declares a side x side 8-bit grayscale image (never decoded here)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_a_clear_error(tmp_path, capsys):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match=r"bomb\.png: image too large"):
        read_frame(bomb)
    with pytest.raises(ValueError, match=r"bomb\.png: image too large"):
        read_mask(bomb)
    folder = tmp_path / "frames"
    folder.mkdir()
    write_bomb_png(folder / "0.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.pad(np.full((4, 4), 255, np.uint8), 10)).save(good)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "--mask", str(good), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "0.png" in err and "too large" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    frames = tmp_path / "ok_frames"
    frames.mkdir()
    Image.fromarray(_frame(0)).save(frames / "0.png")
    assert main(["segment", str(frames), "--mask", str(bomb), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# -- item 10: rotation metadata and EXIF orientation ---------------------------------------------------


def test_video_rotation_is_applied(tmp_path):
    path = make_video(tmp_path / "phone.mp4", n=4, rotation=90)
    reader = open_frames(path)
    assert reader.rotation == 90 and reader.size == (W, H)  # displayed: portrait
    first = next(iter(reader))
    assert first.shape == (W, H, 3)
    expected = np.rot90(_frame(0), 1)  # 90 degrees counter-clockwise, as a player shows it
    assert np.abs(first.astype(int) - expected.astype(int)).mean() < 6


def test_mask_drawn_on_the_displayed_view_is_accepted(tmp_path):
    path = make_video(tmp_path / "phone.mp4", n=4, rotation=90)
    displayed = np.rot90(np.pad(np.ones((20, 20), np.uint8), ((8, H - 28), (8, W - 28))), 1)
    Image.fromarray(np.ascontiguousarray(displayed) * 255).save(tmp_path / "m.png")
    out = tmp_path / "out"
    assert main(["segment", str(path), "--mask", str(tmp_path / "m.png"), "--out", str(out), "--quiet"]) == 0
    result = Image.open(out / "00000.png")
    assert result.size == (H, W)  # (width, height) of the displayed, portrait view
    assert np.array_equal(np.array(result) > 0, displayed > 0)


def test_exif_orientation_is_applied_to_frames_and_masks(tmp_path):
    stored = _frame(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_frame(i)).save(folder / f"{i}.jpg", exif=exif, quality=95)
    frame = read_frame(folder / "0.jpg")
    assert frame.shape == (W, H, 3)
    assert np.abs(frame.astype(int) - np.rot90(stored, -1).astype(int)).mean() < 6
    source = open_frames(folder)
    assert source.size == (W, H)
    shown = np.zeros((W, H), np.uint8)  # drawn on the displayed (portrait) view
    shown[8:28, 20:40] = 255
    Image.fromarray(shown).save(tmp_path / "m.png")
    out = tmp_path / "out"
    assert (
        main(["segment", str(folder), "--mask", str(tmp_path / "m.png"), "--out", str(out), "--quiet"]) == 0
    )
    assert Image.open(out / "0.png").size == (H, W)
    mask_with_exif = tmp_path / "m_exif.png"
    Image.fromarray(np.rot90(shown, 1).copy()).save(mask_with_exif, exif=exif)  # stored turned, EXIF says so
    assert np.array_equal(read_mask(mask_with_exif), (shown > 0).astype(np.uint8))


def test_truncated_video_still_fails_in_the_cli(tmp_path, capsys):
    path = make_video(tmp_path / "cut.mkv", n=30)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    mask = np.zeros((H, W), np.uint8)
    mask[8:28, 8:28] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "out"
    assert main(["segment", str(path), "--mask", str(tmp_path / "m.png"), "--out", str(out), "--quiet"]) == 2
    assert "cut.mkv" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    with pytest.raises(VideoDecodeError):
        for _ in VideoReader(path, strict=True):
            pass
