#!/usr/bin/env python
"""Where to correct: J&F after k ground-truth corrections at Session.suggest()'s frames, at k evenly
spaced frames, and at the k worst frames (oracle).

    # 1. signals and per-frame J of a first-frame run on the select split, then the weight grid
    python benchmarks/suggest.py tune --davis-root ../shared/data/davis2016-train --threads 1
    # 2. the robot user on the report split, with the weights chosen in 1 (review.DEFAULT_WEIGHTS)
    python benchmarks/suggest.py correct --davis-root ../shared/data/davis2016-train --threads 1

The robot user, per sequence (ground-truth masks stand in for the user's): frame 0's mask,
propagated forward to the end; then k = 1, 2, 3 corrections, each one ``set_mask(c, gt[c])`` and
``propagate(c, direction="both", until="keyframe")`` (what the studio does), at

- ``suggested``: ``Session.suggest(3)`` after the first run, corrected in its order (k = 1 is its
  first pick, k = 2 its first two, ...);
- ``even``: frames round(i T / (k + 1)), i = 1..k, a fresh chain for each k, in time order;
- ``oracle``: the k non-keyframes with the lowest J after the first run, worst first;
- ``oracle spread`` (``--oracle-spread``): the same J ranking with suggest()'s spacing rule
  (review.pick_spread), which separates what the signals know from what the spacing does.

J&F: pcvos' DAVIS 2016 metrics (first and last frame not scored; keyframes count with their
given masks, as a user's result would), per sequence then averaged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import pcvos
from pcvos.data.frames import FrameFolder
from pcvos.data.io_utils import atomic_write_text
from pcvos.eval.davis_eval import read_annotation
from pcvos.eval.metrics import db_eval_iou
from pcvos.eval.protocol import split
from pcvos.inference import review
from pcvos.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))
from corrections import _scores  # the same J&F as benchmarks/corrections.py

KS = (1, 2, 3)
# Weight grid of the tune step: each signal's weight in {0, 1, 2} (not all zero).
WEIGHT_STEPS = (0.0, 1.0, 2.0)

# The robot user: frame index -> the (H, W) mask it sets there as a keyframe. Default: the ground truth.
User = Callable[[int], np.ndarray]


def _load(root: Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    folder = FrameFolder(root / "JPEGImages/480p" / seq)
    gt_paths = sorted((root / "Annotations/480p" / seq).glob("*.png"))
    frames = np.stack([folder[i] for i in range(len(gt_paths))])
    gt = np.stack([(read_annotation(q)[0] > 0).astype(np.uint8) for q in gt_paths])
    return frames, gt


def _first_run(
    model, frames: np.ndarray, gt: np.ndarray, args, user: User | None = None
) -> tuple[pcvos.Session, float]:
    s = pcvos.Session(model, frames, clip_length=args.clip_length, size=args.size)
    s.set_mask(0, gt[0] if user is None else user(0))
    start = time.perf_counter()
    for _ in s.propagate(0, direction="forward", until="end"):
        pass
    return s, time.perf_counter() - start


def _even(n: int, k: int) -> list[int]:
    """k evenly spaced frames of an n-frame video: round(i n / (k + 1)), i = 1..k."""
    return [round(i * n / (k + 1)) for i in range(1, k + 1)]


def _labels(s: pcvos.Session) -> np.ndarray:
    return np.stack([s.labels(i) for i in range(s.num_frames)])


def tune(args) -> int:
    """Per-frame signals and J on the select split, then the weight grid scored by the mean J of
    the suggested frames (lower: the ranking finds worse frames)."""
    model = pcvos.load_model(args.weights)
    data = {}
    for seq in split("select"):
        frames, gt = _load(args.davis_root, seq)
        s, secs = _first_run(model, frames, gt, args)
        labels = _labels(s)
        j = db_eval_iou(gt, labels)
        doubt = np.array([s._doubt.get(i, np.nan) for i in range(len(gt))])
        data[seq] = {"labels": review.subsample_labels(labels), "J": j, "doubt": doubt}
        print(f"{seq}: {len(gt)} frames, first-run J {j[1:-1].mean():.3f}, {secs:.1f} s", file=sys.stderr)
    rows = []
    for combo in itertools.product(WEIGHT_STEPS, repeat=len(review.SIGNALS)):
        if not any(combo):
            continue
        weights = dict(zip(review.SIGNALS, combo, strict=True))
        per_k = {}
        for k in KS:
            picked = []
            for d in data.values():
                picks = review.suggest_frames(d["labels"], [0], d["doubt"], k, weights=weights)
                picked.append(float(d["J"][picks].mean()))
            per_k[k] = statistics.fmean(picked)
        rows.append({"weights": weights, "mean_J_picked": per_k, "mean": statistics.fmean(per_k.values())})
    rows.sort(key=lambda r: r["mean"])
    ref = {
        "even": {
            k: statistics.fmean(float(d["J"][_even(len(d["J"]), k)].mean()) for d in data.values())
            for k in KS
        },
        "oracle": {
            k: statistics.fmean(float(np.sort(d["J"][1:])[:k].mean()) for d in data.values()) for k in KS
        },
        "first_run_J": {seq: float(d["J"][1:-1].mean()) for seq, d in data.items()},
    }
    out = {"best": rows[0], "top": rows[:10], "default": None, "reference": ref}
    for r in rows:
        if r["weights"] == review.DEFAULT_WEIGHTS:
            out["default"] = r
    text = json.dumps(out, indent=2)
    print(text)
    atomic_write_text(args.out / "tune.json", text + "\n")
    return 0


def _chain(
    model,
    frames: np.ndarray,
    gt: np.ndarray,
    first: np.ndarray,
    picks: list[int],
    args,
    user: User | None = None,
) -> list[dict]:
    """Corrections at ``picks`` in order, from the first run's labels; scores after each."""
    s = pcvos.Session(model, frames, clip_length=args.clip_length, size=args.size)
    s.set_mask(0, gt[0] if user is None else user(0))
    for i in range(1, len(gt)):
        s.set_labels(i, first[i])
    return _correct(s, gt, picks, user)


