#!/usr/bin/env python
"""The robot user on whole videos, by box: J&F after a box on frame 0 and k = 1, 2, 3 box corrections.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/robot_user.py \
        --davis-root ../shared/data/davis2016-train --threads 1 --resume

Per sequence of the protocol's report split: the user draws a tight box around the ground-truth
object on frame 0; ``pcvos.mask_from_prompts(frame, box=...)`` turns it into the first mask, which
``pcvos.Session`` propagates forward to the end (k = 0). Then k = 1, 2, 3 corrections, each one a
tight box around the ground truth at frame c, ``set_mask(c, mask_from_prompts(frame_c, box=...))``
and ``propagate(c, direction="both", until="keyframe")``, exactly as benchmarks/suggest.py does its
ground-truth corrections (its code is reused; only the mask the user sets differs), at

- ``suggested``: ``Session.suggest(3)`` after the first run, in its order (k = 1 its first pick, ...);
- ``even``: frames round(i T / (k + 1)), i = 1..k, a fresh chain from the first run for each k;
- ``gt``: ground-truth masks (not boxes) at the same suggested frames, from the same box-started
  first run: what the box's imperfect mask costs at a correction.

J&F: pcvos' DAVIS 2016 metrics as in suggest.py (first and last frame not scored; keyframes count
with the masks the user set). Frames are the 480p DAVIS frames (boxes and masks at 854x480), the
network runs at ``--size`` (shorter side). Nothing is chosen here: mask_from_prompts' settings and
suggest()'s weights were chosen on the ``select`` split. Results, one sequence at a time
(``--resume`` keeps the finished ones): ``--out``/robot_user.json and robot_user.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import pcvos
from pcvos.data.io_utils import atomic_write_text
from pcvos.eval.protocol import REPORT_UNSEEN_BY_V1, split
from pcvos.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))
from corrections import _scores  # the same J&F as suggest.py and corrections.py
from prompts import iou, tight_box  # the box the prompt benchmark draws
from suggest import KS, _chain, _correct, _even, _first_run, _jf, _labels, _load

# Settings a resumed run must share with the results it continues.
SAME_RUN = ("weights", "size", "clip_length", "threads", "even", "gt")


class BoxUser:
    """The robot user's mask at frame c: ``mask_from_prompts`` from a tight box around the ground
    truth there (an empty mask where the object is absent, as there is nothing to box). Masks are
    kept, so the chains that revisit a frame set the same mask; IoU and seconds per box are logged."""

    def __init__(self, frames: np.ndarray, gt: np.ndarray) -> None:
        self.frames, self.gt = frames, gt
        self.masks: dict[int, np.ndarray] = {}
        self.box_iou: dict[int, float] = {}
        self.seconds: dict[int, float] = {}

    def __call__(self, c: int) -> np.ndarray:
        if c not in self.masks:
            start = time.perf_counter()
            if self.gt[c].any():
                mask = pcvos.mask_from_prompts(self.frames[c], box=tight_box(self.gt[c]))
            else:
                mask = np.zeros(self.gt[c].shape, bool)
            self.seconds[c] = time.perf_counter() - start
            self.box_iou[c] = iou(mask, self.gt[c] != 0)
            self.masks[c] = mask.astype(np.uint8)
        return self.masks[c]


def run_sequence(model, frames: np.ndarray, gt: np.ndarray, args) -> dict:
    """The box-started first run and its corrections (see the module docstring), with J&F after each."""
    start = time.perf_counter()
    n = len(gt)
    user = BoxUser(frames, gt)
    s, secs = _first_run(model, frames, gt, args, user)
    first = _labels(s)
    res: dict = {"frames": n, "first": _scores(gt, first, [0]), "first_seconds": secs}
    sugg = s.suggest(max(KS))
    res["suggested_frames"] = sugg
    res["suggested"] = _correct(s, gt, sugg, user)  # the session the suggestions came from
    if args.gt:

        def gt_user(c: int) -> np.ndarray:  # frame 0 keeps the box's mask, corrections are exact
            return user(0) if c == 0 else gt[c]

        res["gt"] = _chain(model, frames, gt, first, sugg, args, gt_user)
    if args.even:
        res["even"] = {
            str(k): {
                "frames": _even(n, k),
                "scores": _chain(model, frames, gt, first, _even(n, k), args, user)[-1],
            }
            for k in KS
        }
    res["box_iou"] = {str(c): v for c, v in sorted(user.box_iou.items())}
    res["box_seconds"] = {str(c): v for c, v in sorted(user.seconds.items())}
    res["seconds"] = time.perf_counter() - start
    return res


def _means(per_seq: dict, seqs: list[str], get: Callable[[dict], float]) -> str:
    """'mean over seqs / mean over the unseen ones among them'."""
    unseen = [q for q in seqs if q in REPORT_UNSEEN_BY_V1]
    both = statistics.fmean(get(per_seq[q]) for q in seqs)
    return (
        f"{both:.1f} / {statistics.fmean(get(per_seq[q]) for q in unseen):.1f}" if unseen else f"{both:.1f}"
    )


def summary(per_seq: dict, seqs: list[str], args) -> str:
    """The results page's tables (markdown)."""
    done = [q for q in seqs if q in per_seq]
    unseen = [q for q in done if q in REPORT_UNSEEN_BY_V1]
    cols = ["suggested, box"] + (["evenly spaced, box"] if args.even else [])
    cols += ["suggested, ground-truth mask"] if args.gt else []
    lines = [
        f"{len(done)} sequences ({', '.join(done)}); unseen by pcvos-lite v2's training: {len(unseen)} "
        f"({', '.join(unseen)}). pcvos-lite, L={args.clip_length}, processing size {args.size}, fp32, "
        f"{torch.get_num_threads()} CPU thread(s). Each cell: mean J&F over all {len(done)} / over "
        f"the {len(unseen)} unseen.",
        "",
        "| corrections k | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
        f"| 0 (box on frame 0) | {_means(per_seq, done, lambda r: _jf(r['first']))} |"
        + " |" * (len(cols) - 1),
    ]
    for k in KS:
        cells = [_means(per_seq, done, lambda r, k=k: _jf(r["suggested"][k - 1]))]
        if args.even:
            cells.append(_means(per_seq, done, lambda r, k=k: _jf(r["even"][str(k)]["scores"])))
        if args.gt:
            cells.append(_means(per_seq, done, lambda r, k=k: _jf(r["gt"][k - 1])))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    head = ["sequence", "frames", "box IoU frame 0", "k=0", "k=1 sugg", "k=2 sugg", "k=3 sugg"]
    head += ["k=3 even"] if args.even else []
    head += ["k=3 gt mask"] if args.gt else []
    head += ["suggested frames", "box IoU there", "seconds"]
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for q in done:
        r = per_seq[q]
        cells = [q + (" (unseen)" if q in REPORT_UNSEEN_BY_V1 else ""), str(r["frames"])]
        cells += [f"{r['box_iou']['0']:.3f}", f"{_jf(r['first']):.1f}"]
        cells += [f"{_jf(x):.1f}" for x in r["suggested"]]
        cells += [f"{_jf(r['even']['3']['scores']):.1f}"] if args.even else []
        cells += [f"{_jf(r['gt'][-1]):.1f}"] if args.gt else []
        cells += [
            str(r["suggested_frames"]),
            ", ".join(f"{r['box_iou'][str(c)]:.2f}" for c in r["suggested_frames"]),
            f"{r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    secs = [per_seq[q]["seconds"] for q in done]
    lines += [
        "",
        f"Seconds per sequence (whole benchmark): mean {statistics.fmean(secs):.0f}, total {sum(secs):.0f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis-root", type=Path, required=True)
    p.add_argument("--sequences", nargs="+", default=None, help="default: the report split")
    p.add_argument("--weights", default=None, help="default: the shipped pcvos-lite")
    p.add_argument("--size", type=int, default=240, help="processing shorter side")
    p.add_argument("--clip-length", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-even", dest="even", action="store_false", help="skip the evenly spaced chains")
    p.add_argument("--no-gt", dest="gt", action="store_false", help="skip the ground-truth-mask chain")
    p.add_argument("--resume", action="store_true", help="keep the sequences already in robot_user.json")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/robot_user"))
    args = p.parse_args(argv)
    seqs = args.sequences or split("report")
    missing = [q for q in seqs if not (args.davis_root / "Annotations/480p" / q).is_dir()]
    if missing:
        p.error(f"--davis-root {args.davis_root}: no Annotations/480p/ for {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    path = args.out / "robot_user.json"
    per_seq: dict = {}
    if args.resume and path.exists():
        saved = json.loads(path.read_text())
        differ = [a for a in SAME_RUN if saved["args"].get(a) != vars(args)[a]]
        if differ:
            p.error(f"--resume: {path} was made with other settings ({', '.join(differ)}); drop --resume")
        per_seq = saved["per_sequence"]
    model = pcvos.load_model(args.weights)
    todo = [q for q in seqs if q not in per_seq]
    start = time.perf_counter()
    for i, seq in enumerate(todo, 1):
        frames, gt = _load(args.davis_root, seq)
        r = run_sequence(model, frames, gt, args)
        per_seq[seq] = r
        atomic_write_text(
            path, json.dumps({"per_sequence": per_seq, "args": vars(args)}, default=str, indent=1)
        )
        elapsed = time.perf_counter() - start
        print(
            f"{seq}: box IoU {r['box_iou']['0']:.3f}, k=0 {_jf(r['first']):.1f}; "
            + "; ".join(f"k={k} sugg {_jf(r['suggested'][k - 1]):.1f}" for k in KS)
            + f" (suggested {r['suggested_frames']}; {r['seconds']:.0f} s; "
            f"{elapsed:.0f} s so far, about {elapsed / i * (len(todo) - i):.0f} s to go)",
            file=sys.stderr,
            flush=True,
        )
    text = summary(per_seq, seqs, args)
    print(text)
    atomic_write_text(args.out / "robot_user.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
