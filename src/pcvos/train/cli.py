"""``pcvos train``: the command-line entry of the trainer.

``register(subparsers)`` adds the ``train`` sub-command to an argparse parser (the main ``pcvos``
CLI wires it in); ``python -m pcvos.train`` runs it stand-alone. Both work under
``torchrun --nproc_per_node N`` for distributed training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register", "add_arguments", "run", "main", "take_extra"]

_EPILOG = """\
examples:
  pcvos train --config configs/tiny.yaml
  pcvos train --config configs/lite.yaml train.iterations=2000 paths.davis=/data/davis2016-train
  pcvos train --config configs/paper_stage2_video.yaml init.checkpoint=runs/stage1/model_final.pth
  torchrun --nproc_per_node 4 -m pcvos.train --config configs/paper_stage2_video.yaml
  pcvos train --config runs/tiny/config.yaml --resume auto

Overrides are dotted keys with YAML values (data.crop=[64,64], val.every=0); see
pcvos.train.config.DEFAULTS for every key.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML config (path or a name in configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--output-dir", "-o", default=None, help="output folder (default: runs/<name>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from a checkpoint path, or (no value) from <output_dir>/checkpoints/latest.pth",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def take_extra(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Move KEY=VALUE tokens argparse left over into ``args.overrides``; return the rest.

    argparse takes a positional list only once, so overrides on both sides of an option
    (``c=1 -o run d=2``) would otherwise leave ``d=2`` unrecognised."""
    args.overrides = list(args.overrides or []) + [t for t in extra if _is_override(t)]
    return [t for t in extra if not _is_override(t)]


def run(args: argparse.Namespace) -> int:
    from pcvos.train.config import ConfigError, dump_config, load_config

    if args.resume and _is_override(args.resume) and not Path(args.resume).exists():
        # --resume takes an optional path, so it swallowed the override that followed it
        args.overrides = list(args.overrides or []) + [args.resume]
        args.resume = "auto"
    overrides = list(args.overrides or [])
    # paths go in as quoted strings (JSON is YAML): "-o 'run: 2'" must not become a mapping
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.resume:
        overrides.append(f"resume={json.dumps(args.resume)}")
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"pcvos train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from pcvos.model.checkpoint import CheckpointError
    from pcvos.train.trainer import run_training

    try:
        summary = run_training(cfg)
    except (CheckpointError, ConfigError, FileNotFoundError) as exc:  # a wrong init/resume file, data path,
        # or a setting only the run can check (no sources, CUDA asked for but absent, batch vs processes)
        print(f"pcvos train: {exc}", file=sys.stderr)
        return 2
    if summary.get("world_size", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        last = summary.get("last") or {}
        print(
            f"done: {summary['iterations']} iterations in {summary['seconds']:.0f} s; "
            f"last loss {last.get('total', float('nan')):.4f}; outputs in {cfg['output_dir']}"
        )
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to ``parser.add_subparsers()``; the handler is stored as ``func``."""
    p = subparsers.add_parser(
        "train",
        help="train PCVOS / STCN / the light variant",
        description="Static-image pre-training and per-clip video training.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run, take_extra=take_extra)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pcvos.train",
        description="Train PCVOS.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return run(p.parse_intermixed_args(argv))
