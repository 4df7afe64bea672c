"""The memory store's cap: which frames stay, usage collected by the read without changing it."""

from __future__ import annotations

import pytest
import torch

from pcvos.inference.memory_store import KEEP_NEWEST, MemoryStore
from pcvos.model.memory import MemoryBlock, read_memory

ROWS = 6  # memory rows per frame in these tests


def _frame(centre: float, gen: torch.Generator, ck: int = 4) -> torch.Tensor:
    """Keys clustered around ``centre`` along every axis: a query near it reads only this frame."""
    return centre + 0.01 * torch.randn(ROWS, ck, generator=gen)


@pytest.mark.parametrize("with_temp", [False, True])
def test_usage_collection_leaves_the_read_unchanged(with_temp):
    gen = torch.Generator().manual_seed(0)
    blocks = [MemoryBlock.from_keys(torch.randn(300, 8, generator=gen), torch.randn(300, 5, generator=gen))]
    if with_temp:
        blocks.append(
            MemoryBlock.from_keys(torch.randn(40, 8, generator=gen), torch.randn(40, 5, generator=gen))
        )
    query = torch.randn(70, 8, generator=gen)
    plain = read_memory(query, blocks, top_k=7, budget=300 * 16)  # several query chunks
    usage = [torch.zeros(b.keys.shape[0]) for b in blocks]
    tracked = read_memory(query, blocks, top_k=7, budget=300 * 16, usage=usage)
    assert torch.equal(plain, tracked)
    # every query's softmax weights sum to one, spread over the blocks' rows
    assert sum(float(u.sum()) for u in usage) == pytest.approx(70.0, rel=1e-5)
    assert all((u >= 0).all() for u in usage)
    # a row outside every query's top-k gets no usage
    assert int((usage[0] > 0).sum()) <= 70 * 7


def test_least_used_frame_is_dropped_not_the_oldest():
    gen = torch.Generator().manual_seed(1)
    store = MemoryStore(key_dim=4, value_dim=1, max_frames=4)
    centres = [0.0, 1.0, 2.0, 3.0]
    for t, c in enumerate(centres):
        store.add(t, _frame(c, gen), torch.full((ROWS, 1), float(t)), annotated=(t == 0))
    # the reads look only like frame 1 (the oldest unannotated frame)
    for _ in range(3):
        store.read(_frame(1.0, gen), {0: [0]}, top_k=3)
    usage = store.usage()
    assert usage[1] == pytest.approx(1.0, abs=1e-4) and usage[2] < 1e-4
    store.add(4, _frame(4.0, gen), torch.full((ROWS, 1), 4.0))
    # frame 2 is the least used of those that may go (0 is annotated, 3 and 4 are the newest)
    assert [f.index for f in store.frames] == [0, 1, 3, 4]
    assert store.rows == 4 * ROWS
    values = store.block().values[:, 0].tolist()
    assert values == [v for t in (0, 1, 3, 4) for v in [float(t)] * ROWS]  # rows moved with their frames


def test_oldest_eviction_is_the_old_cap():
    gen = torch.Generator().manual_seed(2)
    store = MemoryStore(key_dim=4, value_dim=1, max_frames=4, eviction="oldest")
    for t in range(4):
        store.add(t, _frame(float(t), gen), torch.zeros(ROWS, 1), annotated=(t == 0))
    store.read(_frame(1.0, gen), {0: [0]}, top_k=3)
    store.add(4, _frame(4.0, gen), torch.zeros(ROWS, 1))
    assert [f.index for f in store.frames] == [0, 2, 3, 4]
    assert not store.tracks_usage and store.usage() == [0.0] * 4


def test_annotated_and_newest_frames_always_stay():
    gen = torch.Generator().manual_seed(3)
    store = MemoryStore(key_dim=4, value_dim=1, max_frames=5)
    for t in range(40):
        annotated = t in (0, 7)
        store.add(t, _frame(float(t % 5), gen), torch.zeros(ROWS, 1), annotated=annotated)
        # every read looks like frame 3's content: frames with other content are never used
        store.read(_frame(3.0, gen), {0: [0]}, top_k=3)
        kept = [f.index for f in store.frames]
        assert len(kept) <= 5 and store.rows == len(kept) * ROWS
        assert 0 in kept and (t < 7 or 7 in kept)
        assert kept[-min(KEEP_NEWEST, len(kept)) :] == list(range(t + 1))[-min(KEEP_NEWEST, len(kept)) :]
    # the one free place beyond annotated and newest goes to a frame whose content the reads use
    free = [f.index for f in store.frames if f.index not in (0, 7, 38, 39)]
    assert len(free) == 1 and free[0] % 5 == 3
    # the buffers stop growing with the video, at the cap plus the frame being added
    assert store._keys.shape[0] == 6 * ROWS


def test_cap_of_one_keeps_only_annotated_frames():
    store = MemoryStore(key_dim=2, value_dim=1, max_frames=1)
    for t in range(4):
        store.add(t, torch.full((ROWS, 2), float(t)), torch.zeros(ROWS, 1), annotated=(t == 0))
    assert [f.index for f in store.frames] == [0]


def test_later_objects_group_reads_count_for_their_frames():
    gen = torch.Generator().manual_seed(4)
    store = MemoryStore(key_dim=4, value_dim=1, max_frames=10)
    store.add(0, _frame(0.0, gen), torch.ones(ROWS, 2), annotated=True)  # two slots from frame 0
    store.add(5, _frame(5.0, gen), torch.ones(ROWS, 2), annotated=True)
    out = store.read(_frame(5.0, gen), {0: [0], 5: [1]}, top_k=3)
    assert out.shape == (ROWS, 2, 1)
    usage = store.usage()
    # both groups read frame 5's rows; normalised, the shares of one read sum to one
    assert usage[1] == pytest.approx(1.0, abs=1e-4) and sum(usage) == pytest.approx(1.0, abs=1e-4)


def test_bad_eviction_and_cap():
    with pytest.raises(ValueError, match="eviction"):
        MemoryStore(key_dim=2, value_dim=1, max_frames=3, eviction="newest")
    with pytest.raises(ValueError, match="at least 1"):
        MemoryStore(key_dim=2, value_dim=1, max_frames=0)


def test_cap_holds_when_annotated_frames_leave_little_room():
    gen = torch.Generator().manual_seed(5)
    store = MemoryStore(key_dim=4, value_dim=1, max_frames=3)
    for t in range(8):
        store.add(t, _frame(float(t), gen), torch.zeros(ROWS, 1), annotated=t in (0, 2))
        store.read(_frame(1.0, gen), {0: [0]}, top_k=3)
        assert len(store.frames) <= 3
    assert [f.index for f in store.frames] == [0, 2, 7]  # one place left: the newest frame
