"""Time ``pcvos studio``'s Ctrl+C while a propagation runs and a page listens to its events, and count
what it prints after the URL line (issue 26: 5 s and a 61-line traceback).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/studio_ctrl_c.py /tmp/studio_ctrl_c

Makes a 200-frame 160x120 clip in the given scratch folder (the tests' moving square), starts the studio
on it, opens the event stream, propagates from frame 0 to the end, waits 2 s and sends SIGINT.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_studio_api as clip  # noqa: E402

from pcvos.studio.server import read_token  # noqa: E402

FRAMES = 200
RUN_BEFORE_SIGINT_S = 2.0


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    video = work / "clip.mp4"
    if not video.exists():
        clip.FRAMES = FRAMES
        clip.make_video(video)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcvos", "studio", str(video), "--workspace", str(work / "ws")]
        + ["--port", "0", "--no-browser"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = next(line.split()[2] for line in proc.stderr if "http://127.0.0.1:" in line)
    host, port = url.split("//")[1].strip("/").split(":")
    client = clip.Client(url)
    client.token = read_token(client.request("GET", "/")[2].decode())
    client.json("POST", "/api/objects", {})
    client.json("PUT", "/api/frames/0/labels", clip.square_mask(0).astype(np.uint8).tobytes())
    events = http.client.HTTPConnection(host, int(port))
    events.request("GET", "/api/events")
    stream = events.getresponse()
    threading.Thread(target=lambda: [None for _ in iter(stream.fp.readline, b"")], daemon=True).start()
    client.json("POST", "/api/propagate", {"frame": 0, "until": "end"})
    time.sleep(RUN_BEFORE_SIGINT_S)
    done = client.json("GET", "/api/job")[1]["done"]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    rc = proc.wait()
    print(f"frames done at SIGINT: {done}; exit {rc} after {time.monotonic() - t0:.2f} s")
    print(f"stderr after the URL line: {len(rest.splitlines())} lines")
    print(rest[-2000:])


if __name__ == "__main__":
    main()
