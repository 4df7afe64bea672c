#!/usr/bin/env python
"""The speed/accuracy dial measured: J&F and FPS on DAVIS-layout sequences for several clip lengths.

    python benchmarks/accuracy_dial.py --davis-root ../shared/data/davis2016-train \
        --sequences bear car-turn dance-jump kite-walk tennis --clip-lengths 1 5 10 15 25

Without ``--weights`` the model shipped with pcvos is used. L = 1 is per-frame inference with a
memory frame every 5 frames (STCN's schedule), with ICR on single frames if the model has it
and no PMM; the other L use ICR + PMM with a memory frame every L frames. Results (masks,
metrics.json per L) go under ``--out``; a markdown table is printed and written to
``--out/dial.md`` and a JSON to ``--out/dial.json``.
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
from pcvos.eval.runners import Distributed, Schedule, run_davis
from pcvos.runtime import keep_freed_memory


def _subset_root(root: Path, sequences: list[str], tmp: Path) -> Path:
    """A DAVIS-layout folder listing only ``sequences`` (links to the original files)."""
    sub = tmp / "davis"
    for part in ("JPEGImages/480p", "Annotations/480p"):
        (sub / part).mkdir(parents=True)
        for s in sequences:
            src = root / part / s
            if not src.is_dir():
                raise SystemExit(f"{src}: sequence not found")
            (sub / part / s).symlink_to(src.resolve())
    (sub / "ImageSets/2016").mkdir(parents=True)
    (sub / "ImageSets/2016/val.txt").write_text("\n".join(sequences) + "\n")
    return sub


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--sequences", nargs="+", required=True)
    p.add_argument("--clip-lengths", type=int, nargs="+", default=[1, 5, 10, 15, 25])
    p.add_argument("--weights", default=None)
    p.add_argument("--size", type=int, default=None, help="processing shorter side (default native)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="network precision")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/dial"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `pcvos infer` runs
    model = pcvos.load_model(args.weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = _subset_root(args.davis_root, args.sequences, Path(tmp))
        for L in args.clip_lengths:
            if L == 1:
                # per frame, memory every 5 frames (STCN's schedule); ICR on single frames when the
                # model has it (a model trained with ICR degrades without it)
                sched = Schedule(
                    clip_length=1, memory_every=5, pmm_segment=None, size=args.size, precision=args.precision
                )
            else:
                sched = Schedule(clip_length=L, size=args.size, precision=args.precision)
            out = args.out / f"L{L}"
            stats = run_davis(
                model, root, out, year="2016", subset="val", schedule=sched, ctx=Distributed(), progress=False
            )
            m = evaluate_davis(root, out, subset="val", year="2016")
            rows.append(
                {
                    "L": L,
                    "J&F": m["J&F-Mean"],
                    "J": m["J-Mean"],
                    "F": m["F-Mean"],
                    "fps": stats.fps,
                    "frames": stats.frames,
                    "seconds": stats.seconds,
                }
            )
            print(f"L={L}: J&F {100 * m['J&F-Mean']:.1f}, {stats.fps:.2f} FPS", file=sys.stderr)
    lines = [
        f"{len(args.sequences)} sequences ({', '.join(args.sequences)}), processing size "
        f"{args.size or 'native'}, {args.precision}, {torch.get_num_threads()} threads",
        "",
        "| L | J&F | J | F | FPS |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['L']} | {100 * r['J&F']:.1f} | {100 * r['J']:.1f} | {100 * r['F']:.1f} | {r['fps']:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out / "dial.md", text + "\n")
    atomic_write_text(args.out / "dial.json", json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
