"""The permanent memory of one video: keys shared by all objects, values per object slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pcvos.model.memory import MemoryBlock, read_memory

Eviction = Literal["usage", "oldest"]

# The longest DAVIS sequence (DAVIS 2017, 104 frames) and the default memory interval (one memory
# frame every clip_length = 5 frames, InferenceConfig's default).
DAVIS_LONGEST_FRAMES = 104
DEFAULT_MEMORY_INTERVAL = 5
# Memory frames kept by default: as many as the longest DAVIS sequence makes at the default
# schedule (frame 0 and every 5th frame up to 100: 21), so every benchmark, parity and DAVIS
# result is that of the unbounded memory, bit for bit. Beyond it the read costs what it costs at
# the end of a DAVIS video whatever the video's length: time per frame stays flat. Usage
# eviction keeps the frames the reads use, so long videos stay close to the unbounded result
# (measured in docs/results/long_video.md).
DEFAULT_MAX_MEMORY_FRAMES = DAVIS_LONGEST_FRAMES // DEFAULT_MEMORY_INTERVAL + 1
# Usage is an exponential moving average over reads of the share of the read's softmax weight
# each frame received. With one read per clip, 0.98 remembers about the last 50 reads (half-life
# 34): long enough that a frame useful a while ago is not dropped at once, short enough that the
# memory follows an object whose appearance drifts.
USAGE_DECAY = 0.98
# The newest memory frames are never dropped: a frame has to be read a few times before its
# usage says anything, and the newest frame is the read's closest match in time.
KEEP_NEWEST = 2


@dataclass
class _FrameEntry:
    index: int
    rows: int
    annotated: bool
    born: int  # the store's read count when the frame was added


class MemoryStore:
    """Grows along the memory axis without re-concatenating on every update.

    Keys live in one (capacity, C_k) buffer, values in one (capacity, slots * C_v) buffer; both
    double when full. Objects given at a later frame have no values in earlier memory frames and
    read only the memory added from their first frame on.

    ``max_frames`` caps the number of memory frames (None: unbounded; more only if more frames
    are annotated). Annotated frames always stay, and so do the ``KEEP_NEWEST`` newest frames
    where the cap leaves room for them; beyond the cap, ``eviction="usage"`` drops the
    frame the reads have used least (the moving average of the softmax weight its rows received,
    as XMem/Cutie rank long-term memory), ``"oldest"`` the oldest frame.
    """

    def __init__(
        self, key_dim: int, value_dim: int, max_frames: int | None = None, eviction: Eviction = "usage"
    ) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_memory_frames must be at least 1")
        if eviction not in ("usage", "oldest"):
            raise ValueError(f"memory eviction must be 'usage' or 'oldest', got {eviction!r}")
        self.key_dim, self.value_dim, self.max_frames = key_dim, value_dim, max_frames
        self.eviction = eviction
        self.frames: list[_FrameEntry] = []
        # empty until the first frame: _grow allocates them on its device and dtype
        self._keys = torch.empty(0, key_dim)
        self._sq = torch.empty(0)
        self._vals = torch.empty(0, 0)
        self._usage = torch.empty(0)  # per row, moving average (see USAGE_DECAY)
        self._rows = 0
        self._slots = 0
        self._reads = 0

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def tracks_usage(self) -> bool:
        """Usage is only collected where it can decide something: under a usage-ranked cap."""
        return self.max_frames is not None and self.eviction == "usage"

    def _grow(self, rows: int, slots: int, like: torch.Tensor, frame_rows: int) -> None:
        cap = self._keys.shape[0]
        if rows <= cap and slots <= self._slots:
            return
        new_cap = 2 * cap
        if self.max_frames is not None:
            # a capped memory holds at most max_frames + 1 frames at once: doubling past that wastes
            # up to as much again (the frame being added is dropped or makes room right after)
            new_cap = min(new_cap, (self.max_frames + 1) * frame_rows)
        new_cap = max(rows, new_cap)
        keys = like.new_zeros(new_cap, self.key_dim)
        sq = like.new_zeros(new_cap)
        usage = like.new_zeros(new_cap)
        vals = like.new_zeros(new_cap, max(slots, self._slots) * self.value_dim)
        if self._rows:
            keys[: self._rows] = self._keys[: self._rows]
            sq[: self._rows] = self._sq[: self._rows]
            usage[: self._rows] = self._usage[: self._rows]
            vals[: self._rows, : self._slots * self.value_dim] = self._vals[: self._rows]
        self._keys, self._sq, self._vals, self._usage = keys, sq, vals, usage
        self._slots = max(slots, self._slots)

    def add(
        self, frame_index: int, keys: torch.Tensor, values: torch.Tensor, annotated: bool = False
    ) -> None:
        """Add one frame: ``keys`` (HW, C_k), ``values`` (HW, S * C_v) for its first S slots."""
        rows = keys.shape[0]
        slots = values.shape[1] // self.value_dim
        self._grow(self._rows + rows, slots, keys, rows)
        r0 = self._rows
        self._keys[r0 : r0 + rows] = keys
        self._sq[r0 : r0 + rows] = keys.pow(2).sum(-1)
        self._vals[r0 : r0 + rows, : values.shape[1]] = values
        self._vals[r0 : r0 + rows, values.shape[1] :] = 0
        self._usage[r0 : r0 + rows] = 0
        self._rows += rows
        self.frames.append(_FrameEntry(frame_index, rows, annotated, self._reads))
        if self.max_frames is not None and len(self.frames) > self.max_frames:
            victim = self._victim(self.max_frames)
            if victim is not None:
                self._drop(victim)

    def usage(self) -> list[float]:
        """Each memory frame's usage: the share of the reads' softmax weight its rows received,
        a moving average over the reads since it was added (bias-corrected, as Adam's moments);
        ``inf`` for a frame not read yet. Zeros unless usage is tracked (``tracks_usage``)."""
        scores = []
        totals = self._usage[: self._rows].split([e.rows for e in self.frames]) if self.frames else []
        for entry, rows in zip(self.frames, totals, strict=True):
            reads = self._reads - entry.born
            if not self.tracks_usage:
                scores.append(0.0)
            elif reads == 0:
                scores.append(float("inf"))
            else:
                scores.append(float(rows.sum()) / (1.0 - USAGE_DECAY**reads))
        return scores

    def _victim(self, cap: int) -> int | None:
        """Position of the frame to drop: never an annotated one, nor one of the newest while the
        ``cap`` leaves room for them beside the annotated frames (so the cap always holds)."""
        annotated = sum(e.annotated for e in self.frames)
        keep_newest = max(0, min(KEEP_NEWEST, cap - annotated))
        candidates = [
            pos for pos, e in enumerate(self.frames[: len(self.frames) - keep_newest]) if not e.annotated
        ]
        if not candidates:
            return None
        if self.eviction == "oldest":
            return candidates[0]
        scores = self.usage()
        return min(candidates, key=lambda pos: scores[pos])  # ties: the oldest

    def _drop(self, pos: int) -> None:
        entry = self.frames[pos]
        a = sum(e.rows for e in self.frames[:pos])
        b, n = a + entry.rows, self._rows
        # shift the rows after the dropped frame down (in place, small next to compute)
        for buf in (self._keys, self._sq, self._vals, self._usage):
            buf[a : n - entry.rows] = buf[b:n].clone()
        self._rows -= entry.rows
        del self.frames[pos]

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
        return MemoryBlock(
            self._keys[offset:n], self._sq[offset:n], self._vals[offset:n, : self._slots * self.value_dim]
        )

    def read(
        self, query: torch.Tensor, groups: dict[int, list[int]], top_k: int, temp: MemoryBlock | None = None
    ) -> torch.Tensor:
        """Read for every object slot: ``query`` (M, C_k) -> (M, slots, C_v).

        ``groups`` maps each first frame to its slots (see ``ObjectRegistry.groups``); each group
        makes one affinity, shared by its objects. Under a usage-ranked cap the read also updates
        each memory row's usage; the read-out is the same either way.
        """
        nslots = sum(len(s) for s in groups.values())
        fresh = query.new_zeros(self._rows) if self.tracks_usage else None

        def one(first_frame: int) -> torch.Tensor:
            offset = self.row_offset(first_frame)
            blocks = [self.block(offset)]
            usage: list[torch.Tensor | None] = [None if fresh is None else fresh[offset:]]
            if temp is not None:
                blocks.append(temp)
                usage.append(None)
            return read_memory(query, blocks, top_k, usage=usage).view(query.shape[0], -1, self.value_dim)

        if len(groups) == 1:
            out = one(next(iter(groups)))[:, :nslots]
        else:
            out = query.new_zeros(query.shape[0], nslots, self.value_dim)
            for first_frame, slots in groups.items():
                out[:, slots] = one(first_frame)[:, slots]
        if fresh is not None:
            # each query's weights sum to one: normalised, a row's share of this read's weight
            fresh /= query.shape[0] * len(groups)
            self._usage[: self._rows].mul_(USAGE_DECAY).add_(fresh, alpha=1.0 - USAGE_DECAY)
        self._reads += 1
        return out
