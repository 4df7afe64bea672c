"""pcvos.mask_from_prompts (box, clicks, previous mask, zero-click) on real DAVIS frames, its errors,
the shipped saliency network's checksum, and `pcvos segment --box / --mask auto` on a tiny real video."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.cli import main
from pcvos.data.frames import VideoWriter
from pcvos.data.io_utils import save_indexed_png
from pcvos.inference import prompts as P
from pcvos.model.checkpoint import CheckpointError

DATA = Path(__file__).resolve().parent / "data" / "prompts"


def _frame(name: str) -> np.ndarray:
    return np.array(Image.open(DATA / f"{name}.jpg").convert("RGB"))


def _gt(name: str) -> np.ndarray:
    return np.array(Image.open(DATA / f"{name}.png")) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _box(gt: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(gt)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _inner_point(gt: np.ndarray) -> tuple[int, int]:
    """(x, y) of the object pixel farthest from its boundary (the robot clicker's first click)."""
    import cv2

    d = cv2.distanceTransform(np.pad(gt.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


@pytest.fixture(scope="module")
def rhino():
    return _frame("rhino_00000"), _gt("rhino_00000")


@pytest.fixture(scope="module")
def hike():
    return _frame("hike_00000"), _gt("hike_00000")


# ---------------------------------------------------------------------------------------------- the API


@pytest.mark.parametrize("name", ["rhino", "hike"])
def test_box_finds_the_object(name, request):
    image, gt = request.getfixturevalue(name)
    box = _box(gt)
    mask = pcvos.mask_from_prompts(image, box=box)
    assert mask.dtype == bool and mask.shape == gt.shape
    x0, y0, x1, y1 = box
    outside = np.ones_like(mask)
    outside[y0:y1, x0:x1] = False
    assert not (mask & outside).any()  # nothing outside the box
    # the object fills most of its tight box: a mask that is the box itself would score well below this
    assert _iou(mask, gt) > 0.75
    assert _iou(mask, gt) > _iou(~outside, gt) + 0.1


def test_zero_click_is_the_salient_object(rhino):
    image, gt = rhino
    mask = pcvos.mask_from_prompts(image)
    assert mask.dtype == bool and mask.shape == gt.shape
    assert _iou(mask, gt) > 0.6


def test_one_click_then_corrections(hike):
    image, gt = hike
    first = _inner_point(gt)
    m1 = pcvos.mask_from_prompts(image, points=[first], point_labels=[1])
    assert m1[first[1], first[0]]
    assert _iou(m1, gt) > 0.3
    # a background click on a false positive and an object click on a miss: both pixels obey
    fp = np.argwhere(m1 & ~gt)
    fn = np.argwhere(~m1 & gt)
    pts, labels = [first], [1]
    if len(fp):
        pts.append((int(fp[len(fp) // 2][1]), int(fp[len(fp) // 2][0])))
        labels.append(0)
    if len(fn):
        pts.append((int(fn[len(fn) // 2][1]), int(fn[len(fn) // 2][0])))
        labels.append(1)
    m2 = pcvos.mask_from_prompts(image, points=np.array(pts), point_labels=np.array(labels), previous=m1)
    for (x, y), lab in zip(pts, labels, strict=True):
        assert m2[y, x] == bool(lab)


def test_previous_mask_is_refined_not_replaced(rhino):
    image, gt = rhino
    import cv2

    shrunk = cv2.erode(gt.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    x, y = _inner_point(gt)
    out = pcvos.mask_from_prompts(image, points=[(x, y)], previous=shrunk)
    assert out[y, x]
    assert _iou(out, gt) > 0.6
    # previous may be 0/1 integers as well as bool: the same answer
    same = pcvos.mask_from_prompts(image, points=[(x, y)], previous=shrunk.astype(np.uint8))
    assert np.array_equal(out, same)


def test_box_and_clicks_together(rhino):
    image, gt = rhino
    box = _box(gt)
    x, y = _inner_point(gt)
    out = pcvos.mask_from_prompts(
        image, box=box, points=[(x, y), (box[0] + 1, box[1] + 1)], point_labels=[1, 0]
    )
    assert out[y, x] and not out[box[1] + 1, box[0] + 1]


def test_same_prompts_same_mask_and_saliency_cached(rhino):
    image, gt = rhino
    calls = []

    class Counting:
        def __call__(self, crop):
            calls.append(crop.shape)
            return P.saliency_model()(crop)

    cache = P.SaliencyCache(maxsize=2)
    counting = Counting()
    region = (0, 0, image.shape[1], image.shape[0])
    a = cache.get(image, region, counting)
    b = cache.get(image.copy(), region, counting)  # equal bytes: the same entry
    assert a is b and len(calls) == 1
    assert not a.flags.writeable
    box = _box(gt)
    m1 = pcvos.mask_from_prompts(image, box=box, cache=cache)
    m2 = pcvos.mask_from_prompts(image, box=box, cache=cache)
    assert np.array_equal(m1, m2)
    other = image[::-1].copy()
    cache.get(other, region, counting)
    cache.get(other[:, ::-1].copy(), region, counting)
    assert len(cache._items) == 2  # least recently used dropped
    with pytest.raises(ValueError, match="maxsize"):
        P.SaliencyCache(0)


def test_prepared_image_answers_first_click_and_auto_without_the_network(rhino, monkeypatch):
    image, gt = rhino
    ys, xs = np.nonzero(gt)
    click = {"points": [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]], "point_labels": [1]}
    fresh = P.SaliencyCache()
    expected_click = pcvos.mask_from_prompts(image, **click, cache=fresh)
    expected_auto = pcvos.mask_from_prompts(image, cache=fresh)
    cache = P.SaliencyCache()
    pcvos.prepare_prompts(image, cache=cache)
    assert len(cache._items) == 1

    def no_network():
        raise AssertionError("the saliency network ran although the image was prepared")

    monkeypatch.setattr(P, "saliency_model", no_network)
    assert np.array_equal(pcvos.mask_from_prompts(image, **click, cache=cache), expected_click)
    assert np.array_equal(pcvos.mask_from_prompts(image, cache=cache), expected_auto)
    with pytest.raises(ValueError):
        pcvos.prepare_prompts(image[..., :2], cache=cache)


def test_concurrent_requests_for_one_region_run_the_network_once(rhino):
    import threading

    image, _ = rhino
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow(crop):
        calls.append(crop.shape)
        started.set()
        assert release.wait(30)
        return np.zeros(crop.shape[:2], np.float32)

    cache = P.SaliencyCache()
    region = (0, 0, image.shape[1], image.shape[0])
    answers = []
    first = threading.Thread(target=lambda: answers.append(cache.get(image, region, slow)))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: answers.append(cache.get(image, region, slow)))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # it waits for the first answer instead of computing its own
    release.set()
    first.join(30)
    second.join(30)
    assert len(calls) == 1 and len(answers) == 2 and answers[0] is answers[1]

    def failing(crop):
        raise RuntimeError("network failed")

    other = image[::-1].copy()
    with pytest.raises(RuntimeError):
        cache.get(other, region, failing)
    assert cache.get(other, region, slow) is not None  # a failure leaves nothing pending


def test_saliency_is_a_probability_map(rhino):
    image, gt = rhino
    sal = P.saliency_model()(image)
    assert sal.shape == gt.shape and sal.dtype == np.float32
    assert 0.0 <= sal.min() and sal.max() <= 1.0
    assert sal[gt].mean() > sal[~gt].mean() + 0.3  # the rhino is the salient object


H, W = 240, 428


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box": (10, 10, 5, 50)}, "empty"),
        ({"box": (10, 10, 10, 50)}, "empty"),
        ({"box": (-1, 0, 50, 50)}, "outside"),
        ({"box": (0, 0, W + 1, 50)}, "outside"),
        ({"box": (0, 0, 50, float("nan"))}, "non-finite"),
        ({"box": (0, 0, 50)}, "4 numbers"),
        ({"box": "abc"}, "4 numbers"),
        ({"box": (0, 0, 1.5, 50)}, "2 pixels"),
        ({"points": [(10, 10, 3)]}, r"\(N, 2\)"),
        ({"points": [(10, float("inf"))]}, "non-finite"),
        ({"points": [(W, 10)]}, "outside"),
        ({"points": [(-1, 10)]}, "outside"),
        ({"points": [(10, 10), (20, 20)], "point_labels": [1]}, "one label per point"),
        ({"points": [(10, 10)], "point_labels": [2]}, "1 \\(object\\) or 0"),
        ({"point_labels": [1]}, "without points"),
        ({"previous": np.zeros((H, W + 1), bool)}, "previous mask has shape"),
        ({"previous": np.full((H, W), np.nan)}, "NaN"),
    ],
)
def test_bad_prompts_raise_value_error(rhino, kwargs, message):
    image, _ = rhino
    with pytest.raises(ValueError, match=message):
        pcvos.mask_from_prompts(image, **kwargs)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((H, W), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((H, W, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((H, W, 3), np.float32), "uint8"),
        (np.zeros((1, W, 3), np.uint8), "too small"),
    ],
)
def test_bad_images_raise_value_error(image, message):
    with pytest.raises(ValueError, match=message):
        pcvos.mask_from_prompts(image, box=(0, 0, 1, 1))


def test_checksum_mismatch_refused(tmp_path):
    card = P._WEIGHTS_DIR / "u2netp.json"
    damaged = tmp_path / "u2netp.onnx"
    data = bytearray((P._WEIGHTS_DIR / "u2netp.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        P.SaliencyModel(damaged, card)
    with pytest.raises(FileNotFoundError, match="missing"):
        P.SaliencyModel(tmp_path / "nothing.onnx", card)
    good = tmp_path / "good.onnx"
    shutil.copyfile(P._WEIGHTS_DIR / "u2netp.onnx", good)
    P.SaliencyModel(good, card)  # the intact copy loads
    assert json.loads(card.read_text())["sha256"] == P.sha256_of(good)


def test_import_does_not_load_onnxruntime():
    code = "import sys, pcvos; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "rhino.mp4"
    with VideoWriter(path, fps=10) as w:
        for i in range(4):
            w.write(_frame(f"rhino_{i:05d}"))
    return path


def _run(*args) -> int:
    return main(["segment", *map(str, args), "--quiet", "--size", "120", "--clip-length", "2"])


def _labels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im)


def test_cli_box(tmp_path, clip, rhino):
    _, gt = rhino
    out = tmp_path / "out"
    box = ",".join(map(str, _box(gt)))
    assert _run(clip, "--box", box, "--out", out) == 0
    used = _labels(out / "prompt_masks" / "00000.png")
    assert set(np.unique(used)) == {0, 1}
    assert _iou(used == 1, gt) > 0.75
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    summary = json.loads((out / "summary.json").read_text())
    (obj,) = summary["objects"]
    assert (
        obj["id"] == 1 and obj["kind"].startswith("box ") and obj["mask"].endswith("prompt_masks/00000.png")
    )
    assert summary["outputs"]["prompt_masks"] == str(out / "prompt_masks")
    # run again: refused without --overwrite, replaced with it
    assert _run(clip, "--box", box, "--out", out) == 2
    assert _run(clip, "--mask", "auto", "--out", out, "--overwrite") == 0
    auto = _labels(out / "prompt_masks" / "00000.png")
    assert _iou(auto == 1, gt) > 0.6


def test_cli_mask_and_boxes_on_other_frames(tmp_path, clip, rhino):
    _, gt = rhino
    out = tmp_path / "out"
    mask = save_indexed_png(tmp_path / "m.png", gt.astype(np.uint8))
    box = ",".join(map(str, _box(gt)))
    assert _run(clip, "--mask", mask, "--box", box, "--box-frame", "2", "--out", out) == 0
    assert not (out / "prompt_masks" / "00000.png").exists()
    later = _labels(out / "prompt_masks" / "00002.png")
    assert set(np.unique(later)) == {0, 2}  # the box's object follows the mask's object 1
    ids = {o["id"]: o for o in json.loads((out / "summary.json").read_text())["objects"]}
    assert ids[1]["kind"] != ids[2]["kind"] and ids[2]["first_frame"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "1,2,3"], "x0,y0,x1,y1"),
        (["--box", "a,b,c,d"], "x0,y0,x1,y1"),
        (["--box", "0,0,nan,5"], "x0,y0,x1,y1"),
        (["--box", "0,0,9999,50"], "inside the 428x240 frame"),
        (["--box", "50,50,10,60"], "inside the 428x240 frame"),
        (["--box", "0,0,50,50", "--box-frame", "9"], "beyond the video"),
        (["--box-frame", "1"], "must follow the --box"),
        (["--box", "0,0,50,50", "--box-frame", "x"], "frame number"),
        ([], "give the objects"),
    ],
)
def test_cli_bad_prompts_exit_2(tmp_path, clip, capsys, args, message):
    out = tmp_path / "out"
    try:
        code = _run(clip, *args, "--out", out)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("mode", ["probable", "ignore"])
def test_other_previous_modes_keep_the_clicks(hike, mode):
    image, gt = hike
    x, y = _inner_point(gt)
    params = P.PromptParams(previous_mode=mode, guided_radius=0)
    first = pcvos.mask_from_prompts(image, points=[(x, y)], params=params)
    fp = np.argwhere(first & ~gt)
    pts, labels = [(x, y)], [1]
    if len(fp):
        pts.append((int(fp[0][1]), int(fp[0][0])))
        labels.append(0)
    out = pcvos.mask_from_prompts(image, points=pts, point_labels=labels, previous=first, params=params)
    for (px, py), lab in zip(pts, labels, strict=True):
        assert out[py, px] == bool(lab)


def test_bad_params_raise_value_error():
    with pytest.raises(ValueError, match="previous_mode"):
        P.PromptParams(previous_mode="replace")
    with pytest.raises(ValueError, match="grabcut_side"):
        P.PromptParams(grabcut_side=0)


def test_guided_filter_keeps_a_step_on_an_edge():
    # a mask whose edge lies on the image's edge stays put; a flat image just smooths it
    guide = np.zeros((40, 40, 3), np.uint8)
    guide[:, 20:] = 255
    src = np.zeros((40, 40), np.float32)
    src[:, 20:] = 1
    out = P._guided_filter(guide, src, 4, 1e-3)
    assert np.array_equal(out >= 0.5, src >= 0.5)


def test_robot_clicker_of_the_benchmark(rhino):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_prompts", Path(__file__).resolve().parents[1] / "benchmarks" / "prompts.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, gt = rhino
    (x, y), label = bench.next_click(np.zeros_like(gt), gt)
    assert label == 1 and (x, y) == _inner_point(gt)
    wrong = gt.copy()
    wrong[:40, :40] = True  # a false square larger than any miss: the next click removes it
    (x, y), label = bench.next_click(wrong, gt)
    assert label == 0 and x < 40 and y < 40 and not gt[y, x]
    assert bench.next_click(gt, gt) is None
    assert bench.noc([0.5, 0.86, 0.95], 0.85) == 2 and bench.noc([0.5], 0.9) == bench.MAX_CLICKS


# ------------------------------------------------------------------------------------------ the click network


def _robot(image, gt, params, clicks: int) -> list[float]:
    """IoU after each robot click (the benchmark's clicker), every correction passing the previous mask."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_prompts", Path(__file__).resolve().parents[1] / "benchmarks" / "prompts.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pts, labels, ious = [_inner_point(gt)], [1], []
    pred = None
    for _ in range(clicks):
        pred = pcvos.mask_from_prompts(image, points=pts, point_labels=labels, previous=pred, params=params)
        ious.append(_iou(pred, gt))
        nxt = bench.next_click(pred, gt)
        if nxt is None:
            break
        pts.append(nxt[0])
        labels.append(nxt[1])
    return ious


def test_click_network_answers_corrections(rhino):
    image, gt = rhino
    net = _robot(image, gt, P.DEFAULT_PARAMS, 5)
    grabcut = _robot(image, gt, P.PromptParams(clicks="grabcut"), 5)
    assert net[0] == grabcut[0]  # the first click (no previous mask) is GrabCut's in both
    # four corrections by the network (rhino is a train-split sequence; the frame is 428x240) bring
    # it above 0.9, where GrabCut's re-cuts wander (0.81 -> 0.77 after five clicks when measured)
    assert net[-1] > 0.9 and net[-1] > grabcut[-1] + 0.05


def test_click_path_is_selectable(rhino, monkeypatch):
    image, gt = rhino
    x, y = _inner_point(gt)
    shrunk = gt.copy()
    shrunk[: y - 5] = False

    def refuse():
        raise AssertionError("the click network was loaded")

    monkeypatch.setattr(P, "click_model", refuse)
    old = pcvos.mask_from_prompts(
        image, points=[(x, y)], previous=shrunk, params=P.PromptParams(clicks="grabcut")
    )
    assert old[y, x]
    with pytest.raises(AssertionError, match="click network"):
        pcvos.mask_from_prompts(image, points=[(x, y)], previous=shrunk)
    with pytest.raises(AssertionError, match="click network"):
        pcvos.mask_from_prompts(image, points=[(x, y)], params=P.PromptParams(first_click="net"))
    # a box alone, a first click and no prompt at all do not need it
    pcvos.mask_from_prompts(image, box=_box(gt))
    pcvos.mask_from_prompts(image, points=[(x, y)])


def test_click_network_checksum_mismatch_refused(tmp_path):
    card = P._WEIGHTS_DIR / "clicknet.json"
    weights = P._WEIGHTS_DIR / "clicknet.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "clicknet.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="click network does not match its checksum"):
        P.load_click_model(damaged, card)
    with pytest.raises(FileNotFoundError, match="click network is missing"):
        P.load_click_model(tmp_path / "nothing.pt", card)
    meta = json.loads(card.read_text())
    assert meta["sha256"] == P.sha256_of(weights) and meta["bytes"] == weights.stat().st_size
    assert set(meta["training_data"]) == {"coco128", "weizmann-horse", "davis2016"}
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


def test_bad_click_params_raise_value_error():
    with pytest.raises(ValueError, match="clicks and first_click"):
        P.PromptParams(clicks="sam")
    with pytest.raises(ValueError, match="clicks and first_click"):
        P.PromptParams(first_click="box")
