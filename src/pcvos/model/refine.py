"""Intra-clip refinement (ICR): 3-D shifted-window attention over the frames of a clip.

Queries and keys come from the clip's local keys (shared by all objects) through one shared
projection; values are each object's memory read-out. Because the attention weights depend only
on the keys, they are computed once per clip and applied to every object's values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Size3 = tuple[int, int, int]


def effective_window(size: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Shrink the window to the input in any dimension no larger than it (the shift there becomes 0)."""
    win, sh = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            win[i], sh[i] = s, 0
    return tuple(win), tuple(sh)  # type: ignore[return-value]


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


def shifted_window_mask(padded: Size3, window: Size3, shift: Size3, device: torch.device | None = None) -> torch.Tensor:
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


class WindowAttention3D(nn.Module):
    """Window attention with a shared query/key projection and a relative position bias."""

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

    def attention_weights(self, xw: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Keys ``xw`` (nW, N, Ck) -> weights (nW, heads, N, N)."""
        nw, n, c = xw.shape
        q = self.qk(xw).view(nw, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        logits = (q * self.scale) @ q.transpose(-2, -1)
        idx = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[idx].view(n, n, -1).permute(2, 0, 1)
        logits = logits + bias.unsqueeze(0)
        if mask is not None:
            logits = logits + mask.unsqueeze(1)
        return logits.softmax(dim=-1)

    def forward(self, xw: torch.Tensor, vw: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Keys ``xw`` (nW, N, Ck), values ``vw`` (K, nW, N, Cv) -> (K, nW, N, Cv)."""
        attn = self.attention_weights(xw, mask)
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

    def forward(self, x: torch.Tensor, v: torch.Tensor, window: Size3, shift: Size3,
                mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` (D, H, W, Ck) shared keys, ``v`` (K, D, H, W, Cv) values -> updated values."""
        d, h, w = x.shape[:3]
        pads = [(window[i] - s % window[i]) % window[i] for i, s in enumerate((d, h, w))]
        xn = F.pad(self.norm1(x), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        vn = F.pad(self.norm1_v(v), (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(xn.shape[:3])
        shifted = any(s > 0 for s in shift)
        if shifted:
            neg = tuple(-s for s in shift)
            xn = torch.roll(xn, shifts=neg, dims=(0, 1, 2))
            vn = torch.roll(vn, shifts=neg, dims=(1, 2, 3))
        out = self.attn(window_partition(xn, window), window_partition(vn, window), mask if shifted else None)
        out = window_reverse(out, window, padded)  # type: ignore[arg-type]
        if shifted:
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        v = v + out[:, :d, :h, :w]
        # the MLP's hidden layer is 4x the values: run it a few frames at a time so the
        # temporaries stay cache-sized on long clips (per-token, so the result is the same)
        step = max(1, self.mlp_chunk_tokens // (v.shape[0] * h * w))
        if step >= d:
            return v + self.mlp(self.norm2(v))
        return torch.cat([c + self.mlp(self.norm2(c)) for c in v.split(step, dim=1)], dim=1)


class _Stage(nn.Module):
    def __init__(self, blocks: list[RefineBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class IntraClipRefiner(nn.Module):
    """ICR: ``depth`` blocks alternating plain and shifted windows, then a LayerNorm on the values."""

    def __init__(self, key_dim: int = 256, value_dim: int = 512, depth: int = 2, window: Size3 = (2, 7, 7),
                 mlp_ratio: float = 4.0, num_heads: int = 1) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(s // 2 for s in window)
        self.layers = nn.ModuleList([_Stage([RefineBlock(key_dim, value_dim, self.window, mlp_ratio, num_heads)
                                             for _ in range(depth)])])
        self.norm = nn.LayerNorm(value_dim)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x`` (D, H, W, Ck) local keys of the clip, ``v`` (K, D, H, W, Cv) read-outs -> refined values."""
        size = tuple(x.shape[:3])
        window, shift = effective_window(size, self.window, self.shift)  # type: ignore[arg-type]
        no_shift = (0, 0, 0)
        mask = None
        if any(s > 0 for s in shift):
            padded = tuple(-(-s // w) * w for s, w in zip(size, window))
            mask = shifted_window_mask(padded, window, shift, device=x.device).to(x.dtype)
        for stage in self.layers:
            for i, block in enumerate(stage.blocks):
                v = block(x, v, window, shift if i % 2 else no_shift, mask)
        return self.norm(v)
