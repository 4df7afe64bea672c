#!/usr/bin/env python
"""Export a trained checkpoint as a shippable model: fp16 pcvos format plus a model card with its SHA-256.

    python scripts/export_model.py runs/lite/checkpoints/latest.pth src/pcvos/weights/pcvos_lite.pt \
        --card card.json

The card (``<out>.json``) records the checksum that ``pcvos.load_model()`` verifies, and whatever
``--card`` adds (training data, held-out sequences, measured accuracy and speed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pcvos
from pcvos.data.io_utils import atomic_write_text
from pcvos.model.checkpoint import sha256_of


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out", type=Path)
    p.add_argument("--card", type=Path, help="JSON with fields to record in the model card")
    p.add_argument(
        "--preferred-size",
        type=int,
        default=None,
        help="processing shorter side the model was trained for (pcvos segment's default)",
    )
    args = p.parse_args(argv)
    model = pcvos.load_model(args.checkpoint)
    if args.preferred_size:
        model.config.extra["preferred_size"] = args.preferred_size
    pcvos.save_checkpoint(model, args.out, half=True, metadata={"source": Path(args.checkpoint).name})
    again = pcvos.load_model(args.out)  # the fp16 file must load strictly
    card = json.loads(args.card.read_text()) if args.card else {}
    card.update(
        {
            "file": args.out.name,
            "sha256": sha256_of(args.out),
            "bytes": args.out.stat().st_size,
            "config": again.config.to_dict(),
        }
    )
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    print(f"{args.out}: {card['bytes'] / 2**20:.1f} MiB, sha256 {card['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
