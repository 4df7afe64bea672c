"""`pcvos infer davis|youtube` on small real-data folders: outputs, resume, torchrun sharding,
per-sequence test-time adaptation (`--adapt`) and the per-sequence timing summary."""

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
    (root / f"ImageSets/2016/{SEQS[1]}.txt").write_text(SEQS[1] + "\n")  # the second sequence alone
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


VID = "vid1"


@pytest.fixture(scope="module")
def small_youtube(tmp_path_factory, davis_root) -> Path:
    """A YouTube-VOS valid folder of one video: object 3 annotated at frame 0, object 7 entering at 5."""
    root = tmp_path_factory.mktemp("yt")
    vid = VID
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
    return root


def test_infer_youtube_late_objects_and_zip(tmp_path, small_youtube, weights):
    root, vid = small_youtube, VID
    late = np.array(Image.open(root / f"valid/Annotations/{vid}/00005.png"))
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


# two steps change the labels of these 4-frame sequences (a visible adaptation) and take about a second
ADAPT = ["--adapt", "2", "--adapt-seed", "3"]


def _infer_davis(root: Path, out: Path, *extra: str) -> int:
    # the shipped model: the one `--adapt` is meant for; native size, as the frames are small
    return main(
        [
            "infer",
            "davis",
            "--davis-root",
            str(root),
            "--out",
            str(out),
            "--quiet",
            "--size",
            "native",
            *extra,
        ]
    )


def _pngs(folder: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_infer_davis_adapts_each_sequence_from_the_same_weights(tmp_path, small_davis):
    from pcvos.data.davis import DavisDataset
    from pcvos.eval.runners import Schedule

    both, alone = tmp_path / "both", tmp_path / "alone"
    assert _infer_davis(small_davis, both, *ADAPT) == 0
    assert _infer_davis(small_davis, alone, *ADAPT, "--set", SEQS[1]) == 0
    # the second sequence, segmented after the first one adapted, equals it segmented alone
    assert (_pngs(both / SEQS[1]) == _pngs(alone / SEQS[1])).all()
    # each sequence is what `pcvos.segment(adapt=2, adapt_seed=3)` (the path of `segment --adapt`)
    # gives, from its first-frame mask, and adaptation changed it
    model = pcvos.load_model()
    kwargs = Schedule(size=None).kwargs(model)
    ds = DavisDataset(small_davis, year="2016", subset="val")
    changed = False
    for name in SEQS:
        seq = ds[name]
        frames, first = seq.frames(), seq.first_mask()
        masks = {0: np.where(first == 255, 0, first).astype(np.uint8)}
        adapted = pcvos.segment(model, frames, masks, adapt=2, adapt_seed=3, **kwargs)
        assert (_pngs(both / name) == adapted).all()
        changed |= bool((adapted != pcvos.segment(model, frames, masks, **kwargs)).any())
    assert changed


def test_infer_summary_has_per_sequence_seconds_and_keeps_them_on_resume(tmp_path, small_davis, capsys):
    out = tmp_path / "res"
    assert _infer_davis(small_davis, out, *ADAPT, "--set", SEQS[1]) == 0
    text = capsys.readouterr().out
    assert "1 sequences (0 already done)" in text and "adapting (2 steps, seed 3)" in text
    table = text.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("sequence"))
    assert table[header].split() == ["sequence", "frames", "adapt", "s", "infer", "s", "frames/s"]
    assert table[header + 1].split()[:2] == [SEQS[1], str(N)] and table[header + 2].startswith("total")
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["sequences"][SEQS[1]]
    assert (entry["frames"], entry["adapt_steps"], entry["adapt_seed"]) == (N, 2, 3)
    assert entry["adapt_seconds"] > 0 and entry["inference_seconds"] > 0
    assert summary["settings"]["adapt"] == 2 and summary["settings"]["clip_length"] == 5
    # resumed without adaptation: the new sequence joins, the earlier entry stays as it was
    assert _infer_davis(small_davis, out) == 0
    assert "1 sequences (1 already done)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sequences"][SEQS[1]] == entry
    fresh = summary["sequences"][SEQS[0]]
    assert (fresh["adapt_steps"], fresh["adapt_seconds"]) == (0, 0)
    assert (summary["total"]["sequences"], summary["total"]["frames"]) == (2, 2 * N)
    assert summary["settings"]["adapt"] == 0
    # a rerun with nothing left to do leaves the summary alone
    before = (out / "summary.json").read_bytes()
    assert _infer_davis(small_davis, out, *ADAPT) == 0
    assert (out / "summary.json").read_bytes() == before


def test_infer_youtube_adapts_from_the_frames_where_objects_first_appear(tmp_path, small_youtube):
    from pcvos.data.youtube import YouTubeVOSDataset
    from pcvos.eval.runners import Schedule

    out = tmp_path / "sub"
    args = [
        "infer",
        "youtube",
        "--root",
        str(small_youtube),
        "--out",
        str(out),
        "--quiet",
        "--size",
        "native",
    ]
    assert main(args + ADAPT) == 0
    video = YouTubeVOSDataset(small_youtube, split="valid", all_frames=True)[VID]
    masks = {i: np.where(m == 255, 0, m).astype(np.uint8) for i, m in video.masks.items()}
    assert sorted(masks) == [0, 5]  # object 3's first frame and object 7's
    model = pcvos.load_model()
    want = pcvos.segment(
        model, video.frames(), masks, adapt=2, adapt_seed=3, **Schedule(size=None).kwargs(model)
    )
    for i in video.scored_frames:
        got = np.array(Image.open(out / "Annotations" / VID / f"{video.frame_names[i]}.png"))
        assert (got == want[i]).all()


@pytest.mark.parametrize(
    "bad, option",
    [(["--adapt", "-1"], "--adapt"), (["--adapt", "x"], "--adapt"), (["--adapt-seed", "-3"], "--adapt-seed")],
)
@pytest.mark.parametrize("bench", ["davis", "youtube"])
def test_infer_bad_adapt_arguments_exit_2(tmp_path, capsys, bench, bad, option):
    where = ["--davis-root", str(tmp_path)] if bench == "davis" else ["--root", str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        main(["infer", bench, *where, "--out", str(tmp_path / "o"), *bad])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}" in err and bad[1] in err
    assert not (tmp_path / "o").exists()


def test_infer_and_segment_share_the_adapt_options():
    from pcvos.cli import build_parser
    from pcvos.eval.runners import Schedule
    from pcvos.inference.adapt import DEFAULT_STEPS

    parser = build_parser()
    seg = parser.parse_args(["segment", "v.mp4", "--mask", "m.png", "--adapt"])
    inf = parser.parse_args(["infer", "davis", "--davis-root", "r", "--out", "o", "--adapt"])
    assert seg.adapt == inf.adapt == DEFAULT_STEPS and seg.adapt_seed == inf.adapt_seed == 0
    off = parser.parse_args(["infer", "youtube", "--root", "r", "--out", "o"])
    assert (off.adapt, off.adapt_seed) == (0, 0)
    for bad in ({"adapt": -1}, {"adapt_seed": -1}, {"adapt": 2.5}, {"adapt": True}):
        with pytest.raises(ValueError, match="Schedule.adapt"):
            Schedule(**bad)
