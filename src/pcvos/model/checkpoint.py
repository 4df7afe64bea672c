"""Checkpoint loading and saving.

Three layouts are recognised:

- the released PCVOS checkpoint (a plain state_dict, ICR keys under ``input_proj.*`` and
  ``refine_transformer.*``);
- the released STCN checkpoint (the same without those keys);
- the project's own format, ``{"format": "pcvos", "version": 1, "config": {...}, "state_dict": {...}}``,
  which records the architecture so that non-default models load without extra arguments.

Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pcvos.model.network import PCVOS, PCVOSConfig

FORMAT_NAME = "pcvos"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model", "network", "net")
_COMPUTED_BUFFERS = ("relative_position_index",)
_RELEASED_HINT = (
    "The released checkpoints are not downloaded by pcvos: get saves/pcvos_*.pth from the PCVOS authors' "
    "release (github.com/pkyong95/PCVOS) or stcn.pth from STCN's (github.com/hkchengrex/STCN) "
    "and pass its path "
    "(load_model(PATH), or --weights PATH on the command line)."
)

Source = str | os.PathLike | Mapping[str, Any] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the network."""


_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_MODEL = "pcvos_lite"


def default_weights_path() -> Path | None:
    """The model shipped inside the package, if this installation has one."""
    path = _WEIGHTS_DIR / f"{DEFAULT_MODEL}.pt"
    return path if path.is_file() else None


def default_model_card() -> dict[str, Any]:
    """What the shipped model is: checksum, training data, measured accuracy (``weights/*.json``)."""
    card = _WEIGHTS_DIR / f"{DEFAULT_MODEL}.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified_default() -> Path:
    path = default_weights_path()
    if path is None:
        raise FileNotFoundError(
            "no weights given and this pcvos installation ships no default model. " + _RELEASED_HINT
        )
    expected = default_model_card().get("sha256")
    if expected and sha256_of(path) != expected:
        raise CheckpointError(
            f"{path}: the shipped weights do not match their checksum (damaged install?); reinstall pcvos"
        )
    return path


# torch.save writes a zip archive; older files (and plain pickles) start with the PROTO opcode
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def read_checkpoint(source: str | os.PathLike) -> Any:
    """The raw contents of a checkpoint file, read safely (tensors and plain values only).

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` (naming the
    file) for a folder, a file of another kind, a truncated one or one that holds code.
    """
    path = Path(source)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file; pass the .pth/.pt file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    with path.open("rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a "
            "pickle); is it the right file, or truncated?"
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text suggests weights_only=False, i.e. running the file's code: not advice to pass on
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint that can be loaded safely (it holds Python "
            "objects other than tensors and plain values, which pcvos never unpickles)"
        ) from exc
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint that can be loaded safely ({first})"
        ) from exc


# Sane bounds for a stored architecture: the released models use widths up to 512 and two ICR
# blocks; far larger values come from a damaged or hostile file and would exhaust memory when built.
MAX_WIDTH = 4096
MAX_REFINE_DEPTH = 32
MAX_REFINE_WINDOW = 64
MAX_REFINE_HEADS = 64
MAX_MLP_RATIO = 16.0
_WIDTH_KEYS = ("key_dim", "value_dim", "thin_dim", "local_key_dim")


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def validate_config(cfg: PCVOSConfig, where: str = "checkpoint") -> PCVOSConfig:
    """Check a stored architecture against sane bounds before anything is built from it."""
    problems = [f"{k}={getattr(cfg, k)!r}" for k in _WIDTH_KEYS if not _whole(getattr(cfg, k), 1, MAX_WIDTH)]
    widths = cfg.decoder_widths
    if not (isinstance(widths, tuple) and len(widths) == 3 and all(_whole(v, 1, MAX_WIDTH) for v in widths)):
        problems.append(f"decoder_widths={widths!r}")
    window = cfg.refine_window
    if not (
        isinstance(window, tuple)
        and len(window) == 3
        and all(_whole(v, 1, MAX_REFINE_WINDOW) for v in window)
    ):
        problems.append(f"refine_window={window!r}")
    if not _whole(cfg.refine_depth, 0, MAX_REFINE_DEPTH):
        problems.append(f"refine_depth={cfg.refine_depth!r}")
    if not _whole(cfg.refine_heads, 1, MAX_REFINE_HEADS):
        problems.append(f"refine_heads={cfg.refine_heads!r}")
    ratio = cfg.refine_mlp_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= MAX_MLP_RATIO:
        problems.append(f"refine_mlp_ratio={ratio!r}")
    if not isinstance(cfg.refine, bool):
        problems.append(f"refine={cfg.refine!r}")
    if not isinstance(cfg.backbone, str):
        problems.append(f"backbone={cfg.backbone!r}")
    if not isinstance(cfg.extra, dict):
        problems.append(f"extra={type(cfg.extra).__name__}")
    if problems:
        raise CheckpointError(
            f"{where}: the stored model configuration is out of bounds ({', '.join(problems)}; "
            f"widths 1..{MAX_WIDTH}, refine_depth 0..{MAX_REFINE_DEPTH}, window sides "
            f"1..{MAX_REFINE_WINDOW}); the file is damaged or not a pcvos model"
        )
    return cfg


