"""Tests of pcvos.eval.davis_eval and pcvos.eval.cli: dataset layouts, mask formats, error
handling, output files, and an end-to-end check on real DAVIS 2016 sequences against an
independent straightforward per-frame implementation of the official definitions."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcvos.eval.cli import main_eval, register
from pcvos.eval.davis_eval import (
    evaluate_davis,
    read_annotation,
    read_result,
    read_sequence_list,
    resolve_year,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DAVIS2016_TRAIN = SHARED_DATA / "davis2016-train"

_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * (3 * 250) + [224, 224, 192]

H, W = 24, 32


# ------------------------------------------------------------------------------- helpers
def save_indexed(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    im.putpalette(_PALETTE)
    im.save(path)


def save_gray(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)


def box(y0: int, y1: int, x0: int, x1: int, value: int = 1, base: np.ndarray | None = None) -> np.ndarray:
    a = np.zeros((H, W), np.uint8) if base is None else base.copy()
    a[y0:y1, x0:x1] = value
    return a


def make_dataset(
    tmp: Path,
    gt: dict[str, Sequence[np.ndarray]],
    res: dict[str, Sequence[np.ndarray | None]],
    *,
    year: str = "2017",
    subset: str = "val",
    gray: bool = False,
) -> tuple[Path, Path]:
    root, out = tmp / "DAVIS", tmp / "results"
    saver = save_gray if gray else save_indexed
    for seq, frames in gt.items():
        for i, a in enumerate(frames):
            saver(root / "Annotations" / "480p" / seq / f"{i:05d}.png", a)
    for seq, frames in res.items():
        (out / seq).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(frames):
            if a is not None:
                saver(out / seq / f"{i:05d}.png", a)
    (root / "ImageSets" / year).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / year / f"{subset}.txt").write_text("\n".join(gt) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    return root, out


# ---------------------------------------------- independent straightforward reference
def ref_boundary(m: np.ndarray) -> np.ndarray:
    """seg2bmap written directly from its definition (zero-padded neighbours)."""
    m = m.astype(bool)
    h, w = m.shape
    p = np.zeros((h + 1, w + 1), bool)
    p[:h, :w] = m
    east, south, south_east = p[:h, 1:], p[1:, :w], p[1:, 1:]
    b = (m != east) | (m != south) | (m != south_east)
    b[-1, :] = m[-1, :] != east[-1, :]
    b[:, -1] = m[:, -1] != south[:, -1]
    b[-1, -1] = False
    return b


def ref_f(pred: np.ndarray, gt: np.ndarray) -> float:
    from scipy.ndimage import binary_dilation

    r = int(math.ceil(0.008 * math.hypot(*gt.shape)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    fp = xx**2 + yy**2 <= r**2
    bp, bg = ref_boundary(pred), ref_boundary(gt)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    prec = (bp & binary_dilation(bg, structure=fp)).sum() / n_p
    rec = (bg & binary_dilation(bp, structure=fp)).sum() / n_g
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def ref_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else np.logical_and(pred, gt).sum() / union


def ref_stats(v: list[float]) -> tuple[float, float, float]:
    v = np.asarray(v, float)
    n = len(v)
    ids = [int(round(1 + k * (n - 1) / 4 + 1e-10)) - 1 for k in range(5)]
    return (
        float(np.mean(v)),
        float(np.mean(v > 0.5)),
        float(np.mean(v[ids[0] : ids[1] + 1]) - np.mean(v[ids[3] : ids[4] + 1])),
    )


def ref_evaluate(root: Path, out: Path, seqs: list[str], single_object: bool) -> dict[str, list[float]]:
    """Per object: [JM, JR, JD, FM, FR, FD], straight from the definitions, frame by frame."""
    per: dict[str, list[float]] = {}
    for seq in seqs:
        frames = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
        first = np.array(Image.open(frames[0]))
        first[first == 255] = 0
        n_obj = 1 if single_object else int(first.max())
        js: list[list[float]] = [[] for _ in range(n_obj)]
        fs: list[list[float]] = [[] for _ in range(n_obj)]
        for fp in frames[1:-1]:
            g = np.array(Image.open(fp)).astype(int)
            g[g == 255] = 0
            r = np.array(Image.open(out / seq / fp.name)).astype(int)
            for k in range(1, n_obj + 1):
                gk = g > 0 if single_object else g == k
                js[k - 1].append(ref_j(r == k, gk))
                fs[k - 1].append(ref_f(r == k, gk))
        for k in range(n_obj):
            per[f"{seq}_{k + 1}"] = [*ref_stats(js[k]), *ref_stats(fs[k])]
    return per


# ------------------------------------------------------------------------ mask reading
def test_read_annotation_formats(tmp_path: Path) -> None:
    a = box(2, 8, 2, 8, 1, box(10, 14, 10, 20, 2))
    a[0, :] = 255
    save_indexed(tmp_path / "p.png", a)
    ids, void = read_annotation(tmp_path / "p.png")
    assert set(np.unique(ids)) == {0, 1, 2}
    assert void[0].all() and void.sum() == W
    # DAVIS 2016 release: grayscale 0/255 is one object, no void
    save_gray(tmp_path / "g.png", box(2, 8, 2, 8, 255))
    ids, void = read_annotation(tmp_path / "g.png")
    assert set(np.unique(ids)) == {0, 1} and not void.any()
    # an indexed mask with only 0/255 is all void, not an object
    save_indexed(tmp_path / "pv.png", box(2, 8, 2, 8, 255))
    ids, void = read_annotation(tmp_path / "pv.png")
    assert not ids.any() and void.sum() == 36


def test_read_result_formats_and_errors(tmp_path: Path) -> None:
    save_gray(tmp_path / "g.png", box(2, 8, 2, 8, 255))
    assert set(np.unique(read_result(tmp_path / "g.png"))) == {0, 1}
    save_indexed(tmp_path / "p.png", box(2, 8, 2, 8, 3))
    assert set(np.unique(read_result(tmp_path / "p.png"))) == {0, 3}
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="bad.png"):
        read_result(tmp_path / "bad.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png"):
        read_result(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_result(tmp_path / "nope.png")


def test_sequence_lists_and_year(tmp_path: Path) -> None:
    root = tmp_path / "D"
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "val.txt").write_text(
        "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\n"
        "/JPEGImages/480p/bear/00001.jpg /Annotations/480p/bear/00001.png\n"
        "/JPEGImages/480p/boat/00000.jpg /Annotations/480p/boat/00000.png\n"
    )
    year, path = resolve_year(root, "val")
    assert year == "2016"
    assert read_sequence_list(path) == ["bear", "boat"]
    with pytest.raises(FileNotFoundError, match="2017"):
        resolve_year(root, "val", "2017")
    (root / "ImageSets" / "2017").mkdir()
    (root / "ImageSets" / "2017" / "val.txt").write_text("a\n\nb\n")
    assert resolve_year(root, "val")[0] == "2017"
    assert resolve_year(root, "val", "2016")[0] == "2016"
    assert read_sequence_list(root / "ImageSets" / "2017" / "val.txt") == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="test-dev"):
        resolve_year(root, "test-dev")
    with pytest.raises(ValueError):
        resolve_year(root, "val", "2019")


# ------------------------------------------------------------------- semantics on tiny data
def test_perfect_result_and_first_last_frames_ignored(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1, box(12, 20, 15, 28, 2)) for _ in range(5)]
    res: list[np.ndarray | None] = list(gt)
    res[0] = None  # first and last result frames are never read
    res[4] = None
    root, out = make_dataset(tmp_path, {"s": gt}, {"s": res})
    m = evaluate_davis(root, out, workers=1)
    assert m["J&F-Mean"] == 1.0 and m["J-Mean"] == 1.0 and m["F-Mean"] == 1.0
    assert m["J-Recall"] == 1.0 and m["J-Decay"] == 0.0
    assert list(m["per_object"]) == ["s_1", "s_2"]


def test_missing_object_in_result_scores_zero(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1, box(12, 20, 15, 28, 2)) for _ in range(5)]
    res = [box(2, 10, 3, 12, 1) for _ in range(5)]  # object 2 never predicted
    root, out = make_dataset(tmp_path, {"s": gt}, {"s": res})
    m = evaluate_davis(root, out, workers=1)
    assert m["per_object"]["s_1"] == [1.0, 1.0]
    assert m["per_object"]["s_2"] == [0.0, 0.0]
    assert m["J-Mean"] == 0.5 and m["J&F-Mean"] == 0.5 and m["J-Recall"] == 0.5


def test_object_count_from_first_frame_max_id(tmp_path: Path) -> None:
    # first frame holds ids {2} only: the toolkit evaluates objects 1..2; object 1 has an
    # empty ground truth, so an empty prediction scores J = F = 1 on every frame
    gt = [box(12, 20, 15, 28, 2) for _ in range(4)]
    res = [box(12, 20, 15, 28, 2) for _ in range(4)]
    root, out = make_dataset(tmp_path, {"s": gt}, {"s": res})
    m = evaluate_davis(root, out, workers=1)
    assert m["per_object"] == {"s_1": [1.0, 1.0], "s_2": [1.0, 1.0]}
    # an object that appears only later (id 3) is not evaluated
    gt2 = [box(12, 20, 15, 28, 1)] + [box(0, 5, 0, 5, 3, box(12, 20, 15, 28, 1)) for _ in range(3)]
    root, out = make_dataset(tmp_path / "b", {"t": gt2}, {"t": [box(12, 20, 15, 28, 1)] * 4})
    assert evaluate_davis(root, out, workers=1)["per_object"] == {"t_1": [1.0, 1.0]}


def test_index_above_object_count_is_a_clear_error(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1) for _ in range(5)]
    res = [box(2, 10, 3, 12, 1) for _ in range(5)]
    res[2] = box(15, 20, 15, 20, 2, res[2])
    root, out = make_dataset(tmp_path, {"seqA": gt}, {"seqA": res})
    with pytest.raises(ValueError, match=r"seqA.*00002.*index 2"):
        evaluate_davis(root, out, workers=1)


def test_missing_result_frame_names_the_file(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1) for _ in range(5)]
    res: list[np.ndarray | None] = [box(2, 10, 3, 12, 1) for _ in range(5)]
    res[3] = None
    root, out = make_dataset(tmp_path, {"s": gt}, {"s": res})
    with pytest.raises(FileNotFoundError, match=r"00003\.png"):
        evaluate_davis(root, out, workers=1)


def test_missing_sequence_and_imagesets_and_bad_png(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1) for _ in range(4)]
    root, out = make_dataset(tmp_path, {"s": gt, "t": gt}, {"s": gt})
    with pytest.raises(FileNotFoundError, match=r"results.*'t'"):
        evaluate_davis(root, out, workers=1)
    with pytest.raises(FileNotFoundError, match="train.txt"):
        evaluate_davis(root, out, subset="train", workers=1)
    root2, out2 = make_dataset(tmp_path / "b", {"s": gt}, {"s": gt})
    (out2 / "s" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ValueError, match=r"00001\.png"):
        evaluate_davis(root2, out2, workers=1)
    with pytest.raises(ValueError, match="semi-supervised"):
        evaluate_davis(root2, out2, task="unsupervised")


def test_void_pixels_are_background_like_the_toolkit(tmp_path: Path) -> None:
    g = box(8, 16, 8, 16, 1)
    g[4:8, 8:16] = 255  # void band just above the object
    pred = box(4, 16, 8, 16, 1)  # covers object + void
    gt = [g] * 4
    res = [pred] * 4
    root, out = make_dataset(tmp_path, {"s": gt}, {"s": res})
    m = evaluate_davis(root, out, workers=1)
    assert m["J-Mean"] == pytest.approx(64 / 96)  # void counted as background
    m2 = evaluate_davis(root, out, workers=1, exclude_void=True)
    assert m2["J-Mean"] == 1.0 and m2["F-Mean"] == 1.0


def test_davis2016_grayscale_layout(tmp_path: Path) -> None:
    gt = [box(4, 14, 4, 20, 255) for _ in range(5)]
    res = [box(4, 14, 4, 20, 255) for _ in range(5)]
    res[2] = box(4, 14, 4, 12, 255)  # half the object
    root, out = make_dataset(tmp_path, {"bear": gt}, {"bear": res}, year="2016", gray=True)
    m = evaluate_davis(root, out, workers=1)
    assert list(m["per_object"]) == ["bear_1"]
    assert m["J-Mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    # DAVIS 2016 mode: all annotated ids are one object; results must hold one object
    gt_multi = [box(4, 14, 4, 12, 1, box(4, 14, 12, 20, 2)) for _ in range(4)]
    root, out = make_dataset(tmp_path / "b", {"s": gt_multi}, {"s": [box(4, 14, 4, 20, 1)] * 4}, year="2016")
    m = evaluate_davis(root, out, workers=1)
    assert m["per_object"] == {"s_1": [1.0, 1.0]}
    root, out = make_dataset(tmp_path / "c", {"s": gt_multi}, {"s": gt_multi}, year="2016")
    with pytest.raises(ValueError, match="index 2"):
        evaluate_davis(root, out, workers=1)


def test_output_files_format(tmp_path: Path) -> None:
    gt = [box(2, 10, 3, 12, 1, box(12, 20, 15, 28, 2)) for _ in range(6)]
    res = [box(2, 10, 3, 12 - (i % 3), 1, box(12, 20, 15 + i, 28, 2)) for i in range(6)]
    root, out = make_dataset(tmp_path, {"b": gt, "a": gt}, {"b": res, "a": gt})
    m = evaluate_davis(root, out, workers=1)
    g = (out / "global_results-val.csv").read_text()
    lines = g.splitlines()
    assert lines[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    cols = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert lines[1] == ",".join(f"{m[c]:.3f}" for c in cols)
    assert g.endswith("\n") and len(lines) == 2
    s = (out / "per-sequence_results-val.csv").read_text().splitlines()
    assert s[0] == "Sequence,J-Mean,F-Mean"
    # ImageSets order is kept
    assert [x.split(",")[0] for x in s[1:]] == ["b_1", "b_2", "a_1", "a_2"]
    j_b1, f_b1 = m["per_object"]["b_1"]
    assert s[1] == f"b_1,{j_b1:.3f},{f_b1:.3f}"
    js = json.loads((out / "metrics.json").read_text())
    assert js == m  # full precision round trip
    assert set(js) == set(cols) | {"per_object"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert (m["J-Mean"] + m["F-Mean"]) / 2 == m["J&F-Mean"]
    assert m["J-Mean"] == np.mean([v[0] for v in m["per_object"].values()])
    try:
        import pandas as pd
    except ImportError:
        return
    # byte-identical to the toolkit's pandas writer
    table = pd.DataFrame([[m[c] for c in cols]], columns=cols)
    assert table.to_csv(index=False, float_format="%.3f", lineterminator="\n") == g


def test_workers_give_identical_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gt_all, res_all = {}, {}
    for s in range(3):
        gt_all[f"s{s}"] = [box(2, 10 + s, 3, 12, 1, box(12, 20, 15, 28, 2)) for _ in range(6)]
        res_all[f"s{s}"] = [
            (rng.random((H, W)) < 0.6).astype(np.uint8) * rng.integers(0, 3, (H, W)).astype(np.uint8)
            for _ in range(6)
        ]
    root, out = make_dataset(tmp_path, gt_all, res_all)
    m1 = evaluate_davis(root, out, workers=1, write_files=False)
    m2 = evaluate_davis(root, out, workers=2, write_files=False)
    assert m1 == m2


# ------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcvos")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    return parser


def test_cli_success_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = [box(2, 10, 3, 12, 1) for _ in range(4)]
    root, out = make_dataset(tmp_path, {"seq": gt}, {"seq": gt})
    args = _parser().parse_args(
        ["eval", "davis", "--davis-root", str(root), "--results", str(out), "--set", "val", "--workers", "1"]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "J&F-Mean" in text and "seq_1" in text and "1.000" in text
    assert (out / "global_results-val.csv").is_file()

    args = _parser().parse_args(
        ["eval", "davis", "--davis-root", str(root), "--results", str(out), "--set", "nope"]
    )
    assert main_eval(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcvos eval: error:") and "nope.txt" in err and "\n" not in err

    args = _parser().parse_args(
        ["eval", "davis", "--davis-root", str(tmp_path / "missing"), "--results", str(out)]
    )
    assert main_eval(args) == 2
    assert "missing" in capsys.readouterr().err

    args = _parser().parse_args(["eval"])
    assert args.func(args) == 2


# ------------------------------------------------------------------ real DAVIS sequences
def _require_real_data() -> Path:
    if not (DAVIS2016_TRAIN / "Annotations" / "480p").is_dir():
        pytest.skip(f"real DAVIS data not available at {DAVIS2016_TRAIN}")
    return DAVIS2016_TRAIN


REAL_SEQS = ["bear", "boat", "car-turn"]
N_FRAMES = 10


def _perturb(labels: np.ndarray, kind: int, frame: int) -> np.ndarray:
    import cv2

    out = labels.copy()
    if kind == 0:  # eroded by 3 px
        out = cv2.erode(out, np.ones((7, 7), np.uint8))
    elif kind == 1:  # shifted by (6, -9) px
        out = np.roll(out, (6, -9), axis=(0, 1))
    else:  # dilated, and one empty frame
        out = cv2.dilate(out, np.ones((9, 9), np.uint8))
        if frame == 4:
            out[:] = 0
    return out


def _make_real(tmp: Path, multi: bool) -> tuple[Path, Path]:
    src = _require_real_data()
    root, out = tmp / "DAVIS", tmp / "results"
    year = "2017" if multi else "2016"
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "train.txt").write_text("\n".join(REAL_SEQS) + "\n")
    for si, seq in enumerate(REAL_SEQS):
        frames = sorted((src / "Annotations" / "480p" / seq).glob("*.png"))[:N_FRAMES]
        assert len(frames) == N_FRAMES
        cut = None
        for fi, fp in enumerate(frames):
            a = np.array(Image.open(fp)).astype(np.uint8)
            a[a == 255] = 0
            if multi:
                # split the object into a left part (1) and a right part (2)
                if cut is None:
                    xs = np.nonzero(a)[1]
                    cut = int(np.median(xs))
                a = np.where(a > 0, 1, 0).astype(np.uint8)
                a[:, cut:] *= 2
                save_indexed(root / "Annotations" / "480p" / seq / fp.name, a)
            else:
                (root / "Annotations" / "480p" / seq).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fp, root / "Annotations" / "480p" / seq / fp.name)
            save_indexed(out / seq / fp.name, _perturb(a, si, fi))
    return root, out


@pytest.mark.parametrize("multi", [False, True], ids=["davis2016-single", "davis2017-split"])
def test_real_sequences_match_reference(tmp_path: Path, multi: bool) -> None:
    root, out = _make_real(tmp_path, multi)
    m = evaluate_davis(root, out, subset="train", workers=2)
    ref = ref_evaluate(root, out, REAL_SEQS, single_object=not multi)
    assert list(m["per_object"]) == list(ref)
    for name, (jm, fm) in m["per_object"].items():
        assert jm == pytest.approx(ref[name][0], abs=1e-12), name
        assert fm == pytest.approx(ref[name][3], abs=1e-12), name
    cols = ["J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    for i, c in enumerate(cols):
        assert m[c] == pytest.approx(np.mean([v[i] for v in ref.values()]), abs=1e-12), c
    assert m["J&F-Mean"] == pytest.approx((m["J-Mean"] + m["F-Mean"]) / 2, abs=1e-15)
    # sensible ranges for mild perturbations
    assert 0.5 < m["J&F-Mean"] < 0.97
    if not multi:
        j_erode = m["per_object"]["bear_1"][0]
        assert 0.75 < j_erode < 0.98  # 3 px erosion of a large object
        assert m["per_object"]["bear_1"][1] > 0.9  # 3 px is within the 8 px boundary tolerance
        assert 0.4 < m["per_object"]["boat_1"][0] < 0.95  # shift
    # the written CSV agrees with the returned numbers
    line = (out / "global_results-train.csv").read_text().splitlines()[1]
    assert line.split(",")[0] == f"{m['J&F-Mean']:.3f}"
