#!/usr/bin/env python
"""Where a cold run of the shipped model spends its time, phase by phase, in one fresh process.

    python benchmarks/cuda_cold_start.py                      # CUDA, PyTorch's defaults
    python benchmarks/cuda_cold_start.py --no-cudnn           # the same with cuDNN switched off
    CUDA_MODULE_LOADING=EAGER python benchmarks/cuda_cold_start.py

Times `import torch`, the first CUDA tensor, `import pcvos` + `load_model` + reading the frames,
then `pcvos.segment` twice at each ``--sizes`` value: the first call at a size pays the
libraries' per-shape set-up, the second shows the warm cost. Run each setting in its own process
(that is the point: nothing may be warm). Prints a table; results in docs/results/speed_cuda.md.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the imports below: their cost is one of the phases

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016-train"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a smoke run")
    p.add_argument("--no-cudnn", action="store_true", help="torch.backends.cudnn.enabled = False")
    p.add_argument(
        "--data", type=Path, default=DATA, help="DAVIS root (default ../shared/data/davis2016-train)"
    )
    p.add_argument("--sequence", default="bear")
    p.add_argument("--frames", type=int, default=None, help="first N frames (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", default=[240, 480], help="processing sizes, in turn")
    args = p.parse_args(argv)
    phases: list[tuple[str, float]] = []
    last = _T0

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases.append((name, now - last))
        last = now

    import torch

    if args.no_cudnn:
        torch.backends.cudnn.enabled = False
    mark("import torch")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.zeros(1, device=args.device)
    sync()
    mark("first tensor on the device")
    import numpy as np
    from PIL import Image

    import pcvos

    model = pcvos.load_model(device=args.device)
    frame_files = sorted((args.data / "JPEGImages/480p" / args.sequence).glob("*.jpg"))[: args.frames]
    if not frame_files:
        print(f"{args.data / 'JPEGImages/480p' / args.sequence}: no frames", file=sys.stderr)
        return 2
    frames = np.stack([np.array(Image.open(f).convert("RGB")) for f in frame_files])
    mask = np.array(Image.open(args.data / "Annotations/480p" / args.sequence / "00000.png"))
    masks = {0: (mask > 0).astype(np.uint8)}
    mark("import pcvos, load_model, read frames")
    for size in args.sizes:
        for turn in ("1st", "2nd"):
            pcvos.segment(model, frames, masks, clip_length=5, size=size, device=args.device)
            sync()
            mark(f"{turn} segment, {size}p")
    print(
        f"{args.sequence}, {len(frames)} frames, {args.device}, "
        f"cuDNN {'off' if args.no_cudnn else 'default'}\n"
    )
    print("| phase | seconds |\n|---|---|")
    for name, seconds in phases:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| total | {sum(s for _, s in phases):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
