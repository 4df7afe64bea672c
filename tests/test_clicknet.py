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

from pcvos.inference.clicknet import (
    ClickNetModel,
    ClickNetParams,
    guidance_maps,
    merge_local,
    square_region,
)
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
    with pytest.raises(ValueError, match="merge"):
        ClickNetParams(merge="blend")
    with pytest.raises(ValueError, match="focus"):
        ClickNetParams(focus=1.5)


def test_local_merge_flips_only_the_changed_part_under_the_click():
    previous = np.zeros((20, 30), bool)
    previous[2:8, 2:8] = True  # the object so far
    previous[15:18, 25:28] = True  # a thin part the answer loses, away from the click
    answer = previous.copy()
    answer[2:8, 8:12] = True  # the part the click asked for, touching the object
    answer[15:18, 25:28] = False
    answer[12:14, 2:4] = True  # a blob the click did not ask for
    out = merge_local(previous, answer, (10.0, 5.0))
    expected = previous.copy()
    expected[2:8, 8:12] = True
    assert np.array_equal(out, expected)
    # a negative click inside the object: the removed part alone goes
    cut = previous.copy()
    cut[2:4, 2:8] = False
    cut[15:18, 25:28] = False
    expected = previous.copy()
    expected[2:4, 2:8] = False
    assert np.array_equal(merge_local(previous, cut, (4.0, 3.0)), expected)
    # the answer left the clicked pixel as it was: nothing local to keep, the answer stands
    assert np.array_equal(merge_local(previous, answer, (0.0, 0.0)), answer)


def test_predict_with_local_merge_keeps_the_previous_mask_away_from_the_click(tmp_path, rhino):
    image, gt = rhino
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(ClickNet().state_dict(), weights)
    model = ClickNetModel(weights, threads=1)
    ys, xs = np.nonzero(gt)
    pts = np.array([[float(xs[0]), float(ys[0])]])
    pos = np.array([False])
    replaced = model.predict(image, pts, pos, previous=gt)
    local = model.predict(image, pts, pos, previous=gt, params=ClickNetParams(merge="local"))
    diff = replaced != gt
    if diff[int(pts[0, 1]), int(pts[0, 0])]:
        changed = local != gt
        assert changed.any() and not (changed & ~diff).any()  # a subset of the network's own change
    else:
        assert np.array_equal(local, replaced)


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


def test_the_focus_pass_changes_only_a_square_around_the_newest_click(rhino):
    from pcvos.inference import prompts

    image, gt = rhino
    model = ClickNetModel(prompts._WEIGHTS_DIR / "clicknet.pt", threads=1)  # the shipped weights
    ys, xs = np.nonzero(gt)
    previous = np.zeros_like(gt)
    previous[ys.min() : (ys.min() + ys.max()) // 2, xs.min() : xs.max() + 1] = True  # top half of its box
    missed = gt & ~previous
    my, mx = np.nonzero(missed)
    pts = np.array(
        [[float(xs.mean()), float(ys.min() + 2)], [float(mx[len(mx) // 2]), float(my[len(my) // 2])]]
    )
    pos = np.array([True, True])
    plain = model.predict(image, pts, pos, previous=previous)
    focused = model.predict(image, pts, pos, previous=previous, params=ClickNetParams(focus=0.25))
    changed_y, changed_x = np.nonzero(plain != focused)
    assert len(changed_x)
    ry, rx = np.nonzero(previous)
    x0, y0, x1, y1 = square_region(
        min(rx.min(), pts[:, 0].min()),
        min(ry.min(), pts[:, 1].min()),
        max(rx.max() + 1, pts[:, 0].max() + 1),
        max(ry.max() + 1, pts[:, 1].max() + 1),
        *gt.shape,
        0.4,
        64,
    )
    half = max(64, 0.25 * max(x1 - x0, y1 - y0)) / 2 + 1
    assert np.abs(changed_x - pts[1, 0]).max() <= half and np.abs(changed_y - pts[1, 1]).max() <= half
