"""The studio's HTTP side: the page, a JSON/binary API and server-sent progress events.

Every error a request can cause comes back as ``{"error": message}`` with a 4xx status. Labels
travel as raw bytes (H*W uint8, row-major): exact, and trivial for the page to read and write.
A job (``/api/job``, the events) carries a serial ``id``, so a client that starts one and then
polls can tell it from the job that ran before.
Needs the ``studio`` extra (Starlette, uvicorn).

Security model (the studio listens on this machine, but every web page the user has open can send
requests to it): a request that changes anything (any method but GET/HEAD/OPTIONS) is refused with
403 unless it carries the per-server token (``X-PCVOS-Token``; the page reads it from a ``<meta>`` tag
of ``/``, which other origins cannot read), comes from the studio's own origin (``Origin`` equal to
the page's, ``Sec-Fetch-Site: same-origin`` when the browser sends it), and has the content type its
route expects (``application/json``, or ``application/octet-stream`` for label and mask bytes;
else 415). A custom header and those content types also make a browser ask first (a CORS preflight)
before any cross-origin request, and the studio never allows one. The ``Host`` header must be a
loopback name (DNS rebinding), and no page may frame the studio (clickjacking).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import socket
import threading
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pcvos.studio.controller import SUGGEST_K, BusyError, Studio
from pcvos.studio.exporter import ZIP_NAME
from pcvos.studio.openapi import openapi
from pcvos.studio.workspace import WorkspaceError

__all__ = ["create_app", "ServerThread", "MAX_UPLOAD_BYTES", "LOOPBACK_HOSTS", "TOKEN_HEADER", "read_token"]

log = logging.getLogger("pcvos.studio")

#: Largest mask image the page may upload (a 4K indexed PNG is far smaller).
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
#: Largest JSON request body (they are a few numbers).
MAX_JSON_BYTES = 64 * 1024
#: Seconds between keep-alive comments on the event stream (proxies and browsers drop silent streams).
KEEPALIVE_S = 15.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
STATIC = resources.files("pcvos.studio") / "static"
#: Header carrying the per-server token on every state-changing request.
TOKEN_HEADER = "X-PCVOS-Token"
#: Where index.html receives the token (a same-origin read only).
TOKEN_PLACEHOLDER = "{{PCVOS_TOKEN}}"
TOKEN_META = re.compile(r'<meta name="pcvos-token" content="([A-Za-z0-9_-]+)">')
#: Random bytes of a token (256 bits: not guessable by a page that tries many).
TOKEN_BYTES = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Header naming the page that sent a change, echoed in the ``changed`` event it causes.
CLIENT_HEADER = "X-PCVOS-Client"
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
#: Sent with every response: no other page may frame, embed or sniff the studio's answers.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


#: Longest index accepted in a path or query (a frame or object number; more digits are a mistake).
MAX_INDEX_DIGITS = 9
_INDEX = re.compile(rf"[0-9]{{1,{MAX_INDEX_DIGITS}}}")


def _index(text: str, what: str) -> int:
    """A frame or object number written in ASCII digits only: int() also takes ' 1', '+3', '1_0'
    (as 10) and other scripts' digits, none of which the page writes."""
    if not _INDEX.fullmatch(text):
        raise ApiError(400, f"{what} must be a whole number written in digits 0-9, got {text!r}")
    return int(text)


def _frame(request: Request) -> int:
    return _index(request.path_params["t"], "frame index")


_MISSING = object()


def _whole(body: dict[str, Any], name: str, default: Any = _MISSING) -> int:
    """Field ``name`` of a JSON body as an integer (not a bool, float or string): else 400 naming it."""
    value = body.get(name, default)
    if value is _MISSING:
        raise ApiError(400, f"{name} is required (a whole number)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{name} must be a whole number, got {json.dumps(value)[:40]}")
    return value


