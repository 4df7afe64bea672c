"""Key and value encoders.

The key encoder is torchvision's ResNet-50 cut after ``layer3``; its ``layer1`` is stored as
``res2`` to match the released checkpoints. The value encoder is a ResNet-18 whose convolutions all
carry a bias and whose stem takes 5 channels (RGB, the object's probability, the sum of the other
objects' probabilities), followed by a fusion block with the key features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcvos.model.blocks import FeatureFusion


class ResNetKeyEncoder(nn.Module):
    """ResNet-50 up to ``layer3``: returns ``(f16, f8, f4)`` with 1024 / 512 / 256 channels."""

    channels: tuple[int, int, int] = (256, 512, 1024)  # f4, f8, f16

    def __init__(self) -> None:
        super().__init__()
        # imported here: torchvision.models takes about a second to import, and every `pcvos`
        # command with the shipped EfficientNet model would pay it without using it
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.res2 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class _BiasedBasicBlock(nn.Module):
    """ResNet basic block with biased convolutions (the released value encoder's variant)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.downsample = None
        if stride != 1 or in_dim != out_dim:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_dim, out_dim, 1, stride=stride), nn.BatchNorm2d(out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _make_layer(in_dim: int, out_dim: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [_BiasedBasicBlock(in_dim, out_dim, stride)]
    layers += [_BiasedBasicBlock(out_dim, out_dim) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetValueEncoder(nn.Module):
    """ResNet-18 (biased convolutions, 5-channel stem) + fusion with the frame's key features."""

    def __init__(self, key_f16_dim: int = 1024, value_dim: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(5, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, 2, 1)
        self.layer2 = _make_layer(64, 128, 2, 2)
        self.layer3 = _make_layer(128, 256, 2, 2)
        self.fuser = FeatureFusion(256 + key_f16_dim, value_dim)

    def forward(
        self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """``image``/``mask``/``others`` (B,·,H,W), ``key_f16`` (B or B/K,C,H/16,W/16)
        -> (B,value_dim,H/16,W/16).

        With K objects of one frame, ``key_f16`` may be given once (object-major batch): the
        fusion then computes its part of the first convolutions once for all objects.
        """
        x = torch.cat([image, mask, others], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)
