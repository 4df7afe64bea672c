"""Training configuration: YAML files with inheritance, ``key=value`` overrides and ``${...}`` references.

A config file is a mapping merged over :data:`DEFAULTS`. ``base: other.yaml`` (relative to the
file) inherits another file first. Overrides use dotted keys with YAML values
(``train.iterations=20``, ``data.crop=[64,64]``, ``val.every=0``); list items are addressed by
index (``data.sources.0.root=/data/davis``). String values may reference other keys as
``${paths.davis}``. Unknown keys are errors (typos must not pass silently), except under
``model`` (checked against :class:`pcvos.PCVOSConfig`) and ``paths`` (free-form); each entry of
``data.sources`` is checked against the keys its ``type`` reads (:data:`SOURCE_KEYS`). Values
must be of their default's kind (a whole number, a number, true/false, a string, a list), so a typo
is a :class:`ConfigError` when the config is read, not a traceback once training has started.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "SOURCE_KEYS",
    "STATIC_SOURCES",
    "check_sources",
    "load_config",
    "apply_overrides",
    "resolve_config_path",
    "dump_config",
    "ConfigError",
]


class ConfigError(ValueError):
    pass


DEFAULTS: dict[str, Any] = {
    "name": "pcvos",
    "output_dir": None,  # default: runs/<name>
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "threads": None,  # torch intra-op threads (None: torch's default)
    "resume": None,  # checkpoint path, or "auto" for <output_dir>/checkpoints/latest.pth if present
    "paths": {},  # free-form, for ${paths.x} references
    "model": {},  # PCVOSConfig fields; empty: the released PCVOS (or init.checkpoint's architecture)
    "init": {
        "imagenet": None,  # ResNet: torchvision ResNet-50/-18 state_dict path(s); Lite: path or "package"
        "checkpoint": None,  # a released PCVOS/STCN checkpoint or one of ours
        "strict": False,  # require every key of init.checkpoint to fit
    },
    "data": {
        "mode": "per_clip",  # per_clip | frame_wise | static
        "clip_len": 3,  # N: frames per clip (per_clip)
        "num_clips": 2,
        "static_frames": 3,
        "crop": [384, 384],
        "resize_short": None,  # resize source frames so the shorter side is this before cropping
        "max_objects": 3,
        "max_skip": 5,  # max step between frames inside a clip
        "gap_schedule": [[0.0, 5], [0.1, 8], [0.2, 10], [0.3, 12], [0.4, 15], [0.9, 5]],
        "min_pixels": 20,
        "composite_prob": 0.0,  # paste an object from another sample (multi-object from single-object data)
        "reverse_prob": 0.0,
        "zoom_range": [1.0, 1.0],  # video: zoom from 1 to z in this range across a sample (scale change)
        "motion_blur_prob": 0.0,  # video: chance of a motion blur per frame
        "motion_blur_max": 9,  # video: longest motion blur, pixels
        "thin_crop_prob": 0.0,  # video and static: chance of a crop placed on the objects' thin parts
        "num_workers": 4,
        "sources": [],
    },
    "train": {
        "iterations": 150000,
        "batch_size": 8,  # global batch (split across processes)
        "lr": 1.0e-5,
        "weight_decay": 1.0e-7,
        "lr_steps": [125000],
        "lr_gamma": 0.1,
        "amp": True,  # CUDA only
        "grad_clip": None,
        "use_refine": True,  # apply ICR in training when the model has it
        "detach_memory_mask": False,
        "freeze_bn": True,
        "log_every": 50,
        "image_every": 1000,
        "save_every": 5000,
        "keep_checkpoints": 3,
        "stop_at": None,  # stop this invocation at this iteration (checkpointed; continue with resume=auto)
        # write this iteration's gradients, as the optimiser sees them (averaged over the processes,
        # before clipping) to <output_dir>/grads_iter_<n>.pt; 0: off. For checking DDP against one process.
        "dump_grads": 0,
        "progress": True,
        "tensorboard": True,
    },
    "loss": {
        "start_warm": 20000,
        "end_warm": 70000,
        "top_p": 0.15,
        "image_weight": 1.0,
        "clip_weight": 1.0,
        "dice_smooth": 1.0,
        "boundary_weight": 0.0,  # CE weight 1 + w near ground-truth edges (0: off)
        "boundary_radius": 3,  # pixels on either side of an edge that get it
    },
    "val": {
        "root": None,  # a DAVIS-layout folder
        "subset": "val",
        "year": None,
        "sequences": None,  # default: the subset's list
        "every": 0,  # iterations between validations (0: off)
        "size": None,  # shorter side for inference (None: native)
        "clip_length": 5,
        "top_k": 20,
    },
}

# The keys each data.sources type reads (pcvos.train.trainer.build_dataset): a key outside its set
# would be ignored, e.g. ``sequence:`` for ``sequences:`` training on every sequence without a word.
_ANY_SOURCE = ("type", "repeat", "composite_prob", "resize_short")
SOURCE_KEYS: dict[str, frozenset[str]] = {
    kind: frozenset(_ANY_SOURCE + keys)
    for kind, keys in {
        "davis": ("root", "subset", "year", "sequences", "exclude"),
        "youtube": ("root", "videos", "exclude"),
        "synthetic": ("num_videos", "num_frames", "size", "max_objects", "seed"),
        "static": ("root", "max_objects"),
        "davis_frames": ("root", "subset", "year", "sequences", "exclude", "every", "max_objects"),
        "synthetic_static": ("num_images", "size", "seed", "max_objects"),
    }.items()
}

_FREE = {("paths",), ("model",)}

# What a value must be, for the keys whose default (None) does not say; every other key must be of
# its default's kind. Without the check a typo such as train.iterations=2k reached the trainer's
# int() and ended in a traceback after the run had started.
_NONE_KINDS: dict[tuple[str, ...], str] = {
    ("output_dir",): "str",
    ("threads",): "int",
    ("resume",): "str",
    ("init", "imagenet"): "any",
    ("init", "checkpoint"): "str",
    ("data", "resize_short"): "int",
    ("train", "grad_clip"): "float",
    ("train", "stop_at"): "int",
    ("val", "root"): "str",
    ("val", "year"): "any",
    ("val", "sequences"): "list",
    ("val", "size"): "int",
}
# whole numbers that must be at least 1 (the rest must be at least 0; 0 turns an "every" off)
_POSITIVE = {
    ("threads",),
    ("train", "iterations"),
    ("train", "batch_size"),
    ("train", "log_every"),
    ("data", "clip_len"),
    ("data", "num_clips"),
    ("data", "static_frames"),
    ("data", "max_objects"),
    ("val", "clip_length"),
    ("val", "top_k"),
    ("val", "size"),
    ("data", "resize_short"),
    ("loss", "boundary_radius"),
}
# numbers with a range (low, high; None: unbounded), checked once they are numbers
_RANGES: dict[tuple[str, ...], tuple[float, float | None]] = {
    ("data", "thin_crop_prob"): (0.0, 1.0),
    ("loss", "boundary_weight"): (0.0, None),
}
_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
}
_REF = re.compile(r"\$\{([^}]+)\}")


def resolve_config_path(name: str | Path) -> Path:
    """A config path, or a bare name looked up in ./configs and the repository's configs/."""
    p = Path(name)
    if p.is_file():
        return p
    stem = p.name if p.suffix else p.name + ".yaml"
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"):
        if (base / stem).is_file():
            return base / stem
    raise FileNotFoundError(f"config {name!r} not found (also looked for configs/{stem})")


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        path = f"{where}.{k}" if where else str(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, path)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # YAML errors span several lines; the message is one


