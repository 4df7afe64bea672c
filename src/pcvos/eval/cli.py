"""``pcvos eval`` command line: ``pcvos eval davis --davis-root ROOT --results DIR``.

:func:`register` adds the ``eval`` sub-command (with its ``davis`` sub-sub-command) to an
``argparse`` sub-parser collection; the chosen handler is stored as ``args.func`` and returns
the process exit code (0 on success, 2 on bad input with a one-line message on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pcvos.cli_types import positive_int

__all__ = ["register", "main_eval", "main"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (with ``davis``) to ``subparsers`` (from ``parser.add_subparsers()``).

    Returns the ``eval`` parser. Both parsers set ``func`` so that the caller can dispatch
    with ``return args.func(args)``.
    """
    p_eval = subparsers.add_parser(
        "eval",
        help="evaluate segmentation results",
        description="Evaluate video object segmentation results.",
    )
    p_eval.set_defaults(func=main_eval, eval_command=None)
    sub = p_eval.add_subparsers(dest="eval_command", metavar="{davis}")
    p_davis = sub.add_parser(
        "davis",
        help="DAVIS 2016/2017 J&F (identical to the official davis2017-evaluation toolkit)",
        description=(
            "Semi-supervised DAVIS evaluation (J, F, J&F) with the official toolkit's "
            "definitions. Needs ROOT/Annotations/480p/<seq>/*.png and "
            "ROOT/ImageSets/<year>/<set>.txt; results are DIR/<seq>/<frame>.png. Writes "
            "global_results-<set>.csv, per-sequence_results-<set>.csv and metrics.json into DIR."
        ),
    )
    p_davis.add_argument(
        "--davis-root", required=True, metavar="ROOT", help="DAVIS folder with Annotations/480p and ImageSets"
    )
    p_davis.add_argument(
        "--results", required=True, metavar="DIR", help="folder with one sub-folder of PNG masks per sequence"
    )
    p_davis.add_argument(
        "--set", default="val", dest="subset", metavar="SET", help="sequence list to evaluate (default: val)"
    )
    p_davis.add_argument(
        "--year",
        default="auto",
        choices=["2016", "2017", "auto"],
        help="DAVIS edition: 2017 (multi-object), 2016 (single object) or "
        "auto (ImageSets/2017 if present, else 2016; default)",
    )
    p_davis.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="processes to use (default: all cores)",
    )
    p_davis.add_argument(
        "--exclude-void",
        action="store_true",
        help="ignore void (255) annotation pixels instead of counting them as "
        "background (the official toolkit counts them as background)",
    )
    p_davis.set_defaults(func=main_eval, eval_command="davis")
    return p_eval


def _err(msg: str) -> int:
    msg = " ".join(str(msg).split())  # keep it on one line
    print(f"pcvos eval: error: {msg}", file=sys.stderr)
    return 2


def main_eval(args: argparse.Namespace) -> int:
    """Run the ``eval`` command described by ``args``; returns the exit code."""
    command = getattr(args, "eval_command", None)
    if command != "davis":
        return _err("missing sub-command; use 'pcvos eval davis --davis-root ROOT --results DIR'")

    from pcvos.eval.davis_eval import evaluate_davis, format_tables

    year = None if args.year in (None, "auto") else args.year
    t0 = time.perf_counter()
    try:
        metrics = evaluate_davis(
            args.davis_root,
            args.results,
            subset=args.subset,
            year=year,
            workers=args.workers,
            exclude_void=bool(getattr(args, "exclude_void", False)),
        )
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _err(str(exc))
    elapsed = time.perf_counter() - t0
    print(format_tables(metrics, args.subset))
    print(f"\nTotal time: {elapsed:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m pcvos.eval.cli eval davis ...``."""
    parser = argparse.ArgumentParser(prog="pcvos")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
