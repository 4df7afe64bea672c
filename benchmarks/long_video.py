# ruff: noqa: E501  (benchmark table format strings)
"""Long videos: time per frame, RSS and accuracy along a looped real sequence, per memory policy.

A DAVIS sequence played forward then backward (ping-pong) as often as needed makes a long video
whose every frame has a ground-truth mask. ``run`` segments it with one memory policy and logs,
per window of frames, the milliseconds per frame, the process' RSS and the mean IoU against
ground truth; it also saves the labels (bit-packed) so that ``report``
can score every policy against the uncapped run on the frames that run reached::

    python benchmarks/long_video.py run --davis-root DAVIS --policy uncapped --max-seconds 5400 \
        --out runs/long
    python benchmarks/long_video.py run --davis-root DAVIS --policy oldest --max-seconds 5400 --out runs/long
    python benchmarks/long_video.py run --davis-root DAVIS --policy usage --max-seconds 5400 --out runs/long
    python benchmarks/long_video.py report --out runs/long --davis-root DAVIS
    python benchmarks/long_video.py read-cost     # the memory read with and without usage collection

DAVIS is a DAVIS 2016/2017 root (e.g. ../shared/data/davis2016-train). Each policy runs in its
own process, so RSS is that policy's. ``--max-seconds`` stops a run early (the uncapped one grows
slower with every memory frame); the report says how far each got.
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
    from pcvos.data.io_utils import atomic_write, atomic_write_text
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

    out = args.out / (args.name or args.policy)
    out.mkdir(parents=True, exist_ok=True)
    packed = []
    windows = []
    ious: list[float] = []
    # each frame's wall and CPU clock when it came out: any window's time per frame, afterwards.
    # CPU time (this process, one thread) moves less than wall time with the other jobs' load.
    wall: list[float] = []
    cpu: list[float] = []
    start = last = time.perf_counter()
    cpu_start = time.process_time()
    last_done = 0
    print(
        f"{args.policy}: {args.frames} frames of {args.sequence} ping-pong, size {args.size}, "
        f"L={args.clip_length}, cap {cap}, {args.threads} thread(s)",
        flush=True,
    )
    for index, labels in seg.process(video()):
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        mask = labels > 0
        packed.append(np.packbits(mask))
        if index > 0:
            ious.append(iou(mask, gt[order[index]]))
        done = index + 1
        stopping = time.perf_counter() - start > args.max_seconds
        if done % args.window == 0 or done == args.frames or (stopping and done % args.clip_length == 0):
            now = time.perf_counter()
            row = {
                "frames": done,
                "ms_per_frame": 1000 * (now - last) / (done - last_done),
                "rss_mib": rss_mib(),
                "iou_gt": float(np.mean(ious[max(0, last_done - 1) :])),
                "elapsed_s": now - start,
            }
            windows.append(row)
            print(json.dumps(row), flush=True)
            last, last_done = now, done
            if stopping:
                break
    shape = mask.shape
    atomic_write(
        out / "labels.npz",
        lambda tmp: np.savez_compressed(
            tmp, packed=np.stack(packed), shape=np.array(shape), order=np.array(order[: len(packed)])
        ),
    )
    summary = {
        "policy": args.policy,
        "name": args.name or args.policy,
        "sequence": args.sequence,
        "frames_requested": args.frames,
        "frames_done": len(packed),
        "size": args.size,
        "clip_length": args.clip_length,
        "max_memory_frames": cap,
        "threads": args.threads,
        "windows": windows,
        "mean_iou_gt": float(np.mean(ious)),
        "wall_s": [round(t, 4) for t in wall],
        "cpu_s": [round(t, 4) for t in cpu],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))


def read_cost(args: argparse.Namespace) -> None:
    """Time one clip's memory read with and without usage collection (alternating, median)."""
    import torch

    from pcvos.inference.memory_store import MemoryStore

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(args.clip_length * args.rows, args.key_dim, generator=gen)
    stores = {}
    for eviction in ("oldest", "usage"):  # "oldest" collects no usage; same memory content
        gen.manual_seed(1)
        store = stores[eviction] = MemoryStore(args.key_dim, args.value_dim, args.frames + 1, eviction)
        for t in range(args.frames):
            store.add(
                t,
                torch.randn(args.rows, args.key_dim, generator=gen),
                torch.randn(args.rows, args.value_dim, generator=gen),
                annotated=(t == 0),
            )
    times: dict[str, list[float]] = {k: [] for k in stores}
    outs = {}
    for _ in range(args.repeats):
        for name, store in stores.items():
            start = time.perf_counter()
            outs[name] = store.read(query, {0: [0]}, top_k=20)
            times[name].append(time.perf_counter() - start)
    same = torch.equal(outs["oldest"], outs["usage"])
    plain, tracked = (float(np.median(times[k])) * 1000 for k in ("oldest", "usage"))
    print(
        f"memory of {args.frames} frames x {args.rows} rows, query {query.shape[0]} rows, {args.threads} "
        f"thread(s), median of {args.repeats}: read {plain:.1f} ms, with usage {tracked:.1f} ms "
        f"({100 * (tracked / plain - 1):+.1f}%); read-outs identical: {same}"
    )