def _read_file(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loop at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    base = data.pop("base", None)
    if base:
        parent = _read_file(
            resolve_config_path(path.parent / base)
            if (path.parent / base).is_file()
            else resolve_config_path(base),
            seen + (path,),
        )
        data = _merge(parent, data)
    return data


def _check(cfg: dict, ref: dict, where: tuple = ()) -> None:
    for k, v in cfg.items():
        here = where + (k,)
        if here in _FREE:
            continue
        if k not in ref:
            raise ConfigError(f"unknown config key {'.'.join(here)!r}")
        if isinstance(ref[k], dict) and ref[k] and isinstance(v, dict):
            _check(v, ref[k], here)


#: The source types that give still images (data.mode=static); the others give videos.
STATIC_SOURCES = frozenset({"static", "davis_frames", "synthetic_static"})


def check_sources(sources: Any, mode: str) -> None:
    """Raise ConfigError unless ``sources`` is a list of known sources, each with its type's keys
    and fit for ``mode``."""
    if not isinstance(sources, list):
        raise ConfigError(f"data.sources must be a list of sources, got {type(sources).__name__}")
    for i, src in enumerate(sources):
        if not isinstance(src, dict):
            raise ConfigError(f"data.sources.{i} must be a mapping with a 'type', got {src!r}")
        kind = src.get("type")
        if kind not in SOURCE_KEYS:
            raise ConfigError(
                f"data.sources.{i}: unknown source type {kind!r} (one of {', '.join(SOURCE_KEYS)})"
            )
        unknown = sorted(set(src) - SOURCE_KEYS[kind])
        if unknown:
            raise ConfigError(
                f"data.sources.{i}: unknown key(s) {', '.join(map(repr, unknown))} for a {kind} "
                f"source (it reads {', '.join(sorted(SOURCE_KEYS[kind]))})"
            )
        if (kind in STATIC_SOURCES) != (mode == "static"):
            raise ConfigError(
                f"data.sources.{i}: a {kind} source "
                + (
                    "gives still images; it needs data.mode=static"
                    if kind in STATIC_SOURCES
                    else f"gives videos; data.mode=static needs {', '.join(sorted(STATIC_SOURCES))} sources"
                )
            )


def _kind_of(default: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list)):
        if isinstance(default, types):
            return kind
    return "any"


