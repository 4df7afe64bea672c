#!/usr/bin/env python
"""CPU speed of the light variant with EfficientNet-Lite0, -Lite1 and -Lite2 encoders.

    python benchmarks/backbones.py --threads 2 --frames 25 --repeats 3

Builds the pcvos-lite architecture (widths of ``pcvos_lite.json``) with each backbone and random
weights (speed does not depend on the values), segments DAVIS ``bear`` at shorter side 240 (or
generated frames without ../shared) at L=5 with one object, and prints seconds per frame and FPS,
the median of ``--repeats`` runs. The backbones run in turn within each repeat, so a load change
on a shared machine hits them alike. Accuracy needs a trained model per backbone; see the model
card for what was trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pcvos
from pcvos.data.io_utils import atomic_write_text
from pcvos.model.network import PCVOS, PCVOSConfig
from pcvos.runtime import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "davis2016-train"
CARD = REPO / "src" / "pcvos" / "weights" / "pcvos_lite.json"
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def _frames(n: int, short: int) -> tuple[np.ndarray, np.ndarray]:
    seq = DATA / "JPEGImages/480p/bear"
    if seq.is_dir():
        first = Image.open(DATA / "Annotations/480p/bear/00000.png")
        w, h = first.size
        size = (round(w * short / min(w, h)), round(h * short / min(w, h)))
        frames = [
            np.array(Image.open(seq / f"{i:05d}.jpg").convert("RGB").resize(size, Image.BILINEAR))
            for i in range(n)
        ]
        mask = (np.array(first.resize(size, Image.NEAREST)) > 0).astype(np.uint8)
        return np.stack(frames), mask
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, short, short * 16 // 9, 3), dtype=np.uint8)
    mask = np.zeros(frames.shape[1:3], np.uint8)
    mask[short // 4 : short // 2, short // 4 : short // 2] = 1
    return frames, mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=25, help="frames after the first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=240, help="shorter side")
    p.add_argument("--clip-length", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    base = json.loads(CARD.read_text())["config"]
    frames, mask = _frames(1 + args.frames, args.size)
    models = {}
    for name in BACKBONES:
        cfg = dict(base, backbone=name)
        torch.manual_seed(0)
        models[name] = PCVOS(PCVOSConfig.from_dict(cfg)).eval()
    times: dict[str, list[float]] = {n: [] for n in BACKBONES}
    for model in models.values():  # warm-up
        pcvos.segment(model, frames[:6], {0: mask}, clip_length=args.clip_length)
    for _ in range(args.repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            pcvos.segment(model, frames, {0: mask}, clip_length=args.clip_length)
            times[name].append((time.perf_counter() - t0) / args.frames)
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    lines = [
        f"{args.frames} frames of bear at shorter side {args.size}, L={args.clip_length}, 1 object, "
        f"{args.threads} threads, median of {args.repeats}",
        "",
        "| backbone | parameters (M) | s/frame | FPS | × Lite0 time |",
        "|---|---|---|---|---|",
    ]
    t_ref = statistics.median(times[BACKBONES[0]])
    rows = []
    for n in BACKBONES:
        t = statistics.median(times[n])
        rows.append({"backbone": n, "params_m": params[n], "s_per_frame": t, "fps": 1 / t})
        lines.append(f"| {n} | {params[n]:.1f} | {t:.3f} | {1 / t:.2f} | {t / t_ref:.2f} |")
    print("\n".join(lines))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
