"""Prompt -> first mask (pcvos.mask_from_prompts) on the first frames of DAVIS 2016 train sequences.

Measures, per split of the held-out protocol (choose on ``select``, report on ``report``):

- box IoU: a tight box from the ground truth, against plain GrabCut from the same box (what the
  studio's box tool does: cv2.grabCut, GC_INIT_WITH_RECT, 5 iterations, full resolution);
- zero-click IoU: no prompt (the most salient object);
- the robot clicker: the first click at the object point farthest from its boundary; each next
  click at the point farthest from the boundary of the largest connected error region, positive
  for a missed part, negative for a false one; at most 20 clicks. NoC@85 / NoC@90 (20 when never
  reached) and IoU after 1, 3 and 5 clicks;
- seconds per click (each click after the first, saliency cached as in interactive use), at 480p.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/prompts.py --split select
    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/prompts.py --split report --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pcvos.eval.protocol import split as protocol_split
from pcvos.inference.clicknet import ClickNetModel, ClickNetParams
from pcvos.inference.prompts import (
    DEFAULT_PARAMS,
    PromptParams,
    SaliencyCache,
    SaliencyModel,
    mask_from_prompts,
)

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"
MAX_CLICKS = 20
STUDIO_GRABCUT_ITERATIONS = 5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def tight_box(gt: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(gt)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def farthest_from_boundary(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` farthest from its boundary (the image edge counts as boundary)."""
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The robot's next click: inside the largest connected error region, farthest from its boundary."""
    best = None
    for positive, err in ((1, gt & ~pred), (0, pred & ~gt)):
        n, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
        if n > 1:
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[k, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, comp == k, positive)
    if best is None:
        return None
    return farthest_from_boundary(best[1]), best[2]


def studio_grabcut(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros(image.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        np.ascontiguousarray(image[..., ::-1]),
        mask,
        (x0, y0, x1 - x0, y1 - y0),
        bgd,
        fgd,
        STUDIO_GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_RECT,
    )
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))


