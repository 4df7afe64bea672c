"""The training loop: data, model, optimiser, DDP, AMP, checkpoints with exact resume, logging.

Run it through ``pcvos train --config ...`` / ``python -m pcvos.train --config ...``; the same
entry works under ``torchrun --nproc_per_node N`` (DistributedDataParallel: gloo on CPU, NCCL on
GPU). ``train.batch_size`` is the global batch, split evenly across processes.

Exact resume: a checkpoint holds the model (in the project format, so :func:`pcvos.load_model`
reads it), optimiser, LR scheduler, AMP scaler, iteration, every process's python/numpy/torch
(and CUDA) RNG states and the data sampler's state. Data samples are pure functions of
``(seed, position in the sample stream, progress)``, so the sampler resumes from the iteration
alone. Everything loads back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pcvos.data.augment import StaticAugment, VideoAugment
from pcvos.data.io_utils import atomic_write, atomic_write_text
from pcvos.data.synthetic import SyntheticImages, SyntheticVideos
from pcvos.data.train_datasets import (
    ImageFolderSource,
    ImageSource,
    MixedDataset,
    SampleDataset,
    StaticDataset,
    TrainBatchSampler,
    VideoClipDataset,
    VideoFramesSource,
    VideoSource,
    davis_source,
    youtube_source,
)
from pcvos.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from pcvos.model.network import PCVOS, PCVOSConfig
from pcvos.train.config import STATIC_SOURCES, ConfigError, check_sources, dump_config
from pcvos.train.init import init_from_checkpoint, init_imagenet
from pcvos.train.losses import LossConfig, compute_losses
from pcvos.train.wrapper import PerClipTrainer

__all__ = [
    "run_training",
    "build_dataset",
    "build_model",
    "grads_path",
    "rng_state",
    "set_rng_state",
    "param_checksum",
]

log = logging.getLogger("pcvos.train")


# -- distributed --------------------------------------------------------------------------------
class _Dist:
    def __init__(self, device_pref: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if device_pref == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available (device=auto uses it when it is)")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.enabled:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# -- RNG state (weights_only-loadable) ----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    # the legacy tuple (the global RandomState is MT19937): its parts are tensors and numbers
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def param_checksum(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def grads_path(output_dir: str | Path, iteration: int) -> Path:
    """Where ``train.dump_grads=<iteration>`` writes that iteration's gradients."""
    return Path(output_dir) / f"grads_iter_{iteration:07d}.pt"


def _dump_grads(path: Path, net: torch.nn.Module, scale: float) -> None:
    """Each parameter's ``.grad`` (divided by the AMP loss scale) as float32 on the CPU, atomically.

    Parameters that got no gradient this iteration are left out (DDP with unused parameters).
    """
    grads = {
        name: (p.grad.detach().float() / scale).cpu()
        for name, p in net.named_parameters()
        if p.requires_grad and p.grad is not None
    }
    atomic_write(path, lambda tmp: torch.save(grads, tmp))


# -- building -----------------------------------------------------------------------------------
def _video_augment(d: dict, src: dict) -> VideoAugment:
    return VideoAugment(
        crop=tuple(d["crop"]),
        resize_short=src.get("resize_short", d["resize_short"]),
        zoom_range=tuple(d["zoom_range"]),
        motion_blur_prob=float(d["motion_blur_prob"]),
        motion_blur_max=int(d["motion_blur_max"]),
        thin_crop_prob=float(d["thin_crop_prob"]),
    )


