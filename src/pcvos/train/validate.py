"""Periodic validation during training: per-clip inference on DAVIS-layout sequences, then J&F
with :func:`pcvos.eval.davis_eval.evaluate_davis` (the official toolkit's measures)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcvos.data.io_utils import save_indexed_png
from pcvos.data.train_datasets import _read_list, read_label_mask
from pcvos.eval.davis_eval import evaluate_davis
from pcvos.model.network import PCVOS

__all__ = ["validate_davis", "davis_sequences"]


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
    return sorted(
        (p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=lambda p: p.stem
    )


def validate_davis(
    net: PCVOS,
    root: str | Path,
    out_dir: str | Path,
    *,
    subset: str = "val",
    year: str | None = None,
    sequences: Sequence[str] | None = None,
    size: int | None = None,
    clip_length: int = 5,
    top_k: int = 20,
    device: Any = None,
    keep_results: bool = False,
) -> dict[str, Any]:
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
            labels = segment(
                net,
                frames,
                {0: first},
                clip_length=clip_length,
                refine=refine,
                top_k=top_k,
                size=size,
                device=device,
            )
        for p, lab in zip(paths, labels, strict=True):
            save_indexed_png(out_dir / s / (p.stem + ".png"), np.asarray(lab, np.uint8))
    infer_s = time.time() - t0
    res = evaluate_davis(
        root, out_dir, subset=subset, year=year, sequences=seqs, workers=1, write_files=False
    )
    res.setdefault("per_object", {})
    res["inference_seconds"] = infer_s
    res["sequences"] = seqs
    if not keep_results:
        shutil.rmtree(out_dir, ignore_errors=True)
    return res
