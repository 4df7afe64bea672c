"""``pcvos`` command line: segment, infer, eval, train.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file and the fix), 130 Ctrl-C,
143 SIGTERM (both one line; temporary files removed), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from pcvos.cli_types import (
    add_adapt_arguments,
    add_precision_argument,
    add_threads_argument,
    apply_threads,
    positive_int,
    processing_size,
    resolve_size,
)
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every temporary file goes."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _parse_box(text: str) -> tuple[float, float, float, float]:
    """``x0,y0,x1,y1`` in pixels -> four finite numbers (checked against the frame later)."""
    parts = text.split(",")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--box expects x0,y0,x1,y1 (four numbers in pixels, no spaces), got {text!r}")
    x0, y0, x1, y1 = values
    return x0, y0, x1, y1


class _MaskAction(argparse.Action):
    """``--mask PATH|auto`` / ``--box x0,y0,x1,y1`` append an object; ``--mask-frame`` / ``--box-frame N``
    set the frame of the latest one of their kind."""

    def __call__(self, parser, namespace, values, option_string=None):
        masks = getattr(namespace, "masks", None) or []
        if option_string in ("--mask", "--box"):
            kind = option_string[2:]
            if kind == "box":
                try:
                    values = _parse_box(values)
                except ValueError as exc:
                    parser.error(str(exc))
            masks.append([kind, values, 0])
        else:
            kind = option_string[2:].split("-")[0]
            latest = [m for m in masks if m[0] == kind]
            if not latest:
                parser.error(f"{option_string} must follow the --{kind} it applies to")
            try:
                latest[-1][2] = int(values)
            except ValueError:
                parser.error(f"{option_string} expects a frame number, got {values!r}")
        namespace.masks = masks


def _export_formats(text: str) -> tuple[str, ...]:
    from pcvos.data.export_formats import parse_export_formats

    try:
        return parse_export_formats(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the objects of your own video from mask(s), boxes or the salient object",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment objects through a video given their mask(s), clip by clip.\n\n"
        "INPUT is a video file (mp4, mov, avi, webm, mkv, ...) or a folder of frames (natural order:\n"
        "2.jpg before 10.jpg). Masks are indexed PNGs (ids = objects), binary masks (0/255 or 0/1:\n"
        "one object) or RGB colour masks (each colour one object). Without a mask, --box x0,y0,x1,y1\n"
        "gives one object by its box, and --mask auto the most salient object of frame 0; the masks\n"
        "made from them are written to OUT/prompt_masks/ (one indexed PNG per frame) for checking.",
        epilog="examples:\n"
        "  pcvos segment clip.mp4 --mask first.png --out masks/ --overlay overlay.mp4\n"
        "  pcvos segment frames/ --mask a.png --mask b.png --mask-frame 40 --clip-length 10\n"
        "  pcvos segment clip.mp4 --mask best.png --mask-frame 120 --backward   # both ways from frame 120\n"
        "  pcvos segment clip.mp4 --mask m0.png --mask m60.png --mask-frame 60   # keyframes 0 and 60\n"
        "  pcvos segment clip.mp4 --box 120,40,380,460 --box 400,60,610,300 --box-frame 30   # two objects\n"
        "  pcvos segment clip.mp4 --mask auto   # the most salient object of frame 0\n",
    )
    p.add_argument("input", metavar="INPUT", help="video file or folder of frames")
    p.add_argument(
        "--mask",
        action=_MaskAction,
        metavar="MASK.png",
        dest="masks",
        help="mask file (repeatable), or 'auto' for the most salient object (a file named auto: ./auto); "
        "it belongs to frame 0 unless --mask-frame follows it",
    )
    p.add_argument(
        "--mask-frame",
        action=_MaskAction,
        metavar="N",
        dest="masks",
        help="frame number (from 0) of the preceding --mask: for objects that enter later, or "
        "for a mask of objects already given (a keyframe: they are re-anchored there)",
    )
    p.add_argument(
        "--box",
        action=_MaskAction,
        metavar="x0,y0,x1,y1",
        dest="masks",
        help="one object given by its box in pixels (repeatable, one object each); its mask is made "
        "by pcvos.mask_from_prompts on frame 0 unless --box-frame follows it",
    )
    p.add_argument(
        "--box-frame",
        action=_MaskAction,
        metavar="N",
        dest="masks",
        help="frame number (from 0) of the preceding --box",
    )
    p.add_argument(
        "--weights",
        metavar="W",
        help="checkpoint (released PCVOS/STCN or pcvos); default: the model shipped with pcvos, if any",
    )
    p.add_argument(
        "--clip-length",
        type=positive_int,
        default=5,
        metavar="L",
        help="frames processed together; longer is faster, slightly less accurate (default 5)",
    )
    p.add_argument(
        "--memory-every",
        type=positive_int,
        default=None,
        metavar="M",
        help="add a memory frame every M frames (default: the clip length)",
    )
    p.add_argument(
        "--size",
        type=processing_size,
        default="auto",
        metavar="PX",
        help="process at this shorter side, or 'native' (default: the model's preferred size, "
        "else 480; never upscales); outputs are always at the input resolution",
    )
    p.add_argument(
        "--max-memory-frames",
        type=positive_int,
        default=DEFAULT_MAX_MEMORY_FRAMES,
        metavar="N",
        help="cap on memory frames for long videos: annotated and the newest frames always kept, "
        f"the least used dropped (default {DEFAULT_MAX_MEMORY_FRAMES})",
    )
    p.add_argument(
        "--out",
        default="pcvos_masks",
        metavar="DIR",
        help="folder for one indexed PNG per frame and summary.json (default pcvos_masks)",
    )
    p.add_argument("--overlay", metavar="OUT.mp4", help="also write a video with translucent coloured masks")
    p.add_argument("--alpha", metavar="DIR", help="also write per-object RGBA cut-outs DIR/<id>/<frame>.png")
    p.add_argument(
        "--export",
        type=_export_formats,
        default=(),
        metavar="FORMATS",
        help="also write these formats into --out, comma-separated: coco (coco.json, instance masks "
        "as RLE, one category per object) and/or yolo (yolo/<frame>.txt polygons, class = the "
        "object's rank among the ids, names in yolo/classes.txt)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_precision_argument(p)
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out / --overlay")
    p.add_argument(
        "--backward",
        action="store_true",
        help="also segment the frames before each object's first mask, by propagating it backward "
        "from that mask. Off by default: the frames before an object's first mask are left "
        "without it, and the video is then read once, in order, with each clip's masks "
        "written as it finishes and memory that does not grow with the video; with "
        "--backward every frame's labels are held until the end and the frames before the "
        "last first mask are read and segmented a second time",
    )
    add_adapt_arguments(p, hint=". Put it after INPUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import pcvos
    from pcvos.inference.video import MaskSpec, PromptSpec, SegmentOptions, segment_video
    from pcvos.runtime import keep_freed_memory

    if not args.masks:
        return _fail("give the objects to segment: --mask FILE, --mask auto or --box x0,y0,x1,y1")
    keep_freed_memory()  # this process segments one video and exits: reuse freed memory, no page faults
    apply_threads(args.threads)
    try:
        model = pcvos.load_model(args.weights)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(f"--weights {exc}")
    except OSError as exc:  # unreadable file (permissions, I/O error)
        return _fail(f"--weights {args.weights}: cannot read ({exc.strerror or exc})")
    size = resolve_size(args.size, model, otherwise=480)
    opts = SegmentOptions(
        clip_length=args.clip_length,
        memory_every=args.memory_every,
        size=size,
        max_memory_frames=args.max_memory_frames,
        device=args.device,
        precision=args.precision,
        overwrite=args.overwrite,
        overlay=Path(args.overlay) if args.overlay else None,
        alpha=Path(args.alpha) if args.alpha else None,
        quiet=args.quiet,
        backward=args.backward,
        adapt=args.adapt,
        adapt_seed=args.adapt_seed,
        export=args.export,
        extra={
            "weights": args.weights or "default",
            "backward": args.backward,
            "adapt": args.adapt,
            "adapt_seed": args.adapt_seed,
        },
    )
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="frame", desc="segment", dynamic_ncols=True)
        bar.update(1)

    given = args.masks or []
    specs = [MaskSpec(Path(v), f) for kind, v, f in given if kind == "mask" and v != "auto"]
    prompts = [
        PromptSpec(f, box=v if kind == "box" else None)
        for kind, v, f in given
        if kind == "box" or v == "auto"
    ]
    try:
        summary = segment_video(model, args.input, specs, args.out, opts, progress, prompts=prompts)
    except ValueError as exc:  # InputError, OutputError, VideoDecodeError and the API's own input checks
        if bar is not None:
            bar.close()
        return _fail(str(exc))
    except OSError as exc:  # a file that vanished or broke while being read
        return _fail(f"{exc.filename or args.input}: {exc.strerror or exc}")
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        objs = ", ".join(f"{o['id']} (frame {o['first_frame']}, {o['kind']})" for o in summary["objects"])
        print(
            f"{summary['frames']} frames, objects {objs}: {summary['seconds']:.1f} s, "
            f"{summary['fps']:.2f} frames/s -> {args.out}",
            file=sys.stderr,
        )
    return 0


def _fail(message: str) -> int:
    print(f"pcvos: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    from pcvos import __version__

    parser = argparse.ArgumentParser(
        prog="pcvos", description="Per-Clip Video Object Segmentation: segment, benchmark, evaluate, train."
    )
    parser.add_argument("--version", action="version", version=f"pcvos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment(sub)
    for module in ("pcvos.eval.cli", "pcvos.eval.infer_cli", "pcvos.train.cli", "pcvos.studio.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "take_extra", None):  # e.g. train's KEY=VALUE overrides after an option
        extra = args.take_extra(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s"
    )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        with warnings.catch_warnings():
            # warnings are part of the command's output (e.g. a mask that was resized): one line each
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: outputs already written are complete files
        terminated = isinstance(exc, _Terminated)
        print(
            f"pcvos: {'terminated' if terminated else 'interrupted'}; files already written are complete, "
            "unfinished ones were removed",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pcvos: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
