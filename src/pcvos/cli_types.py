"""Argument types shared by the ``pcvos`` sub-commands."""

from __future__ import annotations

import argparse
from typing import Any, Literal


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (0 usually means 'off')."""
    return _int_at_least(text, 0, "non-negative")


def processing_size(text: str) -> int | str | None:
    """argparse type for ``--size``: a shorter side in pixels (>= 16), 'native' (None) or 'auto'."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("native", "none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel count, 'native' or 'auto', got {text!r}"
        ) from None
    if value < 16:
        raise argparse.ArgumentTypeError("the processing size must be at least 16 pixels")
    return value


def resolve_size(size: int | Literal["auto"] | None, model: Any, otherwise: int | None) -> int | None:
    """'auto' -> the size the model was trained for (its card's ``preferred_size``), else ``otherwise``."""
    if size != "auto":
        return size
    preferred = model.config.extra.get("preferred_size")
    return int(preferred) if preferred else otherwise


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` as every inference command takes it."""
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="network precision: fp32 (default, exact), bf16 (about 2x faster on CPUs with bf16 "
        "instructions and on GPUs, slightly less accurate), fp16 (CUDA only)",
    )


def add_adapt_arguments(parser: argparse.ArgumentParser, *, where: str = "", hint: str = "") -> None:
    """``--adapt [N]`` and ``--adapt-seed S`` as every inference command takes them.

    ``where`` says which frames the synthesised clips come from; ``hint`` is appended to
    ``--adapt``'s help (e.g. where to put an option whose number is optional).
    """
    # the default step count lives with the adaptation code; imported here, not at module level,
    # so that building a parser stays free of torch until a command needs it
    from pcvos.inference.adapt import DEFAULT_STEPS

    parser.add_argument(
        "--adapt",
        type=non_negative_int,
        nargs="?",
        const=DEFAULT_STEPS,
        default=0,
        metavar="N",
        help="test-time adaptation: first fine-tune a copy of the model for N steps on clips "
        f"synthesised from {where or 'the annotated frames'} (N omitted: {DEFAULT_STEPS}; 0: off). "
        f"Costs seconds per step; when it pays: docs/keyframes-adaptation.md{hint}",
    )
    parser.add_argument(
        "--adapt-seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help="seed of the synthesised clips (the same seed gives the same adapted model)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads`` as every inference command takes it (applied with :func:`apply_threads`)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads for the network (default: PyTorch's choice, one per core). When other "
        "work shares the CPU, fewer threads than cores is often much faster",
    )


def apply_threads(threads: int | None) -> None:
    """Set PyTorch's intra-op thread count for this process (None: leave PyTorch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def resolve_device(name: str | None) -> Any:
    """The ``torch.device`` for a ``--device`` value: cpu, cuda, cuda:N, or auto/None (CUDA when present).

    Raises ValueError, with a message naming the option, for a malformed name or CUDA on a machine without it.
    """
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name (use cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device
