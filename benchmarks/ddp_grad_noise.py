"""Rounding noise between gradient dumps (``train.dump_grads``) of the same iteration, and how far
wrong averaging moves them: the numbers behind the DDP test's tolerance (docs/results/ddp_parity.md).

    python benchmarks/ddp_grad_noise.py RUN_A RUN_B [RUN_C ...] --rank0 RUN_BATCH1

Each RUN is a training output folder holding ``grads_iter_0000001.pt``; every pair is compared.
``--rank0`` is a 1-process batch-1 run (rank 0's sample alone) and the first RUN the 1-process
batch-2 reference, for the wrong-averaging rows.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from pcvos.train.trainer import grads_path

EPS32 = torch.finfo(torch.float32).eps


def mismatch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(relative 2-norm difference over all parameters, worst per tensor against norm + RMS share)."""
    keys = sorted(want)
    a = torch.cat([got[k].double().flatten() for k in keys])
    b = torch.cat([want[k].double().flatten() for k in keys])
    rms = b.norm().item() / b.numel() ** 0.5
    per = max(
        (
            (got[k].double() - want[k].double()).norm()
            / (want[k].double().norm() + rms * want[k].numel() ** 0.5)
        ).item()
        for k in keys
    )
    return ((a - b).norm() / b.norm()).item(), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rank0", type=Path)
    args = ap.parse_args()
    g = {r: torch.load(grads_path(r, 1), weights_only=True) for r in args.runs}
    print("| compared | overall | worst tensor |\n|---|---|---|")
    for x, y in itertools.combinations(args.runs, 2):
        o, p = mismatch(g[x], g[y])
        print(f"| {x.name} vs {y.name} | {o:.3g} ({o / EPS32:.2f} eps32) | {p:.3g} ({p / EPS32:.2f} eps32) |")
    if args.rank0:
        ref, g0 = g[args.runs[0]], torch.load(grads_path(args.rank0, 1), weights_only=True)
        wrong = {
            "ranks summed": {k: 2 * v for k, v in ref.items()},
            "rank 1 lost, rank 0 taken as the mean": g0,
            "rank 1 lost, sum still halved": {k: v / 2 for k, v in g0.items()},
        }
        for what, w in wrong.items():
            o, p = mismatch(w, ref)
            print(f"| {what} | {o:.3g} | {p:.3g} |")


if __name__ == "__main__":
    main()
