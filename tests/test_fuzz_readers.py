"""Fuzz-style: randomly corrupted PNG / JPEG / MP4 bytes fed to the readers and to `pcvos segment`.

The contract: a clear error (``ValueError`` / ``FileNotFoundError`` whose one-line message names the
file; exit code 2 in the CLI) or a correct result (frames of the right shape and type); never a
traceback, and never a result folder that looks complete (``summary.json``) when the run failed.
Seeded, so a failure reproduces.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pcvos.cli import main
from pcvos.data.frames import open_frames, read_frame
from pcvos.data.masks import read_mask

H, W = 48, 64
SEED = 15
CASES = 24  # corrupted files per format for the readers
CLI_CASES = 6  # corrupted videos and masks run through `pcvos segment`


def _picture(rng: np.random.Generator) -> np.ndarray:
    img = np.full((H, W, 3), 30, np.uint8)
    y, x = rng.integers(0, H - 16), rng.integers(0, W - 16)
    img[y : y + 16, x : x + 16] = rng.integers(0, 256, 3)
    return img


def _png(path: Path, rng) -> bytes:
    Image.fromarray(_picture(rng)).save(path)
    return path.read_bytes()


def _jpeg(path: Path, rng) -> bytes:
    Image.fromarray(_picture(rng)).save(path, quality=90)
    return path.read_bytes()


def _mp4(path: Path, rng, n: int = 10) -> bytes:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for _ in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(_picture(rng), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flipped bytes, a zeroed run, a cut, a duplicated run, random bytes spliced in."""
    b = bytearray(data)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 12))):
            b[i] ^= int(rng.integers(1, 256))
    elif kind == 1:
        i = int(rng.integers(0, len(b)))
        b[i : i + int(rng.integers(4, 256))] = bytes(min(len(b) - i, 256))[: len(b[i : i + 256])]
    elif kind == 2:
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == 3:
        i, j = sorted(int(v) for v in rng.integers(0, len(b), 2))
        b = b[:j] + b[i:j] + b[j:]
    else:
        i = int(rng.integers(0, len(b)))
        b = b[:i] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() + b[i:]
    return bytes(b)


def _clear(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, (ValueError, FileNotFoundError)), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert path.name in message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_corrupted_images(tmp_path, fmt):
    rng = np.random.default_rng(SEED)
    make = _png if fmt == "png" else _jpeg
    outcomes = {"error": 0, "read": 0}
    for k in range(CASES):
        original = make(tmp_path / f"orig.{fmt}", rng)
        path = tmp_path / f"bad{k}.{fmt}"
        path.write_bytes(corrupt(original, rng))
        for reader in (read_frame, read_mask):
            try:
                result = reader(path)
            except Exception as exc:  # noqa: BLE001 - the point is which exceptions escape
                _clear(exc, path)
                outcomes["error"] += 1
                continue
            # a corrupted header may declare another size: what is read is what the bytes say
            assert result.dtype == np.uint8 and result.ndim == (3 if reader is read_frame else 2), (
                result.shape
            )
            outcomes["read"] += 1
    assert outcomes["error"] > 0  # the corruption did hit something


def test_corrupted_videos(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    original = _mp4(tmp_path / "orig.mp4", rng)
    errors = 0
    for k in range(CASES):
        path = tmp_path / f"bad{k}.mp4"
        path.write_bytes(corrupt(original, rng))
        try:
            frames = list(open_frames(path, strict=True))
        except Exception as exc:  # noqa: BLE001
            _clear(exc, path)
            errors += 1
            continue
        assert frames and all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    assert errors > 0


def _cli(args: list, capsys) -> tuple[int, str]:
    code = main(["segment", *map(str, args), "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, (
        err
    )  # errors and warnings: one line each
    return code, err


def _looks_complete(out: Path) -> bool:
    return (out / "summary.json").exists()


def test_corrupted_inputs_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 2)
    original = _mp4(tmp_path / "orig.mp4", rng)
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    good_mask = (tmp_path / "m.png").read_bytes()
    for k in range(CLI_CASES):
        path = tmp_path / f"bad{k}.mp4"
        path.write_bytes(corrupt(original, rng))
        out = tmp_path / f"out{k}"
        code, err = _cli([path, "--mask", tmp_path / "m.png", "--out", out], capsys)
        assert code in (0, 2), err
        if code == 2:
            assert f"bad{k}.mp4" in err and not _looks_complete(out)
        else:  # a correct result: one mask per decoded frame, and the summary says so
            summary = json.loads((out / "summary.json").read_text())
            assert summary["frames"] == len(list(out.glob("*.png"))) > 0

        bad_mask = tmp_path / f"bad_mask{k}.png"
        bad_mask.write_bytes(corrupt(good_mask, rng))
        out = tmp_path / f"mout{k}"
        code, err = _cli([tmp_path / "orig.mp4", "--mask", bad_mask, "--out", out], capsys)
        assert code in (0, 2), err
        if code == 2:
            assert f"bad_mask{k}.png" in err and not out.exists()
        else:
            assert _looks_complete(out)
