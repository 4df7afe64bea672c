"""Benchmark inference runners: DAVIS and YouTube-VOS result folders, resumable and shardable.

Each sequence is written into a hidden folder and renamed into place when complete, so an
interrupted run leaves only whole sequences and a rerun skips them. With ``Schedule.adapt`` each
sequence first fine-tunes its own copy of the model from its annotated frames
(:func:`pcvos.inference.adapt.adapt`, as ``pcvos segment --adapt`` does); the model passed in is
never changed, so every sequence adapts from the same weights. Per-sequence seconds (adapting,
inference) are kept in :class:`RunStats` and written by :func:`write_run_summary`. Under ``torchrun`` the
sequences are split across ranks (rank r takes every world-th one); each sequence is segmented
by exactly one process with the same code, so the results equal a single-process run.
"""

from __future__ import annotations

import json
import numbers
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pcvos.data.davis import DavisDataset
from pcvos.data.io_utils import atomic_write_text, save_indexed_png
from pcvos.data.youtube import YouTubeVOSDataset, write_youtube_submission
from pcvos.inference.adapt import adapt
from pcvos.inference.api import segment
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
from pcvos.model.network import PCVOS

# The run summary in the result folder (per-sequence seconds, settings); rewritten, merged, on resume.
RUN_SUMMARY_NAME = "summary.json"


@dataclass
class SequenceTiming:
    """One sequence's cost: seconds adapting (0 without adaptation) and seconds of inference."""

    name: str
    frames: int
    adapt_steps: int
    adapt_seed: int
    adapt_seconds: float
    inference_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.inference_seconds if self.inference_seconds > 0 else float("nan")


