"""Mask decoder: memory read-out + key features -> one logit map per object and frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcvos.model.blocks import ResBlock


class UpsampleBlock(nn.Module):
    """``out_conv(skip_conv(skip) + upsample(x))``."""

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int, scale_factor: int = 2) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, up_dim, kernel_size=3, padding=1)
        self.out_conv = ResBlock(up_dim, out_dim)
        self.scale_factor = scale_factor

    def forward(self, skip: torch.Tensor, x: torch.Tensor, num_objects: int) -> torch.Tensor:
        # the skip branch depends only on the frame: computed once, broadcast over objects
        s = self.skip_conv(skip)
        up = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        up = up.view(num_objects, s.shape[0], *up.shape[1:]) + s.unsqueeze(0)
        return self.out_conv(up.flatten(0, 1))


class Decoder(nn.Module):
    """STCN's decoder. Input channels: ``value_dim`` (read-out) + ``thin_dim`` (compressed key f16)."""

    def __init__(
        self,
        value_dim: int = 512,
        thin_dim: int = 512,
        f8_dim: int = 512,
        f4_dim: int = 256,
        widths: tuple[int, int, int] = (512, 256, 256),
    ) -> None:
        super().__init__()
        w16, w8, w4 = widths
        self.value_dim = value_dim
        self.compress = ResBlock(value_dim + thin_dim, w16)
        self.up_16_8 = UpsampleBlock(f8_dim, w16, w8)
        self.up_8_4 = UpsampleBlock(f4_dim, w8, w4)
        self.pred = nn.Conv2d(w4, 1, kernel_size=3, padding=1)

    def forward(
        self, readout: torch.Tensor, thin: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor
    ) -> torch.Tensor:
        """``readout`` (K, L, Cv, h, w); ``thin``/``f8``/``f4`` (L, C, ...) -> logits (K, L, 4h, 4w)
        at f4 x 4."""
        k, n_frames = readout.shape[:2]
        x = self.compress.forward_concat(readout.flatten(0, 1), thin)
        x = self.up_16_8(f8, x, k)
        x = self.up_8_4(f4, x, k)
        x = self.pred(F.relu(x))
        x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        return x.view(k, n_frames, *x.shape[-2:])
