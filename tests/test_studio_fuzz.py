"""Fuzz pcvos studio's HTTP API from its OpenAPI description (pcvos.studio.openapi), in process.

Hypothesis draws sequences of requests, operation by operation from the description: path and query
values (valid numbers, near misses, any text), bodies from each operation's schema, any JSON or raw
bytes, and headers (token right or wrong, content types, origins). They go to the real app (the shipped
model on a 6-frame video) through a raw ASGI call, so paths reach the router exactly as sent. Every
answer must be below 500, free of tracebacks, an ``{"error": ...}`` JSON for 4xx; writes without the
token or from another origin are 403; and nothing is ever written outside the workspace, nor a file
outside it served. Derandomized (a fixed sequence of examples); the long run is marked slow.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the studio extra (starlette, uvicorn) is not installed")
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (the dev extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pcvos  # noqa: E402
from pcvos.data.frames import VideoWriter  # noqa: E402
from pcvos.data.palette import DAVIS_PALETTE  # noqa: E402
from pcvos.studio.controller import Studio  # noqa: E402
from pcvos.studio.openapi import openapi  # noqa: E402
from pcvos.studio.server import TOKEN_HEADER, create_app  # noqa: E402
from pcvos.studio.workspace import MAX_OBJECTS, Workspace  # noqa: E402

FRAMES, HEIGHT, WIDTH = 6, 48, 64
TOKEN = "fuzz-token-0123456789abcdef"
HOST = "127.0.0.1:8765"
OWN_ORIGIN = f"http://{HOST}"
SECRET = "the-secret-outside-the-workspace"
JOB_TIMEOUT_S = 120
#: Requests in one drawn example: enough for add object -> put labels -> propagate chains.
MAX_REQUESTS = 5
SPEC = openapi()
OPERATIONS = sorted((path, method) for path, item in SPEC["paths"].items() for method in item)
BINARY_ROUTES = {"/api/frames/{t}/labels", "/api/frames/{t}/import"}


# -- the app ------------------------------------------------------------------------------------------
class Fuzzed:
    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox
        video = sandbox / "clip.mp4"
        rng = np.random.default_rng(0)
        with VideoWriter(video, fps=10) as writer:
            for t in range(FRAMES):
                frame = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                frame[10:30, 5 + 5 * t : 25 + 5 * t] = (230, 60, 40)
                writer.write(frame)
        (sandbox / "secret.txt").write_text(SECRET)
        self.ws = Workspace.open_or_create(sandbox / "ws", video)
        self.studio = Studio(self.ws, pcvos.Session(pcvos.load_model(), self.ws.frames_dir, clip_length=2))
        self.app = create_app(self.studio, token=TOKEN)
        # two objects and a keyframe to start from, so that propagations and exports run from the start
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        labels[10:30, 5:25], labels[35:45, 40:60] = 1, 2
        self.studio.add_object("a")
        self.studio.add_object("b")
        self.studio.set_labels(0, labels)
        self.outside = self.files_outside()

    def files_outside(self) -> set[Path]:
        return {p for p in self.sandbox.rglob("*") if self.ws.root not in p.parents and p != self.ws.root}

    async def _call(self, method: str, raw_path: str, query: str, headers: dict, body: bytes):
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}  # the event stream: the client has gone

        status, chunks = None, []

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": urllib.parse.unquote(raw_path),
            "raw_path": raw_path.encode("ascii"),
            "root_path": "",
            "query_string": query.encode("ascii"),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8765),
        }
        await asyncio.wait_for(self.app(scope, receive, send), JOB_TIMEOUT_S)
        return status, b"".join(chunks)

    def request(self, method: str, raw_path: str, query: str, headers: dict, body: bytes):
        return asyncio.run(self._call(method, raw_path, query, headers, body))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    f = Fuzzed(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.studio.close()


# -- strategies from the description ----------------------------------------------------------------
def json_values():
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
        ),
        max_leaves=12,
    )


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values of a (small subset of) JSON Schema: the shapes the studio's description uses."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type", "object")
    if isinstance(types, list):
        return st.one_of([from_schema({**schema, "type": t}) for t in types])
    if types == "null":
        return st.none()
    if types == "boolean":
        return st.booleans()
    if types == "integer":  # 0 and 1 often: the seeded keyframe and the first object
        lo = schema.get("minimum", -5)
        return st.one_of(st.sampled_from([max(lo, 0), 1]), st.integers(min_value=lo, max_value=FRAMES + 2))
    if types == "number":  # json.dumps writes inf and nan as Infinity and NaN, as a careless client does
        non_finite = st.sampled_from([float("inf"), float("-inf"), float("nan")])
        return st.one_of(st.integers(-10, WIDTH + 10), st.floats(-1e6, 1e6), non_finite, st.floats())
    if types == "string":
        return st.text(max_size=min(schema.get("maxLength", 30), 30))
    if types == "array":
        lo = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema.get("items", {})), min_size=lo, max_size=schema.get("maxItems", lo + 3)
        )
    props = schema.get("properties", {})
    if not props:
        return st.just({})
    required = schema.get("required", [])
    return st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required},
        optional={k: from_schema(v) for k, v in props.items() if k not in required},
    )


NEAR_MISS_INDEX = [
    " 1",
    "1 ",
    "+3",
    "1_0",
    "\u0661",
    "\uff11",
    "-1",
    "0x1",
    "1e1",
    "1.0",
    "99999999999999999999",
]
FILES_PATHS = [
    "export/pcvos_export.zip",
    "masks/00000.png",
    "frames/00000.jpg",
    "../secret.txt",
    "..%2fsecret.txt",
    "export/../../secret.txt",
    "%2e%2e/secret.txt",
    "frames/../../secret.txt",
    "/etc/passwd",
    "workspace.json",
    "..\\secret.txt",
    "C:/secret.txt",
]


def path_value(name: str) -> st.SearchStrategy:
    if name == "path":  # /files/{path}: traversal attempts, written raw (not re-quoted)
        return st.one_of(
            st.sampled_from(FILES_PATHS), st.text(max_size=20).map(lambda s: urllib.parse.quote(s))
        )
    top = FRAMES + 1 if name == "t" else 4
    plausible = st.integers(0, top).map(str)
    odd = st.one_of(
        st.sampled_from(NEAR_MISS_INDEX).map(lambda s: urllib.parse.quote(s, safe="")),
        st.text(max_size=12).map(lambda s: urllib.parse.quote(s, safe="")),
    )
    # three in four a plausible number, so that requests get past the path to the body's checks
    return st.integers(0, 3).flatmap(lambda k: odd if k == 0 else plausible)


@st.composite
def label_bytes(draw) -> bytes:
    size = draw(st.sampled_from([HEIGHT * WIDTH] * 4 + [HEIGHT * WIDTH - 1, 0, 7]))
    top = draw(st.sampled_from([1, 1, 1, 2, 3, 255, 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.integers(0, top + 1, size, dtype=np.uint8)
    if top and size == HEIGHT * WIDTH and draw(st.booleans()):  # blocks, as a painted mask has
        values = np.kron(rng.integers(0, top + 1, (HEIGHT // 8, WIDTH // 8)), np.ones((8, 8))).astype(
            np.uint8
        )
        values = values.ravel()
    return values.tobytes()


@st.composite
def png_bytes(draw) -> bytes:
    h, w = draw(st.sampled_from([(HEIGHT, WIDTH)] * 3 + [(1, 1), (HEIGHT // 2, WIDTH // 2), (WIDTH, HEIGHT)]))
    mode = draw(st.sampled_from(["L", "P", "RGB", "1"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = draw(st.sampled_from([1, 3, 255]))
    arr = np.kron(rng.integers(0, top + 1, (max(1, h // 8), max(1, w // 8))), np.ones((8, 8)))[:h, :w]
    arr = np.pad(arr, ((0, h - arr.shape[0]), (0, w - arr.shape[1]))).astype(np.uint8)
    if mode == "RGB":
        image = Image.fromarray(DAVIS_PALETTE[arr])
    else:
        image = Image.fromarray(arr, "L")
        if mode == "P":
            image = image.convert("P")
            image.putpalette(DAVIS_PALETTE.tobytes())
        elif mode == "1":
            image = image.convert("1")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    if draw(st.integers(0, 9)) == 0:  # a truncated file
        data = data[: len(data) // 2]
    return data


RAW_JSON = [b"{", b"[1, 2]", b'"x"', b"null", b'{"box": [Infinity, 0, 9, 9]}', b'{"box": [NaN, 0, 9, 9]}']
RAW_JSON += [
    b'{"box": [1e999, 0, 9, 9]}',
    b'{"frame": 1e999}',
    b'{"object": 1, "points": [[1e999, 5]]}',
    b'{"object": 1, "points": [[5, 5]], "labels": [1e999]}',
    b'{"object": 1, "points": [[' + b"9" * 400 + b", 5]]}",
    b'{"formats": ["coco", 1e999]}',
    b"[" * 5000,
    b"\xff\xfe",
    b'{"frame": ' + b"9" * 5000 + b"}",
]


def body_for(path: str, method: str) -> st.SearchStrategy:
    op = SPEC["paths"][path][method]
    content = op.get("requestBody", {}).get("content", {})
    garbage = [st.just(b""), st.binary(max_size=40)]
    valid = []
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        valid.append(from_schema(schema).map(lambda v: json.dumps(v).encode()))
        garbage += [json_values().map(lambda v: json.dumps(v).encode()), st.sampled_from(RAW_JSON)]
    if path == "/api/frames/{t}/labels":
        valid.append(label_bytes())
    if path == "/api/frames/{t}/import":
        valid.append(png_bytes())
    if not valid:
        return st.one_of(garbage)
    # three in four bodies follow the description, so that the state moves (objects, keyframes, jobs)
    return st.integers(0, 3).flatmap(lambda k: st.one_of(garbage) if k == 0 else st.one_of(valid))


def content_type_for(path: str, method: str) -> st.SearchStrategy:
    op = SPEC["paths"][path][method]
    declared = list(op.get("requestBody", {}).get("content", {}))
    others = [
        None,
        "text/plain",
        "application/json; charset=utf-8",
        "multipart/form-data",
        "",
        "application/JSON",
    ]
    return st.one_of(st.sampled_from(declared or [None]), st.sampled_from(others))


@st.composite
def requests(draw) -> dict:
    path, method = draw(st.sampled_from(OPERATIONS))
    op = SPEC["paths"][path][method]
    raw_path = path
    for p in op.get("parameters", []):
        if p["in"] == "path":
            raw_path = raw_path.replace("{" + p["name"] + "}", draw(path_value(p["name"])))
    query = ""
    for p in op.get("parameters", []):
        if p["in"] == "query" and draw(st.booleans()):
            query = f"{p['name']}=" + draw(path_value("oid"))
    headers = {"host": HOST}
    writes = "security" in op
    declared = list(op.get("requestBody", {}).get("content", {}))
    if draw(st.integers(0, 4)):  # four in five: what the page sends
        token = TOKEN if writes else None
        ctype = draw(st.sampled_from(declared)) if declared else None
        origin = draw(st.sampled_from([None, OWN_ORIGIN]))
        site = draw(st.sampled_from([None, "same-origin"]))
    else:  # what another page, a form or a careless script sends
        token = draw(st.sampled_from([None, TOKEN, "wrong", TOKEN + "x"]))
        ctype = draw(content_type_for(path, method))
        origin = draw(st.sampled_from([None, OWN_ORIGIN, "http://127.0.0.1:9999", "null"]))
        site = draw(st.sampled_from([None, "same-origin", "same-site", "cross-site", "none"]))
    if token is not None:
        headers[TOKEN_HEADER] = token
    if ctype is not None:
        headers["content-type"] = ctype
    if origin is not None:
        headers["origin"] = origin
    if site is not None:
        headers["sec-fetch-site"] = site
    return {
        "method": method.upper(),
        "path": path,
        "raw_path": raw_path,
        "query": query,
        "headers": headers,
        "body": draw(body_for(path, method)),
        "writes": writes,
        "foreign": origin not in (None, OWN_ORIGIN) or site not in (None, "same-origin") or token != TOKEN,
    }


# -- the properties ------------------------------------------------------------------------------------
def check(fuzzed: Fuzzed, req: dict) -> None:
    status, body = fuzzed.request(req["method"], req["raw_path"], req["query"], req["headers"], req["body"])
    where = (
        req["method"],
        req["raw_path"],
        req["query"],
        req["headers"],
        req["body"][:80],
        status,
        body[:200],
    )
    assert status is not None and status < 500, where
    assert b"Traceback" not in body and SECRET.encode() not in body, where
    if status >= 400:
        assert isinstance(json.loads(body).get("error"), str), where
    if req["writes"] and req["foreign"]:
        assert status == 403, where  # the token and origin rule comes before anything else
    declared = req["headers"].get("content-type")
    allowed = SPEC["paths"][req["path"]][req["method"].lower()].get("requestBody", {}).get("content", {})
    media = None if declared is None else declared.split(";")[0].strip().lower()
    if req["writes"] and req["body"] and media not in allowed:
        assert status >= 400, where  # a text/plain body (a form, a no-cors fetch) never does anything


def check_workspace(fuzzed: Fuzzed) -> None:
    job = fuzzed.studio.wait(JOB_TIMEOUT_S)
    assert job["state"] != "running"
    assert fuzzed.files_outside() == fuzzed.outside  # nothing written beside the workspace
    allowed = re.compile(r"workspace\.json|frames/\d{5}\.jpg|masks/\d{5}\.png|export(/.*)?|frames|masks")
    stray = [
        p.relative_to(fuzzed.ws.root).as_posix()
        for p in fuzzed.ws.root.rglob("*")
        if not allowed.fullmatch(p.relative_to(fuzzed.ws.root).as_posix())
    ]
    assert not stray, stray  # no temporary file or upload left in the workspace either
    meta = json.loads((fuzzed.ws.root / "workspace.json").read_text())
    assert len(meta["objects"]) <= MAX_OBJECTS


FUZZ_SETTINGS = dict(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def test_every_route_is_described(fuzzed):
    """The description and the app list the same routes (a new route must be described to be fuzzed)."""
    from starlette.routing import Route

    routes = {(r.path, m.lower()) for r in fuzzed.app.routes if isinstance(r, Route) for m in r.methods}
    routes = {(p.replace("{path:path}", "{path}"), m) for p, m in routes if m != "head"}
    assert routes == set(OPERATIONS)
    status, body = fuzzed.request("GET", "/api/openapi.json", "", {"host": HOST}, b"")
    assert status == 200 and json.loads(body) == json.loads(json.dumps(SPEC))


@settings(max_examples=300, **FUZZ_SETTINGS)
@given(st.lists(requests(), min_size=1, max_size=MAX_REQUESTS))
def test_fuzz_the_api(fuzzed, sequence):
    for req in sequence:
        check(fuzzed, req)


def test_fuzzing_left_the_workspace_clean(fuzzed):
    check_workspace(fuzzed)


@pytest.mark.slow
@settings(max_examples=2000, **FUZZ_SETTINGS)
@given(st.lists(requests(), min_size=1, max_size=MAX_REQUESTS))
def test_fuzz_the_api_long(fuzzed, sequence):
    for req in sequence:
        check(fuzzed, req)


@pytest.mark.slow
def test_long_fuzzing_left_the_workspace_clean(fuzzed):
    check_workspace(fuzzed)