def build_dataset(cfg: dict) -> MixedDataset:
    """The training dataset described by ``cfg["data"]``."""
    d = cfg["data"]
    mode = d["mode"]
    crop = tuple(d["crop"])
    parts: list[tuple[SampleDataset, int]] = []
    if not d["sources"]:
        raise ConfigError("data.sources is empty: nothing to train on")
    # types, keys and mode, as load_config checks them (cfg may be built by hand)
    check_sources(d["sources"], mode)
    for s in d["sources"]:
        s = dict(s)
        kind = s.get("type")
        repeat = int(s.get("repeat", 1))
        common = dict(min_pixels=d["min_pixels"], composite_prob=s.get("composite_prob", d["composite_prob"]))
        ds: SampleDataset
        if kind in STATIC_SOURCES:
            images: ImageSource
            if kind == "static":
                images = ImageFolderSource(s["root"])
            elif kind == "davis_frames":  # a video set's annotated frames, each a static image
                images = VideoFramesSource(
                    davis_source(
                        s["root"],
                        s.get("subset", "train"),
                        s.get("year"),
                        s.get("sequences"),
                        s.get("exclude"),
                    ),
                    int(s.get("every", 1)),
                )
            else:
                images = SyntheticImages(
                    s.get("num_images", 16), tuple(s.get("size", crop)), s.get("seed", 0)
                )
            aug = StaticAugment(
                crop=crop,
                resize_short=s.get(
                    "resize_short", d["resize_short"] or (max(crop) if kind != "synthetic_static" else None)
                ),
                thin_crop_prob=float(d["thin_crop_prob"]),
            )
            ds = StaticDataset(
                images,
                crop,
                d["static_frames"],
                max_objects=s.get("max_objects", d["max_objects"]),
                augment=aug,
                **common,
            )
        else:
            videos: VideoSource
            if kind == "davis":
                videos = davis_source(
                    s["root"], s.get("subset", "train"), s.get("year"), s.get("sequences"), s.get("exclude")
                )
            elif kind == "youtube":
                videos = youtube_source(s["root"], s.get("videos"), s.get("exclude"))
            else:  # synthetic
                videos = SyntheticVideos(
                    s.get("num_videos", 8),
                    s.get("num_frames", 24),
                    tuple(s.get("size", crop)),
                    s.get("max_objects", 2),
                    s.get("seed", 0),
                )
            ds = VideoClipDataset(
                videos,
                crop,
                d["clip_len"],
                d["num_clips"],
                mode,
                d["max_objects"],
                d["max_skip"],
                d["gap_schedule"],
                reverse_prob=d["reverse_prob"],
                augment=_video_augment(d, s),
                **common,
            )
        parts.append((ds, repeat))
    return MixedDataset(parts)


def build_model(cfg: dict, logger: logging.Logger = log) -> PCVOS:
    mcfg = dict(cfg["model"])
    init = cfg["init"]
    if not mcfg and init.get("checkpoint"):
        from pcvos.model.checkpoint import load_model

        net = load_model(init["checkpoint"])
        logger.info("model: architecture and weights from %s", init["checkpoint"])
    else:
        net = PCVOS(PCVOSConfig.from_dict(mcfg))
        if init.get("imagenet"):
            logger.info("ImageNet initialisation: %s", init_imagenet(net, init["imagenet"]))
        if init.get("checkpoint"):
            rep = init_from_checkpoint(net, init["checkpoint"], strict=bool(init.get("strict")))
            logger.info(
                "initialised from %s (%d tensors left as initialised: %s)",
                init["checkpoint"],
                len(rep["missing"]),
                rep["missing"][:6],
            )
    return net


def _clip_len(cfg: dict) -> int:
    return cfg["data"]["clip_len"] if cfg["data"]["mode"] == "per_clip" else 1


# -- checkpoints --------------------------------------------------------------------------------
def _ckpt_dir(cfg: dict) -> Path:
    return Path(cfg["output_dir"]) / "checkpoints"


def _save(path: Path, net: PCVOS, training: dict) -> None:
    save_checkpoint(net, path, extra={"training": training})


def _find_resume(cfg: dict) -> Path | None:
    r = cfg.get("resume")
    if not r:
        return None
    if r == "auto":
        p = _ckpt_dir(cfg) / "latest.pth"
        return p if p.is_file() else None
    p = Path(r)
    if not p.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {p}")
    return p


# -- logging helpers ----------------------------------------------------------------------------
_COLOURS = np.array([[0, 0, 0], [255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 255, 64]], np.float32)


