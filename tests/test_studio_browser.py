"""pcvos studio end to end in a real headless Chromium (Debian's ``chromium`` driven by Playwright; no
browser is downloaded): the mouse draws, the page propagates, steps, corrects, cancels and exports,
and the assertions read the PNGs the server wrote."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("PCVOS_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} not found: apt-get install chromium (or set PCVOS_CHROMIUM)", allow_module_level=True
    )
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
pytest.importorskip("starlette", reason="the studio extra (starlette, uvicorn) is not installed")

from playwright.sync_api import sync_playwright  # noqa: E402
from test_studio_api import (  # noqa: E402
    FRAMES,
    HEIGHT,
    RHINO_FRAMES,
    SQUARE,
    SQUARE_Y,
    WIDTH,
    Client,
    inner_point,
    iou,
    make_video,
    rhino_frames,
    rhino_gt,
    square_mask,
    square_x,
)

import pcvos  # noqa: E402
from pcvos.studio.controller import Studio  # noqa: E402
from pcvos.studio.server import ServerThread, create_app  # noqa: E402
from pcvos.studio.workspace import Workspace  # noqa: E402

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 800}
JOB_TIMEOUT_S = 120
#: Where the test also saves its screenshot of the page when set (the README's docs/studio.png).
SCREENSHOT_ENV = "PCVOS_STUDIO_SCREENSHOT"


class SlowSession:
    """The real session, optionally slowed per yielded frame, so a run lasts long enough to cancel."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.delay_s = 0.0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def propagate(self, *args, **kwargs):
        frames = self._inner.propagate(*args, **kwargs)

        def slowed():
            for item in frames:
                time.sleep(self.delay_s)
                yield item

        return slowed()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


class Recorder:
    """ASGI wrapper that records (method, path, status) of every HTTP request the server answers, and
    the JSON bodies of the model prompts (``prompts``: (frame path, body) in order)."""

    def __init__(self, app) -> None:
        self.app, self.state, self.seen, self.prompts = app, app.state, [], []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def read():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def record(message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((scope["method"], scope["path"], message["status"]))
                if scope["path"].endswith("/prompt"):
                    self.prompts.append((scope["path"], json.loads(b"".join(chunks))))
            await send(message)

        await self.app(scope, receive if scope["method"] == "GET" else read, record)


@pytest.fixture()
def served_studio(tmp_path, browser):
    """(page, studio, session, recorder): the studio's page open in Chromium, its server recording."""
    video = make_video(tmp_path / "clip.mp4")
    ws = Workspace.open_or_create(tmp_path / "ws", video)
    session = SlowSession(pcvos.Session(pcvos.load_model(), ws.frames_dir, clip_length=5))
    studio = Studio(ws, session)
    page, server, recorder, errors = open_page(browser, studio)
    yield page, studio, session, recorder
    page.close()
    server.stop()
    studio.close()
    assert not errors, errors


def open_page(browser, studio: Studio):
    """(page, server, recorder, errors): the studio's page open in Chromium, its server recording."""
    recorder = Recorder(create_app(studio))
    server = ServerThread(recorder)
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url)
    page.wait_for_function("window.studio && window.studio.S.ready", timeout=15000)
    return page, server, recorder, errors


@pytest.fixture()
def rhino_page(tmp_path, browser):
    """(page, studio, recorder) on a workspace of four real DAVIS frames (rhino, 428x240)."""
    ws = Workspace.open_or_create(tmp_path / "ws", rhino_frames(tmp_path / "rhino"))
    studio = Studio(ws, pcvos.Session(pcvos.load_model(), ws.frames_dir, clip_length=2))
    page, server, recorder, errors = open_page(browser, studio)
    yield page, studio, recorder
    page.close()
    server.stop()
    studio.close()
    assert not errors, errors


@pytest.fixture()
def studio_page(served_studio):
    return served_studio[:3]


