"""Seconds per click of the studio's click tool, through its HTTP route, on real 480p DAVIS frames.

A workspace is made of the first frames (854x480) of the protocol's ``report`` sequences (the
figures are reported, never chosen on). A real studio server (uvicorn on 127.0.0.1, the shipped
pcvos-lite session) answers a robot user that does what the page does per click: POST
``/api/frames/{t}/prompt`` with every click so far on that frame and ``previous: true``, replace
the object's pixels with the answer, and PUT the labels (the page saves each click as a keyframe).
The robot clicks as benchmarks/prompts.py's clicker does: first the object point farthest from
its boundary, then the point farthest from the boundary of the largest error region (positive for
a missed part, negative for a false one).

Per click it records the wall seconds of the prompt request (what the user waits for before the
mask changes) and of prompt + save, and the process's CPU seconds over the same spans (every
thread: server, model, client). Each click's prompt is also timed without HTTP (``Studio.prompt``
in process, same input, same answer checked), so the route's own share shows. The first click on
a frame needs the saliency network, the later ones do not (the click network answers them), so
the two are reported apart. As the page does when it shows a frame with the click tool, the robot
first asks the server to prepare the frame (``POST /api/frames/{t}/prepare``: the saliency network
runs then, while a user would aim), timed apart; ``--no-prepare`` skips that, so the first click
pays for the network.
A warm-up prompt on a frame of another split loads the network first. The 1-, 5- and 15-minute
load averages are printed before and after (the machine may be shared).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/studio_clicks.py --threads 2 --clicks 5 \\
        --json docs/results/studio_clicks.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompts import farthest_from_boundary, iou, next_click  # noqa: E402 (the clicker of prompts.py)

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train"
OBJECT = 1


def make_frames(names: list[str], warmup: str, davis: Path, folder: Path) -> list[np.ndarray]:
    """Copy the first frame of each sequence (then the warm-up one) as 00000.jpg, ...; their ground truth."""
    folder.mkdir(parents=True)
    gts = []
    for t, name in enumerate([*names, warmup]):
        shutil.copyfile(davis / "JPEGImages" / "480p" / name / "00000.jpg", folder / f"{t:05d}.jpg")
        gts.append(np.array(Image.open(davis / "Annotations" / "480p" / name / "00000.png")) > 0)
    return gts


class Client:
    """One request per connection, as http.client sends it (what a page's fetch costs, roughly)."""

    def __init__(self, url: str, token: str, token_header: str) -> None:
        parsed = urllib.parse.urlparse(url)
        self.host, self.port, self.headers = parsed.hostname, parsed.port, {token_header: token}

    def request(self, method: str, path: str, body, headers: dict | None = None) -> tuple[int, bytes]:
        headers = {**self.headers, **(headers or {})}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


class Timer:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(rows: list[dict], key: str) -> dict:
    wall = [r[f"{key}_s"] for r in rows]
    cpu = [r[f"{key}_cpu_s"] for r in rows]
    return {
        "clicks": len(rows),  # requests, for the prepare row
        "median_s": percentile(wall, 50),
        "p90_s": percentile(wall, 90),
        "median_cpu_s": percentile(cpu, 50),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="report", choices=["select", "report", "train"])
    ap.add_argument("--davis", type=Path, default=DAVIS)
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default 2)")
    ap.add_argument(
        "--sequences", type=int, default=None, help="first N sequences of the split (default all)"
    )
    ap.add_argument("--clicks", type=int, default=5, help="robot clicks per frame (default 5)")
    ap.add_argument("--json", type=Path, help="write every click and the summaries here")
    ap.add_argument(
        "--no-prepare",
        action="store_true",
        help="do not POST /api/frames/{t}/prepare before a frame's first click (the page does, when it "
        "shows a frame with the click tool and the object is not on it)",
    )
    args = ap.parse_args(argv)
    if not (args.davis / "JPEGImages" / "480p").is_dir():
        print(f"--davis {args.davis}: no JPEGImages/480p there", file=sys.stderr)
        return 2
    if args.clicks < 1 or args.threads < 1:
        print("--clicks and --threads must be at least 1", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)  # onnxruntime's threads follow torch's (SaliencyModel)

    import pcvos
    from pcvos.data.io_utils import atomic_write_text
    from pcvos.eval.protocol import split
    from pcvos.studio.controller import Studio
    from pcvos.studio.server import TOKEN_HEADER, ServerThread, create_app
    from pcvos.studio.workspace import Workspace

    names = split(args.split)[: args.sequences]
    warmup = next(n for n in split("train") if n not in names)
    load_before = os.getloadavg()
    rows: list[dict] = []
    prepares: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pcvos-studio-clicks-") as tmp:
        gts = make_frames(names, warmup, args.davis, Path(tmp) / "frames")
        ws = Workspace.open_or_create(Path(tmp) / "ws", Path(tmp) / "frames")
        studio = Studio(ws, pcvos.Session(pcvos.load_model(), ws.frames_dir))
        studio.add_object("object")
        server = ServerThread(create_app(studio))
        client = Client(server.url, server.token, TOKEN_HEADER)
        try:
            status, data = client.request("POST", f"/api/frames/{len(names)}/prompt", {"object": OBJECT})
            if status != 200:
                raise RuntimeError(f"warm-up prompt failed: {status} {data[:200]!r}")
            for t, name in enumerate(names):
                gt = gts[t]
                labels = np.zeros((ws.height, ws.width), np.uint8)
                points: list[list[int]] = []
                marks: list[int] = []
                if not args.no_prepare:  # what the page asks for while the user aims the first click
                    timer = Timer()
                    status, data = client.request("POST", f"/api/frames/{t}/prepare", None)
                    prepare_s, prepare_cpu_s = timer.read()
                    if status != 204:
                        raise RuntimeError(f"{name} prepare: {status} {data[:200]!r}")
                    prepares.append(
                        {"sequence": name, "prepare_s": prepare_s, "prepare_cpu_s": prepare_cpu_s}
                    )
                for k in range(args.clicks):
                    click = (farthest_from_boundary(gt), 1) if k == 0 else next_click(labels == OBJECT, gt)
                    if click is None:  # nothing left to fix
                        break
                    points.append(list(click[0]))
                    marks.append(click[1])
                    body = {"object": OBJECT, "points": points, "labels": marks, "previous": True}
                    timer = Timer()
                    status, data = client.request("POST", f"/api/frames/{t}/prompt", body)
                    prompt_s, prompt_cpu_s = timer.read()
                    if status != 200:
                        raise RuntimeError(f"{name} click {k + 1}: {status} {data[:200]!r}")
                    mask = np.frombuffer(data, np.uint8).reshape(ws.height, ws.width).astype(bool)
                    # the same prompt without HTTP (Studio.prompt: read the frame and mask, run the
                    # model), before the save changes its input: what the route adds is the rest
                    direct = Timer()
                    again = studio.prompt(t, OBJECT, points, marks, None, True)
                    direct_s, direct_cpu_s = direct.read()
                    if not np.array_equal(again.astype(bool), mask):
                        raise RuntimeError(f"{name} click {k + 1}: the route and Studio.prompt disagree")
                    labels[labels == OBJECT] = 0  # as the page does: this object's pixels replaced
                    labels[mask & (labels == 0)] = OBJECT
                    status, data = client.request(
                        "PUT",
                        f"/api/frames/{t}/labels",
                        labels.tobytes(),
                        {"Content-Type": "application/octet-stream"},
                    )
                    total_s, total_cpu_s = timer.read()
                    if status != 200:
                        raise RuntimeError(f"{name} click {k + 1}: save {status} {data[:200]!r}")
                    rows.append(
                        {
                            "sequence": name,
                            "click": k + 1,
                            "positive": bool(click[1]),
                            "iou": iou(labels == OBJECT, gt),
                            "prompt_s": prompt_s,
                            "prompt_cpu_s": prompt_cpu_s,
                            "with_save_s": total_s - direct_s,
                            "with_save_cpu_s": total_cpu_s - direct_cpu_s,
                            "direct_s": direct_s,
                            "direct_cpu_s": direct_cpu_s,
                        }
                    )
                    print(
                        f"{name:12s} click {k + 1:2d} {'+' if click[1] else '-'} IoU {rows[-1]['iou']:.3f} "
                        f"prompt {prompt_s:.3f} s ({prompt_cpu_s:.3f} CPU-s), with save "
                        f"{total_s - direct_s:.3f} s; without HTTP {direct_s:.3f} s",
                        flush=True,
                    )
        finally:
            server.stop()
            studio.close()
    load_after = os.getloadavg()
    later = [r for r in rows if r["click"] > 1]
    result = {
        "split": args.split,
        "sequences": names,
        "frame_size": [int(ws.width), int(ws.height)],
        "threads": args.threads,
        "clicks_per_frame": args.clicks,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "summary": {
            "later clicks, prompt": summary(later, "prompt"),
            "later clicks, prompt + save": summary(later, "with_save"),
            "later clicks, Studio.prompt without HTTP": summary(later, "direct"),
            f"first click on a frame{'' if args.no_prepare else ', prepared'}, prompt": summary(
                [r for r in rows if r["click"] == 1], "prompt"
            ),
            "all clicks, prompt": summary(rows, "prompt"),
            **({} if args.no_prepare else {"prepare (while the user aims)": summary(prepares, "prepare")}),
        },
        "prepared": not args.no_prepare,
        "prepares": prepares,
        "rows": rows,
    }
    print(f"\nload average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    print("| clicks | n | median wall s | p90 wall s | median CPU s |\n|---|---|---|---|---|")
    for what, s in result["summary"].items():
        print(
            f"| {what} | {s['clicks']} | {s['median_s']:.3f} | {s['p90_s']:.3f} | {s['median_cpu_s']:.3f} |"
        )
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
