"""Reduced precision (bf16/fp16 autocast): off by default, changes the network's arithmetic only,
and is refused where it cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pcvos
from pcvos.cli import main
from pcvos.data.io_utils import save_indexed_png
from pcvos.inference.engine import InferenceConfig, InferenceCore


@pytest.fixture(scope="module")
def clip(parity_fixture):
    return parity_fixture["frames"][:7], parity_fixture["label"]


def test_default_is_fp32_and_exact(pcvos_model, clip):
    frames, label = clip
    default = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs")
    fp32 = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs", precision="fp32")
    assert np.array_equal(default, fp32)


def test_bf16_changes_the_arithmetic_not_the_result(pcvos_model, clip):
    frames, label = clip
    fp32 = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs")
    bf16 = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs", precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(bf16.sum(0), 1.0, atol=1e-5)
    diff = np.abs(bf16[:, 1:] - fp32[:, 1:])
    assert diff.max() > 1e-4  # autocast really ran: bf16 has ~3 significant digits
    assert np.median(diff) < 0.05  # ... and the probabilities still follow the fp32 ones
    assert np.array_equal(bf16[:, 0], fp32[:, 0])  # the given mask's frame is not computed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_on_cuda_follow_fp32(pcvos_model, clip, precision):
    import copy

    frames, label = clip
    fp32 = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs")
    half = pcvos.segment(
        copy.deepcopy(pcvos_model),
        frames,
        {0: label},
        clip_length=3,
        output="probs",
        precision=precision,
        device="cuda",
    )
    assert half.dtype == np.float32 and np.isfinite(half).all()
    diff = np.abs(half[:, 1:] - fp32[:, 1:])
    assert diff.max() > 1e-4
    assert np.median(diff) < 0.05


def test_memory_stays_fp32_under_bf16(pcvos_model, clip):
    frames, label = clip
    core = InferenceCore(pcvos_model, InferenceConfig(clip_length=2, precision="bf16"))
    x = pcvos_model.normalize(torch.from_numpy(frames[:2]).permute(0, 3, 1, 2).float() / 255)
    x, _ = pcvos.model.network.pad_to_multiple(x, 16)
    onehot = torch.from_numpy(np.stack([label == i for i in (1, 2)])).float()
    onehot, _ = pcvos.model.network.pad_to_multiple(onehot, 16)
    probs = core.process_clip([0, 1], x, (onehot, [1, 2]))
    assert probs.dtype == torch.float32
    block = core.memory.block()
    assert block.keys.dtype == torch.float32 and block.values.dtype == torch.float32


def test_bad_precision_is_refused(pcvos_model, clip):
    frames, label = clip
    with pytest.raises(ValueError, match="precision"):
        pcvos.segment(pcvos_model, frames, {0: label}, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pcvos.segment(pcvos_model, frames, {0: label}, precision="fp16", device="cpu")


def test_cli_precision_flag(tmp_path, pcvos_model, clip, capsys):
    frames, label = clip
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    for i, f in enumerate(frames[:4]):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    mask = save_indexed_png(tmp_path / "m.png", label)
    weights = tmp_path / "w.pt"
    pcvos.save_checkpoint(pcvos_model, weights)
    out = tmp_path / "out"
    args = [
        "segment",
        str(folder),
        "--mask",
        str(mask),
        "--weights",
        str(weights),
        "--size",
        "native",
        "--quiet",
    ]
    assert main([*args, "--out", str(out), "--precision", "bf16"]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["precision"] == "bf16"
    assert len(list(out.glob("*.png"))) == 4
    if not torch.cuda.is_available():
        assert main([*args, "--out", str(tmp_path / "o2"), "--precision", "fp16", "--device", "cpu"]) == 2
        assert "CUDA" in capsys.readouterr().err
        assert not (tmp_path / "o2" / "summary.json").exists()
