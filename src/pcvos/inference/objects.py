"""User object ids <-> tensor slots, in one place.

Slots are handed out in order of first appearance, so objects can enter at any frame and ids
need not be contiguous; outputs are reported by ascending id.
"""

from __future__ import annotations

import numpy as np
import torch


class ObjectRegistry:
    """Maps user object ids (1..255) to consecutive tensor slots."""

    def __init__(self) -> None:
        self._ids: list[int] = []  # slot -> id
        self._first_frame: list[int] = []  # slot -> frame where it was given

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[int]:
        """Ids in slot order."""
        return list(self._ids)

    def add(self, ids: list[int], frame_index: int) -> list[int]:
        """Register the ids not seen before; returns the slots of all ``ids``."""
        for i in ids:
            if not 1 <= i <= 255:
                raise ValueError(f"object id {i} out of range 1..255")
            if i not in self._ids:
                self._ids.append(i)
                self._first_frame.append(frame_index)
        return [self._ids.index(i) for i in ids]

    def slot(self, object_id: int) -> int:
        return self._ids.index(object_id)

    def first_frame(self, slot: int) -> int:
        return self._first_frame[slot]

    def groups(self) -> dict[int, list[int]]:
        """Slots grouped by the frame where they were given: objects of a group share one memory."""
        out: dict[int, list[int]] = {}
        for slot, frame in enumerate(self._first_frame):
            out.setdefault(frame, []).append(slot)
        return out

    def label_lut(self) -> np.ndarray:
        """(K+1,) uint8: channel (0 = background, 1 + slot) -> user id."""
        return np.array([0] + self._ids, dtype=np.uint8)

    def channel_lut(self) -> np.ndarray:
        """(256,) uint8: user id -> channel (1 + slot); 0 for background and unregistered ids."""
        lut = np.zeros(256, np.uint8)
        lut[self._ids] = np.arange(1, len(self._ids) + 1)
        return lut

    def labels(self, probs: torch.Tensor) -> torch.Tensor:
        """(K+1, ...) channel probabilities -> uint8 (...) label map with the user ids.

        Equal to ``lut[probs.argmax(0)]`` (the first channel wins a tie), but a running
        comparison over the few channels: on a CPU, ``argmax`` over a short leading dimension of a
        480p clip is ~20x slower than the K comparisons.
        """
        lut = self.label_lut()
        best = probs[0]
        out = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
        for c in range(1, probs.shape[0]):
            higher = probs[c] > best
            out.masked_fill_(higher, int(lut[c]))
            best = torch.maximum(best, probs[c]) if c + 1 < probs.shape[0] else best
        return out
