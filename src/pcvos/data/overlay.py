"""Visualisations of label maps: translucent coloured overlays with outlines, RGBA cut-outs."""

from __future__ import annotations

import cv2
import numpy as np

from pcvos.data.palette import DAVIS_PALETTE


def overlay(
    frame: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = 0.5,
    outline: int = 2,
    palette: np.ndarray = DAVIS_PALETTE,
) -> np.ndarray:
    """Blend each object's palette colour onto ``frame`` (H, W, 3) uint8 and draw its outline."""
    out = frame.copy()
    ids = [int(i) for i in np.unique(labels) if i not in (0, 255)]
    if not ids:
        return out
    colours = palette[labels].astype(np.float32)
    fg = (labels > 0) & (labels < 255)
    blended = out[fg].astype(np.float32) * (1 - alpha) + colours[fg] * alpha
    out[fg] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if outline > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * outline + 1, 2 * outline + 1))
        for i in ids:
            m = (labels == i).astype(np.uint8)
            edge = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, kernel).astype(bool)
            out[edge] = palette[i]
    return out


def rgba_cutout(frame: np.ndarray, labels: np.ndarray, object_id: int) -> np.ndarray:
    """(H, W, 4) uint8: the frame with alpha 255 on the object and 0 elsewhere."""
    alpha = np.where(labels == object_id, 255, 0).astype(np.uint8)
    return np.dstack([frame, alpha])