@dataclass
class RunStats:
    """What one process did: sequences and frames segmented, seconds (inference, adapting), peak memory."""

    sequences: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    adapt_seconds: float = 0.0
    per_sequence: list[SequenceTiming] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def add(self, timing: SequenceTiming) -> None:
        """Count one segmented sequence."""
        self.sequences += 1
        self.frames += timing.frames
        self.seconds += timing.inference_seconds
        self.adapt_seconds += timing.adapt_seconds
        self.per_sequence.append(timing)

    def merge(self, other: RunStats) -> RunStats:
        # processes run side by side: frames add up, wall times are the slowest process's
        return RunStats(
            self.sequences + other.sequences,
            self.skipped + other.skipped,
            self.frames + other.frames,
            max(self.seconds, other.seconds),
            max(self.peak_memory_mb, other.peak_memory_mb),
            max(self.adapt_seconds, other.adapt_seconds),
            self.per_sequence + other.per_sequence,
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
    adapt: int = 0  # test-time adaptation steps per sequence (pcvos.adapt); 0: off
    adapt_seed: int = 0

    def __post_init__(self) -> None:
        for what, value in (("adapt", self.adapt), ("adapt_seed", self.adapt_seed)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"Schedule.{what} must be a non-negative integer, got {value!r}")

    def kwargs(self, model: PCVOS) -> dict[str, Any]:
        """Keyword arguments of :func:`pcvos.segment` (adaptation is run, and timed, apart)."""
        d = asdict(self)
        del d["adapt"], d["adapt_seed"]
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


def _segment_timed(
    model: PCVOS,
    name: str,
    frames: np.ndarray,
    masks: dict[int, np.ndarray],
    schedule: Schedule,
    device: torch.device,
) -> tuple[np.ndarray, SequenceTiming]:
    """``pcvos.segment(..., adapt=schedule.adapt)`` with the adaptation and the inference timed apart."""
    net, adapt_seconds = model, 0.0
    if schedule.adapt:
        _sync(device)
        t0 = time.perf_counter()
        # a fresh copy per sequence from the caller's weights: nothing learnt on one video reaches the next
        net = adapt(model, frames, masks, schedule.adapt, seed=schedule.adapt_seed, size=schedule.size)
        _sync(device)
        adapt_seconds = time.perf_counter() - t0
    _sync(device)
    t0 = time.perf_counter()
    labels = segment(net, frames, masks, device=device, **schedule.kwargs(model))
    _sync(device)
    timing = SequenceTiming(
        name, len(frames), schedule.adapt, schedule.adapt_seed, adapt_seconds, time.perf_counter() - t0
    )
    return labels, timing


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
        labels, timing = _segment_timed(model, name, frames, {0: first}, schedule, device)
        stats.add(timing)
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
        labels, timing = _segment_timed(model, name, frames, masks, schedule, device)
        stats.add(timing)
        scored = set(video.scored_frames)
        _write_sequence(final, video.frame_names, labels, scored.__contains__)
        bar.set_postfix(fps=f"{stats.fps:.2f}")
    stats.peak_memory_mb = _peak_mb(device)
    return stats


def write_run_summary(
    out_dir: str | Path, stats: RunStats, *, benchmark: str, settings: dict[str, Any]
) -> tuple[Path, str | None]:
    """Write ``out_dir/summary.json``: per-sequence seconds (adapting, inference) and the settings.

    Sequences segmented by earlier runs into the same folder keep their entries (each entry
    names its adaptation steps and seed, so a folder filled by runs with different dials says
    so). Returns the path and a warning when an earlier summary could not be read (it is then
    replaced by this run's entries).
    """
    path = Path(out_dir) / RUN_SUMMARY_NAME
    entries: dict[str, dict[str, Any]] = {}
    warning = None
    if path.is_file():
        try:
            entries = dict(json.loads(path.read_text(encoding="utf-8"))["sequences"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warning = f"{path}: unreadable earlier summary ({exc}); it now lists this run's sequences only"
            entries = {}
    for t in stats.per_sequence:
        entries[t.name] = {
            "frames": t.frames,
            "adapt_steps": t.adapt_steps,
            "adapt_seed": t.adapt_seed,
            "adapt_seconds": round(t.adapt_seconds, 3),
            "inference_seconds": round(t.inference_seconds, 3),
            "frames_per_second": round(t.fps, 3),
        }
    entries = dict(sorted(entries.items()))
    total = {
        "sequences": len(entries),
        "frames": sum(e["frames"] for e in entries.values()),
        "adapt_seconds": round(sum(e["adapt_seconds"] for e in entries.values()), 3),
        "inference_seconds": round(sum(e["inference_seconds"] for e in entries.values()), 3),
    }
    doc = {"benchmark": benchmark, "settings": settings, "sequences": entries, "total": total}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path, warning


def format_timings(timings: list[SequenceTiming]) -> str:
    """A table of per-sequence seconds (adapting, inference) and frames/s, with a total row."""
    width = max([len("sequence"), len("total")] + [len(t.name) for t in timings])
    rows = [f"{'sequence':<{width}}  frames  adapt s  infer s  frames/s"]
    for t in sorted(timings, key=lambda t: t.name):
        rows.append(
            f"{t.name:<{width}}  {t.frames:6d}  {t.adapt_seconds:7.1f}  "
            f"{t.inference_seconds:7.1f}  {t.fps:8.2f}"
        )
    frames = sum(t.frames for t in timings)
    infer = sum(t.inference_seconds for t in timings)
    rows.append(
        f"{'total':<{width}}  {frames:6d}  {sum(t.adapt_seconds for t in timings):7.1f}  {infer:7.1f}  "
        f"{frames / infer if infer > 0 else float('nan'):8.2f}"
    )
    return "\n".join(rows)


def zip_youtube_results(out_dir: str | Path, zip_path: str | Path) -> Path:
    """Pack ``out_dir/Annotations`` into a submission zip (written atomically)."""
    from PIL import Image

    ann = Path(out_dir) / "Annotations"

    def results():
        for video in sorted(p for p in ann.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for png in sorted(video.glob("*.png")):
                yield video.name, png.stem, np.array(Image.open(png))

    return write_youtube_submission(zip_path, results())
