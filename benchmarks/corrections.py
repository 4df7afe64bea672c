#!/usr/bin/env python
"""What a few corrections buy: J&F with keyframes and re-propagation (pcvos.Session), and its cost.

    python benchmarks/corrections.py --davis-root ../shared/data/davis2016-train \
        --sequences bear car-turn dance-jump kite-walk tennis --size 240 --clip-length 5 --threads 1

Scenarios, per sequence (ground-truth masks stand in for the user's):

- ``first``: the first frame's mask, propagated forward to the end (what ``pcvos segment`` does);
- ``middle``: the middle frame's mask only, propagated both ways;
- ``every N``: a user going through the video: the first frame's mask and a forward run, then at
  frames N, 2N, ... the ground truth is set as a keyframe and the session re-propagates from it
  both ways until the neighbouring keyframes (forward: to the end, as no later keyframe exists
  yet when the user gets there).

J&F is scored with pcvos' DAVIS 2016 evaluation (first and last frame not scored) twice: over
all scored frames (keyframes count with their given masks, as a user's result would) and over
the scored frames that are not keyframes (what propagation achieved). Cost: seconds of the
``first`` run (a full run), the mean seconds of one correction's re-propagation in ``every N``,
and, after ``every 10``, a fix between two keyframes 10 apart (a frame midway set again and
re-propagated until its neighbours). Results go under ``--out`` (masks, ``corrections.json``,
``corrections.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pcvos
from pcvos.data.frames import FrameFolder
from pcvos.data.io_utils import atomic_write, atomic_write_text
from pcvos.eval.davis_eval import evaluate_davis, read_annotation
from pcvos.eval.metrics import db_eval_boundary, db_eval_iou
from pcvos.runtime import keep_freed_memory

CORRECTION_INTERVALS = (20, 10)
FIX_INTERVAL = 10  # the keyframe spacing of the "fix between keyframes" timing


def _run(session: pcvos.Session, t: int, **kw) -> tuple[float, int]:
    """Consume one propagation; (seconds, frames updated)."""
    start = time.perf_counter()
    n = sum(1 for _ in session.propagate(t, **kw))
    return time.perf_counter() - start, n


def _scores(gt: np.ndarray, labels: np.ndarray, keyframes: list[int]) -> dict[str, float]:
    """DAVIS 2016 J and F over frames 1..T-2, all of them and the non-keyframes only."""
    scored = np.arange(1, len(gt) - 1)
    j = db_eval_iou(gt[scored], labels[scored])
    f = db_eval_boundary(gt[scored], labels[scored])
    free = ~np.isin(scored, keyframes)
    return {
        "J": float(j.mean()),
        "F": float(f.mean()),
        "J_free": float(j[free].mean()),
        "F_free": float(f[free].mean()),
        "free_frames": int(free.sum()),
    }


def _subset_root(root: Path, sequences: list[str], tmp: Path) -> Path:
    """A DAVIS-layout folder listing only ``sequences`` (links to the original annotations)."""
    sub = tmp / "davis"
    (sub / "Annotations/480p").mkdir(parents=True)
    for s in sequences:
        (sub / "Annotations/480p" / s).symlink_to((root / "Annotations/480p" / s).resolve())
    (sub / "ImageSets/2016").mkdir(parents=True)
    (sub / "ImageSets/2016/val.txt").write_text("\n".join(sequences) + "\n")
    return sub


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--sequences", nargs="+", required=True)
    p.add_argument("--weights", default=None, help="default: the shipped pcvos-lite")
    p.add_argument("--size", type=int, default=240, help="processing shorter side")
    p.add_argument("--clip-length", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--max-frames", type=int, default=None, help="first N frames of each sequence (smoke runs)"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/corrections"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    model = pcvos.load_model(args.weights)
    names = ["first", "middle"] + [f"every {n}" for n in CORRECTION_INTERVALS]
    per_seq: dict[str, dict] = {}
    for seq in args.sequences:
        folder = FrameFolder(args.davis_root / "JPEGImages/480p" / seq)
        gt_paths = sorted((args.davis_root / "Annotations/480p" / seq).glob("*.png"))[: args.max_frames]
        frames = np.stack([folder[i] for i in range(len(gt_paths))])
        gt = np.stack([(read_annotation(q)[0] > 0).astype(np.uint8) for q in gt_paths])
        n = len(gt)
        res: dict[str, dict] = {}

        def new_session(frames: np.ndarray = frames) -> pcvos.Session:
            return pcvos.Session(model, frames, clip_length=args.clip_length, size=args.size)

        s = new_session()
        s.set_mask(0, gt[0])
        secs, done = _run(s, 0, direction="forward", until="end")
        res["first"] = {"session": s, "seconds": secs, "frames": done}

        mid = n // 2
        s = new_session()
        s.set_mask(mid, gt[mid])
        secs, done = _run(s, mid, direction="both")
        res["middle"] = {"session": s, "seconds": secs, "frames": done}

        for every in CORRECTION_INTERVALS:
            s = new_session()
            s.set_mask(0, gt[0])
            _run(s, 0, direction="forward", until="end")
            costs = []
            for c in range(every, n, every):
                s.set_mask(c, gt[c])
                costs.append(_run(s, c, direction="both", until="keyframe"))
            res[f"every {every}"] = {
                "session": s,
                "corrections": len(costs),
                "seconds": [c[0] for c in costs],
                "frames": [c[1] for c in costs],
            }
        for name in names:
            s = res[name]["session"]
            labels = np.stack([s.labels(i) for i in range(n)])
            res[name].update(_scores(gt, labels, s.keyframes), keyframes=s.keyframes)
            out = args.out / name.replace(" ", "_") / seq
            for i, lab in enumerate(labels):
                image = Image.fromarray(lab * 255)
                atomic_write(out / f"{gt_paths[i].stem}.png", image.save)
        # the cost of a fix between keyframes FIX_INTERVAL apart (scored above, so it changes
        # nothing reported)
        s = res[f"every {FIX_INTERVAL}"]["session"]
        fix = FIX_INTERVAL + FIX_INTERVAL // 2
        fix_secs = fix_frames = None
        if fix + FIX_INTERVAL // 2 < n:
            s.set_mask(fix, gt[fix])
            fix_secs, fix_frames = _run(s, fix, direction="both", until="keyframe")
        for name in names:
            del res[name]["session"]
        res["fix"] = {"seconds": fix_secs, "frames": fix_frames}
        per_seq[seq] = res
        print(
            f"{seq}: "
            + ", ".join(f"{k} J&F {50 * (res[k]['J'] + res[k]['F']):.1f}" for k in names)
            + f"; full run {res['first']['seconds']:.1f} s",
            file=sys.stderr,
        )

    # official scoring of the written masks (all scored frames), to check the per-frame numbers
    official = {name: float("nan") for name in names}
    if args.max_frames is None:  # the annotation folders hold whole sequences
        with tempfile.TemporaryDirectory() as tmp:
            root = _subset_root(args.davis_root, args.sequences, Path(tmp))
            official = {
                name: evaluate_davis(
                    root,
                    args.out / name.replace(" ", "_"),
                    subset="val",
                    year="2016",
                    workers=1,
                    write_files=False,
                )["J&F-Mean"]
                for name in names
            }

    def mean(key: str, name: str) -> float:
        return statistics.fmean(per_seq[s][name][key] for s in args.sequences)

    rows = []
    for name in names:
        jf = 50 * (mean("J", name) + mean("F", name))
        if args.max_frames is None and abs(jf - 100 * official[name]) > 0.05:
            raise SystemExit(
                f"{name}: per-frame J&F {jf:.3f} differs from the DAVIS evaluation's "
                f"{100 * official[name]:.3f}"
            )
        row = {
            "scenario": name,
            "J&F": jf,
            "J": 100 * mean("J", name),
            "F": 100 * mean("F", name),
            "J&F_free": 50 * (mean("J_free", name) + mean("F_free", name)),
            "keyframes": statistics.fmean(len(per_seq[s][name]["keyframes"]) for s in args.sequences),
            "official_J&F": 100 * official[name],
        }
        if name.startswith("every"):
            secs = [x for s in args.sequences for x in per_seq[s][name]["seconds"]]
            frames = [x for s in args.sequences for x in per_seq[s][name]["frames"]]
            if secs:  # a sequence shorter than N gets no correction
                row.update(
                    correction_s=statistics.fmean(secs),
                    correction_frames=statistics.fmean(frames),
                    total_s=sum(secs),
                )
        else:
            row.update(run_s=mean("seconds", name), run_frames=mean("frames", name))
        rows.append(row)
    fixes = [per_seq[s]["fix"] for s in args.sequences if per_seq[s]["fix"]["seconds"] is not None]
    full_s = statistics.fmean(per_seq[s]["first"]["seconds"] for s in args.sequences)
    full_frames = statistics.fmean(per_seq[s]["first"]["frames"] for s in args.sequences)

    lines = [
        f"{len(args.sequences)} sequences ({', '.join(args.sequences)}), pcvos-lite"
        f"{'' if args.weights is None else ' (' + args.weights + ')'}, L={args.clip_length}, "
        f"processing size {args.size}, fp32, {torch.get_num_threads()} CPU thread(s)",
        "",
        "| masks given | keyframes / seq | J&F | J | F | J&F on non-keyframes |",
        "|---|---|---|---|---|---|",
    ]
    label = {
        "first": "first frame only",
        "middle": "middle frame only (both ways)",
        **{f"every {k}": f"+ GT correction every {k} frames" for k in CORRECTION_INTERVALS},
    }
    for r in rows:
        lines.append(
            f"| {label[r['scenario']]} | {r['keyframes']:.1f} | {r['J&F']:.1f} | {r['J']:.1f} | "
            f"{r['F']:.1f} | {r['J&F_free']:.1f} |"
        )
    lines += [
        "",
        "| cost (mean per sequence) | seconds | frames updated |",
        "|---|---|---|",
        f"| full run (first frame to the end) | {full_s:.2f} | {full_frames:.1f} |",
    ]
    for r in rows:
        if "correction_s" in r:
            lines.append(
                f"| one correction, {r['scenario']} (forward part to the end) | {r['correction_s']:.2f} "
                f"| {r['correction_frames']:.1f} |"
            )
    if fixes:
        lines.append(
            f"| one fix between keyframes {FIX_INTERVAL} apart | "
            f"{statistics.fmean(f['seconds'] for f in fixes):.2f} | "
            f"{statistics.fmean(f['frames'] for f in fixes):.1f} |"
        )
    lines += [
        "",
        "Per sequence (J&F, all scored frames): "
        + "; ".join(
            f"{s} " + " / ".join(f"{50 * (per_seq[s][k]['J'] + per_seq[s][k]['F']):.1f}" for k in names)
            for s in args.sequences
        )
        + f" ({' / '.join(names)})",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(args.out / "corrections.md", text + "\n")
    atomic_write_text(
        args.out / "corrections.json", json.dumps({"rows": rows, "per_sequence": per_seq}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
