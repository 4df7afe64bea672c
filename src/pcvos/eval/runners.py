"""Benchmark inference runners: DAVIS and YouTube-VOS result folders, resumable and shardable.

Each sequence is written into a hidden folder and renamed into place when complete, so an
interrupted run leaves only whole sequences and a rerun skips them. Under ``torchrun`` the
sequences are split across ranks (rank r takes every world-th one); each sequence is segmented
by exactly one process with the same code, so the results equal a single-process run.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pcvos.data.davis import DavisDataset
from pcvos.data.io_utils import save_indexed_png
from pcvos.data.youtube import YouTubeVOSDataset, write_youtube_submission
from pcvos.inference.api import segment
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
from pcvos.model.network import PCVOS


@dataclass
class RunStats:
    """What one process did: sequences and frames segmented, inference seconds, peak memory."""

    sequences: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def merge(self, other: RunStats) -> RunStats:
        # processes run side by side: frames add up, wall time is the slowest process's
        return RunStats(
            self.sequences + other.sequences,
            self.skipped + other.skipped,
            self.frames + other.frames,
            max(self.seconds, other.seconds),
            max(self.peak_memory_mb, other.peak_memory_mb),
        )


@dataclass
class Schedule:
    """Inference settings shared by the runners."""

    clip_length: int = 5
    memory_every: int | None = None
    pmm_segment: int | None = 5
    top_k: int = 20
    size: int | None = None
    max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES
    refine: bool | None = None  # None: ICR when the model has it
    precision: str = "fp32"  # "bf16" / "fp16": autocast the network (see pcvos.segment)

    def kwargs(self, model: PCVOS) -> dict[str, Any]:
        d = asdict(self)
        if self.refine is None:
            d["refine"] = model.has_refiner
        return d


class Distributed:
    """Rank and world size from torchrun's environment; a gloo/NCCL group when world > 1."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self.owns_group = True

    def device(self, requested: str | None) -> torch.device:
        if requested not in (None, "auto"):
            return torch.device(requested)
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def shard(self, items: list[str]) -> list[str]:
        return items[self.rank :: self.world]

    def gather(self, stats: RunStats) -> RunStats:
        if self.world == 1:
            return stats
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, stats)
        total = out[0]
        for s in out[1:]:
            total = total.merge(s)
        return total

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_sequence(
    final: Path, names: Iterable[str], labels: np.ndarray, keep: Callable[[int], bool]
) -> None:
    partial = final.parent / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    for i, name in enumerate(names):
        if keep(i):
            save_indexed_png(partial / f"{name}.png", labels[i])
    os.replace(partial, final)


def run_davis(
    model: PCVOS,
    davis_root: str | Path,
    out_dir: str | Path,
    *,
    year: str = "2017",
    subset: str = "val",
    schedule: Schedule | None = None,
    device: torch.device | None = None,
    ctx: Distributed | None = None,
    progress: bool = True,
) -> RunStats:
    """Segment every sequence of a DAVIS subset into ``out_dir/<sequence>/<frame>.png``."""
    schedule = schedule or Schedule()
    ctx = ctx or Distributed()
    device = device or ctx.device(None)
    model = model.to(device)
    ds = DavisDataset(davis_root, year=year, subset=subset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = RunStats()
    mine = ctx.shard(list(ds.sequences))
    bar = tqdm(
        mine,
        desc=f"davis {subset} [rank {ctx.rank}]" if ctx.world > 1 else f"davis {subset}",
        unit="seq",
        disable=not progress,
        position=ctx.rank,
    )
    for name in bar:
        final = out_dir / name
        if final.is_dir():
            stats.skipped += 1
            continue
        seq = ds[name]
        frames = seq.frames()
        first = seq.first_mask()
        first = np.where(first == 255, 0, first).astype(np.uint8)
        _sync(device)
        t0 = time.perf_counter()
        labels = segment(model, frames, {0: first}, device=device, **schedule.kwargs(model))
        _sync(device)
        stats.seconds += time.perf_counter() - t0
        stats.frames += len(frames)
        stats.sequences += 1
        _write_sequence(final, seq.frame_names, labels, lambda i: True)
        bar.set_postfix(fps=f"{stats.fps:.2f}")
    stats.peak_memory_mb = _peak_mb(device)
    return stats


def run_youtube(
    model: PCVOS,
    root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "valid",
    all_frames: bool | None = None,
    schedule: Schedule | None = None,
    device: torch.device | None = None,
    ctx: Distributed | None = None,
    progress: bool = True,
) -> RunStats:
    """Segment YouTube-VOS videos into ``out_dir/Annotations/<video>/<frame>.png`` (scored frames only).

    ``all_frames=None`` uses ``ROOT/<split>_all_frames`` when present: propagating through every
    frame is more accurate, and only the benchmark's frames are written.
    """
    schedule = schedule or Schedule(size=480)
    ctx = ctx or Distributed()
    device = device or ctx.device(None)
    model = model.to(device)
    if all_frames is None:
        all_frames = (Path(root) / f"{split}_all_frames").is_dir()
    ds = YouTubeVOSDataset(root, split=split, all_frames=all_frames)
    ann = Path(out_dir) / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    stats = RunStats()
    videos = ctx.shard([v.name for v in ds])
    bar = tqdm(videos, desc=f"youtube {split}", unit="video", disable=not progress, position=ctx.rank)
    for name in bar:
        final = ann / name
        if final.is_dir():
            stats.skipped += 1
            continue
        video = ds[name]
        frames = video.frames()
        masks = {i: np.where(m == 255, 0, m).astype(np.uint8) for i, m in video.masks.items()}
        _sync(device)
        t0 = time.perf_counter()
        labels = segment(model, frames, masks, device=device, **schedule.kwargs(model))
        _sync(device)
        stats.seconds += time.perf_counter() - t0
        stats.frames += len(frames)
        stats.sequences += 1
        scored = set(video.scored_frames)
        _write_sequence(final, video.frame_names, labels, scored.__contains__)
        bar.set_postfix(fps=f"{stats.fps:.2f}")
    stats.peak_memory_mb = _peak_mb(device)
    return stats


def zip_youtube_results(out_dir: str | Path, zip_path: str | Path) -> Path:
    """Pack ``out_dir/Annotations`` into a submission zip (written atomically)."""
    from PIL import Image

    ann = Path(out_dir) / "Annotations"

    def results():
        for video in sorted(p for p in ann.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for png in sorted(video.glob("*.png")):
                yield video.name, png.stem, np.array(Image.open(png))

    return write_youtube_submission(zip_path, results())
