#!/usr/bin/env python
"""Inference speed of pcvos: STCN per-frame vs PCVOS at clip lengths L, against the per-frame floor.

For each schedule and object count it segments ``1 + frames`` frames (480p DAVIS frames when
../shared/data is present, else generated ones) and reports the median over ``--repeats`` runs
(after one warm-up) of seconds per frame, FPS and peak memory (CPU: the process' peak RSS during
the run; CUDA: max allocated). The floor is what any STCN-style network pays per frame: the key
encoder plus the decoder for each object, each at its fastest batch size (CPU: 1, 2, 5; GPU: up to
25), measured in the same run.

    python benchmarks/speed.py                       # CPU (and CUDA when present), 1 and 3 objects
    python benchmarks/speed.py --device cuda --frames 50 --repeats 5
    python benchmarks/speed.py --tiny                # seconds-long smoke run

Without ``--weights`` the released architecture gets the deterministic stand-in weights of
tests/data/parity (speed does not depend on the values). Prints a markdown table and writes
``--json`` and ``--plot`` (FPS against L, the floor as a line).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pcvos
from pcvos.data.io_utils import atomic_write, atomic_write_text
from pcvos.runtime import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "davis2016-train"


def _standin(stcn: bool) -> dict:
    spec = importlib.util.spec_from_file_location("mw", REPO / "tests/data/parity/make_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.official_state_dict(stcn=stcn)


def load_frames(
    n: int, size: tuple[int, int] | None, sequence: str, data: Path = DATA
) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` frames and the first mask: real DAVIS frames when available, else random pixels."""
    from PIL import Image

    seq_dir = data / "JPEGImages/480p" / sequence
    if seq_dir.is_dir() and len(list(seq_dir.glob("*.jpg"))) >= n:
        frames, mask = [], np.array(Image.open(data / "Annotations/480p" / sequence / "00000.png"))
        for i in range(n):
            im = Image.open(seq_dir / f"{i:05d}.jpg").convert("RGB")
            frames.append(np.array(im.resize(size[::-1], Image.BILINEAR) if size else im))
        if size:
            mask = np.array(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))
        return np.stack(frames), (mask > 0).astype(np.uint8), f"DAVIS {sequence}"
    h, w = size or (480, 854)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : w // 2] = 1
    return frames, mask, "generated"


def split_objects(mask: np.ndarray, k: int) -> np.ndarray:
    """Split one object into ``k`` by columns of its bounding box (multi-object timing)."""
    if k == 1:
        return mask
    ys, xs = np.nonzero(mask)
    edges = np.linspace(xs.min(), xs.max() + 1, k + 1).astype(int)
    out = np.zeros_like(mask)
    for i in range(k):
        sl = mask.copy()
        sl[:, : edges[i]] = 0
        sl[:, edges[i + 1] :] = 0
        out[sl > 0] = i + 1
    return out


