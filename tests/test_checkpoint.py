"""Checkpoint layouts, strictness and safety."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pcvos
from pcvos.model.checkpoint import CheckpointError, sha256_of


def test_released_pcvos_layout_is_recognised(official_weights):
    model = pcvos.load_model(official_weights())
    assert model.has_refiner and model.config.refine_depth == 2
    assert not model.training


def test_released_layout_with_relative_position_index_loads(official_weights):
    sd = official_weights()
    model = pcvos.load_model(sd)
    idx = model.refine_transformer.layers[0].blocks[0].attn.relative_position_index
    sd["refine_transformer.layers.0.blocks.0.attn.relative_position_index"] = idx.clone()
    sd["refine_transformer.layers.0.blocks.1.attn.relative_position_index"] = idx.clone()
    pcvos.load_model(sd)  # the computed buffer may be present in a released file


def test_stcn_layout_and_file_round_trip(official_weights, tmp_path):
    sd = official_weights(stcn=True)
    torch.save(sd, tmp_path / "stcn.pth")
    model = pcvos.load_model(tmp_path / "stcn.pth")
    assert not model.has_refiner
    assert torch.equal(model.state_dict()["decoder.pred.weight"], sd["decoder.pred.weight"])


def test_own_format_round_trip_keeps_config(official_weights, tmp_path):
    model = pcvos.load_model(official_weights())
    pcvos.save_checkpoint(model, tmp_path / "m.pt", metadata={"note": "test"})
    again = pcvos.load_model(tmp_path / "m.pt")
    assert again.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_ddp_prefix_and_wrapper_are_unwrapped(official_weights):
    sd = {"module." + k: v for k, v in official_weights(stcn=True).items()}
    model = pcvos.load_model({"network": sd})
    assert not model.has_refiner


def test_missing_keys_are_listed(official_weights):
    sd = official_weights()
    del sd["decoder.up_8_4.skip_conv.weight"]
    with pytest.raises(CheckpointError, match="missing keys.*decoder.up_8_4.skip_conv.weight"):
        pcvos.load_model(sd)


def test_unexpected_keys_are_listed(official_weights):
    sd = official_weights()
    sd["decoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected keys.*decoder.extra.weight"):
        pcvos.load_model(sd)


def test_shape_mismatch_is_reported(official_weights):
    sd = official_weights()
    sd["decoder.pred.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="shape mismatch.*decoder.pred.bias"):
        pcvos.load_model(sd)


def test_unknown_layout_is_a_value_error():
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        pcvos.load_model({"backbone.weight": torch.zeros(1)})


@pytest.mark.parametrize("content", [b"hello", b""])
def test_not_a_checkpoint_file(tmp_path, content):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(content)
    with pytest.raises(
        ValueError, match=r"weights.pth: not a PyTorch checkpoint \(neither torch.save's zip format"
    ):
        pcvos.load_model(bad)


def test_truncated_checkpoint_file(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.pth: not a PyTorch checkpoint that can be loaded safely"):
        pcvos.load_model(cut)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pcvos.load_model(tmp_path / "nope.pth")


class _Boom:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"a": _Boom()}, f)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint that can be loaded safely") as err:
        pcvos.load_model(path)
    assert "code ran" not in capsys.readouterr().out
    assert "weights_only" not in str(err.value)  # torch's hint to load it unsafely is not passed on


def _pcvos_file(path, **payload):
    torch.save({"format": "pcvos", "version": 1, **payload}, path)
    return path


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"config": {"value_dim": 60000}, "state_dict": {}}, r"out of bounds \(value_dim=60000"),
        ({"config": {"decoder_widths": [512, 256]}, "state_dict": {}}, "decoder_widths"),
        ({"config": {"refine_depth": 10**6}, "state_dict": {}}, "refine_depth"),
        ({"config": {"key_dim": "64"}, "state_dict": {}}, "key_dim='64'"),
        ({"config": {"no_such_key": 1}, "state_dict": {}}, "malformed model configuration"),
        ({"config": [1, 2], "state_dict": {}}, "without a model configuration"),
        ({"config": {}}, "without a state_dict"),
        ({"config": {}, "state_dict": {"w": 3}}, "not tensors"),
        ({"config": {"backbone": "vgg"}, "state_dict": {}}, "cannot build the model"),
    ],
)
def test_malformed_or_absurd_pcvos_config_is_refused_before_building(tmp_path, payload, message):
    path = _pcvos_file(tmp_path / "bad.pt", **payload)
    with pytest.raises(CheckpointError, match=message):
        pcvos.load_model(path)


def test_bad_checkpoints_are_one_line_in_the_cli(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from pcvos.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (32, 24), (50, 50, 50)).save(frames / "0.png")
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 8)).resize((32, 24)).save(tmp_path / "m.png")
    for name, payload in (
        ("absurd.pt", {"config": {"value_dim": 60000}, "state_dict": {}}),
        ("broken.pt", {"config": {"bogus": True}, "state_dict": {}}),
    ):
        path = _pcvos_file(tmp_path / name, **payload)
        code = main(
            [
                "segment",
                str(frames),
                "--mask",
                str(tmp_path / "m.png"),
                "--weights",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and name in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (
        main(
            [
                "segment",
                str(frames),
                "--mask",
                str(tmp_path / "m.png"),
                "--weights",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_script_writes_fp16_model_and_card(tmp_path):
    # scripts/export_model.py is how a model is shipped: fp16 file, card with its SHA-256 and size
    root = Path(__file__).resolve().parents[1]
    cfg = pcvos.PCVOSConfig(
        backbone="efficientnet-lite0",
        key_dim=16,
        value_dim=32,
        thin_dim=16,
        decoder_widths=(16, 16, 16),
        refine=False,
    )
    torch.manual_seed(0)
    pcvos.save_checkpoint(pcvos.PCVOS(cfg), tmp_path / "final.pth")
    (tmp_path / "extra.json").write_text(json.dumps({"version": "test", "held_out": ["bear"]}))
    out = tmp_path / "ship" / "model.pt"
    out.parent.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            str(root / "scripts/export_model.py"),
            str(tmp_path / "final.pth"),
            str(out),
            "--card",
            str(tmp_path / "extra.json"),
            "--preferred-size",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_of(out) and card["bytes"] == out.stat().st_size
    assert card["version"] == "test" and card["config"]["extra"]["preferred_size"] == 240
    payload = torch.load(out, map_location="cpu", weights_only=True)
    halves = [v.dtype for v in payload["state_dict"].values() if v.is_floating_point()]
    assert halves and all(d == torch.float16 for d in halves)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.pt"]  # no temp files left
