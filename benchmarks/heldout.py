#!/usr/bin/env python
"""J&F of one or more models on a split of the held-out protocol (``pcvos.eval.protocol``).

    python benchmarks/heldout.py --davis-root ../shared/data/davis2016-train --split report \
        --models v1= v2=runs/lite2_stage2/model_final.pth --clip-lengths 5 25 --size 240

``--models`` takes ``NAME=WEIGHTS`` pairs; an empty WEIGHTS is the model shipped with pcvos.
Choices (checkpoints, recipes, settings) are made with ``--split select``; the numbers that are
published come from ``--split report``, which nothing else may look at. The table gives, per
model and L, the mean J&F over the split, over the report sequences the first pcvos-lite never
trained on (``REPORT_UNSEEN_BY_V1``: the only fair ground for comparing with it), FPS, and the
per-sequence J&F. Results go under ``--out`` (``heldout.md``, ``heldout.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import pcvos
from pcvos.data.io_utils import atomic_write_text
from pcvos.eval.davis_eval import evaluate_davis
from pcvos.eval.protocol import REPORT_UNSEEN_BY_V1, SPLITS
from pcvos.eval.runners import Distributed, Schedule, run_davis
from pcvos.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_dial import _subset_root  # noqa: E402  (a sibling script, not a package)


def _sequence_jf(per_object: dict[str, list[float]], sequences: list[str]) -> dict[str, float]:
    """Mean of (J + F) / 2 over each sequence's objects, as the toolkit's per-sequence table."""
    out = {}
    for s in sequences:
        vals = [(j + f) / 2 for name, (j, f) in per_object.items() if name.rsplit("_", 1)[0] == s]
        out[s] = sum(vals) / len(vals) if vals else float("nan")
    return out


def evaluate(model: pcvos.PCVOS, root: Path, sequences: list[str], out: Path, schedule: Schedule) -> dict:
    """Segment ``sequences`` with ``schedule`` and score them; J&F per sequence plus the means."""
    stats = run_davis(
        model, root, out, year="2016", subset="val", schedule=schedule, ctx=Distributed(), progress=False
    )
    m = evaluate_davis(root, out, subset="val", year="2016", workers=1)
    per_seq = _sequence_jf(m["per_object"], sequences)
    unseen = [per_seq[s] for s in sequences if s in REPORT_UNSEEN_BY_V1]
    return {
        "J&F": m["J&F-Mean"],
        "J": m["J-Mean"],
        "F": m["F-Mean"],
        "fps": stats.fps,
        "unseen_by_v1": sum(unseen) / len(unseen) if unseen else None,
        "per_sequence": per_seq,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--split", choices=sorted(SPLITS), required=True)
    p.add_argument("--models", nargs="+", default=["shipped="], metavar="NAME=WEIGHTS")
    p.add_argument("--clip-lengths", type=int, nargs="+", default=[5, 25])
    p.add_argument("--size", type=int, default=240, help="processing shorter side")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/heldout"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    sequences = list(SPLITS[args.split])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _subset_root(args.davis_root, sequences, Path(tmp))
        for spec in args.models:
            name, _, weights = spec.partition("=")
            model = pcvos.load_model(weights or None)
            for L in args.clip_lengths:
                sched = Schedule(clip_length=L, size=args.size)
                r = evaluate(model, root, sequences, args.out / name / f"L{L}", sched)
                rows.append({"model": name, "weights": weights or "shipped", "L": L, **r})
                print(f"{name} L={L}: J&F {100 * r['J&F']:.1f}, {r['fps']:.2f} FPS", file=sys.stderr)
    lines = [
        f"split {args.split!r}: {len(sequences)} sequences, processing size {args.size}, "
        f"{torch.get_num_threads()} threads",
        "",
        "| model | L | J&F | J | F | J&F on the 5 unseen by v1 | FPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unseen = "" if r["unseen_by_v1"] is None else f"{100 * r['unseen_by_v1']:.1f}"
        lines.append(
            f"| {r['model']} | {r['L']} | {100 * r['J&F']:.1f} | {100 * r['J']:.1f} | "
            f"{100 * r['F']:.1f} | {unseen} | {r['fps']:.2f} |"
        )
    lines += [
        "",
        "Per sequence (J&F):",
        "",
        "| model | L | " + " | ".join(sequences) + " |",
        "|---|---|" + "---|" * len(sequences),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['L']} | "
            + " | ".join(f"{100 * r['per_sequence'][s]:.1f}" for s in sequences)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out / "heldout.md", text + "\n")
    atomic_write_text(args.out / "heldout.json", json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