class PeakMemory:
    """Peak RSS (CPU, via /proc: reset with clear_refs) or max allocated (CUDA) over a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = float("nan")
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mb = int(line.split()[1]) / 1024
            except OSError:
                pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup=None) -> tuple[float, float]:
    (warmup or fn)()  # first calls build kernels for each shape: not timed
    times, peak = [], 0.0
    for _ in range(repeats):
        with PeakMemory(device) as pm:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        peak = max(peak, pm.mb)
    return statistics.median(times), peak


@torch.inference_mode()
def floor_per_frame(
    model,
    frames: np.ndarray,
    objects: int,
    device: torch.device,
    repeats: int,
    batches: tuple[int, ...] | None = None,
    precision: str = "fp32",
) -> dict:
    """Key encoder + decoder (per object) per frame, each at its fastest batch size, in ``precision``.

    Batch sizes tried: 1, 2, 5 on a CPU (larger 480p batches outgrow the caches and only get
    slower there); up to the longest clip, 25, on a GPU, which keeps gaining from larger batches.
    """
    if batches is None:
        batches = (1, 2, 5) if device.type == "cpu" else (1, 5, 10, 25)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        return _floor(model, frames, objects, device, repeats, batches)


def _floor(model, frames: np.ndarray, objects: int, device: torch.device, repeats: int, batches) -> dict:
    x = torch.from_numpy(frames[: max(batches)]).to(device).permute(0, 3, 1, 2).float().div(255)
    x, _ = pcvos.model.network.pad_to_multiple(model.normalize(x), 16)
    best_key, best_dec = {}, {}
    for b in batches:
        if b > len(x):
            continue
        sec, _ = timed(functools.partial(model.encode_key, x[:b], with_local=False), device, repeats)
        best_key[b] = sec / b
        feats = model.encode_key(x[:b], with_local=False)
        h, w = feats.key.shape[-2:]
        readout = torch.randn(objects, b, model.config.value_dim, h, w, device=device)
        sec, _ = timed(functools.partial(model.decode, readout, feats), device, repeats)
        best_dec[b] = sec / b
    key = min(best_key.values())
    dec = min(best_dec.values())
    return {
        "key_encoder_s": key,
        "decoder_s": dec,
        "floor_s": key + dec,
        "key_by_batch": best_key,
        "decoder_by_batch": best_dec,
    }


SCHEDULES = {
    "STCN (L=1, mem 5)": dict(stcn=True, clip_length=1, memory_every=5, pmm_segment=None, refine=False),
    "PCVOS L=5": dict(clip_length=5),
    "PCVOS L=10": dict(clip_length=10),
    "PCVOS L=15": dict(clip_length=15),
    "PCVOS L=25": dict(clip_length=25),
}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    # as `pcvos segment` / `pcvos infer` run (pcvos.runtime); --allocator default measures without it
    allocator = "kept" if args.allocator == "kept" and keep_freed_memory() else "default"
    devices = (
        [torch.device(d) for d in args.device]
        if args.device
        else ([torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    )
    size = None if args.size is None else tuple(args.size)
    frames, mask, source = load_frames(args.frames + 1, size, args.sequence, args.data)
    models = {}
    if args.weights:
        m = pcvos.load_model(args.weights)
        models = {False: m, True: m}
    else:
        models = {False: pcvos.load_model(_standin(False)), True: pcvos.load_model(_standin(True))}
    schedules = {k: v for k, v in SCHEDULES.items() if not args.schedules or k in args.schedules}
    if args.tiny:
        schedules = {"STCN (L=1, mem 5)": SCHEDULES["STCN (L=1, mem 5)"], "PCVOS L=2": dict(clip_length=2)}
    rows = []
    for device in devices:
        for k in args.objects:
            labels = split_objects(mask, k)
            fl = floor_per_frame(
                models[False].to(device), frames, k, device, args.repeats, precision=args.precision
            )
            rows.append(
                {
                    "device": device.type,
                    "objects": k,
                    "schedule": "floor (key enc + decoder)",
                    "L": None,
                    "s_per_frame": fl["floor_s"],
                    "fps": 1 / fl["floor_s"],
                    "peak_mb": None,
                    "detail": fl,
                }
            )
            for name, sched in schedules.items():
                sched = dict(sched)
                model = models[sched.pop("stcn", False)].to(device)
                if args.weights and not model.has_refiner:
                    sched.update(refine=False, pmm_segment=None)

                def fn(n=None, model=model, sched=sched, labels=labels, device=device):
                    return pcvos.segment(
                        model,
                        frames[:n],
                        {0: labels},
                        device=device,
                        frame_batch=args.frame_batch,
                        precision=args.precision,
                        **sched,
                    )

                sec, peak = timed(fn, device, args.repeats, warmup=lambda: fn(min(len(frames), 7)))
                spf = sec / args.frames
                rows.append(
                    {
                        "device": device.type,
                        "objects": k,
                        "schedule": name,
                        "L": sched["clip_length"],
                        "s_per_frame": spf,
                        "fps": 1 / spf,
                        "peak_mb": peak,
                        "x_floor": spf / fl["floor_s"],
                    }
                )
                print(f"  {device.type} K={k} {name}: {spf:.3f} s/frame", file=sys.stderr)
    return {
        "frames": args.frames,
        "source": source,
        "frame_batch": args.frame_batch or "auto",
        "size": list(frames.shape[1:3]),
        "repeats": args.repeats,
        "precision": args.precision,
        "allocator": allocator,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        f"{result['frames']} frames after the first, "
        f"{result['source']} at {result['size'][1]}x{result['size'][0]}, "
        f"median of {result['repeats']}, {result['threads']} threads, frame batch {result['frame_batch']}, "
        f"{result.get('precision', 'fp32')}, malloc {result.get('allocator', 'default')}, "
        f"torch {result['torch']}",
        "",
        "| device | objects | schedule | s/frame | FPS | × floor | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        xf = f"{r['x_floor']:.2f}" if r.get("x_floor") else "1.00"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "–"
        lines.append(
            f"| {r['device']} | {r['objects']} | {r['schedule']} | {r['s_per_frame']:.3f} | "
            f"{r['fps']:.2f} | {xf} | {peak} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dev, k in sorted({(r["device"], r["objects"]) for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["device"] == dev and r["objects"] == k]
        pc = [r for r in rows if r["schedule"].startswith("PCVOS")]
        (line,) = ax.plot(
            [r["L"] for r in pc], [r["fps"] for r in pc], marker="o", label=f"PCVOS {dev}, {k} obj"
        )
        floor = next(r for r in rows if r["schedule"].startswith("floor"))
        ax.axhline(
            floor["fps"], color=line.get_color(), linestyle="--", linewidth=1, label=f"floor {dev}, {k} obj"
        )
        stcn = [r for r in rows if r["schedule"].startswith("STCN")]
        if stcn:
            ax.plot([1], [stcn[0]["fps"]], marker="s", color=line.get_color(), linestyle="none")
    ax.set_xlabel("clip length L (square: STCN per frame)")
    ax.set_ylabel("frames per second")
    ax.set_title(f"pcvos speed ({result['size'][1]}x{result['size'][0]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=25, help="frames after the first (default 25)")
    p.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", nargs="+", help="devices (default: cpu, and cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames (default: 480p as stored)"
    )
    p.add_argument("--sequence", default="bear")
    p.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="DAVIS root holding JPEGImages/480p and Annotations/480p "
        "(default: ../shared/data/davis2016-train)",
    )
    p.add_argument("--schedules", nargs="+", help=f"subset of {list(SCHEDULES)}")
    p.add_argument("--weights", help="a real checkpoint instead of stand-in weights")
    p.add_argument(
        "--frame-batch",
        type=int,
        default=None,
        help="frames per encoder/decoder call (default: the engine's automatic choice)",
    )
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/speed.json"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/results/speed.png"))
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="network precision for the floor and every schedule (fp16: CUDA only)",
    )
    p.add_argument(
        "--allocator",
        choices=["kept", "default"],
        default="kept",
        help="kept: freed memory stays in the process, as the pcvos commands set it (default); "
        "default: glibc's own behaviour",
    )
    p.add_argument("--tiny", action="store_true", help="smoke run: tiny frames, 2 frames, 1 repeat")
    args = p.parse_args(argv)
    if args.tiny:
        args.frames, args.repeats, args.size, args.objects = 2, 1, [64, 96], [1]
    result = run(args)
    print(table(result))
    atomic_write_text(args.json, json.dumps(result, indent=2, default=str))
    plot(result, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
