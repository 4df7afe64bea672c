"""Memory read: negative-squared-L2 affinity, top-k softmax, sparse read-out.

Only the ``top_k`` largest affinities of each query position get a weight, so the read-out is a
weighted sum of ``top_k`` memory rows. It is computed with ``embedding_bag`` instead of a dense
(memory x query) matrix product, and the affinity is built in chunks of query positions so its
peak size stays bounded on long videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MemoryBlock:
    """A contiguous block of memory rows: keys (N, Ck), their squared norms (N,), values (N, D)."""

    keys: torch.Tensor
    sqnorm: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_keys(cls, keys: torch.Tensor, values: torch.Tensor) -> MemoryBlock:
        return cls(keys, keys.pow(2).sum(-1), values)


def _chunk_size(rows: int, budget: int) -> int:
    return max(1, budget // max(rows, 1))


# Affinity entries held at once: on a CPU about 64 MB of fp32 keeps the chunk near cache size;
# a GPU wants few, large launches (512 MB there reads a 480p 25-frame clip in one or two chunks).
CPU_AFFINITY_BUDGET = 1 << 24
GPU_AFFINITY_BUDGET = 1 << 27


def read_memory(
    query: torch.Tensor,
    blocks: list[MemoryBlock],
    top_k: int = 20,
    budget: int | None = None,
    usage: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Read ``blocks`` at the query keys ``query`` (M, Ck) -> (M, D).

    Affinity s(i, j) = (2 k_i.q_j - |k_i|^2) / sqrt(Ck); softmax over each query's ``top_k`` best
    memory rows across all blocks. The top-k of a union is found as the top-k of the blocks'
    own top-k candidates, which is exact and avoids concatenating memories.
    ``budget`` caps the number of affinity entries held at once (default: by device, above).
    ``usage``, one tensor (rows,) or None per block, accumulates the softmax weight each memory
    row received over all queries (the memory store's measure of which frames the read uses);
    it costs one ``index_add_`` of the top-k weights and leaves the read-out unchanged.
    """
    if budget is None:
        budget = CPU_AFFINITY_BUDGET if query.device.type == "cpu" else GPU_AFFINITY_BUDGET
    m, ck = query.shape
    scale = 1.0 / math.sqrt(ck)
    rows = sum(b.keys.shape[0] for b in blocks)
    if rows == 0:
        raise ValueError("memory read with an empty memory")
    out = query.new_empty(m, blocks[0].values.shape[1])
    step = _chunk_size(rows, budget)
    for start in range(0, m, step):
        q = query[start : start + step]
        cand_val, cand_idx = [], []
        for b in blocks:
            aff = torch.addmm(b.sqnorm.unsqueeze(0), q, b.keys.t(), beta=-1.0, alpha=2.0).mul_(scale)
            v, i = aff.topk(min(top_k, aff.shape[1]), dim=1, sorted=False)
            cand_val.append(v)
            cand_idx.append(i)
        if len(blocks) == 1:
            weights = cand_val[0].softmax(dim=1)
            out[start : start + step] = F.embedding_bag(
                cand_idx[0], blocks[0].values, per_sample_weights=weights, mode="sum"
            )
            if usage is not None and usage[0] is not None:
                usage[0].index_add_(0, cand_idx[0].reshape(-1), weights.reshape(-1))
            continue
        sizes = [v.shape[1] for v in cand_val]
        vals, pos = torch.cat(cand_val, 1).topk(min(top_k, sum(sizes)), dim=1, sorted=False)
        weights = vals.softmax(dim=1)
        idx = torch.cat(cand_idx, 1).gather(1, pos)
        acc = out[start : start + step]  # the blocks' parts summed in order, in place
        offset = 0
        for n, (b, size) in enumerate(zip(blocks, sizes, strict=True)):
            mine = (pos >= offset) & (pos < offset + size)
            part_idx, part_w = idx.where(mine, 0), weights * mine
            part = F.embedding_bag(part_idx, b.values, per_sample_weights=part_w, mode="sum")
            rows_used = usage[n] if usage is not None else None
            if rows_used is not None:
                rows_used.index_add_(0, part_idx.reshape(-1), part_w.reshape(-1))
            if n == 0:
                acc.copy_(part)
            else:
                acc.add_(part)
            offset += size
    return out
