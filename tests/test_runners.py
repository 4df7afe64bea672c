"""`pcvos infer davis|youtube` on small real-data folders: outputs, resume, torchrun sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pcvos
from pcvos.cli import main
from pcvos.data.io_utils import save_indexed_png

SIZE = (224, 128)  # (w, h) for PIL
SEQS = ("bear", "boat")
N = 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory, official_weights) -> Path:
    path = tmp_path_factory.mktemp("w") / "stcn.pt"
    pcvos.save_checkpoint(pcvos.load_model(official_weights(stcn=True)), path, half=True)
    return path


@pytest.fixture(scope="module")
def small_davis(tmp_path_factory, davis_root) -> Path:
    root = tmp_path_factory.mktemp("davis")
    for seq in SEQS:
        for i in range(N):
            img = Image.open(davis_root / f"JPEGImages/480p/{seq}/{i:05d}.jpg").resize(SIZE, Image.BILINEAR)
            (root / f"JPEGImages/480p/{seq}").mkdir(parents=True, exist_ok=True)
            img.save(root / f"JPEGImages/480p/{seq}/{i:05d}.jpg")
            m = np.array(
                Image.open(davis_root / f"Annotations/480p/{seq}/{i:05d}.png").resize(SIZE, Image.NEAREST)
            )
            save_indexed_png(root / f"Annotations/480p/{seq}/{i:05d}.png", m)
    (root / "ImageSets/2016").mkdir(parents=True)
    (root / "ImageSets/2016/val.txt").write_text("\n".join(SEQS) + "\n")
    return root


STCN = ["--clip-length", "1", "--memory-every", "5", "--pmm-segment", "0"]


def test_infer_davis_then_eval_and_resume(tmp_path, small_davis, weights, capsys):
    out = tmp_path / "res"
    args = [
        "infer",
        "davis",
        "--davis-root",
        small_davis,
        "--weights",
        weights,
        "--out",
        out,
        "--quiet",
        *STCN,
    ]
    assert main([str(a) for a in args] + ["--eval"]) == 0
    text = capsys.readouterr().out
    assert "2 sequences (0 already done), 8 frames" in text and "frames/s" in text
    for seq in SEQS:
        names = sorted(p.name for p in (out / seq).glob("*.png"))
        assert names == [f"{i:05d}.png" for i in range(N)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["J&F-Mean"] <= 1.0
    before = (out / "bear" / "00001.png").stat().st_mtime_ns
    assert main([str(a) for a in args]) == 0
    assert "0 sequences (2 already done)" in capsys.readouterr().out
    assert (out / "bear" / "00001.png").stat().st_mtime_ns == before


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, small_davis, weights):
    one, two = tmp_path / "one", tmp_path / "two"
    # each sequence is segmented whole by one process, so the labels may be compared exactly, but
    # only at one thread count in both: threads split a convolution's or matmul's sums differently
    # (the pytest process has one thread per core by default, torchrun's ranks OMP_NUM_THREADS=1),
    # and a pixel whose classes are within rounding of each other may then change label
    common = ["infer", "davis", "--davis-root", str(small_davis), "--weights", str(weights), "--quiet", *STCN]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(common + ["--out", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "pcvos",
        *common,
        "--out",
        str(two),
    ]
    subprocess.run(cmd, check=True, env=env, timeout=600)
    for seq in SEQS:
        for i in range(N):
            a = np.array(Image.open(one / seq / f"{i:05d}.png"))
            b = np.array(Image.open(two / seq / f"{i:05d}.png"))
            assert (a == b).all()


def test_infer_youtube_late_objects_and_zip(tmp_path, davis_root, weights):
    root = tmp_path / "yt"
    vid = "vid1"
    frames = [Image.open(davis_root / f"JPEGImages/480p/bear/{i:05d}.jpg").resize(SIZE) for i in range(10)]
    mask = np.array(Image.open(davis_root / "Annotations/480p/bear/00000.png").resize(SIZE, Image.NEAREST))
    for i, f in enumerate(frames):
        (root / f"valid_all_frames/JPEGImages/{vid}").mkdir(parents=True, exist_ok=True)
        f.save(root / f"valid_all_frames/JPEGImages/{vid}/{i:05d}.jpg")
        if i % 5 == 0:
            (root / f"valid/JPEGImages/{vid}").mkdir(parents=True, exist_ok=True)
            f.save(root / f"valid/JPEGImages/{vid}/{i:05d}.jpg")
    first = np.where(mask > 0, 3, 0).astype(np.uint8)  # id 3 at frame 0
    late = np.zeros_like(first)
    late[:30, :40] = 7  # id 7 enters at frame 5
    save_indexed_png(root / f"valid/Annotations/{vid}/00000.png", first)
    save_indexed_png(root / f"valid/Annotations/{vid}/00005.png", late)
    (root / "valid/meta.json").write_text(
        json.dumps(
            {"videos": {vid: {"objects": {"3": {"frames": ["00000", "00005"]}, "7": {"frames": ["00005"]}}}}}
        )
    )
    out = tmp_path / "sub"
    assert (
        main(
            [
                "infer",
                "youtube",
                "--root",
                str(root),
                "--weights",
                str(weights),
                "--out",
                str(out),
                "--zip",
                "--quiet",
                "--size",
                "128",
                *STCN,
            ]
        )
        == 0
    )
    written = sorted(p.name for p in (out / "Annotations" / vid).glob("*.png"))
    assert written == ["00000.png", "00005.png"]  # only the scored frames
    at5 = np.array(Image.open(out / "Annotations" / vid / "00005.png"))
    assert (at5[late == 7] == 7).all()
    with zipfile.ZipFile(str(out) + ".zip") as z:
        assert sorted(z.namelist()) == [f"Annotations/{vid}/00000.png", f"Annotations/{vid}/00005.png"]


def test_size_auto_follows_the_model_card():
    import argparse

    from pcvos.cli_types import processing_size, resolve_size

    lite = argparse.Namespace(config=argparse.Namespace(extra={"preferred_size": 240}))
    released = argparse.Namespace(config=argparse.Namespace(extra={}))
    assert resolve_size(processing_size("auto"), lite, otherwise=None) == 240
    assert resolve_size(processing_size("auto"), released, otherwise=None) is None
    assert resolve_size(processing_size("auto"), released, otherwise=480) == 480
    assert resolve_size(processing_size("native"), lite, otherwise=480) is None
    assert resolve_size(processing_size("360"), lite, otherwise=480) == 360
    with pytest.raises(argparse.ArgumentTypeError):
        processing_size("8")
