"""The DAVIS colour palette used for indexed (``P`` mode) mask PNGs.

Label ``i`` gets the colour built by the usual PASCAL VOC / DAVIS bit-interleaving rule: bits
0, 1, 2 of ``i`` become the top bits of R, G, B, bits 3, 4, 5 the next ones, and so on. This gives
0 → black, 1 → (128, 0, 0), 2 → (0, 128, 0), 3 → (128, 128, 0), 4 → (0, 0, 128), …,
255 (void) → (224, 224, 192), identical to the palette stored in the DAVIS annotation PNGs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DAVIS_PALETTE", "VOID_LABEL", "colour_for", "make_palette"]

#: Label of "void" pixels (ignored by the benchmarks) in DAVIS and YouTube-VOS masks.
VOID_LABEL = 255


def make_palette(n: int = 256) -> np.ndarray:
    """Return the first ``n`` DAVIS / PASCAL VOC palette colours as an ``(n, 3)`` uint8 array."""
    if not 1 <= n <= 256:
        raise ValueError(f"palette size must be in 1..256, got {n}")
    labels = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # bit group `shift` of the label fills bit (7 - shift) of each channel
        for channel in range(3):
            bit = (labels >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


#: The 256×3 uint8 DAVIS palette (read-only).
DAVIS_PALETTE: np.ndarray = make_palette(256)
DAVIS_PALETTE.setflags(write=False)


def colour_for(label: int) -> tuple[int, int, int]:
    """Return the DAVIS palette colour ``(r, g, b)`` of a label in 0..255."""
    label = int(label)
    if not 0 <= label <= 255:
        raise ValueError(f"label must be in 0..255, got {label}")
    r, g, b = DAVIS_PALETTE[label]
    return int(r), int(g), int(b)
