"""Long videos: time per frame, RSS and accuracy along a looped real sequence, per memory policy.

A DAVIS sequence played forward then backward (ping-pong) as often as needed makes a long video
whose every frame has a ground-truth mask. ``run`` segments it with one memory policy and logs,
per window of frames, the milliseconds per frame, the process' RSS, the number of memory frames
and the mean IoU against ground truth; it also saves the labels (bit-packed) so that ``report``
can score every policy against the uncapped run on the frames that run reached::

    python benchmarks/long_video.py run --davis-root DAVIS --policy uncapped --out runs/long
    python benchmarks/long_video.py run --davis-root DAVIS --policy oldest --out runs/long
    python benchmarks/long_video.py run --davis-root DAVIS --policy usage --out runs/long
    python benchmarks/long_video.py report --out runs/long > benchmarks/long_video.md

Each policy runs in its own process, so RSS is that policy's. ``--max-seconds`` stops a run
early (the uncapped one grows slower with every memory frame); the report says how far it got.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

POLICIES = ("uncapped", "oldest", "usage")


def rss_mib() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ping_pong(length: int, total: int) -> list[int]:
    """Source frame of each looped frame: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ..."""
    period = 2 * length - 2
    return [t % period if t % period < length else period - t % period for t in range(total)]


def load_sequence(davis_root: Path, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) bool ground truth (any object) of one sequence."""
    jpg = sorted((davis_root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))
    png = sorted((davis_root / "Annotations" / "480p" / sequence).glob("*.png"))
    if not jpg or len(jpg) != len(png):
        raise SystemExit(f"{davis_root}: sequence {sequence} needs as many frames as masks")
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in jpg])
    gt = np.stack([np.asarray(Image.open(p)) > 0 for p in png])
    return frames, gt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def run(args: argparse.Namespace) -> None:
    import torch

    import pcvos
    from pcvos.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the pcvos commands do
    frames, gt = load_sequence(args.davis_root, args.sequence)
    order = ping_pong(len(frames), args.frames)
    model = pcvos.load_model()
    cap = None if args.policy == "uncapped" else args.max_memory_frames
    seg = pcvos.Segmenter(model, clip_length=args.clip_length, size=args.size, max_memory_frames=cap)
    if args.policy == "oldest":
        seg.config = replace(seg.config, memory_eviction="oldest")
    seg.add_mask(0, gt[0].astype(np.uint8))

    def video() -> Iterator[np.ndarray]:
        for t in order:
            yield frames[t]

    out = args.out / args.policy
    out.mkdir(parents=True, exist_ok=True)
    packed = []
    windows = []
    ious: list[float] = []
    start = last = time.perf_counter()
    last_done = 0
    print(f"{args.policy}: {args.frames} frames of {args.sequence} ping-pong, size {args.size}, "
          f"L={args.clip_length}, cap {cap}, {args.threads} thread(s)", flush=True)
    for index, labels in seg.process(video()):
        mask = labels > 0
        packed.append(np.packbits(mask))
        if index > 0:
            ious.append(iou(mask, gt[order[index]]))
        done = index + 1
        stopping = time.perf_counter() - start > args.max_seconds
        if done % args.window == 0 or done == args.frames or (stopping and done % args.clip_length == 0):
            now = time.perf_counter()
            row = {"frames": done, "ms_per_frame": 1000 * (now - last) / (done - last_done), "rss_mib": rss_mib(),
                   "iou_gt": float(np.mean(ious[max(0, last_done - 1):])), "elapsed_s": now - start}
            windows.append(row)
            print(json.dumps(row), flush=True)
            last, last_done = now, done
            if stopping:
                break
    shape = mask.shape
    np.savez_compressed(out / "labels.npz", packed=np.stack(packed), shape=np.array(shape),
                        order=np.array(order[: len(packed)]))
    summary = {"policy": args.policy, "sequence": args.sequence, "frames_requested": args.frames,
               "frames_done": len(packed), "size": args.size, "clip_length": args.clip_length,
               "max_memory_frames": cap, "threads": args.threads, "windows": windows,
               "mean_iou_gt": float(np.mean(ious)), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def report(args: argparse.Namespace) -> None:
    runs = {}
    for policy in POLICIES:
        path = args.out / policy / "summary.json"
        if path.exists():
            runs[policy] = json.loads(path.read_text())
    if not runs:
        raise SystemExit(f"{args.out}: no runs")
    labels = {}
    for policy in runs:
        z = np.load(args.out / policy / "labels.npz")
        shape = tuple(z["shape"])
        n = int(np.prod(shape))
        labels[policy] = [np.unpackbits(p, count=n).reshape(shape).astype(bool) for p in z["packed"]]
    any_run = next(iter(runs.values()))
    print(f"# Long video: {any_run['sequence']} ping-pong, {any_run['frames_requested']} frames\n")
    print(f"pcvos-lite, size {any_run['size']}, L={any_run['clip_length']}, {any_run['threads']} thread(s), "
          f"torch {any_run['torch']}. Command: see the docstring of benchmarks/long_video.py.\n")
    print("## Time per frame (ms) and RSS (MiB) by window\n")
    print("| frames | " + " | ".join(f"{p} ms | {p} RSS" for p in runs) + " |")
    print("|---|" + "---|---|" * len(runs))
    ends = sorted({w["frames"] for r in runs.values() for w in r["windows"]})
    for end in ends:
        cells = []
        for r in runs.values():
            w = next((w for w in r["windows"] if w["frames"] == end), None)
            cells += [f"{w['ms_per_frame']:.0f}", f"{w['rss_mib']:.0f}"] if w else ["", ""]
        print(f"| {end} | " + " | ".join(cells) + " |")
    print("\n## Accuracy\n")
    ref = labels.get("uncapped")
    print("| policy | cap | frames done | mean IoU vs GT | mean IoU vs uncapped (frames 1..N) | "
          "mean IoU vs GT (frames 1..N) |")
    print("|---|---|---|---|---|---|")
    gt_frames, gt = None, None
    if ref is not None:
        n_ref = len(ref)
        from_davis = load_sequence(args.davis_root, any_run["sequence"])[1] if args.davis_root else None
        for policy, r in runs.items():
            n = min(n_ref, len(labels[policy]))
            vs_ref = np.mean([iou(labels[policy][t], ref[t]) for t in range(1, n)])
            vs_gt = ""
            if from_davis is not None:
                order = ping_pong(len(from_davis), n)
                vs_gt = f"{np.mean([iou(labels[policy][t], from_davis[order[t]]) for t in range(1, n)]):.4f}"
            print(f"| {policy} | {r['max_memory_frames']} | {r['frames_done']} | {r['mean_iou_gt']:.4f} | "
                  f"{vs_ref:.4f} | {vs_gt} |")
        print(f"\nN = {n_ref}, the frames the uncapped run reached; frame 0 (the given mask) is not scored.")
    del gt_frames, gt


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="segment the looped video with one memory policy")
    r.add_argument("--davis-root", type=Path, required=True)
    r.add_argument("--sequence", default="bear")
    r.add_argument("--policy", choices=POLICIES, required=True,
                   help="uncapped memory, a cap dropping the oldest frame, or one dropping the least used")
    r.add_argument("--max-memory-frames", type=int, default=None, help="the cap (default: pcvos' default)")
    r.add_argument("--frames", type=int, default=3000)
    r.add_argument("--size", type=int, default=240)
    r.add_argument("--clip-length", type=int, default=5)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--window", type=int, default=250, help="frames per timing window")
    r.add_argument("--max-seconds", type=float, default=float("inf"), help="stop after this long")
    r.add_argument("--out", type=Path, required=True)
    r.set_defaults(func=run)
    s = sub.add_parser("report", help="markdown tables from the runs in --out")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--davis-root", type=Path, default=None, help="to score every run against ground truth")
    s.set_defaults(func=report)
    args = p.parse_args(argv)
    if getattr(args, "max_memory_frames", 0) is None:
        from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
        args.max_memory_frames = DEFAULT_MAX_MEMORY_FRAMES
    args.func(args)


if __name__ == "__main__":
    main()
