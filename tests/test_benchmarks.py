"""The benchmark scripts run end to end on tiny inputs (timings are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_tiny(tmp_path):
    out_json, out_png = tmp_path / "speed.json", tmp_path / "speed.png"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/speed.py"),
            "--tiny",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "| cpu | 1 | PCVOS L=2 |" in res.stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["schedule"] for r in rows} >= {"floor (key enc + decoder)", "STCN (L=1, mem 5)", "PCVOS L=2"}
    assert all(r["s_per_frame"] > 0 for r in rows)
    assert out_png.stat().st_size > 1000


def test_stage_profile_tiny(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/stages.py"),
            "--frames",
            "3",
            "--size",
            "64",
            "96",
            "--lengths",
            "1",
            "3",
            "--threads",
            "1",
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rows = {line.split("|")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("| ")}
    assert {"key encoder", "memory read (PMM)", "ICR", "decoder", "**total**"} <= set(rows)
    # every stage ran: the key encoder and decoder take time at both clip lengths
    for name in ("key encoder", "decoder"):
        assert all(float(v) > 0 for v in rows[name].split("|")[2:4]), rows[name]
    assert "generated" in res.stdout  # --data without DAVIS frames: random frames, said in the header


def test_backbones_table_means_over_seeds(tmp_path):
    def heldout(folder: str, rows: list[tuple[str, int, float]]) -> Path:
        d = tmp_path / folder
        d.mkdir()
        (d / "heldout.json").write_text(json.dumps([{"model": m, "L": L, "J&F": v} for m, L, v in rows]))
        return d

    folders = [
        heldout(
            "eval_select",
            [
                ("bb_lite0_s0", 5, 0.60),
                ("bb_lite0_s1", 5, 0.70),
                ("bb_lite2_s0", 5, 0.50),
                ("bb_lite0_s0_x2", 5, 0.75),
            ],
        ),
        heldout(
            "eval_report", [("bb_lite0_s0", 5, 0.80), ("bb_lite0_s0", 25, 0.81), ("bb_lite0_s1", 5, 0.90)]
        ),
    ]
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/backbones_table.py"), *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "| recipe | seed | select L5 | report L5 | report L25 |"
    assert "| **lite0** | mean of 2 | 65.0 | 85.0 | 81.0 |" in lines
    assert "| **lite2** | mean of 1 | 50.0 |  |  |" in lines
    assert "| lite0 | 1 | 70.0 | 90.0 |  |" in lines
    assert (
        "| **lite0 x2** | mean of 1 | 75.0 |  |  |" in lines
    )  # a stretched recipe is not averaged with the plain one
    (tmp_path / "eval_unfinished_report").mkdir()
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/backbones_table.py"),
            str(tmp_path / "eval_unfinished_report"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "eval_unfinished_report/heldout.json: not found" in res.stderr


@pytest.mark.parametrize(
    "length, data, threads, message",
    [
        ("1.5", "train", "", "LENGTH must be a whole number >= 1, got '1.5'"),
        ("2", "all", "", "DATA must be 'train' or 'v1', got 'all'"),
        ("2", "train", "two", "THREADS must be a whole number >= 1, got 'two'"),
    ],
)
def test_backbones_train_rejects_bad_arguments(tmp_path, length, data, threads, message):
    # checked before anything is trained or written (the script works in the repository's runs/)
    runs = REPO / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks/backbones_train.sh"), "efficientnet-lite0", "0", length, data],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "THREADS": threads},
    )
    assert res.returncode == 2
    assert message in res.stderr
    assert (set(runs.iterdir()) if runs.is_dir() else set()) == before


def test_studio_measure_leaves_a_folder_it_did_not_make(tmp_path):
    # --work is replaced on each run, but only when an earlier run of the script made it
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/studio_measure.py"),
            "--video",
            str(tmp_path / "v.mp4"),
            "--mask",
            str(tmp_path / "m.png"),
            "--work",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "was not made by this script" in res.stderr
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_cold_start_phases_on_cpu(davis_root):
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/cuda_cold_start.py"),
            "--device",
            "cpu",
            "--data",
            str(davis_root),
            "--frames",
            "3",
            "--sizes",
            "64",
            "96",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    rows = [line.split("|")[1].strip() for line in res.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "import torch",
        "first tensor on the device",
        "import pcvos, load_model, read frames",
        "1st segment, 64p",
        "2nd segment, 64p",
        "1st segment, 96p",
        "2nd segment, 96p",
        "total",
    ]
    assert res.stdout.startswith("bear, 3 frames, cpu, cuDNN default")


def test_studio_clicks_benchmark_tiny(davis_root, tmp_path):
    """Two robot clicks on one real frame through the studio's prompt route (timings not asserted)."""
    pytest.importorskip("starlette", reason="the studio extra (starlette, uvicorn) is not installed")
    out = tmp_path / "clicks.json"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/studio_clicks.py"),
            "--davis",
            str(davis_root),
            "--split",
            "select",
            "--sequences",
            "1",
            "--clicks",
            "2",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["frame_size"] == [854, 480] and [r["click"] for r in result["rows"]] == [1, 2]
    assert all(0 <= r["iou"] <= 1 and r["prompt_s"] > 0 for r in result["rows"])
    assert "| later clicks, prompt | 1 |" in res.stdout