def _text(body: dict[str, Any], name: str, default: str | None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string, got {json.dumps(value)[:40]}")
    return value


def _objects(body: dict[str, Any]) -> list[int] | None:
    value = body.get("objects")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ApiError(400, "objects must be a list of object ids (whole numbers), or null for all")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (checked while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {int(declared)} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"upload is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


def _require_type(request: Request, *allowed: str) -> None:
    """415 unless the request declares one of ``allowed`` (a text/plain body, which a page on another
    origin can send without asking, never reaches a handler)."""
    media = _media_type(request)
    if media not in allowed:
        raise ApiError(415, f"Content-Type must be {' or '.join(allowed)}, got {media or 'none'}")


async def _json(request: Request) -> dict[str, Any]:
    data = await _body(request, MAX_JSON_BYTES)
    if not data and _media_type(request) is None:
        return {}  # no body at all (e.g. POST /api/export)
    _require_type(request, JSON_TYPE)
    if not data:
        return {}
    try:
        value = json.loads(data, parse_constant=_reject_constant)  # no NaN / Infinity
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, NaN, nesting too deep
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "request body must be a JSON object")
    return value


def _labels_response(labels: np.ndarray) -> Response:
    h, w = labels.shape
    return Response(
        np.ascontiguousarray(labels, np.uint8).tobytes(),
        media_type="application/octet-stream",
        headers={"X-Width": str(w), "X-Height": str(h), "Cache-Control": "no-store"},
    )


class _Guard:
    """ASGI middleware: the security headers on every response, and the origin/token rule on every
    state-changing request (see the module docstring), before any route runs."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _refusal(self, scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        site = headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            return f"cross-origin request refused (Sec-Fetch-Site: {site})"
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin.lower() != own.lower():
                return f"cross-origin request refused (Origin {origin} is not {own})"
        sent = headers.get(TOKEN_HEADER.lower(), "").encode("latin-1")
        if not hmac.compare_digest(sent, self.token):
            return f"missing or wrong {TOKEN_HEADER}: reload the studio page"
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secure(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            reason = self._refusal(scope)
            if reason is not None:
                await _error(403, reason)(scope, receive, send_secure)
                return
        await self.app(scope, receive, send_secure)


def read_token(page_html: str) -> str:
    """The token in the studio page's HTML (for scripts that drive a running studio: GET / first)."""
    match = TOKEN_META.search(page_html)
    if match is None:
        raise ValueError("no pcvos-token in this page: is it a pcvos studio page?")
    return match.group(1)


def create_app(
    studio: Studio, *, allowed_hosts: list[str] | None = None, token: str | None = None
) -> Starlette:
    """The Starlette app of one studio. ``allowed_hosts`` guards against DNS rebinding (default:
    loopback); ``token`` is the secret state-changing requests must carry (default: a new random one,
    in ``app.state.token``)."""
    ws = studio.ws
    token = token if token is not None else secrets.token_urlsafe(TOKEN_BYTES)
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,}", token):
        raise ValueError("token must be at least 16 characters of A-Z, a-z, 0-9, '_' or '-'")
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    if TOKEN_PLACEHOLDER not in page:
        raise RuntimeError("studio index.html has no token placeholder")
    page = page.replace(TOKEN_PLACEHOLDER, token)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        return JSONResponse(studio.state())

    async def frame_image(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        # frames never change in a workspace: let the browser keep them
        return FileResponse(
            ws.frame_path(t),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    async def get_labels(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        labels = await run_in_threadpool(ws.read_labels, t)
        if labels is None:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        return _labels_response(labels)

    async def put_labels(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        _require_type(request, BINARY_TYPE)
        expected = ws.height * ws.width
        data = await _body(request, expected)
        if len(data) != expected:
            raise ApiError(
                400, f"labels must be {expected} bytes ({ws.width}x{ws.height} uint8), got {len(data)}"
            )
        labels = np.frombuffer(data, np.uint8).reshape(ws.height, ws.width).copy()
        await run_in_threadpool(studio.set_labels, t, labels)
        _changed(request, [t])
        return JSONResponse({"frame": t, "keyframes": sorted(ws.keyframes)})

    async def prompt(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        body = await _json(request)
        mask = await run_in_threadpool(
            studio.prompt,
            t,
            _whole(body, "object"),
            body.get("points"),
            body.get("labels"),
            body.get("box"),
            body.get("previous", False),
        )
        return _labels_response(mask)

    async def prepare(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        await _json(request)  # no body, or an empty JSON object: a form's text/plain is refused
        await run_in_threadpool(studio.prepare, t)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    async def suggest(request: Request) -> Response:
        raw = request.query_params.get("k")
        k = SUGGEST_K if raw is None else _index(raw, "k")
        frames = await run_in_threadpool(studio.suggest, k)
        return JSONResponse({"k": k, "frames": frames}, headers={"Cache-Control": "no-store"})

    async def import_mask(request: Request) -> Response:
        ws.check_index(_frame(request))
        raw = request.query_params.get("object")
        object_id = _index(raw, "object") if raw else None  # the page sends object= when none is chosen
        _require_type(request, BINARY_TYPE, "image/png")
        data = await _body(request, MAX_UPLOAD_BYTES)
        if not data:
            raise ApiError(400, "empty upload: send the mask image as the request body")
        before = ws.object_ids()
        labels = await run_in_threadpool(studio.import_mask, data, object_id)
        if ws.object_ids() != before:  # the mask brought new objects (its labels are saved by a PUT)
            _changed(request, [])
        return _labels_response(labels)

    async def add_object(request: Request) -> Response:
        body = await _json(request)
        obj = studio.add_object(_text(body, "name", None))
        _changed(request, [])
        return JSONResponse(obj, status_code=201)

    def _object_id(request: Request) -> int:
        return _index(request.path_params["oid"], "object id")

    async def patch_object(request: Request) -> Response:
        oid = _object_id(request)
        body = await _json(request)
        obj = studio.rename_object(oid, _text(body, "name", None))
        _changed(request, [])
        return JSONResponse(obj)

    async def delete_object(request: Request) -> Response:
        oid = _object_id(request)
        await _json(request)
        await run_in_threadpool(studio.remove_object, oid)
        _changed(request, None)  # its pixels left every mask
        return JSONResponse(studio.state())

    def _changed(request: Request, frames: list[int] | None) -> None:
        client = request.headers.get(CLIENT_HEADER)
        studio.changed(frames, client if client and _CLIENT_ID.fullmatch(client) else None)

    async def propagate(request: Request) -> Response:
        body = await _json(request)
        job = studio.propagate(
            _whole(body, "frame"),
            _text(body, "direction", "both"),
            _text(body, "until", "keyframe"),
            _objects(body),
        )
        return JSONResponse(job, status_code=202)

    async def export(request: Request) -> Response:
        body = await _json(request)  # a body, if any, must be JSON
        return JSONResponse(studio.export(body.get("formats")), status_code=202)

    async def cancel(request: Request) -> Response:
        await _json(request)
        return JSONResponse(studio.cancel())

    async def job(request: Request) -> Response:
        return JSONResponse(studio.job())

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi())

    async def download(request: Request) -> Response:
        path = ws.export_dir / ZIP_NAME
        if not path.is_file():
            raise ApiError(404, "nothing exported yet; press Export first")
        return FileResponse(path, media_type="application/zip", filename=ZIP_NAME)

    async def workspace_file(request: Request) -> Response:
        """A file of the latest export (e.g. export/overlay.mp4); nothing outside the workspace."""
        rel = request.path_params["path"]
        parts = PurePosixPath(rel).parts
        if rel.startswith(("/", "\\")) or ".." in parts or "\\" in rel or ":" in rel or not parts:
            raise ApiError(400, "path must be relative to the workspace, without '..'")
        target = (ws.root / Path(*parts)).resolve()
        if not target.is_relative_to(ws.root) or parts[0] not in ("export", "masks", "frames"):
            raise ApiError(403, "only files under export/, masks/ and frames/ of the workspace are served")
        if not target.is_file():
            raise ApiError(404, f"{rel}: no such file in the workspace")
        return FileResponse(target)

    async def events(request: Request) -> Response:
        queue = studio.hub.subscribe()

        async def stream():
            try:
                yield f"data: {json.dumps({'type': 'hello', **studio.job()})}\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        return
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                studio.hub.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc.status, exc.message)

    async def workspace_error(request: Request, exc: WorkspaceError) -> Response:
        return _error(exc.status, str(exc))

    async def busy_error(request: Request, exc: BusyError) -> Response:
        return _error(409, str(exc))

    async def value_error(request: Request, exc: ValueError) -> Response:
        return _error(400, str(exc))  # the session's own input checks

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail or "error")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("studio request %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/openapi.json", openapi_json),
        Route("/api/job", job),
        Route("/api/events", events),
        Route("/api/frames/{t}/image", frame_image),
        Route("/api/frames/{t}/labels", get_labels, methods=["GET"]),
        Route("/api/frames/{t}/labels", put_labels, methods=["PUT"]),
        Route("/api/frames/{t}/prompt", prompt, methods=["POST"]),
        Route("/api/frames/{t}/prepare", prepare, methods=["POST"]),
        Route("/api/suggest", suggest),
        Route("/api/frames/{t}/import", import_mask, methods=["POST"]),
        Route("/api/objects", add_object, methods=["POST"]),
        Route("/api/objects/{oid}", patch_object, methods=["PATCH"]),
        Route("/api/objects/{oid}", delete_object, methods=["DELETE"]),
        Route("/api/propagate", propagate, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]),
        Route("/api/cancel", cancel, methods=["POST"]),
        Route("/api/export/download", download),
        Route("/files/{path:path}", workspace_file),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers = {
        ApiError: api_error,
        WorkspaceError: workspace_error,
        BusyError: busy_error,
        ValueError: value_error,
        HTTPException: http_error,
        Exception: unexpected,
    }
    hosts = allowed_hosts if allowed_hosts is not None else ["127.0.0.1", "localhost", "[::1]"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        studio.hub.publish(None)  # end the event streams

    app = Starlette(
        routes=routes,
        # Starlette types every handler as taking any Exception; each here takes its key's class
        exception_handlers=handlers,  # type: ignore[arg-type]
        middleware=[
            Middleware(_Guard, token=token),
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        ],
        lifespan=lifespan,
    )
    app.state.studio = studio
    app.state.token = token
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); raises ``OSError`` if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


#: Seconds a stopping server waits for open requests (the event stream never ends by itself).
GRACEFUL_SHUTDOWN_S = 2


def make_server(app: Starlette):
    """A uvicorn server for ``app`` whose Ctrl+C stops at once: the running job is cancelled and the
    event streams end as the signal arrives, so no open page holds the shutdown (which then
    cancelled the stream after the grace period and logged its traceback)."""
    import uvicorn

    class StudioServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            first = not self.should_exit
            super().handle_exit(sig, frame)
            if first:  # in a thread: the signal may land while this thread holds the studio's lock
                threading.Thread(target=app.state.studio.interrupt, name="pcvos-studio-stop").start()

    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on"
    )
    return StudioServer(config)


class ServerThread:
    """Run the app with uvicorn in a background thread (tests, notebooks): ``url``, ``stop()``."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.url = url_for(self.sock)
        self.token: str = app.state.token
        self.server = make_server(app)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="pcvos-studio-server", daemon=True
        )
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.01)
        if not self.server.started:
            raise RuntimeError("the studio server did not start")

    def stop(self) -> None:
        self.server.config.app.state.studio.hub.publish(None)  # end event streams so shutdown is prompt
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
