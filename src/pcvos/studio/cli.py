"""``pcvos studio``: serve the mask-editing page for one video on this machine."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from pcvos.cli_types import (
    add_precision_argument,
    add_threads_argument,
    apply_threads,
    positive_int,
    processing_size,
    resolve_device,
    resolve_size,
)

EXIT_BAD_INPUT = 2
DEFAULT_PORT = 8765
#: Suffix of the workspace folder made in the current directory when --workspace is not given.
WORKSPACE_SUFFIX = "_studio"


def register(sub) -> None:
    p = sub.add_parser(
        "studio",
        help="a local browser page to draw, propagate, correct and export masks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a page on this machine to draw object masks on any frame, "
        "propagate them both ways,\n"
        "correct drifting frames, re-propagate and export, at the video's original resolution.\n"
        "Frames and masks live in a workspace folder; opening it again restores the work.",
        epilog="examples:\n"
        "  pcvos studio clip.mp4                       # workspace ./clip_studio, opens a browser\n"
        "  pcvos studio --workspace clip_studio        # reopen\n"
        "  pcvos studio frames/ --port 0 --no-browser  # any free port, print the URL\n",
    )
    p.add_argument("input", nargs="?", metavar="VIDEO_OR_FOLDER", help="video file or folder of frames")
    p.add_argument(
        "--workspace",
        metavar="DIR",
        help=f"workspace folder (default: ./<video name>{WORKSPACE_SUFFIX}); reopened if it exists",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: only this machine can connect)",
    )
    p.add_argument("--weights", metavar="W", help="checkpoint (default: the model shipped with pcvos)")
    p.add_argument(
        "--size",
        type=processing_size,
        default="auto",
        metavar="PX",
        help="processing shorter side, or 'native' (default: the model's preferred size, else 480); "
        "masks are always at the video's resolution",
    )
    p.add_argument(
        "--clip-length", type=positive_int, default=5, metavar="L", help="frames per clip (default 5)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_precision_argument(p)
    add_threads_argument(p)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the URL")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"pcvos: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from pcvos.studio.server import LOOPBACK_HOSTS, bind, create_app, make_server, url_for
    except ImportError as exc:
        return _fail(
            f"pcvos studio needs the studio extra ({exc.name} is missing): pip install 'pcvos[studio]'"
        )
    from tqdm import tqdm

    import pcvos
    from pcvos.runtime import keep_freed_memory
    from pcvos.studio.controller import Studio
    from pcvos.studio.workspace import Workspace, WorkspaceError

    # as pcvos segment: propagation's large temporaries are reused, not page-faulted in again
    keep_freed_memory()
    apply_threads(args.threads)
    if args.input is None and args.workspace is None:
        return _fail("give a video or frame folder, or --workspace DIR to reopen a workspace")
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port}: not a port number (0..65535)")
    root = Path(args.workspace) if args.workspace else Path.cwd() / (Path(args.input).stem + WORKSPACE_SUFFIX)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return _fail(str(exc))
    try:  # bind first: a busy port fails before minutes of decoding
        sock = bind(args.host, args.port)
    except OSError as exc:
        return _fail(
            f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror}); "
            "try another --port, or --port 0 for any free one"
        )
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="frame", desc="decode", dynamic_ncols=True)
        bar.update(1)

    try:
        try:
            ws = Workspace.open_or_create(root, args.input, progress)
        finally:
            if bar is not None:
                bar.close()
        model = pcvos.load_model(args.weights)
    except (WorkspaceError, FileNotFoundError) as exc:
        sock.close()
        return _fail(str(exc))
    except ValueError as exc:
        sock.close()
        return _fail(f"--weights {exc}")
    size = resolve_size(args.size, model, otherwise=480)
    session = pcvos.Session(
        model,
        ws.frames_dir,
        clip_length=args.clip_length,
        size=size if size is not None and size < min(ws.height, ws.width) else None,
        device=device,
        precision=args.precision,
    )
    studio = Studio(ws, session)
    loopback = args.host in LOOPBACK_HOSTS
    app = create_app(studio, allowed_hosts=None if loopback else ["*"])
    server = make_server(app)
    url = url_for(sock)
    if not loopback:
        print(
            f"pcvos: warning: listening on {args.host}: anyone who can reach this machine can read and "
            "change this workspace",
            file=sys.stderr,
        )

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            print(f"pcvos studio: {url}  (workspace {ws.root}; Ctrl+C to stop)", file=sys.stderr, flush=True)
            if not args.no_browser:
                import webbrowser

                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled: stopping is the normal way out
        pass
    finally:
        interrupted = studio.interrupted or studio.busy
        studio.close()
        sock.close()
    job = studio.job()
    if interrupted and job["state"] == "cancelled":
        print(
            f"pcvos studio: stopped; the {job['kind']} was cancelled after {job['done']} of {job['total']} "
            "frames (those are saved)",
            file=sys.stderr,
        )
    else:
        print("pcvos studio: stopped", file=sys.stderr)
    return 0
