"""The released network and schedules reproduce what the original code computes (fixture.npz)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import pcvos

TOL = 1e-4
# The original's outputs hold on every device pcvos runs on; CUDA is checked where one is present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """A device, with CUDA's TF32 shortcuts off: parity is about the arithmetic, not its rounding mode."""
    if request.param != "cuda":
        yield request.param
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield request.param
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on(model, device: str):
    # segment() moves the model it is given; keep the session's shared models on the CPU
    return model if device == "cpu" else copy.deepcopy(model)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_pcvos_icr_pmm_matches_original(pcvos_model, parity_fixture, device):
    fx = parity_fixture
    probs = pcvos.segment(
        _on(pcvos_model, device), fx["frames"], {0: fx["label"]}, clip_length=6, output="probs", device=device
    )
    assert probs.dtype == np.float32
    assert _max_diff(probs, fx["pcvos_L6_icr_pmm"]) <= TOL


def test_pcvos_plain_matches_original(pcvos_model, parity_fixture, device):
    fx = parity_fixture
    probs = pcvos.segment(
        _on(pcvos_model, device),
        fx["frames"],
        {0: fx["label"]},
        clip_length=6,
        pmm_segment=None,
        refine=False,
        output="probs",
        device=device,
    )
    assert _max_diff(probs, fx["pcvos_L6_plain"]) <= TOL


def test_stcn_every5_matches_original(stcn_model, parity_fixture, device):
    fx = parity_fixture
    probs = pcvos.segment(
        _on(stcn_model, device),
        fx["frames"],
        {0: fx["label"]},
        clip_length=1,
        memory_every=5,
        pmm_segment=None,
        refine=False,
        output="probs",
        device=device,
    )
    assert _max_diff(probs, fx["stcn_every5"]) <= TOL


def test_schedules_differ_from_each_other(parity_fixture):
    # guards against a fixture comparison that would pass whatever the schedule
    fx = parity_fixture
    assert _max_diff(fx["pcvos_L6_icr_pmm"], fx["pcvos_L6_plain"]) > 1e-2
    assert _max_diff(fx["pcvos_L6_plain"], fx["stcn_every5"]) > 1e-3


def test_stcn_weights_load_from_pcvos_checkpoint_subset(official_weights, pcvos_model):
    # the STCN layout is the PCVOS one minus the refinement keys, with identical shared values
    stcn = pcvos.load_model(official_weights(stcn=True))
    assert not stcn.has_refiner and pcvos_model.has_refiner
    a, b = stcn.state_dict(), pcvos_model.state_dict()
    for k, v in a.items():
        assert (b[k] == v).all(), k


def test_frame0_holds_the_aggregated_mask(pcvos_model, parity_fixture):
    fx = parity_fixture
    probs = pcvos.segment(pcvos_model, fx["frames"][:3], {0: fx["label"]}, clip_length=2, output="probs")
    assert _max_diff(probs[:, 0], fx["pcvos_L6_icr_pmm"][:, 0]) <= 1e-6
    assert (probs[:, 0].argmax(0) == fx["label"]).all()