def _correct(s: pcvos.Session, gt: np.ndarray, picks: list[int], user: User | None = None) -> list[dict]:
    """At each of ``picks`` in order: the user's mask (default the ground truth) as a keyframe, then
    re-propagation both ways until the neighbouring keyframes; J&F after each."""
    out = []
    for c in picks:
        s.set_mask(c, gt[c] if user is None else user(c))
        start = time.perf_counter()
        n = sum(1 for _ in s.propagate(c, direction="both", until="keyframe"))
        scores = _scores(gt, _labels(s), s.keyframes)
        scores.update(frame=c, seconds=time.perf_counter() - start, frames=n)
        out.append(scores)
    return out


def _jf(r: dict) -> float:
    return 50 * (r["J"] + r["F"])


def correct(args) -> int:
    model = pcvos.load_model(args.weights)
    seqs = args.sequences or split("report")
    per_seq = {}
    path = args.out / "correct.json"
    if path.exists() and args.resume:
        per_seq = json.loads(path.read_text())["per_sequence"]
    for seq in seqs:
        if seq in per_seq:
            continue
        frames, gt = _load(args.davis_root, seq)
        n = len(gt)
        s, secs = _first_run(model, frames, gt, args)
        first = _labels(s)
        res = {"frames": n, "first": _scores(gt, first, [0]), "first_seconds": secs}
        j = db_eval_iou(gt, first)
        cand = np.arange(1, n)
        worst = [int(i) for i in cand[np.argsort(j[1:], kind="stable")]]
        sugg = s.suggest(max(KS))
        res["suggested_frames"] = sugg
        res["suggested"] = _correct(s, gt, sugg)  # the session the suggestions came from
        res["oracle_frames"] = worst[: max(KS)]
        res["oracle"] = _chain(model, frames, gt, first, worst[: max(KS)], args)
        if args.oracle_spread:
            spread = review.pick_spread(cand, -j[1:], max(KS), n)
            res["oracle_spread_frames"] = spread
            res["oracle_spread"] = _chain(model, frames, gt, first, spread, args)
        res["even"] = {}
        for k in KS:
            even = _even(n, k)
            res["even"][str(k)] = {"frames": even, "scores": _chain(model, frames, gt, first, even, args)[-1]}
        per_seq[seq] = res
        print(
            f"{seq}: first {_jf(res['first']):.1f}; "
            + "; ".join(
                f"k={k} sugg {_jf(res['suggested'][k - 1]):.1f} "
                f"even {_jf(res['even'][str(k)]['scores']):.1f} "
                f"oracle {_jf(res['oracle'][k - 1]):.1f}"
                for k in KS
            )
            + f" (suggested {sugg}, oracle {worst[:3]}, first run {secs:.1f} s)",
            file=sys.stderr,
        )
        atomic_write_text(
            path, json.dumps({"per_sequence": per_seq, "args": vars(args)}, default=str, indent=1)
        )
    done = [q for q in seqs if q in per_seq]

    def mean(get) -> float:
        return statistics.fmean(get(per_seq[q]) for q in done)

    lines = [
        f"{len(done)} sequences ({', '.join(done)}), pcvos-lite, L={args.clip_length}, processing size "
        f"{args.size}, fp32, {torch.get_num_threads()} CPU thread(s); weights {review.DEFAULT_WEIGHTS}",
        "",
        "| corrections k | suggested | evenly spaced | oracle (k worst) |",
        "|---|---|---|---|",
        f"| 0 (first frame only) | {mean(lambda r: _jf(r['first'])):.1f} | | |",
    ]
    for k in KS:
        lines.append(
            f"| {k} | {mean(lambda r, k=k: _jf(r['suggested'][k - 1])):.1f} | "
            f"{mean(lambda r, k=k: _jf(r['even'][str(k)]['scores'])):.1f} | "
            f"{mean(lambda r, k=k: _jf(r['oracle'][k - 1])):.1f} |"
        )
    if all("oracle_spread" in per_seq[q] for q in done):
        lines += [
            "",
            "Oracle with suggest()'s spacing: "
            + ", ".join(f"k={k} {mean(lambda r, k=k: _jf(r['oracle_spread'][k - 1])):.1f}" for k in KS),
        ]
    lines += ["", "| sequence | frames | first | k=3 suggested | k=3 even | k=3 oracle | suggested frames |"]
    lines.append("|---|---|---|---|---|---|---|")
    for q in done:
        r = per_seq[q]
        lines.append(
            f"| {q} | {r['frames']} | {_jf(r['first']):.1f} | {_jf(r['suggested'][-1]):.1f} | "
            f"{_jf(r['even']['3']['scores']):.1f} | {_jf(r['oracle'][-1]):.1f} | {r['suggested_frames']} |"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out / "correct.md", text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("tune", "correct"))
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--sequences", nargs="+", default=None, help="correct: default the report split")
    p.add_argument("--weights", default=None, help="default: the shipped pcvos-lite")
    p.add_argument("--size", type=int, default=240, help="processing shorter side")
    p.add_argument("--clip-length", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--oracle-spread", action="store_true", help="correct: also the oracle with suggest()'s spacing"
    )
    p.add_argument("--resume", action="store_true", help="correct: keep sequences already in correct.json")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/suggest"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    return tune(args) if args.step == "tune" else correct(args)


if __name__ == "__main__":
    sys.exit(main())
