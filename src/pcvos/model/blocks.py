"""Convolutional building blocks shared by the value encoder and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_over_concat(conv: nn.Conv2d, per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``conv(cat[per_object, shared])`` without repeating ``shared`` for every object.

    ``per_object`` is (K*B, Ca, h, w), object-major; ``shared`` is (B, Cb, h, w), the same for
    every object. A convolution over a channel concatenation is the sum of convolutions over its
    parts, so the shared half is computed once and broadcast.
    """
    ca = per_object.shape[1]
    pad = conv.padding
    ya = F.conv2d(per_object, conv.weight[:, :ca], None, conv.stride, pad)
    yb = F.conv2d(shared, conv.weight[:, ca:], conv.bias, conv.stride, pad)
    k = per_object.shape[0] // shared.shape[0]
    return (ya.view(k, *yb.shape) + yb.unsqueeze(0)).flatten(0, 1)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv2(relu(conv1(relu(x))))``.

    When the channel count changes the shortcut is a 3x3 convolution (``downsample``), which is
    what the released checkpoints hold.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        self.downsample = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + r

    def forward_concat(self, per_object: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """``forward(cat[per_object, shared])`` with ``shared`` (B, ...) common to all K objects."""
        if self.downsample is None:
            k = per_object.shape[0] // shared.shape[0]
            return self(torch.cat([per_object, shared.repeat(k, 1, 1, 1)], dim=1))
        # relu acts per channel, so relu(cat) = cat(relu) and the split holds for conv1 too
        r = self.conv2(F.relu(conv_over_concat(self.conv1, F.relu(per_object), F.relu(shared))))
        return conv_over_concat(self.downsample, per_object, shared) + r


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        # index 0 is a Flatten and 2 a ReLU in the released layout; keys live at mlp.1 / mlp.3
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class _SpatialConv(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialGate(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.spatial = _SpatialConv(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: a channel gate followed by a spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.ChannelGate = _ChannelGate(channels, reduction)
        self.SpatialGate = _SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusion(nn.Module):
    """Fuses the value backbone's features with the frame's key features (block1, CBAM, block2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = CBAM(out_dim)
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, key_f16: torch.Tensor) -> torch.Tensor:
        """``x`` (K*B, C, h, w) per object; ``key_f16`` (B, C16, h, w) per frame or (K*B, ...)."""
        if key_f16.shape[0] == x.shape[0]:
            x = self.block1(torch.cat([x, key_f16], dim=1))
        else:
            x = self.block1.forward_concat(x, key_f16)
        return self.block2(x + self.attention(x))
