"""`pcvos segment` with keyframes (masks of the same objects at several frames) and --backward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.cli import main
from pcvos.data.frames import VideoReader
from pcvos.data.io_utils import save_indexed_png
from pcvos.data.synthetic import make_video

T = 16
CLIP = 3


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames, masks = make_video(seed=5, num_frames=T, size=(64, 96), num_objects=2)
    folder = tmp_path_factory.mktemp("v") / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i}.png")  # lossless, so the Session sees the same pixels
    return folder, frames, masks


def _run(*args) -> int:
    # the shipped pcvos-lite, at the frames' own size (no resize: given masks come back exactly)
    return main(["segment", *map(str, args), "--size", "native", "--clip-length", str(CLIP), "--quiet"])


def av_frames(path: Path):
    return iter(VideoReader(path))


def _read(out: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(out / f"{i}.png")) for i in range(T)])


def test_masks_of_the_same_object_at_several_frames_are_keyframes(tmp_path, video):
    folder, frames, masks = video
    m0 = save_indexed_png(tmp_path / "m0.png", masks[0])
    m8 = save_indexed_png(tmp_path / "m8.png", masks[8])
    assert _run(folder, "--mask", m0, "--out", tmp_path / "one") == 0
    assert _run(folder, "--mask", m0, "--mask", m8, "--mask-frame", 8, "--out", tmp_path / "two") == 0
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert np.array_equal(two[8], masks[8])  # the keyframe holds its mask
    # forward only: the frames before the keyframe's clip (a clip ends at a mask: 7..8) are unchanged
    assert np.array_equal(two[:7], one[:7])
    assert not np.array_equal(two[9:], one[9:])  # and the frames after it follow it
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert [(o["id"], o["first_frame"]) for o in summary["objects"]] == [(1, 0), (2, 0)]
    assert summary["settings"]["backward"] is False


def test_backward_fills_the_frames_before_the_first_mask(tmp_path, video):
    folder, frames, masks = video
    mid = 9
    m = save_indexed_png(tmp_path / "m.png", masks[mid])
    assert _run(folder, "--mask", m, "--mask-frame", mid, "--out", tmp_path / "fwd") == 0
    assert _run(folder, "--mask", m, "--mask-frame", mid, "--backward", "--out", tmp_path / "both") == 0
    fwd, both = _read(tmp_path / "fwd"), _read(tmp_path / "both")
    assert not fwd[:mid].any()  # the default leaves them empty
    assert np.array_equal(both[mid:], fwd[mid:])  # from the mask on: the forward result
    # frames before it: exactly what a Session propagating backward from the mask computes
    s = pcvos.Session(pcvos.load_model(), folder, clip_length=CLIP)
    s.set_mask(mid, masks[mid])
    for i, lab in s.propagate(mid, direction="backward", until="end"):
        assert np.array_equal(both[i], lab), i
    assert all(both[i].any() for i in range(mid))
    assert json.loads((tmp_path / "both/summary.json").read_text())["settings"]["backward"] is True


def test_backward_fills_a_late_object_and_keeps_the_others(tmp_path, video):
    folder, frames, masks = video
    a = tmp_path / "a.png"
    Image.fromarray(np.where(masks[0] == 1, 255, 0).astype(np.uint8)).save(a)  # binary: object 1
    b = tmp_path / "b.png"
    Image.fromarray(np.where(masks[6] == 2, 255, 0).astype(np.uint8)).save(b)  # binary: a new object, 2
    args = [folder, "--mask", a, "--mask", b, "--mask-frame", 6]
    assert _run(*args, "--out", tmp_path / "fwd") == 0
    assert (
        _run(
            *args,
            "--backward",
            "--out",
            tmp_path / "both",
            "--overlay",
            tmp_path / "o.mp4",
            "--alpha",
            tmp_path / "cut",
        )
        == 0
    )
    fwd, both = _read(tmp_path / "fwd"), _read(tmp_path / "both")
    assert not (fwd[:6] == 2).any() and all((both[i] == 2).any() for i in range(6))
    assert np.array_equal(both[6:], fwd[6:])
    for i in range(6):  # object 1 keeps its pixels wherever object 2 does not claim them
        free = both[i] != 2
        assert np.array_equal(both[i][free], np.where(fwd[i] == 2, 0, fwd[i])[free]), i
    assert (both[0][masks[0] == 1] == 1).all()  # the given mask wins at its frame
    # the overlay and cut-outs are made from the filled labels, frame by frame
    assert len(list(av_frames(tmp_path / "o.mp4"))) == T
    cut = np.array(Image.open(tmp_path / "cut/002/0.png"))
    assert np.array_equal(cut[..., 3] > 0, both[0] == 2)


def test_help_says_the_default_and_why(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--backward" in text and "Off by default" in text and "read once" in text
    assert "keyframe" in text
