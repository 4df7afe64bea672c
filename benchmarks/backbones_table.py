#!/usr/bin/env python
"""Backbone comparison table from ``benchmarks/heldout.py`` results, one row per run and a mean per backbone.

    python benchmarks/backbones_table.py runs/eval_bb_*_select runs/eval_bb_*_report

Each argument is an ``--out`` folder of ``heldout.py`` (its ``heldout.json``). Model names follow
``benchmarks/backbones_train.sh``: ``bb_<backbone>_s<seed>``, and ``bb_<backbone>_s<seed>_x<length>`` for a
recipe stretched LENGTH times, which is kept apart from the plain recipe (its rows read ``lite0 x2``).
The select split's column is the one a choice may be made on; the report split's columns are the
numbers to publish.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"bb_(?P<backbone>[a-z0-9]+)_s(?P<seed>\d+)(?:_x(?P<length>\d+))?$")


def _load(folders: list[Path]) -> dict[tuple[str, str], dict[str, float]]:
    """(recipe, seed) -> {"select L5": J&F, "report L5": ..., "report L25": ...} in percent.

    The recipe is the backbone, followed by `` x<length>`` for a stretched run."""
    runs: dict[tuple[str, str], dict[str, float]] = {}
    for folder in folders:
        split = "select" if folder.name.endswith("_select") else "report"
        results = folder / "heldout.json"
        if not results.is_file():
            raise ValueError(f"{results}: not found (has heldout.py --out {folder} finished?)")
        for row in json.loads(results.read_text()):
            m = NAME.match(row["model"])
            if m is None:
                raise ValueError(
                    f"{results}: model name {row['model']!r} is not bb_<backbone>_s<seed>[_x<length>]"
                )
            recipe = m["backbone"] + (f" x{m['length']}" if m["length"] else "")
            runs.setdefault((recipe, m["seed"]), {})[f"{split} L{row['L']}"] = 100 * row["J&F"]
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=Path, nargs="+")
    args = p.parse_args(argv)
    try:
        runs = _load(args.folders)
    except ValueError as exc:
        print(f"backbones_table: error: {exc}", file=sys.stderr)
        return 2
    columns = sorted(
        {c for r in runs.values() for c in r}, key=lambda c: (not c.startswith("select"), len(c), c)
    )
    lines = ["| recipe | seed | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]

    def cell(values: list[float]) -> str:
        return f"{statistics.fmean(values):.1f}" if values else ""

    for (recipe, seed), r in sorted(runs.items()):
        lines.append(
            f"| {recipe} | {seed} | " + " | ".join(cell([r[c]] if c in r else []) for c in columns) + " |"
        )
    for recipe in sorted({name for name, _ in runs}):
        seeds = [r for (name, _), r in runs.items() if name == recipe]
        lines.append(
            f"| **{recipe}** | mean of {len(seeds)} | "
            + " | ".join(cell([r[c] for r in seeds if c in r]) for c in columns)
            + " |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