def _stored_config(obj: Mapping[str, Any], where: str) -> PCVOSConfig:
    raw = obj.get("config")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: pcvos checkpoint without a model configuration (damaged file?)")
    try:
        cfg = PCVOSConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed model configuration ({exc})") from exc
    return validate_config(cfg, where)


def _unwrap(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], PCVOSConfig | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: pcvos checkpoint version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{where}: pcvos checkpoint without a state_dict (damaged file?)")
        bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(
                f"{where}: state_dict entries that are not tensors: {sorted(bad)[:5]} (damaged file?)"
            )
        return {str(k): v for k, v in state.items()}, _stored_config(obj, where)
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], where)
        raise CheckpointError(f"{where}: no tensors found; top-level keys: {sorted(map(str, obj))[:10]}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, None


def infer_config(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> PCVOSConfig:
    """Tell the released PCVOS layout from STCN's and read the widths off the tensors."""
    needed = ("key_encoder.conv1.weight", "key_proj.key_proj.weight", "decoder.pred.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        sample = sorted(state)[:8]
        raise CheckpointError(
            f"{where}: unknown checkpoint layout: missing {absent} (first keys found: {sample}). "
            "Expected a released PCVOS or STCN state_dict, or a checkpoint saved by pcvos."
        )
    refine = any(k.startswith("refine_transformer.") or k.startswith("input_proj.") for k in state)
    cfg = PCVOSConfig(refine=refine)
    cfg.key_dim = int(state["key_proj.key_proj.weight"].shape[0])
    if "key_comp.weight" in state:
        cfg.thin_dim = int(state["key_comp.weight"].shape[0])
    if refine and "input_proj.key_proj.weight" in state:
        cfg.local_key_dim = int(state["input_proj.key_proj.weight"].shape[0])
        depth = {k.split(".")[4] for k in state if k.startswith("refine_transformer.layers.0.blocks.")}
        cfg.refine_depth = len(depth)
    return cfg


def _load_state(model: PCVOS, state: Mapping[str, torch.Tensor], where: str) -> None:
    state = {k: v for k, v in state.items() if not k.endswith(_COMPUTED_BUFFERS)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            more = f" … and {len(keys) - 12} more" if len(keys) > 12 else ""
            return ", ".join(keys[:12]) + more

        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatch: "
                + show([f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong])
            )
        raise CheckpointError(f"{where}: checkpoint does not fit the network; " + "; ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_model(
    source: Source = None, *, device: str | torch.device | None = None, config: PCVOSConfig | None = None
) -> PCVOS:
    """Build the network and load weights into it (in eval mode).

    ``source`` is a checkpoint path or an in-memory state_dict in any recognised layout; ``None``
    loads the model shipped with pcvos (checked against its recorded SHA-256). ``config`` overrides the
    architecture read from the checkpoint. Loading is strict: any missing, unexpected or misshapen
    key raises :class:`CheckpointError` listing them.
    """
    if source is None:
        source = _verified_default()
    where = str(source) if not isinstance(source, Mapping) else "state_dict"
    raw = source if isinstance(source, Mapping) else read_checkpoint(source)
    state, stored_config = _unwrap(raw, where)
    cfg = config or stored_config or infer_config(state, where)
    try:
        model = PCVOS(cfg)
    except (TypeError, ValueError, KeyError) as exc:  # e.g. an unknown backbone name
        raise CheckpointError(f"{where}: cannot build the model it describes ({exc})") from exc
    _load_state(model, state, where)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def save_checkpoint(
    model: PCVOS,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    half: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model`` in the project's format (config + weights), written atomically.

    ``half`` stores floating-point tensors as float16 (they load back as float32). ``extra``
    adds top-level entries (the trainer's optimizer and RNG states); they must be what
    ``torch.load(weights_only=True)`` can read back.
    """
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
    }
    if metadata:
        payload["metadata"] = dict(metadata)
    payload.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