def to_page(page, x: float, y: float, size: tuple[int, int] = (WIDTH, HEIGHT)) -> tuple[float, float]:
    """Image point (x, y) of a ``size`` = (W, H) frame -> page coordinates on the drawing canvas."""
    box = page.locator("#draft").bounding_box()
    return box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1]


def wait_until(predicate, what: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_job(studio: Studio, state: str, after: int) -> dict:
    """Wait for the first job started after job id ``after`` to end (the page posts a click's job
    asynchronously, so the previous job may still be the current one for a moment)."""
    wait_until(
        lambda: studio.job()["id"] > after and studio.job()["state"] not in ("running", "idle"), "the job"
    )
    job = studio.job()
    assert job["state"] == state, job
    return job


def disk_labels(studio: Studio, t: int) -> np.ndarray:
    return np.array(Image.open(studio.ws.mask_path(t)))


def frame_number(page) -> int:
    """The frame the header shows, as a 0-based index (the page numbers frames 1..N)."""
    return int(page.input_value("#frame-number")) - 1


def saved(page, studio: Studio, t: int) -> np.ndarray:
    """Frame t's labels on disk once the page has no save in flight."""
    page.wait_for_function("window.studio.S.pendingSaves === 0")
    return disk_labels(studio, t)


def brush_stroke(page, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*to_page(page, *points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*to_page(page, *p), steps=4)
    page.mouse.up()


def test_draw_propagate_correct_cancel_export(studio_page, tmp_path):
    page, studio, session = studio_page
    ws = studio.ws

    # an object, then its mask on frame 0 drawn with the polygon tool
    page.click("#add-object")
    page.wait_for_function("window.studio.S.objects.length === 1")
    page.keyboard.press("p")
    x0 = square_x(0)
    for x, y in [
        (x0, SQUARE_Y),
        (x0 + SQUARE, SQUARE_Y),
        (x0 + SQUARE, SQUARE_Y + SQUARE),
        (x0, SQUARE_Y + SQUARE),
    ]:
        page.mouse.click(*to_page(page, x, y))
    page.keyboard.press("Enter")
    wait_until(lambda: 0 in ws.keyframes, "frame 0 to become a keyframe")
    assert iou(disk_labels(studio, 0) == 1, square_mask(0)) > 0.9

    # propagate both ways from frame 0 (to the end: there is no other keyframe)
    before_job = studio.job()["id"]
    page.click("#propagate")
    wait_job(studio, "done", before_job)
    page.wait_for_function("document.querySelector('#progress-text').textContent.includes('done')")
    assert f"{FRAMES - 1} / {FRAMES - 1}" in page.text_content("#progress-text")
    assert sorted(ws.propagated) == list(range(1, FRAMES))
    assert iou(disk_labels(studio, 12) == 1, square_mask(12)) > 0.5

    # step through frames with the keyboard
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("window.studio.S.t === 3")
    page.keyboard.press("Shift+ArrowRight")
    page.wait_for_function("window.studio.S.shown === 13")
    assert frame_number(page) == 13 and page.text_content("#frame-kind") == "propagated"
    labels13 = disk_labels(studio, 13)
    on = np.argwhere(labels13 == 1)
    (y_on, x_on), (y_off, x_off) = on[len(on) // 2], np.argwhere(labels13 == 0)[0]
    overlay_alpha = (
        "(x, y) => document.querySelector('#overlay').getContext('2d').getImageData(x, y, 1, 1).data[3]"
    )
    assert (
        page.evaluate(f"({overlay_alpha})({x_on}, {y_on})") > 0
    )  # the propagated mask is drawn over the frame
    assert page.evaluate(f"({overlay_alpha})({x_off}, {y_off})") == 0
    page.keyboard.press("End")
    page.wait_for_function(f"window.studio.S.t === {FRAMES - 1}")
    page.keyboard.press("Home")
    page.wait_for_function("window.studio.S.t === 0")

    # correct the middle frame: paint a blob with the brush, erase a band, undo and redo the erase
    mid = FRAMES // 2
    page.fill("#frame-number", str(mid + 1))  # the page numbers frames from 1
    page.press("#frame-number", "Enter")
    page.wait_for_function(f"window.studio.S.shown === {mid}")
    before = disk_labels(studio, mid)
    page.keyboard.press("b")
    blob = (140, 18)
    brush_stroke(page, [blob, (blob[0] + 1, blob[1])])
    painted = saved(page, studio, mid)
    page.keyboard.press("e")
    band_y = SQUARE_Y + SQUARE - 4
    xm = square_x(mid)
    brush_stroke(page, [(xm - 6, band_y), (xm + SQUARE + 6, band_y)])
    erased = saved(page, studio, mid)
    assert not np.array_equal(erased, painted)
    page.keyboard.press("Control+z")
    assert np.array_equal(saved(page, studio, mid), painted)
    page.keyboard.press("Control+Shift+z")
    assert np.array_equal(saved(page, studio, mid), erased)
    assert mid in ws.keyframes
    corrected = disk_labels(studio, mid)
    assert (corrected[blob[1] - 3 : blob[1] + 4, blob[0] - 3 : blob[0] + 4] == 1).all()  # the brush blob
    assert not corrected[band_y - 2 : band_y + 3, xm : xm + SQUARE].any()  # the erased band
    far = np.ones_like(corrected, bool)
    far[:40, 120:] = False
    far[band_y - 12 : band_y + 13] = False
    assert np.array_equal(corrected[far], before[far])  # nothing else changed

    # re-propagate from the correction: both ways until the neighbouring keyframes (0 and the end)
    written_at = {t: ws.mask_path(t).stat().st_mtime_ns for t in range(FRAMES)}
    before_job = studio.job()["id"]
    page.click("#propagate")
    job = wait_job(studio, "done", before_job)
    assert job["total"] == job["done"] == FRAMES - 2 and job["start"] == mid
    assert np.array_equal(disk_labels(studio, mid), corrected) and 0 in ws.keyframes  # keyframes unchanged
    rewritten = {t for t in range(FRAMES) if ws.mask_path(t).stat().st_mtime_ns != written_at[t]}
    assert rewritten == set(range(FRAMES)) - {0, mid}  # every frame but the two keyframes
    assert iou(disk_labels(studio, mid + 1) == 1, square_mask(mid + 1)) > 0.5
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"window.studio.S.shown === {mid + 1}")
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

    # cancel a run: slowed so that it is still going when Cancel is pressed
    page.keyboard.press("ArrowLeft")  # back to the corrected keyframe
    page.wait_for_function(f"window.studio.S.shown === {mid}")
    session.delay_s = 0.25
    page.select_option("#until", "end")
    before_job = studio.job()["id"]
    page.click("#propagate")
    wait_until(
        lambda: (
            studio.job()["id"] > before_job
            and studio.job()["state"] == "running"
            and studio.job()["done"] >= 1
        ),
        "the first propagated frame",
    )
    page.click("#cancel")
    job = wait_job(studio, "cancelled", before_job)
    session.delay_s = 0.0
    assert 1 <= job["done"] < job["total"]
    page.wait_for_function("document.querySelector('#progress-text').textContent.includes('cancelled')")
    for t in range(FRAMES):
        assert disk_labels(studio, t).shape == (HEIGHT, WIDTH)  # every frame whole
    assert not list(ws.masks_dir.glob(".*"))

    # export, download the zip, and read the written PNGs
    before_job = studio.job()["id"]
    page.click("#export")
    wait_job(studio, "done", before_job)
    page.wait_for_selector("#download:not([hidden])")
    with page.expect_download() as info:
        page.click("#download")
    zip_path = tmp_path / "export.zip"
    info.value.save_as(str(zip_path))
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        assert "overlay.mp4" in names and len([n for n in names if n.startswith("masks/")]) == FRAMES
        exported_mid = np.array(Image.open(io.BytesIO(zf.read(f"masks/{mid:05d}.png"))))
        object0 = np.array(Image.open(io.BytesIO(zf.read("objects/001/00000.png"))))
    assert np.array_equal(exported_mid, corrected)
    assert set(np.unique(object0)) == {0, 255} and iou(object0 == 255, square_mask(0)) > 0.9
    for t in (5, 40):
        exported = np.array(Image.open(ws.export_dir / "masks" / f"{t:05d}.png"))
        assert exported.shape == (HEIGHT, WIDTH) and iou(exported == 1, square_mask(t)) > 0.4


def overlay_alpha(page, x: int, y: int) -> int:
    return page.evaluate(
        f"document.querySelector('#overlay').getContext('2d').getImageData({x}, {y}, 1, 1).data[3]"
    )


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_tools_objects_and_view(studio_page):
    page, studio, _ = studio_page
    ws = studio.ws
    page.click("#add-object")
    page.click("#add-object")
    page.wait_for_function("window.studio.S.objects.length === 2")
    page.keyboard.press("1")
    assert page.evaluate("window.studio.S.selected") == 1
    page.keyboard.press("2")
    assert page.evaluate("window.studio.S.selected") == 2
    page.fill("#objects li[data-id='2'] input", "kite")
    page.keyboard.press("Tab")
    wait_until(lambda: ws.objects[1]["name"] == "kite", "the rename")
    page.keyboard.press("Escape")

    # the timeline jumps to a frame; a box around the square -> the model paints object 1 there
    t = 10
    box = page.locator("#timeline").bounding_box()
    page.mouse.click(box["x"] + (t + 0.5) * box["width"] / FRAMES, box["y"] + box["height"] / 2)
    page.wait_for_function(f"window.studio.S.shown === {t}")
    page.keyboard.press("1")
    page.keyboard.press("g")
    x = square_x(t)
    page.mouse.move(*to_page(page, x - 8, SQUARE_Y - 8))
    page.mouse.down()
    page.mouse.move(*to_page(page, x + SQUARE + 8, SQUARE_Y + SQUARE + 8), steps=5)
    page.mouse.up()
    wait_until(lambda: t in ws.keyframes, "the box's mask to be saved")
    labels = saved(page, studio, t)
    assert iou(labels == 1, square_mask(t)) > 0.8

    # import a binary mask PNG as object 2
    page.keyboard.press("2")
    corner = np.zeros((HEIGHT, WIDTH), np.uint8)
    corner[:20, :20] = 255
    page.set_input_files(
        "#import", files=[{"name": "corner.png", "mimeType": "image/png", "buffer": png(corner)}]
    )
    wait_until(lambda: (disk_labels(studio, t)[:20, :20] == 2).all(), "the imported mask to be saved")
    labels = saved(page, studio, t)
    assert iou(labels == 1, square_mask(t)) > 0.8  # the import left object 1 alone

    # brush size: keys and wheel
    size = page.evaluate("window.studio.S.brush")
    page.keyboard.press("]")
    assert page.evaluate("window.studio.S.brush") > size
    page.mouse.move(*to_page(page, 80, 100))
    page.mouse.wheel(0, 100)
    page.wait_for_function(f"window.studio.S.brush < {size + 1}")

    # view: full opacity, outline only, hidden
    page.wait_for_function(f"window.studio.S.shown === {t}")
    inside = np.argwhere(labels == 1)
    cy, cx = inside.mean(axis=0).astype(int)
    assert labels[cy, cx] == 1
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    assert overlay_alpha(page, cx, cy) == 255
    page.check("#outline")
    assert (
        overlay_alpha(page, cx, cy) == 0 and overlay_alpha(page, 5, 19) == 255
    )  # interior clear, edge drawn
    page.uncheck("#outline")
    page.keyboard.press("h")
    assert overlay_alpha(page, cx, cy) == 0 and page.is_checked("#hide")
    page.keyboard.press("h")
    assert overlay_alpha(page, cx, cy) == 255

    # play from the frame, then stop
    page.keyboard.press("Space")
    page.wait_for_function(f"window.studio.S.t >= {t + 3}")
    page.keyboard.press("Space")
    page.wait_for_function("!window.studio.S.playing")

    # remove object 2: two clicks, and its pixels leave the masks on disk
    page.click("#objects li[data-id='2'] button")
    page.click("#objects li[data-id='2'] button")
    # the object list changes first, then each mask is rewritten: wait for the whole removal
    wait_until(lambda: ws.object_ids() == [1] and not (disk_labels(studio, t) == 2).any(), "the removal")
    assert (disk_labels(studio, t) == 1).any()
    page.wait_for_function("window.studio.S.objects.length === 1")


EVIL_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form-objects" method="POST" action="{studio}api/objects" enctype="text/plain" target="sink">
<input name='{{"name":"added-by-evil-form","x":"' value='"}}'></form>
<form id="form-export" method="POST" action="{studio}api/export" enctype="text/plain" target="sink">
<input name='{{"a":"' value='"}}'></form>
<script>
const plain = (body) => ({{
  method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body,
}});
// a no-cors answer is opaque, or blocked outright (Cross-Origin-Resource-Policy):
// the request is sent either way
const send = (url, init) => fetch(url, init).catch(() => null);
async function attack() {{
  await send("{studio}api/objects", plain('{{"name":"added-by-evil-site"}}'));
  await send("{studio}api/export", plain("{{}}"));
  await send("{studio}api/cancel", plain("{{}}"));
  await send("{studio}api/frames/0/import", {{method: "POST", mode: "no-cors", body: new Blob(["x"])}});
  // a CORS request with JSON and a guessed token is preflighted, and the preflight is not allowed
  try {{
    await fetch("{studio}api/objects", {{method: "POST", headers: {{"Content-Type": "application/json",
      "X-PCVOS-Token": "guess"}}, body: '{{"name":"added-by-cors"}}'}});
  }} catch (e) {{ /* blocked, as it should be */ }}
}}
window.attackDone = attack().then(() => true);
</script></body></html>"""


class _EvilHandler(__import__("http.server").server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args):
        pass


@pytest.fixture()
def evil_site(served_studio):
    """A page on another localhost port that tries to drive the studio (cross-origin, same site)."""
    import http.server

    page = served_studio[0]
    studio_url = page.url
    handler = type("Evil", (_EvilHandler,), {"page": EVIL_PAGE.format(studio=studio_url).encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = __import__("threading").Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_other_origins_cannot_write(served_studio, evil_site, browser):
    page, studio, _, recorder = served_studio
    studio_url = page.url
    before = len(recorder.seen)
    evil = browser.new_page()
    evil.goto(evil_site)
    assert evil.evaluate("window.attackDone") is True
    for form, path in (("form-objects", "api/objects"), ("form-export", "api/export")):
        # a form post navigates the iframe: wait for the studio's answer to it
        with evil.expect_response(
            lambda r, path=path: r.url == studio_url + path and r.request.method == "POST"
        ):
            evil.evaluate(f"document.getElementById('{form}').submit()")
    evil.close()
    answered = recorder.seen[before:]
    posts = [(p, s) for m, p, s in answered if m == "POST"]
    expected = [
        "/api/objects",
        "/api/export",
        "/api/cancel",
        "/api/frames/0/import",
        "/api/objects",
        "/api/export",
    ]
    assert [p for p, _ in posts] == expected, answered  # every attempt reached the server...
    assert all(s == 403 for _, s in posts), posts  # ...and was refused
    assert [m for m, _, _ in answered if m != "POST"] in ([], ["OPTIONS"])  # the CORS try: preflight only
    assert studio.ws.objects == [] and studio.job()["state"] == "idle" and studio.job()["id"] == 0
    assert not studio.ws.export_dir.exists()
    # the studio's own page still works
    page.click("#add-object")
    page.wait_for_function("window.studio.S.objects.length === 1")
    assert [o["name"] for o in studio.ws.objects] == ["object 1"]


def test_the_page_follows_changes_made_elsewhere(served_studio):
    """Objects, labels and jobs changed by another client (a script, another tab) show up in the page;
    the header counts frames 1..N; tools wait for an object; messages go when they stop being true;
    propagating on a propagated frame starts from the nearest keyframe."""
    page, studio, _, recorder = served_studio
    other = Client(page.url, recorder.state.token)
    assert page.input_value("#frame-number") == "1" and page.text_content("#frame-count") == str(FRAMES)
    for control in ("[data-tool=brush]", "[data-tool=polygon]", "#undo", "#import", "#propagate"):
        assert page.is_disabled(control), control
    page.mouse.click(*to_page(page, 50, 50))  # drawing with no object: told what to do...
    assert page.text_content("#message") == "add an object first"

    assert other.json("POST", "/api/objects", {"name": "from a script"})[0] == 201
    page.wait_for_function("window.studio.S.objects.length === 1")
    assert page.input_value("#objects li[data-id='1'] input") == "from a script"
    page.wait_for_function("document.querySelector('#message').textContent === ''")  # ...until it is done
    assert not page.is_disabled("[data-tool=brush]") and not page.is_disabled("#import")
    assert page.is_disabled("#propagate")  # no keyframe yet

    # labels put on the frame on screen appear on it
    labels = square_mask(0).astype(np.uint8)
    status, _ = other.json(
        "PUT", "/api/frames/0/labels", labels.tobytes(), {"Content-Type": "application/octet-stream"}
    )
    assert status == 200
    y, x = np.argwhere(labels == 1)[0]
    page.wait_for_function(f"window.studio.S.labels && window.studio.S.labels[{y * WIDTH + x}] === 1")
    page.wait_for_function("document.querySelector('#frame-kind').textContent === 'keyframe'")
    assert overlay_alpha(page, int(x) + 2, int(y) + 2) > 0 and not page.is_disabled("#propagate")

    # a propagation started elsewhere is followed live
    before = studio.job()["id"]
    assert other.json("POST", "/api/propagate", {"frame": 0, "until": "end"})[0] == 202
    wait_job(studio, "done", before)
    page.wait_for_function(
        "document.querySelector('#progress-text').textContent.includes('propagation: done')"
    )

    # on a propagated frame, propagate starts from the nearest keyframe (0), not an error
    page.keyboard.press("End")
    page.wait_for_function(f"window.studio.S.shown === {FRAMES - 1}")
    assert page.input_value("#frame-number") == str(FRAMES)  # frame 48 of 48
    assert page.text_content("#frame-kind") == "propagated"
    before = studio.job()["id"]
    page.click("#propagate")
    job = wait_job(studio, "done", before)
    assert job["start"] == 0 and job["total"] == FRAMES - 1
    assert page.get_attribute("#message", "class") != "error"

    # the object removed elsewhere leaves the page: list, masks and tools
    assert other.json("DELETE", "/api/objects/1")[0] == 200
    page.wait_for_function("window.studio.S.objects.length === 0")
    page.wait_for_function("window.studio.S.labels === null || window.studio.S.labels.every((v) => v === 0)")
    assert page.is_disabled("[data-tool=brush]")


def settled(page) -> None:
    """Wait until the page has no model prompt and no save in flight."""
    page.wait_for_function("window.studio.S.pendingPrompts === 0 && window.studio.S.pendingSaves === 0")


def timeline_rgb(page, t: int, frames: int, y_fraction: float) -> list[int]:
    """The timeline canvas's colour over frame t, at a height fraction."""
    return page.evaluate(
        """([t, n, f]) => { const c = document.querySelector('#timeline');
        const x = Math.floor((t + 0.5) * c.width / n), y = Math.floor(f * c.height);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)); }""",
        [t, frames, y_fraction],
    )


SUGGESTED_RGB = [0xFF, 0x5A, 0x5F]  # the timeline's "to review" mark (studio.js)


def test_click_auto_review_and_export_on_real_frames(rhino_page):
    """On real DAVIS frames: clicks make and fix a mask (left adds, right and Alt+click remove), clicks
    start again on another frame or after painting, Auto finds the object, a propagation marks frames
    to review and N visits them, a correction and a new propagation refresh the marks, and the export
    writes COCO and YOLO files that read back as the saved masks."""
    page, studio, recorder = rhino_page
    ws = studio.ws
    gt = rhino_gt(0)
    size = (ws.width, ws.height)
    for control in ("[data-tool=click]", "[data-tool=box]", "#auto", "#next-review"):
        assert page.is_disabled(control), control  # tools wait for an object, review for a propagation
    page.click("#add-object")
    page.wait_for_function("window.studio.S.objects.length === 1")
    assert not page.is_disabled("[data-tool=click]") and not page.is_disabled("#auto")

    def click(x: int, y: int, **options) -> dict:
        """Click image pixel (x, y) with the click tool; the prompt the page sent, once it is applied."""
        count = len(recorder.prompts)
        page.mouse.click(*to_page(page, x + 0.5, y + 0.5, size), **options)
        wait_until(lambda: len(recorder.prompts) > count, "the click's prompt")
        settled(page)
        body = recorder.prompts[-1][1]
        assert body["object"] == 1 and body["previous"] is True and len(body["points"]) == len(body["labels"])
        px, py = body["points"][-1]
        assert abs(px - (x + 0.5)) < 1 and abs(py - (y + 0.5)) < 1  # where the mouse was
        return body

    def clicked(body: dict) -> tuple[int, int]:
        """The pixel (row, col) of the prompt's last click: mask_from_prompts gives it its own label."""
        px, py = body["points"][-1]
        return int(py), int(px)

    # one left click on the rhino: a mask of it, saved as a keyframe
    page.keyboard.press("c")
    prepared = ("POST", "/api/frames/0/prepare", 204)
    # the click tool on a frame without the object: the page has the server run the saliency ahead
    wait_until(lambda: prepared in recorder.seen, "the click tool's prepare request")
    x, y = inner_point(gt)
    body = click(x, y)
    assert body["labels"] == [1] and 0 in ws.keyframes
    first = disk_labels(studio, 0) == 1
    assert first[clicked(body)] and iou(first, gt) > 0.6
    # once the object is on the frame, clicks are corrections (no saliency): no second prepare
    page.keyboard.press("b")
    page.keyboard.press("c")
    page.wait_for_timeout(500)
    assert recorder.seen.count(prepared) == 1

    # a right click where the mask spills over removes that part; the request holds both clicks
    spill = np.argwhere(first & ~gt)
    yb, xb = (int(v) for v in (spill[len(spill) // 2] if len(spill) else np.argwhere(first)[-1]))
    body = click(xb, yb, button="right")
    assert body["labels"] == [1, 0]
    second = disk_labels(studio, 0) == 1
    assert not second[clicked(body)] and second[y, x] and iou(second, gt) > 0.5
    # Alt+click removes as well
    rest = np.argwhere(second & ~gt)
    ya, xa = (int(v) for v in (rest[len(rest) // 2] if len(rest) else np.argwhere(second)[0]))
    page.keyboard.down("Alt")
    body = click(xa, ya)
    page.keyboard.up("Alt")
    assert body["labels"] == [1, 0, 0] and not (disk_labels(studio, 0) == 1)[clicked(body)]

    # clicks start again after painting, and on another frame
    page.keyboard.press("b")
    brush_stroke(page, [(5, 5), (6, 5)])
    settled(page)
    page.keyboard.press("c")
    assert click(x, y)["labels"] == [1]
    assert click(xb, yb, button="right")["labels"] == [1, 0]
    page.keyboard.press("ArrowRight")
    page.wait_for_function("window.studio.S.shown === 1")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("window.studio.S.shown === 0")
    assert click(x, y)["labels"] == [1]
    assert iou(disk_labels(studio, 0) == 1, gt) > 0.6

    # propagate: the frames most likely wrong are marked, and N goes to them in turn
    before = studio.job()["id"]
    page.click("#propagate")
    wait_job(studio, "done", before)
    page.wait_for_function("window.studio.S.suggested.length > 0")
    suggested = page.evaluate("window.studio.S.suggested")
    assert suggested == studio.session.suggest(3) and set(suggested) <= set(range(1, RHINO_FRAMES))
    assert ("GET", "/api/suggest", 200) in recorder.seen
    for t in suggested:
        assert timeline_rgb(page, t, RHINO_FRAMES, 0.1) == SUGGESTED_RGB
    assert timeline_rgb(page, 0, RHINO_FRAMES, 0.1) != SUGGESTED_RGB  # the keyframe is not marked
    assert not page.is_disabled("#next-review")
    order = sorted(suggested)
    for t in order + order[:1]:  # in frame order, then back to the first
        page.keyboard.press("n")
        page.wait_for_function(f"window.studio.S.shown === {t}")

    # the Auto button on a marked frame: the rhino, replacing the propagated mask; no longer marked
    t = order[0]
    assert frame_number(page) == t and page.text_content("#frame-kind") == "propagated"
    page.click("#auto")
    wait_until(lambda: t in ws.keyframes, "the Auto mask to be saved")
    settled(page)
    auto = disk_labels(studio, t) == 1
    assert iou(auto, rhino_gt(t)) > 0.6
    assert recorder.prompts[-1] == (f"/api/frames/{t}/prompt", {"object": 1, "previous": False})
    assert t not in page.evaluate("window.studio.S.suggested")

    # a new propagation refreshes the marks: keyframes are never among them
    asked = sum(1 for m, p, _ in recorder.seen if p == "/api/suggest")
    before = studio.job()["id"]
    page.click("#propagate")
    wait_job(studio, "done", before)
    wait_until(
        lambda: sum(1 for m, p, _ in recorder.seen if p == "/api/suggest") > asked, "the marks to refresh"
    )
    marks = json.dumps(studio.session.suggest(3), separators=(",", ":"))  # as JSON.stringify writes it
    page.wait_for_function(f"JSON.stringify(window.studio.S.suggested) === '{marks}'")
    assert not set(page.evaluate("window.studio.S.suggested")) & ws.keyframes

    # export with COCO and YOLO: they read back as the saved masks
    from pycocotools import mask as mask_utils

    page.check("#export-coco")
    page.check("#export-yolo")
    before = studio.job()["id"]
    page.click("#export")
    wait_job(studio, "done", before)
    out = ws.export_dir
    document = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in document["images"]] == [f"{i:05d}.jpg" for i in range(RHINO_FRAMES)]
    assert [c["name"] for c in document["categories"]] == ["object 1"]
    decoded = {
        a["image_id"] - 1: mask_utils.decode(a["segmentation"]).astype(bool) for a in document["annotations"]
    }
    assert sorted(decoded) == list(range(RHINO_FRAMES))
    for i in range(RHINO_FRAMES):
        labels = disk_labels(studio, i)
        assert np.array_equal(decoded[i], labels == 1), i
        lines = (out / "yolo" / f"{i:05d}.txt").read_text().splitlines()
        assert lines and all(line.split()[0] == "0" for line in lines)
        assert all(0 <= v <= 1 for line in lines for v in map(float, line.split()[1:]))
    assert (out / "yolo" / "classes.txt").read_text() == "object 1\n"