def load_first_frames(names: list[str], root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for name in names:
        image = np.array(Image.open(root / "JPEGImages" / "480p" / name / "00000.jpg").convert("RGB"))
        gt = np.array(Image.open(root / "Annotations" / "480p" / name / "00000.png")) > 0
        out.append((name, image, gt))
    return out


def robot(image, gt, params, cache, use_previous: bool, timings: list | None = None, net=None) -> list[float]:
    """IoU after each of up to MAX_CLICKS robot clicks.

    ``net``: None (mask_from_prompts as configured by ``params``) or (ClickNetModel, ClickNetParams,
    n): the first n clicks by mask_from_prompts (saliency + GrabCut), the others by the network.
    """
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    ious: list[float] = []
    pred = np.zeros_like(gt)
    for k in range(MAX_CLICKS):
        if k == 0:
            click = (farthest_from_boundary(gt), 1)
        else:
            click = next_click(pred, gt)
            if click is None:
                ious.extend([1.0] * (MAX_CLICKS - k))
                break
        points.append(click[0])
        labels.append(click[1])
        start, cpu = time.perf_counter(), time.process_time()
        if net is not None and k >= net[2]:
            model, net_params, _ = net
            pred = model.predict(
                image,
                np.array(points, dtype=np.float64),
                np.array(labels) == 1,
                previous=pred if k > 0 else None,
                params=net_params,
            )
        else:
            pred = mask_from_prompts(
                image,
                points=np.array(points),
                point_labels=np.array(labels),
                previous=pred if use_previous and k > 0 else None,
                params=params,
                cache=cache,
            )
        if timings is not None and k > 0:
            timings.append((time.perf_counter() - start, time.process_time() - cpu))
        ious.append(iou(pred, gt))
    return ious


def noc(ious: list[float], target: float) -> int:
    for k, value in enumerate(ious):
        if value >= target:
            return k + 1
    return MAX_CLICKS


def evaluate(
    frames, params: PromptParams, cache: SaliencyCache, use_previous: bool, clicks: bool = True, net=None
) -> dict:
    rows = []
    timings: list[tuple[float, float]] = []
    for name, image, gt in frames:
        box = tight_box(gt)
        row = {
            "sequence": name,
            "box": iou(mask_from_prompts(image, box=box, params=params, cache=cache), gt),
            "zero_click": iou(mask_from_prompts(image, params=params, cache=cache), gt),
        }
        if clicks:
            ious = robot(image, gt, params, cache, use_previous, timings, net)
            row.update(
                {
                    "noc85": noc(ious, 0.85),
                    "noc90": noc(ious, 0.90),
                    "iou@1": ious[0],
                    "iou@3": ious[2],
                    "iou@5": ious[4],
                }
            )
        rows.append(row)
    keys = [k for k in rows[0] if k != "sequence"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if timings:
        wall, cpu = np.array(timings).T
        mean["seconds_per_click"] = float(np.median(wall))
        mean["seconds_per_click_p90"] = float(np.percentile(wall, 90))
        # CPU seconds (all threads) per click: on a shared machine wall time includes waiting for a core
        mean["cpu_seconds_per_click"] = float(np.median(cpu))
    return {"rows": rows, "mean": mean}


def baseline(frames) -> dict:
    rows = [{"sequence": n, "box": iou(studio_grabcut(im, tight_box(gt)), gt)} for n, im, gt in frames]
    return {"rows": rows, "mean": {"box": float(np.mean([r["box"] for r in rows]))}}


def timing_first(frames, params: PromptParams, threads: int) -> dict:
    """Seconds for a first prompt on a new image (saliency not cached) and the network alone."""
    model = SaliencyModel(threads=threads)
    net, net_cpu, first_box = [], [], []
    for _, image, gt in frames:
        start, cpu = time.perf_counter(), time.process_time()
        model(image)
        net.append(time.perf_counter() - start)
        net_cpu.append(time.process_time() - cpu)
        cache = SaliencyCache()
        start = time.perf_counter()
        mask_from_prompts(image, box=tight_box(gt), params=params, cache=cache)
        first_box.append(time.perf_counter() - start)
    return {
        "saliency_network_s": float(np.median(net)),
        "saliency_network_cpu_s": float(np.median(net_cpu)),
        "first_box_s": float(np.median(first_box)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="select", choices=["select", "report", "train"])
    ap.add_argument("--davis", type=Path, default=DAVIS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-previous", action="store_true", help="clicks do not pass the previous mask")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a PromptParams field"
    )
    ap.add_argument("--no-clicks", action="store_true", help="box and zero-click only (fast, for sweeps)")
    ap.add_argument(
        "--method",
        default="prompts",
        choices=["prompts", "net", "hybrid"],
        help="clicks by mask_from_prompts (prompts: saliency + GrabCut, as configured by --set), by the "
        "click network --weights (net: scripts/train_clicknet.py), or the first click by mask_from_prompts "
        "and the others by the network (hybrid)",
    )
    ap.add_argument("--weights", type=Path, help="click network state_dict (with --method net/hybrid)")
    ap.add_argument(
        "--grabcut-clicks", type=int, default=1, help="with --method hybrid: clicks answered by GrabCut first"
    )
    ap.add_argument(
        "--net-set", action="append", default=[], metavar="KEY=VALUE", help="override a ClickNetParams field"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip plain GrabCut and first-prompt timing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    params = DEFAULT_PARAMS
    for item in args.set:
        key, value = item.split("=", 1)
        params = replace(params, **{key: type(getattr(params, key))(value)})
    net = None
    if args.method != "prompts":
        if args.weights is None:
            ap.error(f"--method {args.method} needs --weights")
        net_params = ClickNetParams()
        for item in args.net_set:
            key, value = item.split("=", 1)
            kind = type(getattr(net_params, key))
            net_params = replace(
                net_params, **{key: value in ("1", "true", "True") if kind is bool else kind(value)}
            )
        net = (
            ClickNetModel(args.weights, threads=args.threads),
            net_params,
            0 if args.method == "net" else args.grabcut_clicks,
        )
    frames = load_first_frames(protocol_split(args.split), args.davis)
    cache = SaliencyCache(maxsize=64)
    result = {
        "split": args.split,
        "sequences": [f[0] for f in frames],
        "params": asdict(params),
        "use_previous": not args.no_previous,
        "threads": args.threads,
        "method": args.method,
        "weights": str(args.weights) if args.weights else None,
        "net_params": asdict(net[1]) if net else None,
        "grabcut_clicks": net[2] if net else None,
        "prompts": evaluate(frames, params, cache, not args.no_previous, clicks=not args.no_clicks, net=net),
        "studio_grabcut": {"mean": {}} if args.no_baseline else baseline(frames),
        "timing": {} if args.no_baseline else timing_first(frames, params, args.threads),
    }
    for row in result["prompts"]["rows"]:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print("mean", json.dumps(result["prompts"]["mean"]))
    print(
        "studio grabcut box",
        json.dumps(result["studio_grabcut"]["mean"]),
        "timing",
        json.dumps(result["timing"]),
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
