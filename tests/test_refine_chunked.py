"""Intra-clip refinement a few frames at a time equals the whole-clip computation."""

from __future__ import annotations

import itertools

import pytest
import torch

from pcvos.model.refine import IntraClipRefiner, WindowAttention3D, chunk_groups, temporal_groups

EPS32 = torch.finfo(torch.float32).eps
BF16_ULP = 2.0**-7  # bfloat16 keeps 8 significant bits: neighbouring numbers are <= 2**-7 apart, relative


def _sums(m: IntraClipRefiner) -> tuple[int, int]:
    """(longest reduction, matrix products in sequence) of the refiner's forward."""
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    blocks = sum(1 for mod in m.modules() if isinstance(mod, WindowAttention3D))
    tokens = m.window[0] * m.window[1] * m.window[2]  # attention sums over a window's tokens
    return max([lin.in_features for lin in linears] + [tokens]), len(linears) + 2 * blocks  # + q.k, a.v


def _tol(m: IntraClipRefiner, scale: float) -> float:
    """How far the chunked and the whole-clip forward may be apart, for outputs of size ``scale``.

    Chunking changes the number of windows in each matrix product (its rows), not what a product
    sums over; kernels may still block a product of other rows differently and so change the
    order of a sum. A float32 sum of n terms is then off by about sqrt(n) * eps32 relative (random
    rounding signs), and every one of the L products in sequence adds such an error:
    sqrt(n) * L * eps32 * scale, about 1e-4 of an output of size 3 here. Chunking errors (a
    window's position bias or mask misplaced) change outputs by ~0.1.
    """
    n, products = _sums(m)
    return n**0.5 * products * EPS32 * scale


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the tensors are tiny: a second thread only adds synchronisation, which is slow on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _refiner(
    key_dim: int = 16, value_dim: int = 32, window: tuple[int, int, int] = (2, 7, 7), seed: int = 0
) -> IntraClipRefiner:
    """A refiner with weights large enough that the position bias and the masks change the result."""
    torch.manual_seed(seed)
    m = IntraClipRefiner(key_dim, value_dim, window=window).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(std=1.0)  # the default init (std 0.02) would hide bias and mask errors
            elif p.dim() == 1:
                p.normal_(std=0.3)
            else:
                p.normal_(std=p.shape[-1] ** -0.5)
    return m


def _max_diff(m: IntraClipRefiner, x: torch.Tensor, v: torch.Tensor, chunk_frames: int) -> float:
    """Largest difference between the chunked and the whole-clip forward, in units of :func:`_tol`."""
    with torch.no_grad():
        m.chunk_frames = None
        ref = m(x, v)
        m.chunk_frames = chunk_frames
        got = m(x, v)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    return (got - ref).abs().max().item() / _tol(m, ref.abs().max().item())


def test_temporal_groups():
    # window 2, shift 1, 6 padded frames: the wrapped window's parts [5, 6) and [0, 1) are separate
    # groups; [0, 1) sits second in its window, [5, 6) is pad only when D = 5
    assert temporal_groups(6, 2, 1) == [(0, 1, 1), (1, 3, 0), (3, 5, 0), (5, 6, 0)]
    assert temporal_groups(5, 2, 1) == [(0, 1, 1), (1, 3, 0), (3, 5, 0)]
    assert temporal_groups(5, 2, 0) == [(0, 2, 0), (2, 4, 0), (4, 6, 0)]
    assert temporal_groups(8, 3, 1) == [(0, 1, 2), (1, 4, 0), (4, 7, 0), (7, 9, 0)]
    assert temporal_groups(7, 3, 1) == [(0, 1, 2), (1, 4, 0), (4, 7, 0)]
    assert chunk_groups(temporal_groups(9, 2, 1), 4) == [
        [(0, 1, 1), (1, 3, 0)],
        [(3, 5, 0), (5, 7, 0)],
        [(7, 9, 0)],
    ]
    assert chunk_groups(temporal_groups(4, 2, 0), 1) == [[(0, 2, 0)], [(2, 4, 0)]]


@pytest.mark.parametrize("hw", [(9, 12), (14, 21), (5, 12), (4, 6)])
def test_chunked_equals_whole_clip(hw: tuple[int, int]):
    # (5, 12) and (4, 6) shrink the spatial window, where the wrapped head group's position bias
    # depends on its place in the window
    m = _refiner()
    g = torch.Generator().manual_seed(1)
    h, w = hw
    for d, k in itertools.product([*range(1, 10), 13], (1, 3)):
        x = torch.randn(d, h, w, 16, generator=g)
        v = torch.randn(k, d, h, w, 32, generator=g)
        for c in (1, 2, 3, 4, 5):
            assert _max_diff(m, x, v, c) <= 1, (d, h, w, k, c)


@pytest.mark.parametrize("window", [(3, 5, 5), (4, 4, 6)])
def test_other_windows(window: tuple[int, int, int]):
    m = _refiner(window=window)
    g = torch.Generator().manual_seed(2)
    for d, (h, w) in itertools.product((4, 5, 7, 10), ((9, 12), (6, 13))):
        x = torch.randn(d, h, w, 16, generator=g)
        v = torch.randn(2, d, h, w, 32, generator=g)
        for c in (1, 3, 5):
            assert _max_diff(m, x, v, c) <= 1, (window, d, h, w, c)


def test_permuted_inputs_and_inference_mode():
    # the network passes channel-first tensors permuted to channel-last views
    m = _refiner()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 16, 9, 12, generator=g).permute(0, 2, 3, 1)
    v = torch.randn(2, 6, 32, 9, 12, generator=g).permute(0, 1, 3, 4, 2)
    assert _max_diff(m, x, v, 3) <= 1
    m.chunk_frames = 3
    with torch.inference_mode():
        a = m(x, v)
    m.chunk_frames = None
    with torch.no_grad():
        b = m(x, v)
    assert (a - b).abs().max().item() <= _tol(m, b.abs().max().item())


def test_released_size():
    m = _refiner(key_dim=256, value_dim=512)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 9, 16, 256, generator=g)
    v = torch.randn(2, 5, 9, 16, 512, generator=g)
    assert _max_diff(m, x, v, 4) <= 1


def test_bfloat16_autocast():
    m = _refiner()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 9, 12, 16, generator=g)
    v = torch.randn(2, 7, 9, 12, 32, generator=g)
    outs = []
    for c in (None, 3):
        m.chunk_frames = c
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(m(x, v))
    assert outs[0].dtype == outs[1].dtype
    # Autocast rounds each product's inputs and output to bf16 and sums in float32; where the
    # float32 sums of the two paths differ (see _tol) a value may round to the neighbouring bf16
    # number instead, and each of the L products in sequence may add such a step: L * 2**-7 * scale.
    # (This checks that the chunked path runs under autocast; chunking errors are for the float32
    # tests above to find.)
    scale = outs[0].float().abs().max().item()
    assert (outs[0].float() - outs[1].float()).abs().max().item() <= _sums(m)[1] * BF16_ULP * scale


def test_autograd_uses_whole_clip():
    m = _refiner()
    m.chunk_frames = 2
    x = torch.randn(5, 9, 12, 16)
    v = torch.randn(2, 5, 9, 12, 32, requires_grad=True)
    out = m(x, v)
    out.square().sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    assert m.layers[0].blocks[1].attn.relative_position_bias_table.grad is not None
    with torch.no_grad():
        again = m(x, v)
    assert (again - out).abs().max().item() <= _tol(m, out.abs().max().item())
