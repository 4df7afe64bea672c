"""The trainer end to end on generated data: learning, exact resume, DDP, CLI, validation, modes."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

import pcvos
from pcvos.data.synthetic import write_davis_layout
from pcvos.train.cli import register
from pcvos.train.config import ConfigError, load_config
from pcvos.train.losses import LossConfig, compute_losses
from pcvos.train.trainer import build_dataset, build_model, grads_path, run_training
from pcvos.train.wrapper import PerClipTrainer

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, name, *overrides):
    return load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path / name}", *overrides])


def _history(path):
    return [json.loads(line) for line in (Path(path) / "history.jsonl").read_text().splitlines()]


def _fixed_loss(cfg, net, batch):
    tr = PerClipTrainer(net, cfg["data"]["clip_len"], freeze_bn=cfg["train"]["freeze_bn"]).train()
    with torch.no_grad():
        out = tr(batch["frames"], batch["masks"], batch["valid"])
        return compute_losses(out, batch, 0, LossConfig(**cfg["loss"]))["total"].item()


def test_tiny_config_lowers_the_loss(tmp_path):
    cfg = _cfg(tmp_path, "tiny")
    ds = build_dataset(cfg)
    batch = default_collate([ds[(i, 99, 10**6 + i, 0.0)] for i in range(6)])  # held-out samples
    torch.manual_seed(cfg["seed"])
    before = _fixed_loss(cfg, build_model(cfg), batch)
    summary = run_training(cfg)
    assert summary["iterations"] == 20
    after = _fixed_loss(cfg, pcvos.load_model(tmp_path / "tiny" / "model_final.pth"), batch)
    assert after < 0.85 * before, (before, after)
    h = _history(tmp_path / "tiny")
    assert [r["iteration"] for r in h] == list(range(1, 21))
    assert all(r["s_per_it"] > 0 for r in h)


def test_stop_and_resume_is_exact(tmp_path):
    common = ["train.iterations=10", "train.save_every=5"]
    run_training(_cfg(tmp_path, "full", *common))
    run_training(_cfg(tmp_path, "split", *common, "train.stop_at=5"))
    assert [r["iteration"] for r in _history(tmp_path / "split")] == [1, 2, 3, 4, 5]
    ck = torch.load(tmp_path / "split" / "checkpoints" / "latest.pth", map_location="cpu", weights_only=True)
    assert ck["training"]["iteration"] == 5 and ck["training"]["sampler"]["iteration"] == 5
    assert pcvos.load_model(tmp_path / "split" / "checkpoints" / "latest.pth") is not None
    run_training(_cfg(tmp_path, "split", *common, "resume=auto"))
    full, split = _history(tmp_path / "full"), _history(tmp_path / "split")
    assert [r["iteration"] for r in split] == list(range(1, 11))
    for a, b in zip(full[5:], split[5:], strict=True):
        assert a["iteration"] == b["iteration"]
        for k in ("total", "image", "clip", "iou"):
            assert a[k] == b[k], (a, b)
    wa = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "split" / "model_final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- DDP: 2 processes x batch 1 against 1 process x batch 2 ------------------------------------------
# Both set-ups compute the same mathematical quantities from the same weights and the same two samples
# (the loss is a mean over the batch and BatchNorm is frozen, so a sample's forward does not depend on
# the other): the gradient of iteration 1 is (g_0 + g_1) / 2 in both. They differ only in the order
# of float32 operations: one process reduces a weight's gradient over both samples' pixels in one sum,
# DDP reduces each sample on its own process and all-reduces the two results, and kernels may block a
# batch of 1 and of 2 differently. A float32 sum of n terms, in any order, is within
# (n - 1) * eps32 / 2 * sum|terms| of the exact sum, and within about sqrt(n) * eps32 * sum|terms| when
# the rounding errors have random signs (Higham, "Accuracy and Stability of Numerical Algorithms", 4.2;
# Higham & Mary 2019), and each layer of the backward adds its own such error. So the two gradients
# agree, relative to their size, to about sqrt(n) * L * eps32, n the longest reduction (a weight
# gradient over every pixel of every frame of the batch) and L the layers (at most one per module with
# parameters). That is a few 1e-3 here, 1e4 x what one x86 CPU measured (~2 eps32) and still 1/30
# of the smallest error in averaging (a rank's gradient lost: 0.14), which the test checks too.
#
# Weights after Adam are not a sound comparison: Adam's first step moves every weight by lr *
# sign(gradient), so rounding noise on a gradient that is ~0 (the key projection's bias: the affinity
# is invariant to it, its gradient is rounding noise alone) moves that weight 2 * lr apart between the
# set-ups (282 elements on one AMD EPYC), and Adam, invariant to the gradient's scale but for its
# eps, hardly sees a gradient summed instead of averaged. The losses are compared over every
# iteration: iteration 1 is the forward's rounding alone; afterwards the weights differ only where
# the gradient is at noise level, to which the loss is insensitive to first order, while a wrong
# sample split would change it by O(10%) (other samples).
EPS32 = torch.finfo(torch.float32).eps
_DDP_ITERS = 3


def _grad_tolerance(cfg: dict, grads: dict[str, torch.Tensor]) -> float:
    """sqrt(n) * L * eps32 for the tiny config's backward (see above)."""
    d = cfg["data"]
    frames = 1 + d["clip_len"] * d["num_clips"]
    n = cfg["train"]["batch_size"] * frames * d["crop"][0] * d["crop"][1]
    layers = len({name.rsplit(".", 1)[0] for name in grads})
    return n**0.5 * layers * EPS32


