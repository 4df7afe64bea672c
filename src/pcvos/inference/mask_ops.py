"""Mask operations shared by the prompt paths (pcvos.inference.prompts and pcvos.inference.clicknet)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["components_with", "guided_filter"]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """``src`` smoothed so that its edges follow the edges of ``guide`` (grey guided filter)."""
    g = cv2.cvtColor(guide, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    k = (2 * radius + 1, 2 * radius + 1)

    def mean(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT)

    mg, ms = mean(g), mean(src)
    a = (mean(g * src) - mg * ms) / (mean(g * g) - mg * mg + eps)
    b = ms - a * mg
    return mean(a) * g + mean(b)


def components_with(mask: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """The connected parts of ``mask`` that hold a seed (row, col); with no seed in it, the largest."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask
    keep = {int(comp[r, c]) for r, c in seeds if comp[r, c] > 0}
    if not keep:
        keep = {1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))}
    return np.isin(comp, list(keep))
