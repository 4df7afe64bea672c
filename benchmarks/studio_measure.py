"""Measure ``pcvos studio`` on a long video: time to a usable page (fresh and reopened workspace) and
frame-switch latency; then propagation speed against ``pcvos segment`` with the same model and
settings on the first ``--compare-seconds`` of that video, alternating the two ``--repeats`` times
so that a change in machine load hits both alike.

    python benchmarks/studio_measure.py \
        --make-video-from ../shared/data/davis2016-train/JPEGImages/480p/bear \
        --video /tmp/bear60.mp4 --mask ../shared/data/davis2016-train/Annotations/480p/bear/00000.png \
        --work /tmp/studio_measure

``--make-video-from`` loops a frame folder back and forth into ``--seconds`` of video at ``--fps``.
Needs the studio extra, Playwright and a Chromium (``--chromium``, default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from pcvos.data.io_utils import atomic_write_text

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SEQUENTIAL_STEPS = 100
RANDOM_JUMPS = 50
POLL_S = 0.5
#: Frames given masks (by a propagation up to a second keyframe) for the latency with masks.
MASKED_FRAMES = 120
#: Written into --work so that a later run knows the folder is its own scratch space to replace.
MARKER = ".studio_measure_scratch"


def make_video(frames: list[np.ndarray], out: Path, seconds: float, fps: float) -> None:
    from pcvos.data.frames import VideoWriter

    cycle = frames + frames[-2:0:-1]  # back and forth: no jump where the loop restarts
    with VideoWriter(out, fps=fps) as writer:
        for i in range(round(seconds * fps)):
            writer.write(cycle[i % len(cycle)])


def wait_job(url: str) -> dict:
    while (job := api(url + "api/job"))["state"] == "running":
        time.sleep(POLL_S)
    return job


def start_studio(args: list[str]) -> tuple[subprocess.Popen, str, float]:
    """Start ``pcvos studio``; returns the process, its URL and the seconds until it printed it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcvos", "studio", *args, "--port", "0", "--no-browser"],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "http://127.0.0.1:" in line:
            return proc, line.split()[2], t0
    raise RuntimeError(f"pcvos studio exited with {proc.wait()}")


_TOKENS: dict[str, str] = {}


def _token(url: str) -> str:
    """The studio's write token, read from its page as the page itself does."""
    from pcvos.studio.server import read_token

    root = url.split("/api/", 1)[0] + "/"
    if root not in _TOKENS:
        with urllib.request.urlopen(root) as resp:
            _TOKENS[root] = read_token(resp.read().decode())
    return _TOKENS[root]


def api(url: str, method: str = "GET", body: bytes | dict | None = None, ctype: str | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {
        "Content-Type": "application/json"
        if isinstance(body, dict)
        else (ctype or "application/octet-stream")
    }
    if method != "GET":
        headers["X-PCVOS-Token"] = _token(url)
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, method=method, headers=headers)
    ) as resp:
        return json.loads(resp.read())


def usable_page(browser, url: str, t0: float):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_function("window.studio && window.studio.S.ready", timeout=600_000)
    return page, time.perf_counter() - t0


def switch_latency(page, frames: list[int]) -> list[float]:
    out = []
    for t in frames:
        page.evaluate(f"window.studio.goTo({t})")
        page.wait_for_function(f"window.studio.S.shown === {t}")
        out.append(page.evaluate("window.studio.S.lastSwitchMs"))
    return out


