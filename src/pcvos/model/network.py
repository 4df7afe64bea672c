"""The PCVOS network: encoders, memory read, intra-clip refinement, decoder, aggregation.

The network is a bag of stateless stages; the inference engine (``pcvos.inference``) owns the
memory and decides what runs when, and the training wrapper (``pcvos.train``) composes the same
stages differently. Module names follow the released checkpoints so they load without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pcvos.model.decoder import Decoder
from pcvos.model.encoders import ResNetKeyEncoder, ResNetValueEncoder
from pcvos.model.refine import IntraClipRefiner

if TYPE_CHECKING:  # imported when a light model is built (below)
    from pcvos.model.efficientnet import EfficientNetLiteKeyEncoder, EfficientNetLiteValueEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PCVOSConfig:
    """Architecture hyper-parameters. The defaults are the released PCVOS model's."""

    backbone: str = "resnet"  # "resnet": ResNet-50 keys / ResNet-18 values as released;
    # "efficientnet-lite0".."efficientnet-lite4": the light variant
    key_dim: int = 64  # matching key channels (C_k)
    value_dim: int = 512  # memory value channels (C_v)
    thin_dim: int = 512  # compressed key features given to the decoder
    decoder_widths: tuple[int, int, int] = (512, 256, 256)
    refine: bool = True  # intra-clip refinement modules present (False: STCN)
    local_key_dim: int = 256  # ICR key width
    refine_depth: int = 2
    refine_window: tuple[int, int, int] = (2, 7, 7)
    refine_mlp_ratio: float = 4.0
    refine_heads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_widths"] = list(self.decoder_widths)
        d["refine_window"] = list(self.refine_window)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PCVOSConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("decoder_widths", "refine_window"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


class KeyFeatures(NamedTuple):
    """Per-frame outputs of the key path (batch dimension = frames)."""

    key: torch.Tensor  # (B, C_k, h, w) matching key
    thin: torch.Tensor  # (B, thin_dim, h, w) for the decoder
    local: torch.Tensor | None  # (B, local_key_dim, h, w) ICR key, None without ICR
    f16: torch.Tensor  # (B, C16, h, w) for the value encoder
    f8: torch.Tensor
    f4: torch.Tensor


class _Proj(nn.Module):
    # a one-conv holder whose attribute name reproduces the released keys (key_proj.key_proj.*)
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


def aggregate(prob: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Soft aggregation: K object probabilities -> K+1 channels (background first) along ``dim``."""
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    p = torch.cat([bg, prob], dim=dim).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(p / (1 - p)), dim=dim)


class PCVOS(nn.Module):
    """PCVOS (with ICR) or STCN (``config.refine=False``)."""

    key_encoder: ResNetKeyEncoder | EfficientNetLiteKeyEncoder
    value_encoder: ResNetValueEncoder | EfficientNetLiteValueEncoder
    pixel_mean: torch.Tensor  # buffers (registered in __init__)
    pixel_std: torch.Tensor

    def __init__(self, config: PCVOSConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PCVOSConfig()
        if config.backbone == "resnet":
            self.key_encoder = ResNetKeyEncoder()
            c4, c8, c16 = self.key_encoder.channels
            self.value_encoder = ResNetValueEncoder(c16, config.value_dim)
        elif config.backbone.startswith("efficientnet-lite"):
            # light variant: EfficientNet-Lite key/value encoders (pcvos.model.efficientnet)
            from pcvos.model.efficientnet import LITE_VARIANTS, build_lite_encoders

            if config.backbone not in LITE_VARIANTS:
                raise ValueError(
                    f"unknown backbone {config.backbone!r}; available: 'resnet', "
                    + ", ".join(repr(v) for v in LITE_VARIANTS)
                )
            self.key_encoder, self.value_encoder = build_lite_encoders(config.backbone, config.value_dim)
            c4, c8, c16 = self.key_encoder.channels
        else:
            raise ValueError(
                f"unknown backbone {config.backbone!r}; available: 'resnet', 'efficientnet-lite0' … "
                "'efficientnet-lite4'"
            )
        self.key_proj = _Proj(c16, config.key_dim)
        self.key_comp = nn.Conv2d(c16, config.thin_dim, kernel_size=3, padding=1)
        if config.refine:
            self.input_proj = _Proj(c16, config.local_key_dim)
            self.refine_transformer = IntraClipRefiner(
                config.local_key_dim,
                config.value_dim,
                config.refine_depth,
                config.refine_window,
                config.refine_mlp_ratio,
                config.refine_heads,
            )
        self.decoder = Decoder(config.value_dim, config.thin_dim, c8, c4, config.decoder_widths)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_refiner(self) -> bool:
        return self.config.refine

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, H, W) -> ImageNet-normalised."""
        return (images - self.pixel_mean) / self.pixel_std

    def encode_key(self, images: torch.Tensor, with_local: bool = True) -> KeyFeatures:
        """Normalised images (B, 3, H, W), H and W multiples of 16 -> :class:`KeyFeatures`."""
        f16, f8, f4 = self.key_encoder(images)
        local = self.input_proj(f16) if (with_local and self.has_refiner) else None
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), local, f16, f8, f4)

    def encode_value(self, image: torch.Tensor, f16: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """One frame's memory values for each object (the key features are shared, not repeated).

        ``image`` (1, 3, H, W) normalised, ``f16`` (1, C16, h, w) its key features, ``probs`` (K, H, W)
        the objects' aggregated probabilities -> values (K, C_v, h, w).
        """
        k = probs.shape[0]
        masks = probs.unsqueeze(1)
        others = (probs.sum(0, keepdim=True) - probs).unsqueeze(1) if k > 1 else torch.zeros_like(masks)
        return self.value_encoder(image.expand(k, -1, -1, -1), f16, masks, others)

    def refine(self, local: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """ICR. ``local`` (L, C, h, w) clip keys; ``readout`` (K, L, C_v, h, w) -> refined, same shape."""
        x = local.permute(0, 2, 3, 1)
        v = readout.permute(0, 1, 3, 4, 2)
        return self.refine_transformer(x, v).permute(0, 1, 4, 2, 3)

    def decode(self, readout: torch.Tensor, feats: KeyFeatures) -> torch.Tensor:
        """Read-outs (K, L, C_v, h, w) + the clip's key features -> object logits (K, L, H, W)."""
        return self.decoder(readout, feats.thin, feats.f8, feats.f4)


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims up to multiples of ``multiple``, split evenly (extra at the end).

    Returns the padded tensor and the (left, right, top, bottom) padding.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph or pw:
        x = F.pad(x, pad)
    return x, pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]
