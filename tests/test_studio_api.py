"""pcvos studio's HTTP API against a real uvicorn server on 127.0.0.1 (an ephemeral port), with the
shipped model on a generated video: every endpoint, bad requests included."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the studio extra (starlette, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the studio extra (starlette, uvicorn) is not installed")

import pcvos  # noqa: E402
from pcvos.data.export_formats import YOLO_DECIMALS  # noqa: E402
from pcvos.data.frames import VideoWriter  # noqa: E402
from pcvos.data.palette import DAVIS_PALETTE  # noqa: E402
from pcvos.studio.controller import Studio  # noqa: E402
from pcvos.studio.server import MAX_UPLOAD_BYTES, TOKEN_HEADER, ServerThread, create_app  # noqa: E402
from pcvos.studio.workspace import MAX_OBJECTS, Workspace, WorkspaceError  # noqa: E402

FRAMES, HEIGHT, WIDTH, FPS = 48, 120, 160, 24
SQUARE = 30  # side of the moving square
SQUARE_Y = 45  # its top row
JOB_TIMEOUT_S = 120


def square_x(t: int) -> int:
    """Left column of the square in frame t: it crosses the frame left to right."""
    return 20 + round(90 * t / (FRAMES - 1))


def square_mask(t: int) -> np.ndarray:
    m = np.zeros((HEIGHT, WIDTH), bool)
    m[SQUARE_Y : SQUARE_Y + SQUARE, square_x(t) : square_x(t) + SQUARE] = True
    return m


def make_video(path: Path) -> Path:
    """A short H.264 clip: a red square moving over a noisy blue background."""
    rng = np.random.default_rng(0)
    background = (rng.integers(0, 40, (HEIGHT, WIDTH, 3)) + np.array([20, 40, 80])).astype(np.uint8)
    with VideoWriter(path, fps=FPS) as writer:
        for t in range(FRAMES):
            frame = background.copy()
            frame[square_mask(t)] = (230, 60, 40)
            writer.write(frame)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("studio_video") / "clip.mp4")


@pytest.fixture(scope="module")
def model():
    return pcvos.load_model()  # the shipped pcvos-lite


def open_studio(root: Path, video: Path | None, model) -> Studio:
    ws = Workspace.open_or_create(root, video)
    return Studio(ws, pcvos.Session(model, ws.frames_dir, clip_length=5))


class Client:
    """Plain http.client requests (raw paths are sent as written: no client-side normalising)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.token = token  # sent as X-PCVOS-Token unless a request sets its own headers for it

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = dict(headers or {})
        if self.token is not None:
            headers.setdefault(TOKEN_HEADER, self.token)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif body is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), data

    def json(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        status, hdrs, data = self.request(method, path, body, headers)
        assert hdrs.get("content-type", "").startswith("application/json"), (status, data[:200])
        return status, json.loads(data)


@pytest.fixture()
def served(tmp_path, video, model):
    studio = open_studio(tmp_path / "ws", video, model)
    server = ServerThread(create_app(studio))
    yield Client(server.url, server.token), studio
    server.stop()
    studio.close()


def put_labels(client: Client, t: int, labels: np.ndarray):
    return client.json(
        "PUT",
        f"/api/frames/{t}/labels",
        labels.astype(np.uint8).tobytes(),
        {"Content-Type": "application/octet-stream"},
    )


def png_bytes(array: np.ndarray, mode: str, palette: bool = False) -> bytes:
    image = Image.fromarray(array, mode)
    if palette:
        image.putpalette(DAVIS_PALETTE.tobytes())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_state_page_and_frames(served):
    client, studio = served
    status, state = client.json("GET", "/api/state")
    assert status == 200
    assert (state["num_frames"], state["width"], state["height"], state["fps"]) == (
        FRAMES,
        WIDTH,
        HEIGHT,
        FPS,
    )
    assert state["objects"] == [] and state["keyframes"] == [] and state["job"]["state"] == "idle"
    status, headers, page = client.request("GET", "/")
    assert status == 200 and b"studio.js" in page
    for asset in ("studio.js", "studio.css"):
        assert client.request("GET", f"/static/{asset}")[0] == 200
    status, headers, data = client.request("GET", "/api/frames/10/image")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    frame = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    assert frame.shape == (HEIGHT, WIDTH, 3)
    inside = frame[square_mask(10)].mean(axis=0)
    assert inside[0] > 180 and inside[2] < 100  # the red square is where it was drawn
    assert client.request("GET", "/api/frames/10/labels")[0] == 204  # nothing segmented yet
    status, err = client.json("GET", f"/api/frames/{FRAMES}/labels")
    assert status == 404 and "out of range" in err["error"]
    status, err = client.json("GET", "/api/frames/-1/image")
    assert status == 400  # not a frame number at all
    status, err = client.json("GET", "/api/frames/ten/image")
    assert status == 400 and "whole number" in err["error"]
    # only ASCII digits: int() would read ' 1', '+3', '1_0' (as 10) and Arabic-Indic or full-width digits
    for raw in ("%201", "1%20", "+3", "1_0", "%D9%A1", "%EF%BC%91", "0x1", "1e1", "-0", "", "1234567890"):
        for path in (f"/api/frames/{raw}/image", f"/api/frames/{raw}/labels"):
            status, _, data = client.request("GET", path)
            assert status in (400, 404) and b"error" in data, (path, status)
            assert status == 400 or raw == "", (path, status)  # '' is no route at all
    status, _, data = client.request("PATCH", "/api/objects/1_0", {"name": "x"})
    assert status == 400 and b"digits" in data
    status, _, data = client.request("POST", "/api/frames/0/import?object=%2B1", b"x")
    assert status == 400 and b"object must be" in data
    status, err = client.json("GET", "/api/nothing-here")
    assert status == 404 and "error" in err


def test_objects_add_rename_remove(served):
    client, studio = served
    status, a = client.json("POST", "/api/objects", {"name": "bear"})
    assert status == 201 and a["id"] == 1 and a["name"] == "bear" and a["colour"] == list(DAVIS_PALETTE[1])
    status, b = client.json("POST", "/api/objects", {})
    assert b["id"] == 2 and b["name"] == "object 2"
    status, renamed = client.json("PATCH", "/api/objects/2", {"name": "  kite "})
    assert status == 200 and renamed["name"] == "kite"
    assert client.json("PATCH", "/api/objects/2", {"name": 5})[0] == 400
    assert client.json("PATCH", "/api/objects/7", {"name": "x"})[0] == 404
    assert client.json("DELETE", "/api/objects/x")[0] == 400
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[:10] = 1
    labels[-10:] = 2
    assert put_labels(client, 4, labels)[0] == 200
    status, state = client.json("DELETE", "/api/objects/1")
    assert status == 200 and [o["id"] for o in state["objects"]] == [2]
    on_disk = np.array(Image.open(studio.ws.mask_path(4)))
    assert not (on_disk == 1).any() and (on_disk[-10:] == 2).all()
    assert np.array_equal(studio.session.labels(4), on_disk)  # the session's keyframe follows


def test_put_labels_makes_a_keyframe_on_disk(served):
    client, studio = served
    client.json("POST", "/api/objects", {"name": "square"})
    labels = square_mask(3).astype(np.uint8)
    status, body = put_labels(client, 3, labels)
    assert status == 200 and body["keyframes"] == [3]
    image = Image.open(studio.ws.mask_path(3))
    assert image.mode == "P" and np.array_equal(np.array(image), labels)
    assert np.array_equal(
        np.frombuffer(client.request("GET", "/api/frames/3/labels")[2], np.uint8).reshape(HEIGHT, WIDTH),
        labels,
    )
    meta = json.loads((studio.ws.root / "workspace.json").read_text())
    assert meta["keyframes"] == [3] and meta["objects"][0]["name"] == "square"
    status, err = put_labels(client, 3, labels[:-1])
    assert status == 400 and "bytes" in err["error"]
    status, err = put_labels(client, 3, labels * 5)
    assert status == 400 and "unknown object" in err["error"]
    void = labels.copy()
    void[:4] = 255  # void, as Session.set_mask and pcvos segment read it: background, not object 255
    assert put_labels(client, 4, void)[0] == 200
    assert np.array_equal(np.array(Image.open(studio.ws.mask_path(4))), np.where(void == 255, 0, void))
    assert np.array_equal(studio.session.labels(4), np.where(void == 255, 0, void))
    assert [o["id"] for o in studio.ws.objects] == [1]
    big = b"\0" * (HEIGHT * WIDTH + 1)
    status, _, data = client.request(
        "PUT", "/api/frames/3/labels", big, {"Content-Type": "application/octet-stream"}
    )
    assert status == 413 and "limit" in json.loads(data)["error"]
    assert put_labels(client, FRAMES + 3, labels)[0] == 404
    assert np.array_equal(
        np.array(Image.open(studio.ws.mask_path(3))), labels
    )  # the bad requests changed nothing


def mask_of(headers: dict, data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(int(headers["x-height"]), int(headers["x-width"]))


def test_box_prompt_finds_the_square(served):
    client, studio = served
    client.json("POST", "/api/objects", {})
    x = square_x(5)
    box = [x - 8, SQUARE_Y - 8, x + SQUARE + 8, SQUARE_Y + SQUARE + 8]
    status, headers, data = client.request("POST", "/api/frames/5/prompt", {"object": 1, "box": box})
    assert status == 200
    mask = mask_of(headers, data)
    assert set(np.unique(mask)) <= {0, 1}
    assert iou(mask.astype(bool), square_mask(5)) > 0.8
    # corners in any order, and past the frame's edge (a drag that left it), are clipped to the frame
    flipped = [box[2], box[3], box[0], box[1]]
    assert np.array_equal(
        mask_of(*client.request("POST", "/api/frames/5/prompt", {"object": 1, "box": flipped})[1:]), mask
    )
    status, _, _ = client.request("POST", "/api/frames/5/prompt", {"object": 1, "box": [10**400, 0, -5, 50]})
    assert status == 200  # a huge but finite corner is clipped to the frame
    assert not studio.ws.keyframes  # a prompt stores nothing: the page merges and saves


DATA = Path(__file__).resolve().parent / "data" / "prompts"
RHINO_FRAMES = 4  # tests/data/prompts/rhino_0000{0..3}: real DAVIS frames (train split), 428x240


def rhino_gt(t: int) -> np.ndarray:
    return np.array(Image.open(DATA / f"rhino_{t:05d}.png")) > 0


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its boundary (the robot clicker's click)."""
    import cv2

    d = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


def rhino_frames(folder: Path) -> Path:
    folder.mkdir()
    for t in range(RHINO_FRAMES):
        shutil.copyfile(DATA / f"rhino_{t:05d}.jpg", folder / f"{t:05d}.jpg")
    return folder


@pytest.fixture()
def rhino(tmp_path, model):
    ws = Workspace.open_or_create(tmp_path / "ws", rhino_frames(tmp_path / "rhino"))
    studio = Studio(ws, pcvos.Session(model, ws.frames_dir, clip_length=2))
    server = ServerThread(create_app(studio))
    yield Client(server.url, server.token), studio
    server.stop()
    studio.close()


def test_prepare_runs_the_saliency_network_once_for_the_first_click(rhino, monkeypatch):
    from pcvos.inference import prompts

    client, studio = rhino
    client.json("POST", "/api/objects", {})
    prompts.DEFAULT_CACHE.clear()
    status, headers, data = client.request("POST", "/api/frames/1/prepare")
    assert status == 204 and not data and headers["cache-control"] == "no-store"
    assert client.request("POST", f"/api/frames/{RHINO_FRAMES}/prepare")[0] == 404
    assert client.request("POST", "/api/frames/x/prepare")[0] in (400, 404)

    def no_network():
        raise AssertionError("the first click ran the saliency network although frame 1 was prepared")

    monkeypatch.setattr(prompts, "saliency_model", no_network)
    x, y = inner_point(rhino_gt(1))
    status, headers, data = client.request("POST", "/api/frames/1/prompt", {"object": 1, "points": [[x, y]]})
    assert status == 200, data
    assert iou(mask_of(headers, data).astype(bool), rhino_gt(1)) > 0.6
    assert not studio.ws.keyframes  # preparing stores nothing


def test_clicks_auto_and_box_on_a_real_frame(rhino):
    client, studio = rhino
    gt = rhino_gt(0)
    h, w = gt.shape
    client.json("POST", "/api/objects", {})

    def prompt(body: dict) -> np.ndarray:
        status, headers, data = client.request("POST", "/api/frames/0/prompt", {"object": 1, **body})
        assert status == 200, data
        mask = mask_of(headers, data)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 1}
        return mask.astype(bool)

    # one click on the rhino: far better than the click's own disk, and the click is in it
    x, y = inner_point(gt)
    first = prompt({"points": [[x, y]], "labels": [1], "previous": True})  # nothing stored yet: fresh
    assert first[y, x] and iou(first, gt) > 0.6
    # stored (as the page does), then a background click where the mask spills over: it obeys, refining
    # the stored mask rather than starting again
    labels = np.zeros((h, w), np.uint8)
    labels[first] = 1
    labels[:10, :10] = 0
    put_labels(client, 0, labels)
    spill = np.argwhere(first & ~gt)
    yb, xb = spill[len(spill) // 2] if len(spill) else np.argwhere(first)[0]
    second = prompt({"points": [[x, y], [int(xb), int(yb)]], "labels": [1, 0], "previous": True})
    assert not second[yb, xb] and second[y, x] and iou(second, gt) > 0.5
    assert iou(second, first) > 0.5  # refined, not replaced
    # labels default to "object"; previous to false
    assert np.array_equal(prompt({"points": [[x, y]]}), first)
    # zero-click: the salient object; a box: the object inside it
    assert iou(prompt({}), gt) > 0.6
    ys, xs = np.nonzero(gt)
    boxed = prompt({"box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    assert iou(boxed, gt) > 0.7
    assert studio.ws.keyframes == {0} and np.array_equal(studio.ws.read_labels(0), labels)  # stores nothing


def test_prompt_bad_requests(rhino):
    client, studio = rhino
    client.json("POST", "/api/objects", {})
    h, w = rhino_gt(0).shape
    bad = [
        ({}, "object"),
        ({"object": "1"}, "object"),
        ({"object": 1.0}, "object"),
        ({"object": True}, "object"),
        ({"object": 1, "points": "all"}, "points"),
        ({"object": 1, "points": [5, 5]}, "points[0]"),
        ({"object": 1, "points": [[5]]}, "points[0]"),
        ({"object": 1, "points": [[5, "5"]]}, "points[0]"),
        ({"object": 1, "points": [[5, True]]}, "points[0]"),
        ({"object": 1, "points": [[5, 5], [w, 5]]}, "points[1]"),  # x = W is past the last column
        ({"object": 1, "points": [[-1, 5]]}, "points[0]"),
        ({"object": 1, "points": [[5, h + 0.5]]}, "points[0]"),
        ({"object": 1, "points": [[5, 5]] * 101}, "points"),
        ({"object": 1, "points": [[5, 5]], "labels": [2]}, "labels"),
        ({"object": 1, "points": [[5, 5]], "labels": [True]}, "labels"),
        ({"object": 1, "points": [[5, 5]], "labels": [1, 0]}, "labels"),
        ({"object": 1, "points": [[5, 5]], "labels": 1}, "labels"),
        ({"object": 1, "box": [1, 2, 3]}, "box"),
        ({"object": 1, "box": "all"}, "box"),
        ({"object": 1, "box": [10, 10, 11, 11]}, "box"),
        ({"object": 1, "box": [w + 5, 0, w + 50, 50]}, "box"),  # clipped to nothing
        ({"object": 1, "previous": "yes"}, "previous"),
        ({"object": 1, "previous": 1}, "previous"),
    ]
    for body, field in bad:
        status, answer = client.json("POST", "/api/frames/0/prompt", body)
        assert status == 400 and field in answer["error"], (body, status, answer)
    # non-finite numbers: JSON's non-standard Infinity/NaN, and literals that overflow to inf
    raw = [
        b'{"object": 1, "points": [[Infinity, 5]]}',
        b'{"object": 1, "points": [[NaN, 5]]}',
        b'{"object": 1, "points": [[1e999, 5]]}',
        b'{"object": 1, "points": [[5, -1e999]]}',
        b'{"object": 1, "box": [1e999, 0, 50, 50]}',
        b'{"object": 1, "points": [[' + b"9" * 400 + b", 5]]}",  # a huge integer: outside the frame
        b"{not json",
    ]
    for body in raw:
        status, _, data = client.request(
            "POST", "/api/frames/0/prompt", body, {"Content-Type": "application/json"}
        )
        assert status == 400 and b"Traceback" not in data and b"error" in data, (body, status, data)
    assert client.json("POST", "/api/frames/0/prompt", {"object": 7})[0] == 404  # no such object
    assert client.json("POST", f"/api/frames/{RHINO_FRAMES}/prompt", {"object": 1})[0] == 404
    assert not studio.ws.keyframes


def test_suggest_marks_frames_after_a_propagation(served):
    client, studio = served
    assert client.json("GET", "/api/suggest")[1] == {"k": 3, "frames": []}  # nothing propagated yet
    client.json("POST", "/api/objects", {})
    put_labels(client, 0, square_mask(0))
    assert client.json("POST", "/api/propagate", {"frame": 0, "until": "end"})[0] == 202
    assert studio.wait(JOB_TIMEOUT_S)["state"] == "done"
    status, answer = client.json("GET", "/api/suggest")
    assert status == 200 and answer["k"] == 3 and len(answer["frames"]) == 3
    assert answer["frames"] == studio.session.suggest(3)  # the session's own answer
    assert all(1 <= t < FRAMES for t in answer["frames"])  # segmented, never the keyframe
    status, answer = client.json("GET", "/api/suggest?k=5")
    assert status == 200 and len(answer["frames"]) == 5
    for k in ("0", "-1", "1.5", "x", "101", "99999999999"):
        status, answer = client.json("GET", f"/api/suggest?k={k}")
        assert status == 400 and "k" in answer["error"], (k, status, answer)


def test_import_mask(served):
    client, studio = served
    client.json("POST", "/api/objects", {})
    binary = (square_mask(0) * 255).astype(np.uint8)
    status, headers, data = client.request("POST", "/api/frames/0/import?object=1", png_bytes(binary, "L"))
    assert status == 200
    assert np.array_equal(
        np.frombuffer(data, np.uint8).reshape(HEIGHT, WIDTH), square_mask(0).astype(np.uint8)
    )
    # an indexed PNG keeps its ids; unknown ones become objects; 255 is void (background)
    indexed = np.zeros((HEIGHT, WIDTH), np.uint8)
    indexed[:20, :20] = 7
    indexed[-5:] = 255
    status, _, data = client.request("POST", "/api/frames/0/import", png_bytes(indexed, "L", palette=True))
    assert status == 200 and studio.ws.object_ids() == [1, 7]
    imported = np.frombuffer(data, np.uint8).reshape(HEIGHT, WIDTH)
    assert (imported[:20, :20] == 7).all() and not imported[-5:].any()
    # a mask of another size is refused, never stretched: half size, 1x1, transposed
    for shape in ((HEIGHT // 2, WIDTH // 2), (1, 1), (WIDTH, HEIGHT)):
        small = np.full(shape, 3, np.uint8)
        status, _, data = client.request("POST", "/api/frames/0/import", png_bytes(small, "L", palette=True))
        assert status == 400 and "not resized" in json.loads(data)["error"], shape
    assert studio.ws.object_ids() == [1, 7]
    # ids 1..254 in one indexed PNG: refused whole (the cap), nothing added
    many = (np.arange(HEIGHT * WIDTH) % 254 + 1).astype(np.uint8).reshape(HEIGHT, WIDTH)
    status, _, data = client.request("POST", "/api/frames/0/import", png_bytes(many, "L", palette=True))
    assert status == 400 and f"at most {MAX_OBJECTS}" in json.loads(data)["error"]
    assert studio.ws.object_ids() == [1, 7]
    assert client.json("POST", "/api/objects", {})[0] == 201  # adding objects still works
    status, _, data = client.request("POST", "/api/frames/0/import?object=1", b"\x89PNG\r\n\x1a\nbroken")
    assert status == 400 and "uploaded mask" in json.loads(data)["error"]
    wrong = np.zeros((50, 50), np.uint8)
    wrong[:5] = 255
    assert client.request("POST", "/api/frames/0/import?object=1", png_bytes(wrong, "L"))[0] == 400
    for _ in range(MAX_OBJECTS - len(studio.ws.objects)):  # up to the cap, then a clear refusal
        assert client.json("POST", "/api/objects", {})[0] == 201
    status, err = client.json("POST", "/api/objects", {})
    assert status == 400 and f"at most {MAX_OBJECTS} objects" in err["error"]
    assert client.request("POST", "/api/frames/0/import?object=99", png_bytes(binary, "L"))[0] == 404
    assert client.request("POST", "/api/frames/0/import?object=1", b"")[0] == 400
    status, _, data = client.request("POST", "/api/frames/0/import?object=1", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert status == 413
    assert not list(studio.ws.root.glob(".import-*"))  # uploads leave nothing behind


def read_events(client: Client, until_state: set[str], out: list[dict], ready: threading.Event) -> None:
    conn = http.client.HTTPConnection(client.host, client.port, timeout=JOB_TIMEOUT_S)
    conn.request("GET", "/api/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    while True:
        line = resp.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            out.append(event)
            if event["type"] == "hello":
                ready.set()
            if event["type"] == "job" and event["state"] in until_state:
                break
    conn.close()


def test_propagate_with_live_progress(served):
    client, studio = served
    client.json("POST", "/api/objects", {})
    assert put_labels(client, 0, square_mask(0).astype(np.uint8))[0] == 200
    events: list[dict] = []
    ready = threading.Event()
    reader = threading.Thread(
        target=read_events, args=(client, {"done", "error", "cancelled"}, events, ready)
    )
    reader.start()
    assert ready.wait(10)
    status, job = client.json(
        "POST", "/api/propagate", {"frame": 0, "direction": "both", "until": "keyframe"}
    )
    assert status == 202 and job["state"] == "running" and job["total"] == FRAMES - 1
    status, err = client.json("POST", "/api/propagate", {"frame": 0})
    assert status == 409 and "running" in err["error"]
    assert put_labels(client, 5, np.zeros((HEIGHT, WIDTH), np.uint8))[0] == 409
    assert client.json("POST", "/api/export")[0] == 409
    reader.join(JOB_TIMEOUT_S)
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["frame"] for e in progress] == list(range(1, FRAMES))  # live, in processing order
    assert [e["done"] for e in progress] == list(range(1, FRAMES))
    assert all(e["total"] == FRAMES - 1 and e["fps"] > 0 for e in progress)
    assert events[-1]["state"] == "done" and client.json("GET", "/api/job")[1]["state"] == "done"
    state = client.json("GET", "/api/state")[1]
    assert state["keyframes"] == [0] and state["propagated"] == list(range(1, FRAMES))
    for t in (5, 20):  # the model follows the square
        assert iou(np.array(Image.open(studio.ws.mask_path(t))) == 1, square_mask(t)) > 0.5
    meta = json.loads((studio.ws.root / "workspace.json").read_text())
    assert meta["propagated"] == list(range(1, FRAMES))


def test_propagate_bad_requests(served):
    client, _ = served
    client.json("POST", "/api/objects", {})
    put_labels(client, 10, square_mask(10).astype(np.uint8))
    cases = [
        ({"frame": 11}, 400, "not a keyframe"),
        ({"frame": 99}, 404, "out of range"),
        ({"frame": "0"}, 400, "frame must be a whole number"),
        ({"frame": True}, 400, "frame must be a whole number"),
        ({"frame": None}, 400, "frame must be a whole number"),
        ({"frame": 10.0}, 400, "frame must be a whole number"),
        ({}, 400, "frame is required"),
        ({"frame": 10, "direction": ["both"]}, 400, "direction must be a string"),
        ({"frame": 10, "until": 1}, 400, "until must be a string"),
        ({"frame": 10, "objects": ["1"]}, 400, "objects must be a list"),
        ({"frame": 10, "objects": [True]}, 400, "objects must be a list"),
        ({"frame": 10, "objects": 1}, 400, "objects must be a list"),
        ({"frame": 10, "direction": "sideways"}, 400, "direction"),
        ({"frame": 10, "until": "never"}, 400, "until"),
        ({"frame": 10, "objects": [3]}, 404, "unknown object"),
        ({"frame": 10, "objects": []}, 400, "objects"),
    ]
    for body, code, words in cases:
        status, err = client.json("POST", "/api/propagate", body)
        assert (status, words in err["error"]) == (code, True), (body, status, err)
    status, _, data = client.request(
        "POST", "/api/propagate", b"[1, 2]", {"Content-Type": "application/json"}
    )
    assert status == 400


def test_cancel_leaves_whole_frames(served):
    client, studio = served
    client.json("POST", "/api/objects", {})
    put_labels(client, 0, square_mask(0).astype(np.uint8))
    assert client.json("GET", "/api/job")[1]["id"] == 0  # no job yet
    status, started = client.json("POST", "/api/propagate", {"frame": 0, "until": "end"})
    assert status == 202 and started["id"] == 1
    status, job = client.json("POST", "/api/cancel")
    assert status == 200
    job = studio.wait(JOB_TIMEOUT_S)
    assert job["state"] == "cancelled" and job["done"] < FRAMES - 1
    written = sorted(int(p.stem) for p in studio.ws.masks_dir.glob("*.png"))
    assert written == list(range(0, job["done"] + 1))  # only whole frames, in order; nothing half-written
    for t in written:
        assert np.array(Image.open(studio.ws.mask_path(t))).shape == (HEIGHT, WIDTH)
    assert not list(studio.ws.masks_dir.glob(".*"))
    assert client.json("POST", "/api/cancel")[1]["state"] == "cancelled"  # nothing running: harmless
    # a client polling /api/job tells the next job from this finished one by its id
    status, again = client.json("POST", "/api/propagate", {"frame": 0, "until": "end"})
    assert status == 202 and again["id"] == 2 and again["state"] == "running"
    assert studio.wait(JOB_TIMEOUT_S)["id"] == 2


def test_a_refused_export_keeps_the_running_ones_cancel(served, monkeypatch):
    """POST /api/export while one runs is a 409, and must not undo the cancel asked of the running one."""
    import pcvos.studio.controller as controller

    client, studio = served
    reached, release = threading.Event(), threading.Event()
    real = controller.export_workspace

    def gated(ws, progress=None, cancel=None, **kwargs):
        def hold(done, total):
            progress(done, total)
            if done == 1:  # the first frame is written: hold the export here until the test says
                reached.set()
                release.wait(JOB_TIMEOUT_S)

        return real(ws, progress=hold, cancel=cancel, **kwargs)

    monkeypatch.setattr(controller, "export_workspace", gated)
    assert client.json("POST", "/api/export")[0] == 202
    assert reached.wait(JOB_TIMEOUT_S)
    status, job = client.json("POST", "/api/cancel")
    assert status == 200 and job["cancel_requested"] is True
    status, err = client.json("POST", "/api/export")
    assert status == 409 and "running" in err["error"]
    assert client.json("GET", "/api/job")[1]["cancel_requested"] is True
    release.set()
    job = studio.wait(JOB_TIMEOUT_S)
    assert job["state"] == "cancelled" and job["cancel_requested"] is True and job["done"] == 1
    assert not studio.ws.export_dir.exists() and not list(studio.ws.root.glob(".export*"))


def test_export_zip(served):
    client, studio = served
    client.json("POST", "/api/objects", {})
    client.json("POST", "/api/objects", {})
    labels = square_mask(0).astype(np.uint8)
    labels[:8, :8] = 2
    put_labels(client, 0, labels)
    assert client.json("GET", "/api/export/download")[0] == 404
    assert client.json("POST", "/api/export")[0] == 202
    assert studio.wait(JOB_TIMEOUT_S)["state"] == "done"
    status, headers, data = client.request("GET", "/api/export/download")
    assert status == 200 and headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        assert {
            "overlay.mp4",
            "masks/00000.png",
            "masks/00047.png",
            "objects/001/00000.png",
            "objects/002/00047.png",
            "cutouts/001/00000.png",
        } <= names
        assert len([n for n in names if n.startswith("masks/")]) == FRAMES
        mask0 = Image.open(io.BytesIO(zf.read("masks/00000.png")))
        assert mask0.mode == "P" and np.array_equal(np.array(mask0), labels)
        obj1 = np.array(Image.open(io.BytesIO(zf.read("objects/001/00000.png"))))
        assert (
            obj1.dtype == np.uint8
            and set(np.unique(obj1)) == {0, 255}
            and np.array_equal(obj1 == 255, labels == 1)
        )
        cut = np.array(Image.open(io.BytesIO(zf.read("cutouts/002/00000.png"))))
        assert cut.shape == (HEIGHT, WIDTH, 4) and np.array_equal(cut[..., 3] == 255, labels == 2)
        assert not np.array(Image.open(io.BytesIO(zf.read("masks/00030.png")))).any()  # never segmented
    with av.open(str(studio.ws.export_dir / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == FPS
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    assert not list(studio.ws.root.glob(".export*"))


def test_export_coco_and_yolo(served):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (COCO export)")
    from pycocotools import mask as mask_utils

    client, studio = served
    client.json("POST", "/api/objects", {"name": "red\nsquare"})  # a name on two lines: one in the files
    client.json("POST", "/api/objects", {"name": "corner"})
    labels = square_mask(0).astype(np.uint8)
    labels[:8, :8] = 2
    labels[20:24, 2:6] = 2  # object 2 in two parts: two YOLO polygons
    put_labels(client, 0, labels)
    put_labels(client, 9, square_mask(9).astype(np.uint8))
    for formats, field in ((["pdf"], "pdf"), ("coco", "formats"), ([1], "formats"), ([""], "formats")):
        status, answer = client.json("POST", "/api/export", {"formats": formats})
        assert status == 400 and field in answer["error"], (formats, answer)
    assert studio.job()["id"] == 0  # refused before any job started
    assert client.json("POST", "/api/export", {"formats": ["coco", "yolo", "COCO"]})[0] == 202
    job = studio.wait(JOB_TIMEOUT_S)
    assert job["state"] == "done" and job["formats"] == ["coco", "yolo"]
    out = studio.ws.export_dir

    document = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in document["categories"]] == ["red square", "corner"]
    assert [im["file_name"] for im in document["images"]] == [f"{t:05d}.jpg" for t in range(FRAMES)]
    by_frame: dict[int, dict[int, np.ndarray]] = {}
    for ann in document["annotations"]:
        decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
        by_frame.setdefault(ann["image_id"] - 1, {})[ann["category_id"]] = decoded
    assert set(by_frame) == {0, 9}  # frames never segmented have no annotation
    assert np.array_equal(by_frame[0][1], labels == 1) and np.array_equal(by_frame[0][2], labels == 2)
    assert np.array_equal(by_frame[9][1], square_mask(9)) and 2 not in by_frame[9]

    assert (out / "yolo" / "classes.txt").read_text() == "red square\ncorner\n"
    assert sorted(p.name for p in (out / "yolo").glob("*.txt")) == sorted(
        [f"{t:05d}.txt" for t in range(FRAMES)] + ["classes.txt"]
    )
    lines = (out / "yolo" / "00000.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["0", "1", "1"]  # class = the object's slot
    for line in lines:
        coords = np.array(line.split()[1:], float).reshape(-1, 2)
        assert len(coords) >= 3 and ((coords > 0) & (coords < 1)).all()
    square = np.array(next(line for line in lines if line.startswith("0 ")).split()[1:], float).reshape(-1, 2)
    xs, ys = square[:, 0] * WIDTH, square[:, 1] * HEIGHT  # the square's corners, as pixel centres
    # coordinates are rounded to YOLO_DECIMALS places of a side: at most half a unit there, in pixels
    tol = 0.5 * 10.0**-YOLO_DECIMALS * max(WIDTH, HEIGHT) + 1e-9
    x0 = square_x(0)
    assert abs(xs.min() - (x0 + 0.5)) <= tol and abs(xs.max() - (x0 + SQUARE - 0.5)) <= tol
    assert abs(ys.min() - (SQUARE_Y + 0.5)) <= tol and abs(ys.max() - (SQUARE_Y + SQUARE - 0.5)) <= tol
    assert (out / "yolo" / "00030.txt").read_text() == ""  # no object: a background image
    with zipfile.ZipFile(out / "pcvos_export.zip") as zf:
        names = set(zf.namelist())
    assert {"coco.json", "yolo/classes.txt", "yolo/00000.txt", "masks/00000.png"} <= names

    # the next export without formats replaces this one whole: no COCO or YOLO file is left over
    assert client.json("POST", "/api/export", {})[0] == 202
    assert studio.wait(JOB_TIMEOUT_S)["state"] == "done"
    assert not (out / "coco.json").exists() and not (out / "yolo").exists()
    assert not list(studio.ws.root.glob(".export*"))


KILLED_WRITER = """
import os, signal, sys
from pcvos.data.io_utils import temp_path_for
from pcvos.studio.exporter import export_workspace
from pcvos.studio.workspace import Workspace

ws, mode = Workspace(sys.argv[1]), sys.argv[2]
die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
if mode == "export":  # killed three frames into an export
    export_workspace(ws, progress=lambda done, total: done == 3 and die())
elif mode == "swap":  # killed between moving the old export aside and moving the new one in
    real = os.replace
    def replace(a, b):
        real(a, b)
        if os.path.basename(b).startswith(".export-old-"):
            die()
    os.replace = replace
    export_workspace(ws)
else:  # killed while an upload and a mask write are in flight
    with ws.upload_folder() as tmp:
        (tmp / "upload.png").write_bytes(b"partial")
        temp_path_for(ws.mask_path(2)).write_bytes(b"partial")
        die()
"""


def test_restart_removes_what_a_killed_studio_left(tmp_path, video, model):
    root = tmp_path / "ws"
    studio = open_studio(root, video, model)
    studio.add_object("square")
    studio.set_labels(0, square_mask(0).astype(np.uint8))
    studio.export()
    assert studio.wait(JOB_TIMEOUT_S)["state"] == "done"
    first_zip = (root / "export" / "pcvos_export.zip").read_bytes()
    studio.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode in ("export", "upload", "swap"):
        res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), mode], env=env, timeout=120)
        assert res.returncode == -9, mode
    left = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    assert len([n for n in left if n.startswith(".export-")]) == 3  # two half-built exports, one swapped out
    assert len([n for n in left if n.startswith(".import-")]) == 1 and list(root.glob("masks/.00002.png.*"))
    assert not (root / "export").exists()  # the kill came between the two renames
    # look-alikes that are not the studio's own, or belong to a live process: kept
    (root / ".export-notes").mkdir()
    (root / ".export-99999999-0000abcd").mkdir()
    (root / ".export-99999999-0000abcd" / "mine.txt").write_text("mine")
    live = root / f".export-{os.getppid()}-0000abcd"
    live.mkdir()
    (live / ".pcvos-export").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / ".export-99999999-0000beef").symlink_to(outside, target_is_directory=True)
    (root / "masks" / ".notes.99999999-0000abcd.txt").mkdir()
    reopened = open_studio(root, None, model)
    remaining = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    assert remaining == sorted(
        [".export-notes", ".export-99999999-0000abcd", live.name, ".export-99999999-0000beef"]
    )
    assert (outside / "keep.txt").read_text() == "keep" and (
        root / "masks" / ".notes.99999999-0000abcd.txt"
    ).is_dir()
    assert not list(root.glob("masks/.00002.png.*"))
    # the export the user had before the interrupted swap is back, untouched
    assert (root / "export" / "pcvos_export.zip").read_bytes() == first_zip
    assert reopened.state()["keyframes"] == [0]
    reopened.close()


def test_path_traversal_and_hosts(served):
    client, studio = served
    (studio.ws.root.parent / "secret.txt").write_text("secret")
    for path in (
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/export/../../secret.txt",
        "/files/%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/..%5Csecret.txt",
        "/files/C:%5Cwindows",
        "/static/../workspace.json",
        "/static/%2e%2e/workspace.json",
    ):
        status, _, data = client.request("GET", path)
        assert 400 <= status < 500 and b"secret" not in data and b"num_frames" not in data, (path, status)
    assert client.request("GET", "/files/workspace.json")[0] == 403
    assert client.request("GET", "/files/frames/00000.jpg")[0] == 200
    assert client.request("GET", "/api/state", headers={"Host": "attacker.example"})[0] == 400


STATE_CHANGING = [
    ("POST", "/api/objects", b'{"name": "evil"}'),
    ("PATCH", "/api/objects/1", b'{"name": "evil"}'),
    ("DELETE", "/api/objects/1", None),
    ("PUT", "/api/frames/0/labels", bytes(HEIGHT * WIDTH)),
    ("POST", "/api/frames/0/prompt", b'{"object": 1, "points": [[20, 20]]}'),
    ("POST", "/api/frames/0/prepare", b"{}"),
    ("POST", "/api/frames/0/import?object=1", b"x"),
    ("POST", "/api/propagate", b'{"frame": 0}'),
    ("POST", "/api/export", b"{}"),
    ("POST", "/api/cancel", b"{}"),
]


def test_writes_need_the_token_and_the_own_origin(served):
    client, studio = served
    studio.add_object("mine")
    anonymous = Client(f"http://{client.host}:{client.port}/")  # no token
    own = f"http://{client.host}:{client.port}"
    refusals = [
        ({}, "X-PCVOS-Token"),
        ({TOKEN_HEADER: "x" * 43}, "X-PCVOS-Token"),
        ({TOKEN_HEADER: client.token, "Origin": "http://127.0.0.1:1"}, "Origin"),
        ({TOKEN_HEADER: client.token, "Origin": "null"}, "Origin"),
        ({TOKEN_HEADER: client.token, "Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site"),
        ({TOKEN_HEADER: client.token, "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
    ]
    for method, path, body in STATE_CHANGING:
        for headers, words in refusals:
            status, hdrs, data = anonymous.request(
                method, path, body, {"Content-Type": "text/plain", **headers}
            )
            assert status == 403 and words in json.loads(data)["error"], (method, path, headers, status)
            assert hdrs["x-frame-options"] == "DENY"
    # with the token, a text/plain body (what a form or a no-cors fetch can send) is still refused
    for method, path, body in STATE_CHANGING:
        if body is None:
            continue
        status, _, data = client.request(method, path, body, {"Content-Type": "text/plain"})
        assert status == 415 and "Content-Type" in json.loads(data)["error"], (method, path, status)
    assert [o["name"] for o in studio.ws.objects] == ["mine"] and studio.job()["id"] == 0
    assert not studio.ws.keyframes and not studio.ws.export_dir.exists()
    # the page's own requests: token, same origin
    ok = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
    status, obj = client.json("POST", "/api/objects", {"name": "second"}, ok)
    assert status == 201 and obj["name"] == "second"
    status, headers, page = client.request("GET", "/")
    assert client.token.encode() in page and "frame-ancestors 'none'" in headers["content-security-policy"]
    assert anonymous.request("GET", "/api/state")[0] == 200  # reads need no token


def test_reopen_restores_objects_keyframes_and_masks(tmp_path, video, model):
    root = tmp_path / "ws"
    first = open_studio(root, video, model)
    first.add_object("square")
    first.set_labels(7, square_mask(7).astype(np.uint8))
    first.rename_object(1, "red square")
    first.close()
    again = open_studio(root, None, model)
    state = again.state()
    assert state["objects"] == [{"id": 1, "name": "red square", "colour": list(DAVIS_PALETTE[1])}]
    assert state["keyframes"] == [7] and again.session.keyframes == [7]
    assert np.array_equal(again.session.labels(7), square_mask(7).astype(np.uint8))
    assert len(list((root / "frames").glob("*.jpg"))) == FRAMES  # decoded once, not again
    with pytest.raises(WorkspaceError, match="belongs to"):
        Workspace.open_or_create(root, make_video(tmp_path / "other.mp4"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="other files"):
        Workspace.open_or_create(tmp_path / "busy", video)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from pcvos.cli import main

    assert main(["studio", "--no-browser"]) == 2
    assert (
        main(
            [
                "studio",
                str(tmp_path / "missing.mp4"),
                "--no-browser",
                "--port",
                "0",
                "--workspace",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing.mp4" in err and "Traceback" not in err and not (tmp_path / "w").exists()
    assert (
        main(
            [
                "studio",
                str(tmp_path / "missing.mp4"),
                "--no-browser",
                "--device",
                "gpu0",
                "--workspace",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "--device gpu0: not a device name" in err and "Traceback" not in err and not (tmp_path / "w").exists()
    )


def test_cli_serves_the_page(tmp_path, video):
    """``pcvos studio VIDEO --port 0 --no-browser`` prints its URL and serves; Ctrl+C stops it cleanly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pcvos",
            "studio",
            str(video),
            "--workspace",
            str(tmp_path / "ws"),
            "--port",
            "0",
            "--no-browser",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "http://127.0.0.1:" in line:
                url = line.split()[2]
        assert url is not None, "no URL printed"
        status, state = Client(url).json("GET", "/api/state")
        assert status == 200 and state["num_frames"] == FRAMES
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl+C
        rc = proc.wait(30)
    assert rc == 0


def test_ctrl_c_during_a_propagation_with_the_page_open(tmp_path, video):
    """Ctrl+C while a propagation runs and a page listens to the events: one line, no traceback
    (the open event stream held the shutdown for its grace period, then its cancellation was logged)."""
    from pcvos.studio.server import read_token

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcvos", "studio", str(video), "--workspace", str(tmp_path / "ws")]
        + ["--port", "0", "--no-browser"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = None
        for line in proc.stderr:
            if "http://127.0.0.1:" in line:
                url = line.split()[2]
                break
        assert url is not None, "no URL printed"
        client = Client(url)
        client.token = read_token(client.request("GET", "/")[2].decode())
        client.json("POST", "/api/objects", {})
        assert put_labels(client, 0, square_mask(0).astype(np.uint8))[0] == 200
        events: list[dict] = []
        ready = threading.Event()
        reader = threading.Thread(target=read_events, args=(client, set(), events, ready), daemon=True)
        reader.start()
        assert ready.wait(30)
        assert client.json("POST", "/api/propagate", {"frame": 0, "until": "end"})[0] == 202
        wait_for = time.monotonic() + JOB_TIMEOUT_S
        while not any(e["type"] == "progress" for e in events) and time.monotonic() < wait_for:
            time.sleep(0.05)
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl+C
        rest = proc.stderr.read()
        rc = proc.wait(60)
    assert rc == 0
    lines = rest.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcvos studio: stopped"), rest
    reader.join(30)
    assert not reader.is_alive()  # the event stream was ended, not left hanging


def test_a_video_breaking_part_way_leaves_no_workspace(tmp_path, broken_mp4):
    """Frames are encoded by worker threads while the video decodes: a decode error part-way still
    stops with the file and frame named, no workspace.json and no temporary file."""
    noise = np.random.default_rng(1).integers(0, 255, (4 * FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = broken_mp4(tmp_path / "cut.mp4", noise, fps=FPS, keep=0.6)  # noise: every frame costs bytes
    root = tmp_path / "ws"
    with pytest.raises(WorkspaceError, match=r"cut\.mp4.*frame"):
        Workspace.open_or_create(root, path)
    assert not (root / "workspace.json").exists()
    written = list((root / "frames").glob("*.jpg"))
    assert 0 < len(written) < 4 * FRAMES
    assert not [p for p in (root / "frames").iterdir() if p.name.startswith(".")]
