"""Seconds per click-network correction at 1 and 2 torch threads, interleaved, on a real 480p frame.

One correction on the first bear frame of the DAVIS 2016 train set (a positive click on the half
of the object missing from the previous mask), answered by the shipped click network at the
shipped crop size, ``--repeats`` times per setting, the settings interleaved ``--rounds`` times so
that a change of machine load hits both. Prints the median wall and CPU seconds per setting and
the load averages before and after: run it once on a quiet machine and once beside a busy process
to see OpenMP's spin-waiting (why pcvos.inference.prompts.CLICK_THREADS is 1).

    PYTHONPATH=src python benchmarks/click_threads.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcvos.inference.prompts import load_click_model

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--davis", type=Path, default=DAVIS)
    ap.add_argument("--sequence", default="bear")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    image = np.array(
        Image.open(args.davis / "JPEGImages" / "480p" / args.sequence / "00000.jpg").convert("RGB")
    )
    gt = np.array(Image.open(args.davis / "Annotations" / "480p" / args.sequence / "00000.png")) > 0
    previous = gt.copy()
    previous[:, : gt.shape[1] // 2] = False
    ys, xs = np.nonzero(gt & ~previous)
    points = np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]], dtype=float)
    torch.set_num_threads(2)
    models = {threads: load_click_model(threads=threads) for threads in (1, 2)}
    times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for threads, model in models.items():
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                model.predict(image, points, np.array([True]), previous=previous)
                times[threads].append((time.perf_counter() - t0, time.process_time() - c0))
    load_after = os.getloadavg()
    print(f"load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    print("| torch threads | calls | median wall s | median CPU s |\n|---|---|---|---|")
    for threads, rows in times.items():
        wall, cpu = np.median([w for w, _ in rows]), np.median([c for _, c in rows])
        print(f"| {threads} | {len(rows)} | {wall:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
