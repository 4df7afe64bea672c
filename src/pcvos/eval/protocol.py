"""The held-out protocol for models trained on the DAVIS 2016 train sequences.

The 30 sequences of DAVIS 2016 train are split once, by a seeded draw, into three parts:

- ``report``: 10 sequences whose numbers are reported (model card, docs/protocol.md). No choice of
  checkpoint, recipe or setting may look at them. Five of them (bear, car-turn, dance-jump,
  kite-walk, tennis) are the sequences the first pcvos-lite never trained on, so the old and new
  models can be compared on sequences unseen by both (``REPORT_UNSEEN_BY_V1``).
- ``select``: 5 sequences for every choice (checkpoint, recipe, adaptation steps).
- ``train``: the 15 others, the only sequences training may read.

The draw: ``numpy.random.default_rng(2026).permutation`` of the 25 sequences outside the first
five, the first 5 joining ``report``, the next 5 forming ``select``.
"""

from __future__ import annotations

REPORT_UNSEEN_BY_V1: tuple[str, ...] = ("bear", "car-turn", "dance-jump", "kite-walk", "tennis")

SPLITS: dict[str, tuple[str, ...]] = {
    "report": REPORT_UNSEEN_BY_V1 + ("bus", "hockey", "mallard-fly", "soccerball", "stroller"),
    "select": ("bmx-bumps", "lucia", "motorbike", "paragliding", "swing"),
    "train": (
        "boat",
        "breakdance-flare",
        "dog-agility",
        "drift-turn",
        "elephant",
        "flamingo",
        "hike",
        "horsejump-low",
        "mallard-water",
        "motocross-bumps",
        "rhino",
        "rollerblade",
        "scooter-gray",
        "surf",
        "train",
    ),
}


def split(name: str) -> list[str]:
    """The sequences of one split (``report``, ``select`` or ``train``)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    return list(SPLITS[name])
