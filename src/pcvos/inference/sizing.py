"""The processing size: the resolution frames and masks are resized to before the network.

Shared by the streaming API, the interactive session, the CLI and test-time adaptation, so it
lives below all of them (adaptation must see the frames at the size segmentation will use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pcvos.inference.engine import is_whole

# The network's stride: a smaller side would leave no feature map.
MIN_PROCESSING_SIDE = 16


def _processing_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    """(height, width) with the shorter side ``size`` pixels, aspect kept (None: ``(h, w)``)."""
    if size is None:
        return h, w
    if not is_whole(size):
        raise ValueError(f"size must be a whole number of pixels or None, got {size!r}")
    if size < MIN_PROCESSING_SIDE:
        raise ValueError(f"size must be at least {MIN_PROCESSING_SIDE} pixels, got {size}")
    scale = size / min(h, w)
    return max(MIN_PROCESSING_SIDE, round(h * scale)), max(MIN_PROCESSING_SIDE, round(w * scale))


def _resize_mask(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (H, W) uint8 label map at the processing ``size`` (height, width), as masks enter the
    network: nearest neighbour, pixel-centre aligned, so no new label appears."""
    if tuple(labels.shape) == tuple(size):
        return labels
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(torch.uint8)