def summary(ms: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(sorted(ms)[int(0.9 * len(ms))], 1),
        "max_ms": round(max(ms), 1),
        "n": len(ms),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--mask", type=Path, required=True, help="mask of frame 0")
    p.add_argument(
        "--work",
        type=Path,
        required=True,
        help="scratch folder: created, or replaced if an earlier run of this script made it",
    )
    p.add_argument("--make-video-from", type=Path, help="frame folder to loop into --video (and its cut)")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--fps", type=float, default=24)
    p.add_argument("--compare-seconds", type=float, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--speed-only", action="store_true", help="only the propagation speed comparison")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from pcvos.data.frames import FrameFolder
    from pcvos.data.masks import read_mask

    marker = args.work / MARKER
    if args.work.exists():
        # replace only a scratch folder this script made: --work pointed at anything else by
        # mistake is left alone
        if any(args.work.iterdir()) and not marker.is_file():
            print(
                f"studio_measure.py: --work {args.work} exists and was not made by this script; "
                "choose a new folder",
                file=sys.stderr,
            )
            sys.exit(2)
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    marker.write_text("scratch folder of benchmarks/studio_measure.py; replaced on each run\n")
    cut = args.work / "cut.mp4"
    if args.make_video_from:
        frames = list(FrameFolder(args.make_video_from))
        if not args.video.exists():  # made once: encoding a minute of 480p takes minutes
            make_video(frames, args.video, args.seconds, args.fps)
        make_video(frames, cut, args.compare_seconds, args.fps)
    results: dict = {
        "video": str(args.video),
        "cut": str(cut),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    out = args.work / "results.json"

    def record(key: str, value) -> None:
        results[key] = value
        atomic_write_text(out, json.dumps(results, indent=2))
        print(key, json.dumps(value), flush=True)

    labels = (read_mask(args.mask) > 0).astype(np.uint8)
    ws = args.work / "workspace"
    if not args.speed_only:
        page_timings(args, browser_factory=sync_playwright, labels=labels, ws=ws, record=record)
    speed(args, cut, labels, record)


def page_timings(args, browser_factory, labels: np.ndarray, ws: Path, record) -> None:
    """Time to a usable page (new and reopened workspace) and frame-switch latency."""
    with browser_factory() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=BROWSER_ARGS)
        proc, url, t0 = start_studio([str(args.video), "--workspace", str(ws)])
        record("fresh_url_s", round(time.perf_counter() - t0, 2))
        page, usable = usable_page(browser, url, t0)
        record("fresh_usable_s", round(usable, 2))
        state = api(url + "api/state")
        record("frames", [state["num_frames"], state["width"], state["height"]])
        rng = random.Random(0)
        record(
            "switch_no_masks_sequential", summary(switch_latency(page, list(range(1, SEQUENTIAL_STEPS + 1))))
        )
        record(
            "switch_no_masks_random",
            summary(switch_latency(page, [rng.randrange(state["num_frames"]) for _ in range(RANDOM_JUMPS)])),
        )
        api(url + "api/objects", "POST", {"name": "bear"})
        api(url + "api/frames/0/labels", "PUT", labels.tobytes())
        api(url + f"api/frames/{MASKED_FRAMES}/labels", "PUT", labels.tobytes())  # a stand-in second keyframe
        api(url + "api/propagate", "POST", {"frame": 0, "direction": "forward", "until": "keyframe"})
        wait_job(url)
        record("switch_masks_sequential", summary(switch_latency(page, list(range(1, SEQUENTIAL_STEPS + 1)))))
        record(
            "switch_masks_random",
            summary(switch_latency(page, [rng.randrange(1, MASKED_FRAMES) for _ in range(RANDOM_JUMPS)])),
        )
        page.screenshot(path=str(args.work / "studio_long_video.png"))
        page.close()
        proc.send_signal(2)
        proc.wait(60)

        proc, url, t0 = start_studio(["--workspace", str(ws)])
        record("reopen_url_s", round(time.perf_counter() - t0, 2))
        page, usable = usable_page(browser, url, t0)
        record("reopen_usable_s", round(usable, 2))
        page.close()
        proc.send_signal(2)
        proc.wait(60)
        browser.close()


def speed(args, cut: Path, labels: np.ndarray, record) -> None:
    """The studio's propagation (through its HTTP API, as the page starts it) against pcvos segment."""
    runs = []

    def studio_run(r: int) -> dict:
        proc, url, _ = start_studio([str(cut), "--workspace", str(args.work / f"cut_ws{r}")])
        api(url + "api/objects", "POST", {"name": "bear"})
        api(url + "api/frames/0/labels", "PUT", labels.tobytes())
        api(url + "api/propagate", "POST", {"frame": 0, "direction": "forward", "until": "end"})
        job = wait_job(url)
        proc.send_signal(2)
        proc.wait(60)
        return job

    def segment_run(r: int) -> dict:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pcvos",
                "segment",
                str(cut),
                "--mask",
                str(args.mask),
                "--out",
                str(args.work / f"segment{r}"),
                "--quiet",
            ],
            check=True,
        )
        return json.loads((args.work / f"segment{r}" / "summary.json").read_text())

    for r in range(args.repeats):
        # ABBA order: a load that drifts during the runs favours neither side
        if r % 2 == 0:
            job, seg = studio_run(r), segment_run(r)
        else:
            seg, job = segment_run(r), studio_run(r)
        runs.append(
            {
                "studio_fps": round(job["fps"], 3),
                "studio_frames": job["done"],
                "segment_fps": seg["fps"],
                "segment_frames": seg["frames"],
                "ratio": round(job["fps"] / seg["fps"], 3),
            }
        )
        record("speed_runs", runs)
    record("speed_ratio_median", statistics.median(run["ratio"] for run in runs))


if __name__ == "__main__":
    main()
