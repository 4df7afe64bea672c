"""The permanent memory of one video: keys shared by all objects, values per object slot."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pcvos.model.memory import MemoryBlock, read_memory


@dataclass
class _FrameEntry:
    index: int
    rows: int
    annotated: bool


class MemoryStore:
    """Grows along the memory axis without re-concatenating on every update.

    Keys live in one (capacity, C_k) buffer, values in one (capacity, slots * C_v) buffer; both
    double when full. Objects given at a later frame have no values in earlier memory frames and
    read only the memory added from their first frame on. ``max_frames`` caps the number of memory
    frames: annotated frames are always kept, the oldest other frame is dropped first.
    """

    def __init__(self, key_dim: int, value_dim: int, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_memory_frames must be at least 1")
        self.key_dim, self.value_dim, self.max_frames = key_dim, value_dim, max_frames
        self.frames: list[_FrameEntry] = []
        self._keys: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        self._vals: torch.Tensor | None = None
        self._rows = 0
        self._slots = 0

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def rows(self) -> int:
        return self._rows

    def _grow(self, rows: int, slots: int, like: torch.Tensor) -> None:
        cap = 0 if self._keys is None else self._keys.shape[0]
        if self._keys is not None and rows <= cap and slots <= self._slots:
            return
        new_cap = max(rows, 2 * cap)
        keys = like.new_zeros(new_cap, self.key_dim)
        sq = like.new_zeros(new_cap)
        vals = like.new_zeros(new_cap, max(slots, self._slots) * self.value_dim)
        if self._keys is not None and self._rows:
            keys[: self._rows] = self._keys[: self._rows]
            sq[: self._rows] = self._sq[: self._rows]
            vals[: self._rows, : self._slots * self.value_dim] = self._vals[: self._rows]
        self._keys, self._sq, self._vals = keys, sq, vals
        self._slots = max(slots, self._slots)

    def add(self, frame_index: int, keys: torch.Tensor, values: torch.Tensor, annotated: bool = False) -> None:
        """Add one frame: ``keys`` (HW, C_k), ``values`` (HW, S * C_v) for its first S slots."""
        rows = keys.shape[0]
        slots = values.shape[1] // self.value_dim
        self._grow(self._rows + rows, slots, keys)
        r0 = self._rows
        self._keys[r0:r0 + rows] = keys
        self._sq[r0:r0 + rows] = keys.pow(2).sum(-1)
        self._vals[r0:r0 + rows, : values.shape[1]] = values
        self._vals[r0:r0 + rows, values.shape[1]:] = 0
        self._rows += rows
        self.frames.append(_FrameEntry(frame_index, rows, annotated))
        if self.max_frames is not None and len(self.frames) > self.max_frames:
            self._drop_oldest_unannotated()

    def _drop_oldest_unannotated(self) -> None:
        offset = 0
        for pos, entry in enumerate(self.frames):
            if not entry.annotated:
                a, b = offset, offset + entry.rows
                n = self._rows
                # shift the rows after the dropped frame down (in place, small next to compute)
                self._keys[a:n - entry.rows] = self._keys[b:n].clone()
                self._sq[a:n - entry.rows] = self._sq[b:n].clone()
                self._vals[a:n - entry.rows] = self._vals[b:n].clone()
                self._rows -= entry.rows
                del self.frames[pos]
                return
            offset += entry.rows

    def row_offset(self, first_frame: int) -> int:
        """First memory row of the frames at or after ``first_frame``."""
        offset = 0
        for entry in self.frames:
            if entry.index >= first_frame:
                break
            offset += entry.rows
        return offset

    def block(self, offset: int = 0) -> MemoryBlock:
        n = self._rows
        return MemoryBlock(self._keys[offset:n], self._sq[offset:n], self._vals[offset:n, : self._slots * self.value_dim])

    def read(self, query: torch.Tensor, groups: dict[int, list[int]], top_k: int,
             temp: MemoryBlock | None = None) -> torch.Tensor:
        """Read for every object slot: ``query`` (M, C_k) -> (M, slots, C_v).

        ``groups`` maps each first frame to its slots (see ``ObjectRegistry.groups``); each group
        makes one affinity, shared by its objects.
        """
        nslots = sum(len(s) for s in groups.values())
        if len(groups) == 1:
            blocks = [self.block(self.row_offset(next(iter(groups))))]
            if temp is not None:
                blocks.append(temp)
            return read_memory(query, blocks, top_k).view(query.shape[0], -1, self.value_dim)[:, :nslots]
        out = query.new_zeros(query.shape[0], nslots, self.value_dim)
        for first_frame, slots in groups.items():
            blocks = [self.block(self.row_offset(first_frame))]
            if temp is not None:
                blocks.append(temp)
            res = read_memory(query, blocks, top_k).view(query.shape[0], -1, self.value_dim)
            out[:, slots] = res[:, slots]
        return out
