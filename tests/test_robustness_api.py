"""Issue 15, item 11: one rule for label 255 (void, not an object) in the API and the CLI, and
``add_mask`` for a frame already processed raises. Shipped model, generated frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.cli import main
from pcvos.data.io_utils import save_indexed_png

H, W = 48, 64


@pytest.fixture(scope="module")
def lite():
    return pcvos.load_model()


def _frames(n: int) -> np.ndarray:
    out = np.full((n, H, W, 3), 40, np.uint8)
    for i in range(n):
        out[i, 8:28, 8 + i : 28 + i] = (220, 60, 60)
    return out


def _mask_with_void() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[8:28, 8:28] = 1
    m[7, :] = 255  # a void band (the DAVIS convention for "don't care")
    m[30:40, 30:50] = 255
    return m


def test_void_255_is_not_an_object_in_the_api(lite):
    seg = pcvos.Segmenter(lite, clip_length=3)
    seg.add_mask(0, _mask_with_void())
    assert seg.object_ids == [1]
    results = dict(seg.process(_frames(5)))
    for labels in results.values():
        assert set(np.unique(labels)) <= {0, 1}
    assert (results[0][30:40, 30:50] == 0).all()  # void pixels are background in the given frame too
    probs = pcvos.segment(lite, _frames(3), {0: _mask_with_void()}, output="probs")
    assert probs.shape[0] == 2  # background + object 1, no channel for 255
    with pytest.raises(ValueError, match="no object"):
        pcvos.Segmenter(lite).add_mask(0, np.full((H, W), 255, np.uint8))


def test_api_and_cli_agree_on_void(lite, tmp_path):
    frames = _frames(4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i}.png")
    save_indexed_png(tmp_path / "m.png", _mask_with_void())
    assert (
        main(
            [
                "segment",
                str(folder),
                "--mask",
                str(tmp_path / "m.png"),
                "--out",
                str(tmp_path / "out"),
                "--clip-length",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    api = pcvos.segment(lite, frames, {0: _mask_with_void()}, clip_length=3)  # the CLI never upscales
    for i in range(4):
        assert np.array_equal(np.array(Image.open(tmp_path / "out" / f"{i}.png")), api[i])


def test_add_mask_for_a_processed_frame_raises(lite):
    seg = pcvos.Segmenter(lite, clip_length=2)
    first = np.zeros((H, W), np.uint8)
    first[8:28, 8:28] = 1
    seg.add_mask(0, first)
    late = np.zeros((H, W), np.uint8)
    late[30:44, 30:50] = 2
    stream = seg.process(iter(_frames(8)))
    seen = [next(stream)[0], next(stream)[0]]  # frames 0 and 1 are done
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="frame 1: that frame has already been processed"):
        seg.add_mask(1, late)
    seg.add_mask(4, late)  # a frame not read yet: still fine while streaming
    rest = dict(stream)
    assert sorted(rest) == [2, 3, 4, 5, 6, 7] and 2 in np.unique(rest[4])  # the late mask was used
