"""A small click-conditioned segmentation network (RITM / MiVOS-S2M style) for interactive masks.

Input: an RGB crop around the object (ImageNet-normalised), the previous mask on that crop and the
positive and negative clicks drawn as disks; output: the object's mask logits at the crop's
resolution. The encoder is EfficientNet-Lite0 cut at stride 16 (:class:`~pcvos.model.efficientnet.
EfficientNetLiteKeyEncoder`, ImageNet-initialised); the three guidance maps enter through a
zero-initialised convolution added to the stem's convolution, so training starts from the ImageNet
operating point (RITM's "Conv1S"). A light decoder with skip connections from strides 8, 4 and 2
(where the guidance maps join again, so corrections stay sharp) produces logits at stride 2,
bilinearly upsampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcvos.model.efficientnet import BN_EPS, BN_MOMENTUM, EfficientNetLiteKeyEncoder

__all__ = ["ClickNet", "GUIDANCE_CHANNELS"]

#: previous mask, positive clicks, negative clicks
GUIDANCE_CHANNELS = 3


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    """Upsample x2, concatenate the skip (and guidance), two 3x3 convs... one, for speed."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.skip = _conv_bn(cskip, cout, 1)
        self.fuse = _conv_bn(cin + cout, cout, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, self.skip(skip)], dim=1))


class ClickNet(nn.Module):
    """``net(image, guidance)`` -> (B, 1, H, W) mask logits.

    ``image`` (B, 3, H, W) ImageNet-normalised RGB, ``guidance`` (B, 3, H, W): previous mask
    (0/1), positive-click disks, negative-click disks. H and W should be multiples of 16.
    """

    def __init__(self, variant: str = "efficientnet-lite0", width: int = 64) -> None:
        super().__init__()
        self.variant = variant
        self.encoder = EfficientNetLiteKeyEncoder(variant)
        stem_out = self.encoder.trunk.stem.out_channels
        self.guide_stem = nn.Conv2d(GUIDANCE_CHANNELS, stem_out, 3, stride=2, padding=1, bias=False)
        nn.init.zeros_(self.guide_stem.weight)
        c4, c8, c16 = self.encoder.channels
        self.head16 = _conv_bn(c16, width * 2, 1)
        self.up8 = _Up(width * 2, c8, width)
        self.up4 = _Up(width, c4, width // 2)
        # stride 2: the stem's features plus the guidance maps at that scale
        self.up2 = _Up(width // 2, stem_out + GUIDANCE_CHANNELS, width // 2)
        self.out = nn.Conv2d(width // 2, 1, 3, padding=1)

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        trunk = enc.trunk
        x = image * enc.in_scale + enc.in_bias
        x = F.relu6(trunk.stem_bn(trunk.stem(x) + self.guide_stem(guidance)))
        f2 = x
        feats = {}
        for i, blk in enumerate(trunk.blocks):
            x = blk(x)
            for s, j in trunk.taps.items():
                if i == j:
                    feats[s] = x
        g2 = F.avg_pool2d(guidance, 2)
        h = self.head16(x)
        h = self.up8(h, feats[2])
        h = self.up4(h, feats[1])
        h = self.up2(h, torch.cat([f2, g2], dim=1))
        logits = self.out(h)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
