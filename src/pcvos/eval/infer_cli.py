"""``pcvos infer davis|youtube``: benchmark inference into result folders (torchrun-aware)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pcvos.cli_types import (
    add_adapt_arguments,
    add_precision_argument,
    add_threads_argument,
    apply_threads,
    non_negative_int,
    positive_int,
    processing_size,
    resolve_size,
)
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights", metavar="W", help="checkpoint (released PCVOS/STCN or pcvos; default: shipped model)"
    )
    p.add_argument(
        "--clip-length", type=positive_int, default=5, metavar="L", help="clip length L (default 5)"
    )
    p.add_argument(
        "--memory-every",
        type=positive_int,
        default=None,
        metavar="M",
        help="memory update interval (default: L; STCN: --clip-length 1 --memory-every 5)",
    )
    p.add_argument(
        "--pmm-segment",
        type=non_negative_int,
        default=5,
        metavar="F",
        help="progressive memory matching segment (default 5; 0 turns it off)",
    )
    p.add_argument(
        "--top-k", type=positive_int, default=20, metavar="K", help="memory read top-k (default 20)"
    )
    p.add_argument(
        "--max-memory-frames",
        type=positive_int,
        default=DEFAULT_MAX_MEMORY_FRAMES,
        metavar="N",
        help=f"cap on memory frames (default {DEFAULT_MAX_MEMORY_FRAMES}; the least used are dropped)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="result folder (finished sequences are skipped)"
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default; under torchrun: the local GPU)"
    )
    add_precision_argument(p)
    add_threads_argument(p)
    add_adapt_arguments(
        p,
        where="each sequence's annotated frames (its first-frame masks; on YouTube-VOS "
        "the frames where each object first appears), each sequence from the same weights",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "infer",
        help="run inference on DAVIS or YouTube-VOS (benchmark result folders)",
        description="Benchmark inference. Also runs under torchrun --nproc_per_node N, "
        "sharding the sequences across processes.",
    )
    sub = p.add_subparsers(dest="infer_command", metavar="{davis,youtube}")
    d = sub.add_parser(
        "davis",
        help="DAVIS 2016/2017 -> DIR/<sequence>/<frame>.png",
        description="Segment a DAVIS subset; the result folder is ready for 'pcvos eval davis'.",
    )
    d.add_argument("--davis-root", required=True, metavar="ROOT")
    d.add_argument("--set", default="val", dest="subset", metavar="SET", help="subset (default val)")
    d.add_argument(
        "--year",
        default="auto",
        choices=["2016", "2017", "auto"],
        help="ImageSets year (auto: 2017 if present, else 2016)",
    )
    d.add_argument(
        "--size",
        type=processing_size,
        default="auto",
        metavar="PX",
        help="process at this shorter side, or 'native' (default auto: the model's preferred size, "
        "240 for the shipped pcvos-lite, else native); results are written at 480p",
    )
    d.add_argument("--eval", action="store_true", help="score the results with 'pcvos eval davis' afterwards")
    _common(d)
    d.set_defaults(func=_run)
    y = sub.add_parser(
        "youtube",
        help="YouTube-VOS valid -> DIR/Annotations/<video>/<frame>.png [+ zip]",
        description="Segment YouTube-VOS 2018/2019 'valid' (objects may enter late).",
    )
    y.add_argument(
        "--root", required=True, metavar="ROOT", help="folder holding valid/ (and valid_all_frames/)"
    )
    y.add_argument("--split", default="valid")
    y.add_argument(
        "--size",
        type=processing_size,
        default="auto",
        metavar="PX",
        help="processing shorter side, or 'native' (default auto: the model's preferred size, else 480)",
    )
    y.add_argument(
        "--all-frames",
        choices=["auto", "yes", "no"],
        default="auto",
        help="propagate through <split>_all_frames (auto: when present)",
    )
    y.add_argument("--zip", action="store_true", help="also write DIR.zip for the evaluation server")
    _common(y)
    y.set_defaults(func=_run)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _fail(msg: str) -> int:
    print(f"pcvos: error: {msg}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    import pcvos
    from pcvos.eval.runners import (
        Distributed,
        Schedule,
        format_timings,
        run_davis,
        run_youtube,
        write_run_summary,
        zip_youtube_results,
    )
    from pcvos.runtime import keep_freed_memory

    keep_freed_memory()  # a batch job: reuse freed memory instead of faulting it in again every clip
    apply_threads(args.threads)
    try:
        model = pcvos.load_model(args.weights)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    schedule = Schedule(
        clip_length=args.clip_length,
        memory_every=args.memory_every,
        pmm_segment=args.pmm_segment or None,
        top_k=args.top_k,
        size=resolve_size(args.size, model, otherwise=None if args.infer_command == "davis" else 480),
        max_memory_frames=args.max_memory_frames,
        precision=args.precision,
        adapt=args.adapt,
        adapt_seed=args.adapt_seed,
    )
    ctx = Distributed()
    device = ctx.device(args.device)
    try:
        if args.infer_command == "davis":
            year = None if args.year == "auto" else args.year
            if year is None:
                year = "2017" if (Path(args.davis_root) / "ImageSets" / "2017").is_dir() else "2016"
            stats = run_davis(
                model,
                args.davis_root,
                args.out,
                year=year,
                subset=args.subset,
                schedule=schedule,
                device=device,
                ctx=ctx,
                progress=not args.quiet,
            )
        else:
            all_frames = {"auto": None, "yes": True, "no": False}[args.all_frames]
            stats = run_youtube(
                model,
                args.root,
                args.out,
                split=args.split,
                all_frames=all_frames,
                schedule=schedule,
                device=device,
                ctx=ctx,
                progress=not args.quiet,
            )
    except (FileNotFoundError, ValueError) as exc:
        ctx.close()
        return _fail(str(exc))
    total = ctx.gather(stats)
    ctx.barrier()
    code = 0
    if ctx.rank == 0:
        print(
            f"{total.sequences} sequences ({total.skipped} already done), {total.frames} frames, "
            f"{total.seconds:.1f} s inference, {total.fps:.2f} frames/s"
            f"{' per process' if ctx.world > 1 else ''}, "
            f"peak memory {total.peak_memory_mb:.0f} MB ({device.type})"
            + (
                f"; adapting ({args.adapt} steps, seed {args.adapt_seed}) {total.adapt_seconds:.1f} s"
                if args.adapt
                else ""
            )
        )
        if total.per_sequence:
            print(format_timings(total.per_sequence))
            # only a run that segmented something rewrites the summary: its settings are the latest run's
            settings = {
                "weights": args.weights or "default",
                **asdict(schedule),
                "device": str(device),
                "threads": torch.get_num_threads(),
                "processes": ctx.world,
            }
            path, warning = write_run_summary(
                args.out, total, benchmark=args.infer_command, settings=settings
            )
            if warning:
                print(f"pcvos: warning: {warning}", file=sys.stderr)
            print(f"per-sequence seconds: {path}")
        if args.infer_command == "youtube" and args.zip:
            path = zip_youtube_results(args.out, str(Path(args.out)) + ".zip")
            print(f"submission: {path}")
        if args.infer_command == "davis" and args.eval:
            from pcvos.eval.davis_eval import evaluate_davis, format_tables

            try:
                metrics = evaluate_davis(args.davis_root, args.out, subset=args.subset, year=year)
            except (FileNotFoundError, ValueError) as exc:
                code = _fail(str(exc))
            else:
                print(format_tables(metrics, args.subset))
    ctx.close()
    return code
