#!/usr/bin/env python
"""Where the time goes: seconds per frame in each stage of the engine, for several clip lengths.

Wraps the engine's stages (key encoder, memory read with PMM, ICR, decoder + aggregation, value
encoder for memory, frame preparation and output) with timers that synchronise the device before
and after, segments the benchmark video once per schedule (after a warm-up) and prints a table of
seconds per frame by stage. Synchronising removes the overlap of host and device work, so the
stages add up to a little more than `benchmarks/speed.py` measures; use it for attribution, not
for headline numbers.

    python benchmarks/stages.py --threads 2                  # CPU, L = 5 and 25, 1 object
    python benchmarks/stages.py --device cuda --frames 75 --lengths 5 10 25
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import pcvos
from pcvos.inference import api, engine
from pcvos.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import DATA, _standin, load_frames, split_objects  # noqa: E402

# (owner, attribute, stage name); the value encoder runs inside _add_memory
STAGES = [
    (engine.InferenceCore, "_encode_keys", "key encoder"),
    (engine.InferenceCore, "_read_clip", "memory read (PMM)"),
    (engine.InferenceCore, "_decode", "decoder"),
    (engine.InferenceCore, "_add_memory", "value encoder + memory add"),
    (api.Segmenter, "_prepare", "frame in"),
    (api.Segmenter, "_emit", "result out"),
]


class StageTimer:
    """Patches the stages with synchronising timers while active; ``totals`` holds seconds per stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._saved: list[tuple[type, str, object]] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, fn, name: str, generator: bool = False):
        timer = self

        if generator:

            def wrapped(*a, **k):
                timer._sync()
                t0 = time.perf_counter()
                items = list(fn(*a, **k))
                timer._sync()
                timer.totals[name] += time.perf_counter() - t0
                yield from items
        else:

            def wrapped(*a, **k):
                timer._sync()
                t0 = time.perf_counter()
                out = fn(*a, **k)
                timer._sync()
                timer.totals[name] += time.perf_counter() - t0
                return out

        return wrapped

    def __enter__(self) -> StageTimer:
        for owner, attr, name in STAGES:
            fn = getattr(owner, attr)
            self._saved.append((owner, attr, fn))
            setattr(owner, attr, self._wrap(fn, name, generator=attr == "_emit"))
        refine = pcvos.model.network.PCVOS.refine
        self._saved.append((pcvos.model.network.PCVOS, "refine", refine))
        pcvos.model.network.PCVOS.refine = self._wrap(refine, "ICR")
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, fn in reversed(self._saved):
            setattr(owner, attr, fn)
        self._saved.clear()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=25, help="frames after the first (default 25)")
    p.add_argument("--objects", type=int, default=1)
    p.add_argument("--lengths", type=int, nargs="+", default=[5, 25], help="clip lengths L (default 5 25)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--sequence", default="bear")
    p.add_argument(
        "--data", type=Path, default=DATA, help="DAVIS root (default: ../shared/data/davis2016-train)"
    )
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames (default: 480p as stored)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device(args.device)
    frames, mask, source = load_frames(
        args.frames + 1, tuple(args.size) if args.size else None, args.sequence, args.data
    )
    labels = split_objects(mask, args.objects)
    model = pcvos.load_model(_standin(False)).to(device)
    results: dict[int, dict[str, float]] = {}
    walls: dict[int, float] = {}
    for length in args.lengths:

        def run(n=None, length=length):
            return pcvos.segment(
                model, frames[:n], {0: labels}, clip_length=length, device=device, precision=args.precision
            )

        run(min(len(frames), length + 2))  # warm-up: kernels for this clip length
        with StageTimer(device) as timer:
            t0 = time.perf_counter()
            run()
            walls[length] = time.perf_counter() - t0
        results[length] = dict(timer.totals)
        print(f"  L={length}: {walls[length] / args.frames:.4f} s/frame", file=sys.stderr)
    names = [n for _, _, n in STAGES[:2]] + ["ICR"] + [n for _, _, n in STAGES[2:]]
    print(
        f"{args.frames} frames after the first, {source} at {frames.shape[2]}x{frames.shape[1]}, "
        f"{args.objects} object(s), {args.precision}, {device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; seconds per frame (stages synchronised)\n"
    )
    print("| stage | " + " | ".join(f"L={n}" for n in args.lengths) + " |")
    print("|---|" + "---|" * len(args.lengths))
    for name in names:
        print(
            f"| {name} | "
            + " | ".join(f"{results[n].get(name, 0.0) / args.frames:.4f}" for n in args.lengths)
            + " |"
        )
    other = {n: walls[n] - sum(results[n].values()) for n in args.lengths}
    print("| other (host) | " + " | ".join(f"{other[n] / args.frames:.4f}" for n in args.lengths) + " |")
    print("| **total** | " + " | ".join(f"**{walls[n] / args.frames:.4f}**" for n in args.lengths) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
