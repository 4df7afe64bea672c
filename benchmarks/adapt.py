#!/usr/bin/env python
"""Test-time adaptation measured: J&F against the seconds spent adapting, per number of steps N.

    python benchmarks/adapt.py --davis-root ../shared/data/davis2016-train --split select \
        --steps 0 10 25 50 100 --clip-length 5 --size 240 --threads 1 --out runs/adapt_select

``--split`` names a split of the held-out protocol (``pcvos.eval.protocol``): choices (the
default N) are made on ``select``; ``report`` / ``unseen-by-v1`` (the report sequences the shipped
pcvos-lite v1 never trained on) are for reporting. ``--sequences`` overrides the split.

For each sequence, one adaptation run (``pcvos.inference.adapt.Adaptation``) is scored after N
steps for every N asked: the learning rate is constant and samples depend on (seed, step) only,
so the model after N steps is exactly ``pcvos.adapt(..., steps=N)``'s. Adaptation seconds are
the run's setup plus its first N steps; inference seconds are timed apart. Masks go under
``--out/N<n>/<sequence>``; the table is printed and written to ``--out/adapt.md`` and
``--out/adapt.json``.

Variants of the recipe (issue 24, chosen on ``select``): ``--schedule cosine`` warms the learning
rate up linearly over ``--warmup`` steps, then decays it to 0 along a cosine over the rest of the
run (one N only: the schedule spans the run); ``--tune decoder`` gives the optimiser the decoder's
weights only (the encoders, projections and refiner keep the input model's; their gradients are
still computed, so the seconds overstate what a decoder-only run would cost).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pcvos
from pcvos.data.davis import DavisDataset
from pcvos.data.io_utils import atomic_write_text, save_indexed_png
from pcvos.eval.davis_eval import evaluate_davis
from pcvos.eval.protocol import REPORT_UNSEEN_BY_V1, SPLITS
from pcvos.inference.adapt import DEFAULT_CLIP_LEN, DEFAULT_LR, Adaptation
from pcvos.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_dial import _subset_root  # noqa: E402  (a sibling script, not a package)
from heldout import _sequence_jf  # noqa: E402

SPLIT_CHOICES = sorted(SPLITS) + ["unseen-by-v1"]


def _sequences(args: argparse.Namespace) -> list[str]:
    if args.sequences:
        return list(args.sequences)
    if args.split == "unseen-by-v1":
        return list(REPORT_UNSEEN_BY_V1)
    return list(SPLITS[args.split])


def _time_only(args: argparse.Namespace) -> int:
    """Wall and CPU (process) seconds of ``--time-steps`` adaptation steps, setup included."""
    model = pcvos.load_model(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        sequences = _sequences(args)
        ds = DavisDataset(_subset_root(args.davis_root, sequences, Path(tmp)), year="2016", subset="val")
        for name in sequences:
            seq = ds[name]
            frames = seq.frames()
            first = seq.first_mask()
            wall, cpu = time.perf_counter(), time.process_time()
            run = Adaptation(
                model,
                frames,
                {0: np.where(first == 255, 0, first).astype(np.uint8)},
                seed=args.seed,
                size=args.size,
                lr=args.lr,
                clip_len=args.adapt_clip_len,
            )
            for _ in range(args.time_steps):
                run.step()
            run.result()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{name} {frames.shape[2]}x{frames.shape[1]}, {len(frames)} frames, size {args.size}, "
                f"{args.time_steps} steps, {torch.get_num_threads()} threads: "
                f"wall {wall:.1f} s, CPU {cpu:.1f} s, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return 0


def _cosine(total: int, warmup: int):
    """LambdaLR factor at step s: linear warm-up over ``warmup`` steps, then a cosine to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def _variant(run: Adaptation, args: argparse.Namespace, total: int):
    """Apply ``--tune`` / ``--schedule`` to a fresh run; returns the scheduler to step after each step."""
    if args.tune == "decoder":
        run.optimizer = torch.optim.Adam(run.net.decoder.parameters(), lr=args.lr)
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(run.optimizer, _cosine(total, args.warmup))
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--split", choices=SPLIT_CHOICES, default="select")
    p.add_argument("--sequences", nargs="+", default=None, help="instead of --split")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 10, 25, 50, 100])
    p.add_argument("--weights", default=None, help="default: the model shipped with pcvos")
    p.add_argument("--clip-length", type=int, default=5, help="inference clip length L")
    p.add_argument("--size", type=int, default=240, help="processing shorter side")
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--adapt-clip-len", type=int, default=DEFAULT_CLIP_LEN, help="frames per synthetic clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--schedule", choices=["constant", "cosine"], default="constant", help="learning-rate schedule"
    )
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps of --schedule cosine")
    p.add_argument("--tune", choices=["all", "decoder"], default="all", help="weights the optimiser moves")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adapt"))
    p.add_argument(
        "--time-steps",
        type=int,
        default=None,
        metavar="N",
        help="only time N adaptation steps per sequence (wall and CPU seconds); no scoring",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.time_steps is not None:
        return _time_only(args)
    steps = sorted(set(args.steps))
    if steps[0] < 0:
        raise SystemExit("--steps: numbers of steps must be >= 0")
    if args.schedule == "cosine" and len([n for n in steps if n > 0]) != 1:
        raise SystemExit("--schedule cosine: give one N > 0 (plus 0 if wanted); the schedule spans the run")
    sequences = _sequences(args)
    model = pcvos.load_model(args.weights)
    adapt_s: dict[int, dict[str, float]] = {n: {} for n in steps}
    infer_s: dict[int, dict[str, float]] = {n: {} for n in steps}
    frames_of: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = _subset_root(args.davis_root, sequences, Path(tmp))
        ds = DavisDataset(root, year="2016", subset="val")
        for name in sequences:
            seq = ds[name]
            frames = seq.frames()
            first = seq.first_mask()
            masks = {0: np.where(first == 255, 0, first).astype(np.uint8)}
            frames_of[name] = len(frames)
            t0 = time.perf_counter()
            run = Adaptation(
                model, frames, masks, seed=args.seed, size=args.size, lr=args.lr, clip_len=args.adapt_clip_len
            )
            scheduler = _variant(run, args, steps[-1])
            spent = time.perf_counter() - t0
            for n in steps:
                t0 = time.perf_counter()
                while run.steps_done < n:
                    run.step()
                    if scheduler is not None:
                        scheduler.step()
                spent += time.perf_counter() - t0
                net = run.result() if n > 0 else model  # N = 0 is the plain model, as segment(adapt=0)
                t0 = time.perf_counter()
                labels = pcvos.segment(net, frames, masks, clip_length=args.clip_length, size=args.size)
                infer_s[n][name] = time.perf_counter() - t0
                adapt_s[n][name] = spent if n > 0 else 0.0
                for i, fname in enumerate(seq.frame_names):
                    save_indexed_png(args.out / f"N{n}" / name / f"{fname}.png", labels[i])
                print(
                    f"{name} N={n}: adapt {adapt_s[n][name]:.1f} s, inference {infer_s[n][name]:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        rows = []
        for n in steps:
            m = evaluate_davis(root, args.out / f"N{n}", subset="val", year="2016", workers=1)
            per_seq = _sequence_jf(m["per_object"], sequences)
            rows.append(
                {
                    "N": n,
                    "J&F": m["J&F-Mean"],
                    "J": m["J-Mean"],
                    "F": m["F-Mean"],
                    "adapt_s_mean": float(np.mean(list(adapt_s[n].values()))),
                    "infer_s_mean": float(np.mean(list(infer_s[n].values()))),
                    "per_sequence": per_seq,
                    "adapt_s": adapt_s[n],
                    "infer_s": infer_s[n],
                }
            )
    head = (
        f"{len(sequences)} sequences ({', '.join(sequences)}); L={args.clip_length}, size {args.size}, "
        f"lr {args.lr:g} ({args.schedule}{f', warm-up {args.warmup}' if args.schedule == 'cosine' else ''}), "
        f"tune {args.tune}, synthetic clips of {args.adapt_clip_len}, seed {args.seed}, "
        f"{torch.get_num_threads()} threads; frames per sequence {min(frames_of.values())}-"
        f"{max(frames_of.values())}"
    )
    lines = [
        head,
        "",
        "| N | J&F | J | F | adapt s/video | inference s/video | " + " | ".join(sequences) + " |",
        "|---" * (6 + len(sequences)) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']} | {100 * r['J&F']:.1f} | {100 * r['J']:.1f} | {100 * r['F']:.1f} | "
            f"{r['adapt_s_mean']:.1f} | {r['infer_s_mean']:.1f} | "
            + " | ".join(f"{100 * r['per_sequence'][s]:.1f}" for s in sequences)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out / "adapt.md", text + "\n")
    settings = vars(args) | {"davis_root": str(args.davis_root), "out": str(args.out)}
    atomic_write_text(
        args.out / "adapt.json", json.dumps({"settings": settings, "rows": rows}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
