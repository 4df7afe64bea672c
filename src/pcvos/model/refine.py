"""Intra-clip refinement (ICR): 3-D shifted-window attention over the frames of a clip.

Queries and keys come from the clip's local keys (shared by all objects) through one shared
projection; values are each object's memory read-out. Because the attention weights depend only
on the keys, they are computed once per clip and applied to every object's values.

On a CPU without autograd the clip is processed a few frames at a time
(:meth:`RefineBlock.forward_chunked`) so the working set stays cache-sized on long clips; the
result equals the whole-clip computation. A GPU takes the whole clip in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

Size3 = tuple[int, int, int]
# (start, stop, offset): a temporal window as frames [start, stop) of the padded clip, whose first
# frame sits at position ``offset`` of the window it belongs to in the rolled (cyclic) layout
Group = tuple[int, int, int]


def effective_window(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Shrink the window to the input in any dimension no larger than it (the shift there becomes 0)."""
    win, sh = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            win[i], sh[i] = s, 0
    return (win[0], win[1], win[2]), (sh[0], sh[1], sh[2])


def relative_position_index(window: Size3) -> torch.Tensor:
    """Swin-style index of each pair of positions of a full window into the bias table, (N, N)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([w - 1 for w in window])
    strides = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (rel * strides).sum(-1)


def window_partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(..., D, H, W, C) -> (..., nW, N, C) with N = prod(window)."""
    *lead, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.reshape(*lead, d // wd, wd, h // wh, wh, w // ww, ww, c)
    n = len(lead)
    perm = list(range(n)) + [n, n + 2, n + 4, n + 1, n + 3, n + 5, n + 6]
    return x.permute(perm).reshape(*lead, -1, wd * wh * ww, c)


def window_reverse(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (..., nW, N, C) -> (..., D, H, W, C)."""
    *lead, _, _, c = windows.shape
    wd, wh, ww = window
    d, h, w = size
    x = windows.reshape(*lead, d // wd, h // wh, w // ww, wd, wh, ww, c)
    n = len(lead)
    perm = list(range(n)) + [n, n + 3, n + 1, n + 4, n + 2, n + 5, n + 6]
    return x.permute(perm).reshape(*lead, d, h, w, c)


def shifted_window_mask(
    padded: Size3, window: Size3, shift: Size3, device: torch.device | None = None
) -> torch.Tensor:
    """Additive mask (nW, N, N): -100 between positions from different regions before the roll."""
    labels = torch.zeros(padded, dtype=torch.float32, device=device)
    region = 0
    # Python slices exactly as the released code builds them; with a zero shift the third slice
    # covers the whole axis, which merges that axis into one region.
    for sd in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for sh in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            for sw in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
                labels[sd, sh, sw] = region
                region += 1
    win = window_partition(labels.unsqueeze(-1), window).squeeze(-1)  # (nW, N)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def temporal_groups(depth: int, window: int, shift: int) -> list[Group]:
    """The temporal windows of one block as non-cyclic groups of frames, pad-only groups left out.

    Rolling the padded clip by ``-shift`` and cutting windows of ``window`` frames is the same as
    cutting it at ``shift + k * window``, except that the last rolled window wraps round and holds
    the tail of the clip and frames ``[0, shift)``; the shifted-window mask (-100) keeps those two
    parts apart, so they are separate groups here. The head group keeps its position in the wrapped
    window (``offset``) because the relative position bias is indexed by position.
    """
    padded = -(-depth // window) * window
    bounds = sorted({0, padded} | set(range(shift, padded + 1, window)))
    return [
        (a, b, window - shift if shift and a == 0 else 0) for a, b in pairwise(bounds) if a < depth
    ]  # pad-only: outputs are cropped


def chunk_groups(groups: list[Group], chunk_frames: int) -> list[list[Group]]:
    """Consecutive groups, at most ``chunk_frames`` frames a chunk unless one group alone is longer."""
    chunks: list[list[Group]] = []
    frames = 0
    for g in groups:
        if chunks and frames + g[1] - g[0] <= chunk_frames:
            chunks[-1].append(g)
            frames += g[1] - g[0]
        else:
            chunks.append([g])
            frames = g[1] - g[0]
    return chunks


def partition_runs(groups: list[Group]) -> list[tuple[int, int, int, int]]:
    """Merge consecutive groups of equal length and offset into runs ``(start, stop, frames, offset)``.

    A run is windowed in one call with a temporal window of ``frames``.
    """
    runs: list[tuple[int, int, int, int]] = []
    for a, b, off in groups:
        if runs and runs[-1][1] == a and runs[-1][2] == b - a and runs[-1][3] == off:
            runs[-1] = (runs[-1][0], b, b - a, off)
        else:
            runs.append((a, b, b - a, off))
    return runs


class SpatialMasks:
    """Shifted-window masks for windows of ``frames`` frames with no temporal shift, built once each.

    Within a temporal group only the spatial regions separate tokens, so the mask depends on the
    group length and the spatial layout alone, and one copy serves every temporal window.
    """

    def __init__(
        self,
        padded_hw: tuple[int, int],
        window_hw: tuple[int, int],
        shift_hw: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> None:
        self.padded_hw, self.window_hw, self.shift_hw = padded_hw, window_hw, shift_hw
        self.dtype, self.device = dtype, device
        self.cache: dict[int, torch.Tensor] = {}

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift_hw)

    def __call__(self, frames: int) -> torch.Tensor | None:
        """Mask (nWh * nWw, N, N) for a ``frames``-frame window, or None without a spatial shift."""
        if not self.shifted:
            return None
        if frames not in self.cache:
            self.cache[frames] = shifted_window_mask(
                (frames, *self.padded_hw), (frames, *self.window_hw), (0, *self.shift_hw), device=self.device
            ).to(self.dtype)
        return self.cache[frames]


class WindowAttention3D(nn.Module):
    """Window attention with a shared query/key projection and a relative position bias."""

    relative_position_index: torch.Tensor  # a buffer (registered below)

    def __init__(self, key_dim: int, value_dim: int, window: Size3, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (key_dim // num_heads) ** -0.5
        self.qk = nn.Linear(key_dim, key_dim)
        self.v = nn.Linear(value_dim, value_dim)
        self.proj = nn.Linear(value_dim, value_dim)
        table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def attention_weights(self, xw: torch.Tensor, mask: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Keys ``xw`` (nW, N, Ck) -> weights (nW, heads, N, N).

        ``mask`` (M, N, N) with M dividing nW repeats over consecutive runs of M windows. The windows
        are tokens ``[start, start + N)`` of a full window, which picks their position bias.
        """
        nw, n, c = xw.shape
        q = self.qk(xw).view(nw, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        logits = (q * self.scale) @ q.transpose(-2, -1)
        idx = self.relative_position_index[start : start + n, start : start + n].reshape(-1)
        bias = self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)
        logits = logits + bias.unsqueeze(0)
        if mask is not None:
            m = mask.shape[0]
            logits = (logits.view(nw // m, m, self.num_heads, n, n) + mask.unsqueeze(1)).view(nw, -1, n, n)
        return logits.softmax(dim=-1)

    def forward(
        self, xw: torch.Tensor, vw: torch.Tensor, mask: torch.Tensor | None, start: int = 0
    ) -> torch.Tensor:
        """Keys ``xw`` (nW, N, Ck), values ``vw`` (K, nW, N, Cv) -> (K, nW, N, Cv)."""
        attn = self.attention_weights(xw, mask, start)
        k, nw, n, cv = vw.shape
        vals = self.v(vw).view(k, nw, n, self.num_heads, cv // self.num_heads).transpose(2, 3)
        out = (attn.unsqueeze(0) @ vals).transpose(2, 3).reshape(k, nw, n, cv)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefineBlock(nn.Module):
    """One ICR block: windowed attention on the values (keys fixed), then an MLP."""

    def __init__(self, key_dim: int, value_dim: int, window: Size3, mlp_ratio: float, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(key_dim)
        self.norm1_v = nn.LayerNorm(value_dim)
        self.attn = WindowAttention3D(key_dim, value_dim, window, num_heads)
        self.norm2 = nn.LayerNorm(value_dim)
        self.mlp = Mlp(value_dim, int(value_dim * mlp_ratio))
        self.mlp_chunk_tokens = 8192

    def forward(
        self, x: torch.Tensor, v: torch.Tensor, window: Size3, shift: Size3, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``x`` (D, H, W, Ck) shared keys, ``v`` (K, D, H, W, Cv) values -> updated values."""
        d, h, w = x.shape[:3]
        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        xn = F.pad(self.norm1(x), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        vn = F.pad(self.norm1_v(v), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded: Size3 = (xn.shape[0], xn.shape[1], xn.shape[2])
        shifted = any(s > 0 for s in shift)
        if shifted:
            neg = tuple(-s for s in shift)
            xn = torch.roll(xn, shifts=neg, dims=(0, 1, 2))
            vn = torch.roll(vn, shifts=neg, dims=(1, 2, 3))
        out = self.attn(window_partition(xn, window), window_partition(vn, window), mask if shifted else None)
        out = window_reverse(out, window, padded)
        if shifted:
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        return self.mlp_residual(v + out[:, :d, :h, :w])

    def mlp_residual(self, v: torch.Tensor) -> torch.Tensor:
        """``v + mlp(norm2(v))`` for values (K, D, H, W, Cv)."""
        # the MLP's hidden layer is 4x the values: run it a few frames at a time so the
        # temporaries stay cache-sized on long clips (per-token, so the result is the same)
        k, d, h, w = v.shape[:4]
        step = max(1, self.mlp_chunk_tokens // (k * h * w))
        if step >= d or v.device.type != "cpu":  # a GPU has no such cache to fit: one launch
            return v + self.mlp(self.norm2(v))
        return torch.cat([c + self.mlp(self.norm2(c)) for c in v.split(step, dim=1)], dim=1)

    def forward_chunked(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        window: Size3,
        shift: Size3,
        chunk_frames: int,
        masks: SpatialMasks | None = None,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """:meth:`forward` a few temporal windows at a time, writing the updated values into ``out``.

        ``out`` may be ``v`` itself: every chunk reads and writes only its own frames. ``masks``
        (for ``shift``'s spatial part) can be shared between calls; ``post`` (per token) is applied
        before writing. Not for autograd: ``out`` is written in place.
        """
        d, h, w = x.shape[:3]
        _, wh, ww = window
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
        spatial_shift = shift[1:]
        if masks is None:
            masks = SpatialMasks((hp, wp), (wh, ww), spatial_shift, x.dtype, x.device)
        elif masks.shift_hw != spatial_shift:
            raise ValueError(f"masks are for spatial shift {masks.shift_hw}, the block's is {spatial_shift}")
        shifted = masks.shifted
        neg = tuple(-s for s in spatial_shift)
        for chunk in chunk_groups(temporal_groups(d, window[0], shift[0]), chunk_frames):
            a, b = chunk[0][0], chunk[-1][1]
            e = min(b, d)  # frames past the clip are zero pad, as in forward (padded after the norms)
            pads = (0, 0, 0, wp - w, 0, hp - h, 0, b - e)
            xn = F.pad(self.norm1(x[a:e]), pads)
            vn = F.pad(self.norm1_v(v[:, a:e]), pads)
            if shifted:
                xn = torch.roll(xn, shifts=neg, dims=(1, 2))
                vn = torch.roll(vn, shifts=neg, dims=(2, 3))
            outs = []
            for s0, s1, frames, offset in partition_runs(chunk):
                win = (frames, wh, ww)
                att = self.attn(
                    window_partition(xn[s0 - a : s1 - a], win),
                    window_partition(vn[:, s0 - a : s1 - a], win),
                    masks(frames),
                    start=offset * wh * ww,
                )
                outs.append(window_reverse(att, win, (s1 - s0, hp, wp)))
            att = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
            if shifted:
                att = torch.roll(att, shifts=spatial_shift, dims=(2, 3))
            r = self.mlp_residual(v[:, a:e] + att[:, : e - a, :h, :w])
            out[:, a:e] = post(r) if post is not None else r


class _Stage(nn.Module):
    def __init__(self, blocks: list[RefineBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class IntraClipRefiner(nn.Module):
    """ICR: ``depth`` blocks alternating plain and shifted windows, then a LayerNorm on the values."""

    def __init__(
        self,
        key_dim: int = 256,
        value_dim: int = 512,
        depth: int = 2,
        window: Size3 = (2, 7, 7),
        mlp_ratio: float = 4.0,
        num_heads: int = 1,
        chunk_frames: int | None = 2,
    ) -> None:
        super().__init__()
        # frames per chunk without autograd (None or 0: the whole clip at once); at 480p one frame
        # of values is 3.3 MB per object and the MLP's hidden layer 4x that, so two frames (one
        # released temporal window) keep a chunk's temporaries near cache size; 2 measured faster than 4
        self.chunk_frames = chunk_frames
        d, h, w = window  # a list (from a config file) becomes a tuple
        self.window: Size3 = (d, h, w)
        self.shift: Size3 = (d // 2, h // 2, w // 2)
        self.layers = nn.ModuleList(
            [
                _Stage(
                    [RefineBlock(key_dim, value_dim, self.window, mlp_ratio, num_heads) for _ in range(depth)]
                )
            ]
        )
        self.norm = nn.LayerNorm(value_dim)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x`` (D, H, W, Ck) local keys of the clip, ``v`` (K, D, H, W, Cv) read-outs -> refined values.

        On a CPU without autograd (no_grad / inference_mode) and with ``chunk_frames`` set, the
        clip goes through in chunks of temporal windows (cache-sized temporaries); with autograd
        the whole clip at once, because the chunked path writes its result in place, and on a GPU
        too, where one large launch beats many small ones.
        """
        size: Size3 = (x.shape[0], x.shape[1], x.shape[2])
        window, shift = effective_window(size, self.window, self.shift)
        if self.chunk_frames and not torch.is_grad_enabled() and x.device.type == "cpu":
            return self._forward_chunked(x, v, window, shift, self.chunk_frames)
        no_shift = (0, 0, 0)
        mask = None
        if any(s > 0 for s in shift):
            d, h, w = (-(-s // n) * n for s, n in zip(size, window, strict=True))
            mask = shifted_window_mask((d, h, w), window, shift, device=x.device).to(x.dtype)
        for i, block in self._blocks():
            v = block(x, v, window, shift if i % 2 else no_shift, mask)
        return self.norm(v)

    def _blocks(self) -> list[tuple[int, RefineBlock]]:
        """Every block with its position in its stage (odd positions shift their windows)."""
        # nn.ModuleList is not generic: its items are typed as Module
        stages = cast(Iterable[_Stage], self.layers)
        return [
            (i, block)
            for stage in stages
            for i, block in enumerate(cast(Iterable[RefineBlock], stage.blocks))
        ]

    def _forward_chunked(
        self, x: torch.Tensor, v: torch.Tensor, window: Size3, shift: Size3, chunk_frames: int
    ) -> torch.Tensor:
        """:meth:`forward` through :meth:`RefineBlock.forward_chunked`, updating one buffer in place."""
        blocks = self._blocks()
        if not blocks:
            return self.norm(v)
        h, w = x.shape[1:3]
        padded_hw = (-(-h // window[1]) * window[1], -(-w // window[2]) * window[2])
        masks = {s: SpatialMasks(padded_hw, window[1:], s[1:], x.dtype, x.device) for s in {shift, (0, 0, 0)}}
        # contiguous whatever the layout of v (the network passes a permuted view)
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
        src = v
        for n, (i, block) in enumerate(blocks):
            block_shift = shift if i % 2 else (0, 0, 0)
            # the final LayerNorm is per token: fuse it into the last block's chunks
            post = self.norm if n == len(blocks) - 1 else None
            block.forward_chunked(x, src, out, window, block_shift, chunk_frames, masks[block_shift], post)
            src = out
        return out
