"""The studio's HTTP side: the page, a JSON/binary API and server-sent progress events.

Every error a request can cause comes back as ``{"error": message}`` with a 4xx status. Labels
travel as raw bytes (H*W uint8, row-major): exact, and trivial for the page to read and write.
A job (``/api/job``, the events) carries a serial ``id``, so a client that starts one and then
polls can tell it from the job that ran before.
Needs the ``studio`` extra (Starlette, uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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

from pcvos.studio.controller import BusyError, Studio
from pcvos.studio.exporter import ZIP_NAME
from pcvos.studio.workspace import WorkspaceError

__all__ = ["create_app", "ServerThread", "MAX_UPLOAD_BYTES", "LOOPBACK_HOSTS"]

log = logging.getLogger("pcvos.studio")

#: Largest mask image the page may upload (a 4K indexed PNG is far smaller).
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
#: Largest JSON request body (they are a few numbers).
MAX_JSON_BYTES = 64 * 1024
#: Seconds between keep-alive comments on the event stream (proxies and browsers drop silent streams).
KEEPALIVE_S = 15.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
STATIC = resources.files("pcvos.studio") / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _frame(request: Request) -> int:
    text = request.path_params["t"]
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"frame index must be an integer, got {text!r}") from None


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


async def _json(request: Request) -> dict[str, Any]:
    data = await _body(request, MAX_JSON_BYTES)
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
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


def create_app(studio: Studio, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app of one studio. ``allowed_hosts`` guards against DNS rebinding (default: loopback)."""
    ws = studio.ws

    async def index(request: Request) -> Response:
        return Response(
            (STATIC / "index.html").read_text(encoding="utf-8"),
            media_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

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
        expected = ws.height * ws.width
        data = await _body(request, expected)
        if len(data) != expected:
            raise ApiError(
                400, f"labels must be {expected} bytes ({ws.width}x{ws.height} uint8), got {len(data)}"
            )
        labels = np.frombuffer(data, np.uint8).reshape(ws.height, ws.width).copy()
        await run_in_threadpool(studio.set_labels, t, labels)
        return JSONResponse({"frame": t, "keyframes": sorted(ws.keyframes)})

    async def grabcut(request: Request) -> Response:
        t = ws.check_index(_frame(request))
        body = await _json(request)
        mask = await run_in_threadpool(studio.grabcut, t, body.get("box"))
        return _labels_response(mask)

    async def import_mask(request: Request) -> Response:
        ws.check_index(_frame(request))
        raw = request.query_params.get("object")
        try:
            object_id = int(raw) if raw is not None else None
        except ValueError:
            raise ApiError(400, f"object must be an integer id, got {raw!r}") from None
        data = await _body(request, MAX_UPLOAD_BYTES)
        if not data:
            raise ApiError(400, "empty upload: send the mask image as the request body")
        labels = await run_in_threadpool(studio.import_mask, data, object_id)
        return _labels_response(labels)

    async def add_object(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(studio.add_object(body.get("name")), status_code=201)

    def _object_id(request: Request) -> int:
        text = request.path_params["oid"]
        try:
            return int(text)
        except ValueError:
            raise ApiError(400, f"object id must be an integer, got {text!r}") from None

    async def patch_object(request: Request) -> Response:
        oid = _object_id(request)
        body = await _json(request)
        return JSONResponse(studio.rename_object(oid, body.get("name")))

    async def delete_object(request: Request) -> Response:
        oid = _object_id(request)
        await run_in_threadpool(studio.remove_object, oid)
        return JSONResponse(studio.state())

    async def propagate(request: Request) -> Response:
        body = await _json(request)
        job = studio.propagate(
            body.get("frame"),
            body.get("direction", "both"),
            body.get("until", "keyframe"),
            body.get("objects"),
        )
        return JSONResponse(job, status_code=202)

    async def export(request: Request) -> Response:
        return JSONResponse(studio.export(), status_code=202)

    async def cancel(request: Request) -> Response:
        return JSONResponse(studio.cancel())

    async def job(request: Request) -> Response:
        return JSONResponse(studio.job())

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
        Route("/api/job", job),
        Route("/api/events", events),
        Route("/api/frames/{t}/image", frame_image),
        Route("/api/frames/{t}/labels", get_labels, methods=["GET"]),
        Route("/api/frames/{t}/labels", put_labels, methods=["PUT"]),
        Route("/api/frames/{t}/grabcut", grabcut, methods=["POST"]),
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
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        lifespan=lifespan,
    )
    app.state.studio = studio
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
    import uvicorn

    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on"
    )
    return uvicorn.Server(config)


class ServerThread:
    """Run the app with uvicorn in a background thread (tests, notebooks): ``url``, ``stop()``."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.url = url_for(self.sock)
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