def _coerce(kind: str, value: Any, key: str) -> Any:
    """``value`` as ``kind``, or a ConfigError naming ``key``."""
    if value is None or kind == "any":
        return value
    ok: Any = None
    if kind == "bool" and isinstance(value, bool):
        ok = value
    elif kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        ok = value
    elif kind == "float" and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            ok = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                ok = float(value)
            except ValueError:
                pass
    elif kind == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        ok = str(value)  # name=2026 is a name, not a number
    elif kind == "list" and isinstance(value, list):
        ok = value
    if ok is None:
        raise ConfigError(f"{key} must be {_WORDS[kind]}, got {value!r}")
    if kind == "int":
        least = 1 if tuple(key.split(".")) in _POSITIVE else 0
        if ok < least:
            raise ConfigError(f"{key} must be at least {least}, got {ok}")
    return ok


def _check_values(cfg: dict, ref: dict, where: tuple = ()) -> None:
    for k, default in ref.items():
        here = where + (k,)
        if here in _FREE or k not in cfg:
            continue
        if isinstance(default, dict) and default:
            if not isinstance(cfg[k], dict):
                raise ConfigError(f"{'.'.join(here)} must be a mapping, got {cfg[k]!r}")
            _check_values(cfg[k], default, here)
            continue
        kind = _NONE_KINDS.get(here, "any") if default is None else _kind_of(default)
        cfg[k] = _coerce(kind, cfg[k], ".".join(here))


def _check_ranges(cfg: dict) -> None:
    for path, (lo, hi) in _RANGES.items():
        value = _lookup(cfg, ".".join(path))
        if not (lo <= value and (hi is None or value <= hi)):  # NaN fails too
            want = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise ConfigError(f"{'.'.join(path)} must be {want}, got {value!r}")


def _check_lists(cfg: dict) -> None:
    def numbers(key: str, value: Any, length: int | None, whole: bool) -> None:
        kinds = "whole numbers" if whole else "numbers"
        good = all(isinstance(x, int) if whole else isinstance(x, (int, float)) for x in value) and not any(
            isinstance(x, bool) for x in value
        )
        if not good or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else ""
            raise ConfigError(f"{key} must be a list of {size}{kinds}, got {value!r}")

    d, t = cfg["data"], cfg["train"]
    numbers("data.crop", d["crop"], 2, True)
    if min(d["crop"]) < 1:
        raise ConfigError(f"data.crop must be positive, got {d['crop']!r}")
    numbers("data.zoom_range", d["zoom_range"], 2, False)
    numbers("train.lr_steps", t["lr_steps"], None, True)
    for i, step in enumerate(d["gap_schedule"]):
        if not isinstance(step, list):
            raise ConfigError(f"data.gap_schedule.{i} must be [progress, gap], got {step!r}")
        numbers(f"data.gap_schedule.{i}", step, 2, False)


def _set(cfg: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = cfg
    for p in parts[:-1]:
        if isinstance(node, list):
            node = node[int(p)]
        else:
            if p not in node or node[p] is None:
                node[p] = {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({_one_line(exc)}); "
                "quote the whole override in the shell"
            ) from None
        try:
            _set(cfg, key.strip(), value)
        except (IndexError, ValueError, TypeError):
            raise ConfigError(
                f"override {item!r}: {key.strip()!r} does not address a key of the config"
            ) from None
    return cfg


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node


def _interpolate(node: Any, root: dict, depth: int = 0) -> Any:
    if depth > 10:
        raise ConfigError("too deeply nested ${...} references")
    if isinstance(node, dict):
        return {k: _interpolate(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, root, depth) for v in node]
    if isinstance(node, str) and "${" in node:
        m = _REF.fullmatch(node)
        try:
            if m:  # a whole-value reference keeps the referenced type
                return _interpolate(_lookup(root, m.group(1)), root, depth + 1)
            return _REF.sub(lambda mm: str(_interpolate(_lookup(root, mm.group(1)), root, depth + 1)), node)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"cannot resolve {node!r}: {exc}") from None
    return node


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS <- the file (and its bases) <- overrides, references resolved, keys checked."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, _read_file(resolve_config_path(path)))
    cfg = apply_overrides(cfg, overrides)
    _check(cfg, DEFAULTS)
    cfg = _interpolate(cfg, cfg)
    _check_values(cfg, DEFAULTS)  # after interpolation: a ${...} reference resolves to its value's type
    _check_lists(cfg)
    _check_ranges(cfg)
    if cfg["output_dir"] is None:
        cfg["output_dir"] = str(Path("runs") / str(cfg["name"]))
    if cfg["data"]["mode"] not in ("per_clip", "frame_wise", "static"):
        raise ConfigError(f"data.mode must be per_clip, frame_wise or static, got {cfg['data']['mode']!r}")
    if cfg["train"]["dump_grads"] > cfg["train"]["iterations"]:
        raise ConfigError(
            f"train.dump_grads={cfg['train']['dump_grads']} is past train.iterations="
            f"{cfg['train']['iterations']}: no gradients would be written"
        )
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    check_sources(cfg["data"]["sources"], cfg["data"]["mode"])
    from pcvos.model.network import PCVOSConfig

    try:
        PCVOSConfig.from_dict(cfg["model"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from None
    return cfg


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