def _panel(batch: dict, out: dict) -> np.ndarray:
    """(3, H', W') uint8: rows = frames of sample 0, columns = image, ground truth, prediction."""
    frames = batch["frames"][0].detach().float().cpu().numpy().transpose(0, 2, 3, 1) * 255
    gt = batch["labels"][0].cpu().numpy()
    pred = np.concatenate([gt[:1], out["probs"][0].detach().argmax(1).cpu().numpy()])
    rows = []
    for t in range(frames.shape[0]):
        img = frames[t]
        cols = [img]
        for lab in (gt[t], pred[t]):
            c = _COLOURS[np.clip(lab, 0, len(_COLOURS) - 1)]
            cols.append(np.where(lab[..., None] > 0, 0.5 * img + 0.5 * c, img))
        rows.append(np.concatenate(cols, 1))
    return np.clip(np.concatenate(rows, 0), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _make_writer(cfg: dict, main: bool):
    if not (main and cfg["train"]["tensorboard"]):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        log.warning("tensorboard is not importable: no TensorBoard logs")
        return None
    return SummaryWriter(str(Path(cfg["output_dir"]) / "tb"))


# -- the loop -----------------------------------------------------------------------------------
def run_training(cfg: dict) -> dict[str, Any]:
    """Train as configured; returns a summary (also written to ``<output_dir>/summary.json``)."""
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    dd = _Dist(cfg["device"])
    try:
        return _run(cfg, dd)
    finally:
        dd.close()
        torch.set_num_threads(threads)


def _run(cfg: dict, dd: _Dist) -> dict[str, Any]:
    tc, out_dir = cfg["train"], Path(cfg["output_dir"])
    if dd.main:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    else:
        log.setLevel(logging.WARNING)
    seed = int(cfg["seed"])
    total = int(tc["iterations"])
    if tc["batch_size"] % dd.world:
        raise ConfigError(f"train.batch_size={tc['batch_size']} is not divisible by the {dd.world} processes")
    per_proc = tc["batch_size"] // dd.world

    random.seed(seed + dd.rank)
    np.random.seed((seed + dd.rank) % 2**32)
    torch.manual_seed(seed)  # identical model initialisation on every process
    net = build_model(cfg).to(dd.device)
    model = PerClipTrainer(net, _clip_len(cfg), tc["use_refine"], tc["detach_memory_mask"], tc["freeze_bn"])
    model.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(tc["lr"]), weight_decay=float(tc["weight_decay"]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(s) for s in tc["lr_steps"]], float(tc["lr_gamma"]))
    use_amp = bool(tc["amp"]) and dd.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start = 0
    resume = _find_resume(cfg)
    if resume is not None:
        ck = read_checkpoint(resume)
        if not isinstance(ck, dict) or not isinstance(ck.get("training"), dict) or "state_dict" not in ck:
            raise CheckpointError(
                f"{resume}: not a training checkpoint (it has no optimizer state); resume from "
                "<output_dir>/checkpoints/latest.pth, or start from its weights with "
                "init.checkpoint=..."
            )
        net.load_state_dict(ck["state_dict"])
        tr = ck["training"]
        opt.load_state_dict(tr["optimizer"])
        sched.load_state_dict(tr["scheduler"])
        if use_amp and tr.get("scaler"):
            scaler.load_state_dict(tr["scaler"])
        start = int(tr["iteration"])
        states = tr.get("rng") or []
        if len(states) == dd.world:
            set_rng_state(states[dd.rank])
        elif states:
            log.warning(
                "checkpoint has RNG states of %d processes, this run has %d: RNG states not restored",
                len(states),
                dd.world,
            )
        log.info("resumed from %s at iteration %d", resume, start)
    elif torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

    find_unused = net.has_refiner and not model.use_refine
    ddp_model: torch.nn.Module = model
    if dd.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dd.local_rank] if dd.device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    dataset = build_dataset(cfg)
    sampler = TrainBatchSampler(len(dataset), per_proc, total, seed, dd.rank, dd.world, start)
    workers = int(cfg["data"]["num_workers"])
    # forkserver: forking a process whose torch threads already run can deadlock the workers
    # (Python warns on every fork); samples are pure functions of their index, so nothing is lost
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=dd.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context="forkserver" if workers > 0 else None,
    )
    loss_cfg = LossConfig(**cfg["loss"])
    if dd.main:
        # created only now: a wrong checkpoint, data folder or setting above leaves no output folder behind
        out_dir.mkdir(parents=True, exist_ok=True)
        text = dump_config(cfg)
        atomic_write_text(out_dir / "config.yaml", text)
        log.info(
            "training %s: %d samples, %d iterations, batch %d (%d per process, %d processes), device %s",
            cfg["name"],
            len(dataset),
            total,
            tc["batch_size"],
            per_proc,
            dd.world,
            dd.device,
        )
    writer = _make_writer(cfg, dd.main)
    history_path = out_dir / "history.jsonl"
    if dd.main and history_path.exists():  # drop records beyond the resume point (an interrupted run's tail)
        keep = [
            line
            for line in history_path.read_text().splitlines()
            if line and json.loads(line)["iteration"] <= start
        ]
        atomic_write_text(history_path, "".join(line + "\n" for line in keep))

    bar = None
    if dd.main and tc["progress"]:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=cfg["name"], dynamic_ncols=True, unit="it")

    def save(it: int) -> None:
        states = dd.gather(rng_state())
        if dd.main:
            training = {
                "iteration": it,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if use_amp else None,
                "rng": states,
                "sampler": sampler.state_dict(it),
                "world_size": dd.world,
                "config_yaml": dump_config(cfg),
            }
            cdir = _ckpt_dir(cfg)
            path = cdir / f"iter_{it:07d}.pth"
            _save(path, net, training)
            _save(cdir / "latest.pth", net, training)
            old = sorted(cdir.glob("iter_*.pth"))[: -max(1, int(tc["keep_checkpoints"]))]
            for p in old:
                p.unlink(missing_ok=True)
        dd.barrier()

    val_results = []
    last_log: dict[str, float] = {}
    t_start = time.time()
    it = start
    t_window, it_window = time.perf_counter(), start  # wall time per iteration over each logging window
    for batch in loader:
        batch = {
            k: (v.to(dd.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            out = ddp_model(batch["frames"], batch["masks"], batch["valid"])
        losses = compute_losses(out, batch, it, loss_cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        # DDP has averaged the gradients during backward(): every process holds the same, rank 0 writes them
        if dd.main and it + 1 == int(tc["dump_grads"]):
            _dump_grads(grads_path(out_dir, it + 1), net, float(scaler.get_scale()) if use_amp else 1.0)
        if tc["grad_clip"]:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, float(tc["grad_clip"]))
        scaler.step(opt)
        scaler.update()
        with warnings.catch_warnings():
            # AMP's scaler skips the optimizer step on the first iterations while it calibrates;
            # the schedule follows iterations all the same (resume relies on it), so the warning is moot
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            sched.step()
        it += 1
        if it % int(tc["log_every"]) == 0 or it == total:
            vals = dd.mean({k: float(v.detach()) for k, v in losses.items()})
            vals["lr"] = float(sched.get_last_lr()[0])
            now = time.perf_counter()  # after the loss read-back above, which waits for the device
            vals["s_per_it"] = (now - t_window) / max(it - it_window, 1)
            t_window, it_window = now, it
            last_log = vals
            if dd.main:
                with history_path.open("a") as f:
                    f.write(json.dumps({"iteration": it, **vals}) + "\n")
                if writer is not None:
                    for k, v in vals.items():
                        writer.add_scalar(f"train/{k}", v, it)
                if bar is not None:
                    bar.set_postfix(loss=f"{vals['total']:.3f}", iou=f"{vals['iou']:.3f}", refresh=False)
        if writer is not None and tc["image_every"] and it % int(tc["image_every"]) == 0:
            writer.add_image("train/panel", _panel(batch, out), it)
        if bar is not None:
            bar.update(1)
        stop = bool(tc["stop_at"]) and it >= int(tc["stop_at"])
        if (tc["save_every"] and it % int(tc["save_every"]) == 0) or it == total or stop:
            save(it)
        v = cfg["val"]
        if v["root"] and v["every"] and (it % int(v["every"]) == 0 or it == total):
            if dd.main:
                res = _validate(cfg, net, it)
                val_results.append(res)
                if writer is not None:
                    for k in ("J&F-Mean", "J-Mean", "F-Mean"):
                        if isinstance(res.get(k), float) and np.isfinite(res[k]):
                            writer.add_scalar(f"val/{k}", res[k], it)
                model.train()
            dd.barrier()
        if stop:
            log.info("stopping at iteration %d (train.stop_at); resume with resume=auto", it)
            break
    if bar is not None:
        bar.close()
    checksums = dd.gather(param_checksum(net))
    summary = {
        "name": cfg["name"],
        "iterations": it,
        "start_iteration": start,
        "world_size": dd.world,
        "seconds": time.time() - t_start,
        "last": last_log,
        "param_checksums": checksums,
        "validation": val_results,
    }
    if dd.main:
        if it == total:
            save_checkpoint(
                net, out_dir / "model_final.pth", metadata={"iterations": it, "name": cfg["name"]}
            )
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
        if writer is not None:
            writer.close()
    dd.barrier()
    return summary


def _validate(cfg: dict, net: PCVOS, it: int) -> dict[str, Any]:
    from pcvos.train.validate import validate_davis

    v = cfg["val"]
    res = validate_davis(
        net,
        v["root"],
        Path(cfg["output_dir"]) / "val_tmp",
        subset=v["subset"],
        year=v["year"],
        sequences=v["sequences"],
        size=v["size"],
        clip_length=v["clip_length"],
        top_k=v["top_k"],
        device=next(net.parameters()).device,
    )
    res["iteration"] = it
    short = {k: res[k] for k in ("J&F-Mean", "J-Mean", "F-Mean") if k in res}
    log.info("validation at %d: %s (%.0f s)", it, short, res["inference_seconds"])
    with (Path(cfg["output_dir"]) / "val_history.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "iteration": it,
                    **short,
                    "per_object": res.get("per_object"),
                    "per_sequence_J": res.get("per_sequence_J"),
                }
            )
            + "\n"
        )
    return res
