"""scripts/train_clicknet.py on a tiny real data tree: --iters bounds the run, resumes, and is checked.

The tree is built from tests/data/prompts (real DAVIS frames with their masks) in the layout the
script reads: static/coco128, static/weizmann-horse and davis2016-train with one train-split sequence.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "tests" / "data" / "prompts"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_clicknet", ROOT / "scripts" / "train_clicknet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_clicknet"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_clicknet", None)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from pcvos.eval.protocol import split

    root = tmp_path / "data"
    seq = split("train")[0]
    for images, masks in (
        ("static/coco128/images", "static/coco128/masks"),
        ("static/weizmann-horse/images", "static/weizmann-horse/masks"),
        (f"davis2016-train/JPEGImages/480p/{seq}", f"davis2016-train/Annotations/480p/{seq}"),
    ):
        (root / images).mkdir(parents=True)
        (root / masks).mkdir(parents=True)
        for i in range(2):
            shutil.copyfile(PROMPTS / f"rhino_0000{i}.jpg", root / images / f"0000{i}.jpg")
            shutil.copyfile(PROMPTS / f"rhino_0000{i}.png", root / masks / f"0000{i}.png")
    return root


def _run(script, data: Path, out: Path, *extra: str) -> None:
    before = torch.get_num_threads()
    try:
        args = ["--data", str(data), "--out", str(out), "--batch", "2", "--side", "64", "--threads", "1"]
        assert script.main(args + list(extra)) == 0
    finally:
        torch.set_num_threads(before)


def test_iters_bounds_the_run_and_a_rerun_resumes_without_training_more(script, data, tmp_path):
    out = tmp_path / "run"
    _run(script, data, out, "--iters", "2", "--snapshot-every", "1")
    assert json.loads((out / "done.json").read_text())["iterations"] == 2
    assert sorted(p.name for p in out.glob("weights_*.pt")) == ["weights_00001.pt", "weights_00002.pt"]
    first = torch.load(out / "weights_00002.pt", weights_only=True)
    _run(script, data, out, "--iters", "2", "--snapshot-every", "1")  # resumes at 2 and stops there
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["iter"] == 2
    again = torch.load(out / "weights_00002.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "exactly one of --deadline and --iters"),
        (("--iters", "3", "--deadline", "23:59"), "exactly one of --deadline and --iters"),
        (("--iters", "0"), "--iters must be at least 1"),
    ],
)
def test_a_run_without_one_bound_is_refused(script, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(tmp_path / "run"), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