def _grad_mismatch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """(relative 2-norm difference over all parameters, worst per tensor, that tensor's name).

    An element's rounding error scales with the gradients the backward carries through it, not with
    its own value, which may cancel to ~0; so each tensor is measured against its norm plus the whole
    gradient's RMS over its elements.
    """
    assert sorted(got) == sorted(want)
    flat_got = torch.cat([got[k].double().flatten() for k in sorted(want)])
    flat_want = torch.cat([want[k].double().flatten() for k in sorted(want)])
    rms = flat_want.norm().item() / flat_want.numel() ** 0.5
    overall = ((flat_got - flat_want).norm() / flat_want.norm()).item()
    per = {
        k: (
            (got[k].double() - want[k].double()).norm()
            / (want[k].double().norm() + rms * want[k].numel() ** 0.5)
        ).item()
        for k in want
    }
    worst = max(per, key=per.get)
    return overall, per[worst], worst


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """The same 3 iterations as 2 processes x batch 1 and as 1 process x batch 2, and sample 0 alone."""
    tmp = tmp_path_factory.mktemp("ddp")
    common = [
        f"train.iterations={_DDP_ITERS}",
        "train.freeze_bn=true",
        "train.save_every=0",
        "train.dump_grads=1",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pcvos.train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "-o",
        str(tmp / "ddp"),
        *common,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    one = _cfg(tmp, "one", *common)
    run_training(one)
    # rank 0's batch of iteration 1 is stream position 0: a 1-process run of batch 1 computes its gradient
    run_training(_cfg(tmp, "rank0", *common, "train.batch_size=1", "train.iterations=1"))
    grads = {
        name: torch.load(grads_path(tmp / name, 1), weights_only=True) for name in ("ddp", "one", "rank0")
    }
    return tmp, one, grads


def test_ddp_two_processes_match_one(ddp_runs):
    tmp, cfg, grads = ddp_runs
    summary = json.loads((tmp / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    sums = summary["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # the ranks applied identical updates
    tol = _grad_tolerance(cfg, grads["one"])
    overall, worst, name = _grad_mismatch(grads["ddp"], grads["one"])
    assert overall <= tol and worst <= tol, (overall, worst, name, tol)
    a, b = _history(tmp / "ddp"), _history(tmp / "one")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == list(range(1, _DDP_ITERS + 1))
    for ra, rb in zip(a, b, strict=True):
        for k in ("total", "image", "clip"):
            assert ra[k] == pytest.approx(rb[k], rel=tol), (k, ra, rb)


def test_ddp_check_detects_wrong_averaging(ddp_runs):
    # the comparison above must fail for the ways averaging goes wrong, built from the real gradients
    _, cfg, grads = ddp_runs
    tol = _grad_tolerance(cfg, grads["one"])
    g0, one = grads["rank0"], grads["one"]
    wrong = {
        "ranks summed, not averaged": {k: 2 * v for k, v in grads["ddp"].items()},
        "rank 1 dropped, rank 0 taken as the average": g0,
        "rank 1 dropped, the sum still divided by 2": {k: v / 2 for k, v in g0.items()},
        "rank 0 dropped, rank 1 taken as the average": {k: 2 * one[k] - g0[k] for k in one},
    }
    for what, g in wrong.items():
        overall, worst, _ = _grad_mismatch(g, one)
        assert overall > 10 * tol and worst > 10 * tol, (what, overall, worst, tol)


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="pcvos")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "tiny", *argv])
    return args.func(args)


def test_cli_register_and_overrides(tmp_path, capsys):
    assert (
        _cli(
            "--print-config",
            "train.iterations=7",
            "paths.data=/x",
            "val.root=${paths.data}/davis",
            "data.crop=[32,32]",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "iterations: 7" in printed and "root: /x/davis" in printed
    with pytest.raises(ConfigError, match="trian"):
        load_config(ROOT / "configs" / "tiny.yaml", ["trian.iterations=3"])
    with pytest.raises(ConfigError, match="model"):
        load_config(ROOT / "configs" / "tiny.yaml", ["model.no_such_field=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iterations=2k", "train.iterations must be a whole number, got '2k'"),
        ("threads=abc", "threads must be a whole number, got 'abc'"),
        ("seed=1.5", "seed must be a whole number, got 1.5"),
        ("train.iterations=0", "train.iterations must be at least 1, got 0"),
        ("train.amp=maybe", "train.amp must be true or false, got 'maybe'"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("train.dump_grads=-1", "train.dump_grads must be at least 0, got -1"),
        ("train.dump_grads=21", "train.dump_grads=21 is past train.iterations=20"),
        ("data.crop=384", "data.crop must be a list, got 384"),
        ("data.crop=[384]", "data.crop must be a list of 2 whole numbers, got [384]"),
        ("data.crop=[64,0]", "data.crop must be positive"),
        ("train.lr_steps=[a]", "train.lr_steps must be a list of whole numbers"),
        ("data.gap_schedule=[[0,5],[0.5]]", "data.gap_schedule.1 must be a list of 2 numbers"),
        ("train=3", "train must be a mapping, got 3"),
        ("data=[]", "data must be a mapping, got []"),
        ("device=gpu", "device must be auto, cpu or cuda, got 'gpu'"),
        ("data.mode=static", "data.sources.0: a synthetic source gives videos; data.mode=static needs"),
        ("data.sources=[{type:", "override 'data.sources=[{type:': the value is not valid YAML"),
        ("data.sources.5.root=x", "'data.sources.5.root' does not address a key of the config"),
        (
            "data.sources=[]",
            "data.sources is empty: nothing to train on",
        ),  # found by the run, before it writes
    ],
)
def test_config_values_are_checked(tmp_path, capsys, override, message):
    # caught when the config is read: these used to end in a traceback from the trainer's int()/tuple()
    out = tmp_path / "run"
    assert _cli("-o", str(out), override) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_exit_2(tmp_path, capsys):
    assert _cli("-o", str(tmp_path / "run"), "device=cuda") == 2
    assert "device=cuda but CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_file_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  iterations: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_config_values_are_normalised():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.lr=1e-4", "name=2026", "train.grad_clip=1"])
    assert cfg["train"]["lr"] == 1e-4  # YAML 1.1 reads 1e-4 (no dot) as a string
    assert cfg["name"] == "2026" and cfg["train"]["grad_clip"] == 1.0


def test_overrides_on_both_sides_of_options(tmp_path, capsys):
    from pcvos.cli import main as pcvos_main
    from pcvos.train.cli import main as train_main

    out = str(tmp_path / "run")
    for entry in (lambda argv: pcvos_main(["train", *argv]), train_main):
        assert entry(["--config", "tiny", "train.iterations=7", "-o", out, "seed=4", "--print-config"]) == 0
        printed = capsys.readouterr().out
        assert "iterations: 7" in printed and "seed: 4" in printed
    # --resume takes an optional path: an override right after it is an override, resume stays auto
    assert pcvos_main(["train", "--config", "tiny", "-o", out, "--resume", "seed=5", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "seed: 5" in printed and "resume: auto" in printed
    # option values are paths, not YAML: a colon or bracket in them stays part of the name
    assert pcvos_main(["train", "--config", "tiny", "-o", str(tmp_path / "run: [2]"), "--print-config"]) == 0
    assert f"output_dir: '{tmp_path / 'run: [2]'}'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # anything else left over is still an error
        pcvos_main(["train", "--config", "tiny", "-o", out, "--bogus"])
    assert info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_source_keys_are_checked_per_type(tmp_path, capsys):
    # a misspelt key would otherwise be ignored: "sequence" for "sequences" trains on every sequence
    out = tmp_path / "run"
    assert _cli("-o", str(out), "data.sources=[{type: davis, root: /x, sequence: [bear]}]") == 2
    err = capsys.readouterr().err
    assert "data.sources.0: unknown key(s) 'sequence' for a davis source" in err and "Traceback" not in err
    assert not out.exists()
    cases = [
        ("[{type: youtube, root: /x, every: 2}]", "'every' for a youtube source"),  # davis_frames only
        ("[{type: davis_franes, root: /x}]", "data.sources.0: unknown source type 'davis_franes'"),
        ("[{root: /x}]", "unknown source type None"),
        ("[/x]", "data.sources.0 must be a mapping"),
        ("{type: davis}", "data.sources must be a list"),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError) as info:
            load_config(ROOT / "configs" / "tiny.yaml", ["data.sources=" + value])
        assert message in str(info.value)
    # every key a source type reads passes
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            "data.mode=static",
            "data.sources=[{type: davis_frames, root: /x, subset: train, year: '2016', sequences: [a],"
            " exclude: [b], every: 2, max_objects: 1, repeat: 2, composite_prob: 0.5, resize_short: 240}]",
        ],
    )
    assert cfg["data"]["sources"][0]["every"] == 2


def test_cli_wrong_checkpoint_files_are_exit_2_with_no_output(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    weights_only = tmp_path / "weights.pth"
    pcvos.save_checkpoint(
        pcvos.PCVOS(pcvos.PCVOSConfig.from_dict(load_config(ROOT / "configs" / "tiny.yaml")["model"])),
        weights_only,
    )
    cases = [
        (["init.checkpoint=" + str(text)], "notes.pth: not a PyTorch checkpoint"),
        (["--resume", str(text)], "notes.pth: not a PyTorch checkpoint"),
        (["--resume", str(weights_only)], "weights.pth: not a training checkpoint"),
        (["--resume", str(tmp_path / "missing.pth")], "resume checkpoint not found"),
    ]
    for argv, message in cases:
        out = tmp_path / "run"
        assert _cli("-o", str(out), *argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not out.exists()  # nothing written for a run that never started


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg["data"]["mode"] in ("per_clip", "frame_wise", "static")


@pytest.mark.parametrize("mode", ["frame_wise", "static"])
def test_other_modes_run(tmp_path, mode):
    over = ["train.iterations=2", f"data.mode={mode}"]
    if mode == "static":
        over.append("data.sources=[{type: synthetic_static, num_images: 4, size: [64, 64]}]")
    s = run_training(_cfg(tmp_path, mode, *over))
    assert s["iterations"] == 2 and s["last"]["total"] > 0


def test_validation_on_davis_layout(tmp_path):
    root = tmp_path / "davis"
    names = write_davis_layout(root, num_videos=3, num_frames=8, size=(64, 64), max_objects=2, year="2017")
    cfg = _cfg(
        tmp_path,
        "val",
        "train.iterations=2",
        f"val.root={root}",
        "val.subset=train",
        f"val.sequences=[{names[2]}]",
        "val.every=2",
        f"data.sources=[{{type: davis, root: {root}, exclude: [{names[2]}]}}]",
    )
    s = run_training(cfg)
    v = s["validation"][-1]
    assert v["iteration"] == 2 and 0.0 <= v["J-Mean"] <= 1.0
    assert (tmp_path / "val" / "val_history.jsonl").is_file()


def test_resnet_imagenet_init(tmp_path):
    from torchvision.models import resnet18, resnet50

    from pcvos.train.init import init_resnet_imagenet

    torch.manual_seed(0)
    r50, r18 = resnet50(), resnet18()
    torch.save(r50.state_dict(), tmp_path / "r50.pth")
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    net = pcvos.PCVOS(pcvos.PCVOSConfig(refine=False))
    done = init_resnet_imagenet(net, [str(tmp_path / "r50.pth"), str(tmp_path / "r18.pth")])
    assert done["key_encoder"] > 250 and done["value_encoder"] > 90
    assert torch.equal(net.key_encoder.res2[0].conv3.weight, r50.layer1[0].conv3.weight)
    assert torch.equal(net.key_encoder.layer3[5].bn3.running_var, r50.layer3[5].bn3.running_var)
    stem = net.value_encoder.conv1.weight
    assert (
        torch.equal(stem[:, :3], r18.conv1.weight)
        and not stem[:, 3:].any()
        and not net.value_encoder.conv1.bias.any()
    )
    assert torch.equal(net.value_encoder.layer3[0].downsample[0].weight, r18.layer3[0].downsample[0].weight)
    assert not net.value_encoder.layer2[1].conv2.bias.any()


def test_init_from_checkpoint_non_strict(tmp_path):
    from pcvos.model.checkpoint import CheckpointError
    from pcvos.train.init import init_from_checkpoint

    small = dict(
        backbone="efficientnet-lite0",
        key_dim=16,
        value_dim=32,
        thin_dim=32,
        local_key_dim=32,
        decoder_widths=(32, 16, 16),
    )
    torch.manual_seed(1)
    stcn_like = pcvos.PCVOS(pcvos.PCVOSConfig(refine=False, **small))
    pcvos.save_checkpoint(stcn_like, tmp_path / "stcn_like.pth")
    torch.manual_seed(2)
    net = pcvos.PCVOS(pcvos.PCVOSConfig(**small))
    rep = init_from_checkpoint(net, tmp_path / "stcn_like.pth")
    assert rep["missing"] and all(k.startswith(("input_proj", "refine_transformer")) for k in rep["missing"])
    assert torch.equal(net.decoder.pred.weight, stcn_like.decoder.pred.weight)
    with pytest.raises(CheckpointError, match="missing keys"):
        init_from_checkpoint(net, tmp_path / "stcn_like.pth", strict=True)
