"""Time ``pcvos.eval.evaluate_davis`` on a 480p DAVIS evaluation.

Builds a temporary DAVIS root from the real DAVIS 2016 training annotations
(``../shared/data/davis2016-train`` next to the repository, or ``--data``), writes perturbed
copies of the annotations as results (eroded / dilated / shifted / emptied masks, indexed
PNGs), then times the evaluation with 1 worker and with all cores and prints a table.

Optionally (``--official DIR``, a checkout of davisvideochallenge/davis2017-evaluation whose
``davis2017`` package imports with the installed NumPy), the official toolkit is timed on
the same data and its numbers are compared with ours.

    python benchmarks/eval_speed.py                 # 20 sequences
    python benchmarks/eval_speed.py --sequences 30 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from pcvos.eval.davis_eval import GLOBAL_COLUMNS, evaluate_davis  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "davis2016-train"


def _perturb(labels: np.ndarray, seq_index: int, frame: int) -> np.ndarray:
    kind = (seq_index + frame) % 6
    k = np.ones((5, 5), np.uint8)
    if kind == 0:
        return cv2.erode(labels, k, iterations=2)
    if kind == 1:
        return cv2.dilate(labels, k, iterations=2)
    if kind == 2:
        return np.roll(labels, (5, -8), axis=(0, 1))
    if kind == 3 and frame % 10 == 3:
        return np.zeros_like(labels)
    if kind == 4:
        return np.roll(labels, 25, axis=1)
    return labels


def build(data: Path, tmp: Path, n_seq: int) -> tuple[Path, Path, list[str], int]:
    """Temporary DAVIS root (annotation folders symlinked) and perturbed results."""
    names = (data / "ImageSets" / "2016" / "train.txt").read_text().split()[:n_seq]
    root, res = tmp / "DAVIS", tmp / "results"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "Annotations" / "480p").mkdir(parents=True)
    n_frames = 0
    for si, seq in enumerate(names):
        src = data / "Annotations" / "480p" / seq
        os.symlink(src, root / "Annotations" / "480p" / seq)
        (res / seq).mkdir(parents=True)
        for fi, fp in enumerate(sorted(src.glob("*.png"))):
            im = Image.open(fp)
            labels = np.array(im)
            labels[labels == 255] = 0
            out = Image.fromarray(_perturb(labels.astype(np.uint8), si, fi), mode="P")
            out.putpalette(im.getpalette() or [0, 0, 0, 128, 0, 0])
            out.save(res / seq / fp.name)
            n_frames += 1
    return root, res, names, n_frames


def run_official(path: Path, root: Path, res: Path) -> tuple[float, dict[str, float]]:
    sys.path.insert(0, str(path))
    if not hasattr(np, "bool"):
        np.bool = bool  # type: ignore[attr-defined]  # the toolkit predates NumPy 1.24
    from davis2017.evaluation import DAVISEvaluation  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    ev = DAVISEvaluation(davis_root=str(root), task="semi-supervised", gt_set="train", codalab=True)
    r = ev.evaluate(str(res))
    dt = time.perf_counter() - t0
    J, F = r["J"], r["F"]
    vals = [
        (np.mean(J["M"]) + np.mean(F["M"])) / 2.0,
        np.mean(J["M"]),
        np.mean(J["R"]),
        np.mean(J["D"]),
        np.mean(F["M"]),
        np.mean(F["R"]),
        np.mean(F["D"]),
    ]
    return dt, dict(zip(GLOBAL_COLUMNS, (float(v) for v in vals), strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="davis2016-train folder")
    ap.add_argument("--sequences", type=int, default=20, help="number of sequences (default 20)")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=None,
        help="worker counts to time (default: 1 and all cores)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per setting (best is reported)")
    ap.add_argument(
        "--official",
        type=Path,
        default=None,
        help="checkout of davis2017-evaluation to time and compare against",
    )
    args = ap.parse_args(argv)

    if not (args.data / "Annotations" / "480p").is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = args.workers or sorted({1, cores})

    tmp = Path(tempfile.mkdtemp(prefix="pcvos_eval_bench_"))
    try:
        t0 = time.perf_counter()
        root, res, names, n_frames = build(args.data, tmp, args.sequences)
        print(
            f"built {len(names)} sequences / {n_frames} frames of perturbed results "
            f"in {time.perf_counter() - t0:.1f} s ({cores} cores available)"
        )
        rows: list[tuple[str, int, int, int, float]] = []
        metrics: dict[str, Any] = {}
        for w in workers:
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                metrics = evaluate_davis(root, res, subset="train", workers=w)
                best = min(best, time.perf_counter() - t0)
            rows.append(("pcvos", len(names), n_frames, w, best))
        official: dict[str, float] | None = None
        if args.official is not None:
            dt, official = run_official(args.official, root, res)
            rows.append(("official toolkit", len(names), n_frames, 1, dt))

        print()
        print(f"{'implementation':<18} {'sequences':>9} {'frames':>7} {'workers':>7} {'seconds':>8}")
        for impl, s, f, w, dt in rows:
            print(f"{impl:<18} {s:>9d} {f:>7d} {w:>7d} {dt:>8.2f}")
        print()
        print("  ".join(f"{c}={metrics[c]:.4f}" for c in GLOBAL_COLUMNS))
        if official is not None:
            diff = max(abs(official[c] - metrics[c]) for c in GLOBAL_COLUMNS)
            print(f"max |official - pcvos| over the global metrics: {diff:.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
