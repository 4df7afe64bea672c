"""The click network's parts (pcvos.model.clicknet, pcvos.inference.clicknet) on real frames.

These check the plumbing with untrained weights (tests/test_prompts.py uses the shipped ones): the
guidance path, the click maps, the zoom-in crop, and that predict() returns a frame-sized mask that
respects the box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcvos.inference.clicknet import ClickNetModel, ClickNetParams, guidance_maps, square_region
from pcvos.model.clicknet import ClickNet

DATA = Path(__file__).resolve().parent / "data" / "prompts"


@pytest.fixture(scope="module")
def rhino():
    image = np.array(Image.open(DATA / "rhino_00000.jpg").convert("RGB"))
    gt = np.array(Image.open(DATA / "rhino_00000.png")) > 0
    return image, gt


def test_guidance_starts_at_zero_and_then_matters():
    torch.manual_seed(0)
    net = ClickNet().eval()
    image = torch.randn(1, 3, 64, 64)
    guide = torch.zeros(1, 3, 64, 64)
    guide[:, 1, 20:30, 20:30] = 1
    with torch.no_grad():
        a = net(image, torch.zeros_like(guide))
        b = net(image, guide)
        assert a.shape == (1, 1, 64, 64)
        # the stem's guidance conv is zero: clicks reach the output only through the stride-2 skip
        net.up2.skip[0].weight.zero_()
        assert torch.equal(net(image, guide), net(image, torch.zeros_like(guide)))
    assert not torch.equal(a, b)


def test_guidance_maps_draw_disks_in_their_channels():
    prev = np.zeros((32, 32), bool)
    prev[:10] = True
    g = guidance_maps(prev, [(5, 5), (20, 25)], [True, False], (32, 32), radius=2)
    assert g.shape == (3, 32, 32) and g.dtype == np.float32
    assert np.array_equal(g[0] > 0, prev)
    assert g[1, 5, 5] == 1 and g[1, 25, 20] == 0 and g[2, 25, 20] == 1 and g[2, 5, 5] == 0
    assert g[1].sum() == g[2].sum() == 13  # a radius-2 disk holds 13 pixels


def test_square_region_adds_context_and_clips():
    assert square_region(10, 10, 20, 20, 100, 100, 0.5, 4) == (5, 5, 25, 25)
    assert square_region(0, 0, 20, 20, 100, 100, 0.5, 4) == (0, 0, 30, 30)  # clipped at the edge, not shifted
    x0, y0, x1, y1 = square_region(50, 50, 52, 52, 100, 100, 0.0, 40)  # tiny box: min_side wins
    assert (x1 - x0, y1 - y0) == (40, 40)


def test_predict_gives_a_frame_mask_inside_the_box(tmp_path, rhino):
    image, gt = rhino
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save({k: v.half() for k, v in ClickNet().state_dict().items()}, weights)  # fp16 loads as fp32
    model = ClickNetModel(weights, threads=1)
    ys, xs = np.nonzero(gt)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    pts = np.array([[xs.mean(), ys.mean()]])
    out = model.predict(image, pts, np.array([True]), previous=gt, box=box)
    assert out.shape == gt.shape and out.dtype == bool
    inside = np.zeros_like(gt)
    inside[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
    assert not (out & ~inside).any()
    again = model.predict(image, pts, np.array([True]), previous=gt, box=box)
    assert np.array_equal(out, again)


def test_bad_click_params_raise_value_error():
    with pytest.raises(ValueError, match="multiple of 16"):
        ClickNetParams(side=100)
    with pytest.raises(ValueError, match="threshold"):
        ClickNetParams(threshold=1.0)
    with pytest.raises(ValueError, match="margin"):
        ClickNetParams(margin=-1)


def test_a_call_runs_at_its_own_thread_count_and_restores_torchs(tmp_path, rhino, monkeypatch):
    image, gt = rhino
    weights = tmp_path / "w.pt"
    torch.save(ClickNet().state_dict(), weights)
    model = ClickNetModel(weights, threads=1)
    seen: list[int] = []
    forward = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda *a: seen.append(torch.get_num_threads()) or forward(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.predict(image, np.array([[10.0, 10.0]]), np.array([True]), previous=gt)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_shared_click_network_runs_at_one_thread():
    from pcvos.inference import prompts

    assert prompts.click_model().threads == prompts.CLICK_THREADS == 1
