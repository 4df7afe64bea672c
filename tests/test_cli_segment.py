"""`pcvos segment` end to end on a real DAVIS sequence (as an mp4 and as a frame folder), and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.cli import main
from pcvos.data.frames import VideoWriter
from pcvos.data.io_utils import save_indexed_png
from pcvos.model.checkpoint import default_weights_path

SIZE = (128, 224)  # (h, w): small so the full-size network stays quick on a CPU
N = 6


@pytest.fixture(scope="module")
def weights(tmp_path_factory, official_weights) -> Path:
    path = tmp_path_factory.mktemp("w") / "pcvos_standin.pt"
    pcvos.save_checkpoint(pcvos.load_model(official_weights()), path, half=True)
    return path


@pytest.fixture(scope="module")
def sequence(davis_root):
    seq = "bear"
    frames = [
        np.array(
            Image.open(davis_root / f"JPEGImages/480p/{seq}/{i:05d}.jpg")
            .convert("RGB")
            .resize(SIZE[::-1], Image.BILINEAR)
        )
        for i in range(N)
    ]
    mask = np.array(
        Image.open(davis_root / f"Annotations/480p/{seq}/00000.png").resize(SIZE[::-1], Image.NEAREST)
    )
    return np.stack(frames), mask


@pytest.fixture()
def video(tmp_path, sequence) -> Path:
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10) as w:
        for f in sequence[0]:
            w.write(f)
    return path


@pytest.fixture()
def mask_png(tmp_path, sequence) -> Path:
    return save_indexed_png(tmp_path / "mask.png", sequence[1])


def _run(*args) -> int:
    return main(["segment", *map(str, args), "--quiet"])


def test_mp4_end_to_end(tmp_path, video, mask_png, weights):
    out, ov, alpha = tmp_path / "out", tmp_path / "overlay.mp4", tmp_path / "alpha"
    assert (
        _run(
            video,
            "--mask",
            mask_png,
            "--weights",
            weights,
            "--out",
            out,
            "--overlay",
            ov,
            "--alpha",
            alpha,
            "--clip-length",
            3,
        )
        == 0
    )
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(N)]
    first = Image.open(pngs[0])
    assert first.mode == "P" and first.size == SIZE[::-1]
    assert set(np.unique(np.array(first))) <= {0, 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == N and [o["id"] for o in summary["objects"]] == [1]
    assert summary["settings"]["clip_length"] == 3
    with av.open(str(ov)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == N and decoded[0].shape == (*SIZE, 3)
    cut = np.array(Image.open(alpha / "001" / "00000.png"))
    assert cut.shape == (*SIZE, 4) and set(np.unique(cut[..., 3])) <= {0, 255}
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary files left


def test_frame_folder_with_natural_order_and_late_object(tmp_path, sequence, weights):
    frames, mask = sequence
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i + 1}.jpg")  # 1..6, "10" would sort before "2" as text
    binary = tmp_path / "bin.png"
    Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(binary)
    second = np.zeros_like(mask)
    second[:20, :30] = 1
    second_png = tmp_path / "second.png"
    Image.fromarray(second * 255).save(second_png)
    out = tmp_path / "out"
    assert (
        _run(
            folder,
            "--mask",
            binary,
            "--mask",
            second_png,
            "--mask-frame",
            3,
            "--weights",
            weights,
            "--out",
            out,
            "--size",
            "native",
        )
        == 0
    )
    names = sorted(p.stem for p in out.glob("*.png"))
    assert sorted(names, key=int) == [str(i) for i in range(1, N + 1)]
    objects = json.loads((out / "summary.json").read_text())["objects"]
    assert [(o["id"], o["first_frame"]) for o in objects] == [(1, 0), (2, 3)]  # binary masks: new objects
    assert 2 not in np.unique(np.array(Image.open(out / "2.png")))
    assert 2 in np.unique(np.array(Image.open(out / "4.png")))


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_missing_input(tmp_path, mask_png, weights, capsys):
    assert _run(tmp_path / "nope.mp4", "--mask", mask_png, "--weights", weights, "--out", tmp_path / "o") == 2
    assert "nope.mp4" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_not_a_video(tmp_path, mask_png, weights, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert _run(bad, "--mask", mask_png, "--weights", weights, "--out", tmp_path / "o") == 2
    assert "notes.mp4" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_mask_problems(tmp_path, video, sequence, weights, capsys):
    out = tmp_path / "o"
    empty = save_indexed_png(tmp_path / "empty.png", np.zeros(SIZE, np.uint8))
    assert _run(video, "--mask", empty, "--weights", weights, "--out", out) == 2
    assert "empty.png" in _err(capsys) and not out.exists()
    square = save_indexed_png(tmp_path / "square.png", np.ones((64, 64), np.uint8))
    assert _run(video, "--mask", square, "--weights", weights, "--out", out) == 2
    assert "aspect ratio" in _err(capsys) and not out.exists()
    m = save_indexed_png(tmp_path / "m.png", sequence[1])
    assert _run(video, "--mask", m, "--mask-frame", 99, "--weights", weights, "--out", out) == 2
    assert "beyond the video" in _err(capsys) and not out.exists()
    many = np.zeros((*SIZE, 3), np.uint8)
    ys, xs = np.divmod(np.arange(300), SIZE[1])
    many[ys, xs] = np.stack([np.arange(300) % 256, np.arange(300) // 256 + 1, np.full(300, 7)], 1)
    Image.fromarray(many).save(tmp_path / "many.png")
    assert _run(video, "--mask", tmp_path / "many.png", "--weights", weights, "--out", out) == 2
    assert "many.png" in _err(capsys) and not out.exists()


def test_mask_of_same_aspect_is_resized_with_warning(tmp_path, video, sequence, weights, capsys):
    big = np.kron(sequence[1], np.ones((2, 2), np.uint8))
    path = save_indexed_png(tmp_path / "big.png", big)
    assert _run(video, "--mask", path, "--weights", weights, "--out", tmp_path / "o", "--clip-length", 6) == 0
    assert "resized" in _err(capsys)


def test_weights_problems(tmp_path, video, mask_png, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    assert _run(video, "--mask", mask_png, "--weights", junk, "--out", tmp_path / "o") == 2
    assert "junk.pth" in _err(capsys)
    if default_weights_path() is None:  # until a default model ships, the error explains where to get one
        assert _run(video, "--mask", mask_png, "--out", tmp_path / "o") == 2
        err = _err(capsys)
        assert "--weights" in err and "PCVOS" in err
    assert not (tmp_path / "o").exists()


def test_existing_results_need_overwrite(tmp_path, video, mask_png, weights, capsys):
    out = tmp_path / "o"
    args = (video, "--mask", mask_png, "--weights", weights, "--out", out, "--clip-length", 6)
    assert _run(*args) == 0
    (out / "00000.png").write_bytes(b"old")  # a result pcvos wrote (it is on its record), changed since
    assert _run(*args) == 2
    assert "--overwrite" in _err(capsys)
    assert (out / "00000.png").read_bytes() == b"old"
    assert _run(*args, "--overwrite") == 0
    assert Image.open(out / "00000.png").mode == "P"


def test_stream_breaking_part_way(tmp_path, sequence, mask_png, weights, capsys, broken_mp4):
    path = broken_mp4(tmp_path / "cut.mp4", np.concatenate([sequence[0]] * 8), fps=10, keep=0.9)  # 48 frames
    out = tmp_path / "o"
    code = _run(path, "--mask", mask_png, "--weights", weights, "--out", out, "--clip-length", 2)
    err = _err(capsys)
    assert code == 2 and "cut.mp4" in err and "frame" in err
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 48
    for p in written:  # whatever was written is a complete, valid mask
        assert Image.open(p).mode == "P"
    assert not (out / "summary.json").exists()


def test_help_explains():
    with pytest.raises(SystemExit) as info:
        main(["segment", "--help"])
    assert info.value.code == 0


def test_threads_sets_the_cpu_thread_count(tmp_path, video, mask_png, weights, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert (
            _run(video, "--mask", mask_png, "--weights", weights, "--out", tmp_path / "out", "--threads", 1)
            == 0
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as info:
        _run(video, "--mask", mask_png, "--out", tmp_path / "out2", "--threads", 0)
    assert info.value.code == 2 and "--threads" in capsys.readouterr().err


def test_bad_device_exits_2_naming_the_option(tmp_path, video, mask_png, capsys):
    assert _run(video, "--mask", mask_png, "--out", tmp_path / "out", "--device", "gpu0") == 2
    err = capsys.readouterr().err
    assert "--device gpu0: not a device name" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
