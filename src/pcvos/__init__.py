"""pcvos: Per-Clip Video Object Segmentation (PCVOS, CVPR 2022) and STCN in PyTorch.

The public API is small:

- :func:`load_model` builds the network and loads a checkpoint (released PCVOS / STCN layouts or
  the project's own format).
- :func:`segment` segments a whole video in one call.
- :class:`Segmenter` is the streaming form: masks in, frames in, labels out as each clip finishes.
- :class:`Session` is the interactive form: keyframes, propagation both ways, corrections.
- :func:`mask_from_prompts` turns a box, a few clicks or nothing (the salient object) into a first mask
  (:func:`prepare_prompts` runs its saliency network ahead, while a user aims).
- :func:`adapt` fine-tunes a copy of a model on one video's annotated frames (test-time adaptation).
"""

from __future__ import annotations

__version__ = "0.4.0"

from pcvos.inference.adapt import adapt
from pcvos.inference.api import Segmenter, segment
from pcvos.inference.prompts import mask_from_prompts, prepare_prompts
from pcvos.inference.session import Session
from pcvos.model.checkpoint import load_model, save_checkpoint
from pcvos.model.network import PCVOS, PCVOSConfig

__all__ = [
    "PCVOS",
    "PCVOSConfig",
    "load_model",
    "save_checkpoint",
    "segment",
    "Segmenter",
    "adapt",
    "Session",
    "mask_from_prompts",
    "prepare_prompts",
    "__version__",
]
