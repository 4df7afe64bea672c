"""Periodic validation during training: per-clip inference on DAVIS-layout sequences, then J&F.

Uses :func:`pcvos.eval.davis_eval.evaluate_davis` (the official toolkit's measures) when it is
available; otherwise reports J (mean IoU over the frames after the first) computed here.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pcvos.data.train_datasets import _read_list, read_label_mask
from pcvos.model.network import PCVOS

__all__ = ["validate_davis", "davis_sequences"]


def _palette() -> list[int]:
    from pcvos.data.synthetic import _palette as pal
    return pal()


def davis_sequences(root: str | Path, subset: str = "val", year: str | None = None) -> list[str]:
    root = Path(root)
    years = [str(year)] if year else ["2017", "2016", "480p"]
    for y in years:
        p = root / "ImageSets" / y / f"{subset}.txt"
        if p.is_file():
            return _read_list(p)
    raise FileNotFoundError(f"{root}: no ImageSets/<year>/{subset}.txt")


def _frames(root: Path, seq: str) -> list[Path]:
    d = root / "JPEGImages" / "480p" / seq
    return sorted((p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=lambda p: p.stem)


def _own_j(root: Path, results: Path, seqs: Sequence[str]) -> dict[str, Any]:
    per = {}
    for s in seqs:
        gts = sorted((root / "Annotations" / "480p" / s).glob("*.png"))[1:]
        vals = []
        for g in gts:
            gt = read_label_mask(g)
            pr = np.array(Image.open(results / s / g.name))
            for k in [int(i) for i in np.unique(gt) if i not in (0, 255)]:
                a, b = pr == k, gt == k
                u = (a | b).sum()
                vals.append(1.0 if u == 0 else float((a & b).sum() / u))
        per[s] = float(np.mean(vals)) if vals else float("nan")
    j = float(np.nanmean(list(per.values())))
    return {"J-Mean": j, "J&F-Mean": float("nan"), "per_sequence_J": per}


def validate_davis(net: PCVOS, root: str | Path, out_dir: str | Path, *, subset: str = "val", year: str | None = None,
                   sequences: Sequence[str] | None = None, size: int | None = None, clip_length: int = 5,
                   top_k: int = 20, device: Any = None, keep_results: bool = False) -> dict[str, Any]:
    """Segment each sequence from its first annotation and score it. ``net`` is left in eval mode."""
    import torch

    from pcvos.inference.api import segment
    root, out_dir = Path(root), Path(out_dir)
    seqs = list(sequences) if sequences else davis_sequences(root, subset, year)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t0 = time.time()
    refine = net.has_refiner
    for s in seqs:
        paths = _frames(root, s)
        frames = np.stack([np.array(Image.open(p).convert("RGB")) for p in paths])
        ann = root / "Annotations" / "480p" / s / (paths[0].stem + ".png")
        first = read_label_mask(ann)
        first = np.where(first == 255, 0, first).astype(np.uint8)
        with torch.no_grad():
            labels = segment(net, frames, {0: first}, clip_length=clip_length, refine=refine, top_k=top_k,
                             size=size, device=device)
        d = out_dir / s
        d.mkdir(parents=True, exist_ok=True)
        for p, lab in zip(paths, labels):
            im = Image.fromarray(np.asarray(lab, np.uint8))
            im.putpalette(_palette())
            im.save(d / (p.stem + ".png"))
    infer_s = time.time() - t0
    try:
        from pcvos.eval.davis_eval import evaluate_davis
    except ImportError:  # TODO: drop the fallback once pcvos.eval is always present
        evaluate_davis = None
    if evaluate_davis is not None:
        res = evaluate_davis(root, out_dir, subset=subset, year=year, sequences=seqs, workers=1, write_files=False)
        res = {k: v for k, v in res.items() if k != "per_object"} | {"per_object": res.get("per_object", {})}
    else:
        res = _own_j(root, out_dir, seqs)
    res["inference_seconds"] = infer_s
    res["sequences"] = seqs
    if not keep_results:
        shutil.rmtree(out_dir, ignore_errors=True)
    return res