def per_frame_ms(clock: list[float], lo: int, hi: int) -> float:
    """Mean milliseconds per frame over frames lo..hi-1 from each frame's output clock."""
    return 1000 * (clock[hi - 1] - clock[lo - 1]) / (hi - lo)


def drift_table(runs: dict, labels: dict, ref: list | None, args: argparse.Namespace) -> None:
    """Time per frame at the end of the first N frames against early on, and IoU vs uncapped."""
    lo, hi = args.early
    print(
        f"| run | cap | N | ms/frame, frames {lo}-{hi} | ms/frame, last {args.late} of N | last/first, wall | "
        f"last/first, CPU | IoU vs uncapped, 1..N |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "wall_s" not in r:
            continue
        for n in args.lengths:
            if len(r["wall_s"]) < n:
                continue
            ratios = [
                per_frame_ms(r[c], n - args.late, n) / per_frame_ms(r[c], lo, hi) for c in ("wall_s", "cpu_s")
            ]
            vs_ref = ""
            if ref is not None and len(ref) >= n:
                vs_ref = f"{np.mean([iou(labels[name][t], ref[t]) for t in range(1, n)]):.4f}"
            print(
                f"| {name} | {r['max_memory_frames']} | {n} | {per_frame_ms(r['wall_s'], lo, hi):.0f} | "
                f"{per_frame_ms(r['wall_s'], n - args.late, n):.0f} | {ratios[0]:.2f} | {ratios[1]:.2f} | {vs_ref} |"
            )
    print(
        "\nms/frame here is wall time; last/first is the ratio of the late window's time per frame to the early "
        "one's, by wall and by CPU time of the run's process (one thread: less moved by other jobs' load).\n"
    )


def report(args: argparse.Namespace) -> None:
    runs = {}
    found = [json.loads(p.read_text()) for p in sorted(args.out.glob("*/summary.json"))]
    for r in sorted(found, key=lambda r: (POLICIES.index(r["policy"]), r.get("name", r["policy"]))):
        runs[r.get("name", r["policy"])] = r
    if not runs:
        raise SystemExit(f"{args.out}: no runs")
    labels = {}
    for policy in runs:
        z = np.load(args.out / policy / "labels.npz")
        shape = tuple(z["shape"])
        n = int(np.prod(shape))
        labels[policy] = [np.unpackbits(p, count=n).reshape(shape).astype(bool) for p in z["packed"]]
    first = next(iter(runs.values()))
    print(
        f"Looped `{first['sequence']}` (ping-pong), pcvos-lite, size {first['size']}, "
        f"L={first['clip_length']}, "
        f"{first['threads']} thread(s), torch {first['torch']}, {first['cpu_count']} CPUs.\n"
    )
    # the run keeps every frame's labels (bit-packed) for the report: not pcvos' memory, subtracted
    label_mib = int(np.ceil(np.prod(next(iter(labels.values()))[0].shape) / 8)) / 2**20
    print(
        "| frames | "
        + " | ".join(f"{p} ms/frame" for p in runs)
        + " | "
        + " | ".join(f"{p} RSS MiB" for p in runs)
        + " | "
        + " | ".join(f"{p} IoU GT" for p in runs)
        + " |"
    )
    print("|---|" + "---|" * (3 * len(runs)))
    ends = sorted({w["frames"] for r in runs.values() for w in r["windows"]})
    for end in ends:
        cells = {k: [] for k in ("ms_per_frame", "rss_mib", "iou_gt")}
        for r in runs.values():
            w = next((w for w in r["windows"] if w["frames"] == end), None)
            if w is None:
                for k in cells:
                    cells[k].append("")
                continue
            cells["ms_per_frame"].append(f"{w['ms_per_frame']:.0f}")
            cells["rss_mib"].append(f"{w['rss_mib'] - w['frames'] * label_mib:.0f}")
            cells["iou_gt"].append(f"{w['iou_gt']:.3f}")
        print(f"| {end} | " + " | ".join(c for k in cells for c in cells[k]) + " |")
    print(
        "\nms/frame and IoU GT are over the window ending at that frame; RSS at its end, "
        "less the labels the "
        f"benchmark keeps for scoring ({1024 * label_mib:.0f} KiB a frame).\n"
    )
    ref = next((labels[k] for k, r in runs.items() if r["policy"] == "uncapped"), None)
    gt = load_sequence(args.davis_root, first["sequence"])[1] if args.davis_root else None
    print(
        "| policy | cap | frames done | IoU GT, all its frames | IoU vs uncapped, 1..N | IoU GT, 1..N | "
        "IoU vs uncapped, capped part | IoU GT, capped part |"
    )
    print("|---|---|---|---|---|---|---|---|")
    n_ref = len(ref) if ref is not None else max(len(v) for v in labels.values())
    caps = [r["max_memory_frames"] for r in runs.values() if r["max_memory_frames"]]
    # frame cap*L is memory frame cap+1 (frame 0 is the first): the next clip reads a memory missing one
    bound = min(caps) * first["clip_length"] + 1 if caps else n_ref
    for policy, r in runs.items():
        n = min(n_ref, len(labels[policy]))
        cells = []
        for lo in (1, bound):
            frames = range(lo, n)
            vs_ref = (
                np.mean([iou(labels[policy][t], ref[t]) for t in frames])
                if ref is not None and n > lo
                else None
            )
            vs_gt = None
            if gt is not None and n > lo:
                order = ping_pong(len(gt), n)
                vs_gt = np.mean([iou(labels[policy][t], gt[order[t]]) for t in frames])
            cells += ["" if v is None else f"{v:.4f}" for v in (vs_ref, vs_gt)]
        print(
            f"| {policy} | {r['max_memory_frames']} | {r['frames_done']} | {r['mean_iou_gt']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    print(
        f"\nN = {n_ref}, the frames the uncapped run reached; frame 0 (the given mask) is not scored. "
        f"The cap binds from frame {bound} on "
        f"(frame {bound - 1} is memory frame {(bound - 1) // first['clip_length'] + 1}, "
        f"one every {first['clip_length']}); before it every policy's memory is the uncapped one."
    )
    print()
    drift_table(runs, labels, ref, args)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="segment the looped video with one memory policy")
    r.add_argument("--davis-root", type=Path, required=True)
    r.add_argument("--sequence", default="bear")
    r.add_argument(
        "--policy",
        choices=POLICIES,
        required=True,
        help="uncapped memory, a cap dropping the oldest frame, or one dropping the least used",
    )
    r.add_argument("--max-memory-frames", type=int, default=None, help="the cap (default: pcvos' default)")
    r.add_argument("--frames", type=int, default=3000)
    r.add_argument("--size", type=int, default=240)
    r.add_argument("--clip-length", type=int, default=5)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--window", type=int, default=250, help="frames per timing window")
    r.add_argument("--max-seconds", type=float, default=float("inf"), help="stop after this long")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--name", default=None, help="the run's folder under --out (default: the policy)")
    r.set_defaults(func=run)
    c = sub.add_parser("read-cost", help="time the memory read with and without usage collection")
    c.add_argument("--frames", type=int, default=128, help="memory frames")
    c.add_argument("--rows", type=int, default=15 * 27, help="rows per frame (240x432 at stride 16)")
    c.add_argument("--key-dim", type=int, default=64)
    c.add_argument("--value-dim", type=int, default=128)
    c.add_argument("--clip-length", type=int, default=5)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--repeats", type=int, default=15)
    c.set_defaults(func=read_cost)
    s = sub.add_parser("report", help="markdown tables from the runs in --out")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--davis-root", type=Path, default=None, help="to score every run against ground truth")
    s.add_argument(
        "--lengths", type=int, nargs="+", default=[1500, 3000], help="video lengths N for the drift table"
    )
    s.add_argument(
        "--early", type=int, nargs=2, default=[50, 300], help="early window [lo, hi) (past the warm-up)"
    )
    s.add_argument("--late", type=int, default=250, help="frames at the end of N in the late window")
    s.set_defaults(func=report)
    args = p.parse_args(argv)
    if getattr(args, "max_memory_frames", 0) is None:
        from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES

        args.max_memory_frames = DEFAULT_MAX_MEMORY_FRAMES
    args.func(args)


if __name__ == "__main__":
    main()
