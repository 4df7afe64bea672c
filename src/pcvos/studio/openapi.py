"""The studio's HTTP API as an OpenAPI 3.1 description (served at ``/api/openapi.json``).

Written by hand next to the routes in :mod:`pcvos.studio.server`; ``tests/test_studio_fuzz.py``
checks that every route is described and fuzzes the API from this description. Every
state-changing operation needs the ``X-PCVOS-Token`` header and the studio's own origin (see the
server's docstring); errors are ``{"error": message}`` with a 4xx status.
"""

from __future__ import annotations

from typing import Any

from pcvos.data.export_formats import EXPORT_FORMATS
from pcvos.studio.controller import MAX_PROMPT_POINTS, MAX_SUGGEST, SUGGEST_K
from pcvos.studio.workspace import MAX_OBJECT_ID, MAX_OBJECTS

__all__ = ["openapi", "INDEX_PATTERN"]

#: Frame and object numbers in paths and queries: ASCII digits only.
INDEX_PATTERN = "^[0-9]{1,9}$"

_ERROR = {
    "description": "a bad request (400/403/404/409/413/415); the message says why",
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }
    },
}
_JSON = {"type": "object"}
_LABELS = {
    "description": "H*W uint8 labels, row-major; X-Width / X-Height give the size",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_FRAME = {
    "name": "t",
    "in": "path",
    "required": True,
    "description": "frame index, 0..N-1",
    "schema": {"type": "string", "pattern": INDEX_PATTERN},
}
_OBJECT = {
    "name": "oid",
    "in": "path",
    "required": True,
    "description": f"object id, 1..{MAX_OBJECT_ID}",
    "schema": {"type": "string", "pattern": INDEX_PATTERN},
}
_NAME_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"name": {"type": ["string", "null"], "maxLength": 200}},
            }
        }
    },
}
_EMPTY_BODY = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, ok: dict[str, Any], *, writes: bool = False, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, "4XX": _ERROR}, **extra}
    if writes:
        op["security"] = [{"token": []}]
    return op


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _json_ok(code: str, what: str) -> dict[str, Any]:
    return {code: {"description": what, "content": {"application/json": {"schema": _JSON}}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the studio's API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "pcvos studio", "version": "1"},
        "components": {
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-PCVOS-Token"}}
        },
        "paths": {
            "/": {"get": _op("the page (carries the token in a meta tag)", {"200": {"description": "HTML"}})},
            "/api/openapi.json": {"get": _op("this description", _json_ok("200", "OpenAPI 3.1"))},
            "/api/state": {
                "get": _op(
                    "video facts, objects, keyframes, propagated frames, job, version",
                    _json_ok("200", "state"),
                )
            },
            "/api/job": {"get": _op("the current or last job", _json_ok("200", "job"))},
            "/api/events": {
                "get": _op(
                    "server-sent events: hello, job, progress, changed",
                    {"200": {"description": "text/event-stream"}},
                )
            },
            "/api/frames/{t}/image": {
                "get": _op("frame t as JPEG", {"200": {"description": "image/jpeg"}}, parameters=[_FRAME])
            },
            "/api/frames/{t}/labels": {
                "get": _op(
                    "frame t's labels",
                    {"200": _LABELS, "204": {"description": "frame t has no labels"}},
                    parameters=[_FRAME],
                ),
                "put": _op(
                    "make frame t a keyframe holding these labels (255 = void, stored as background)",
                    _json_ok("200", "frame and keyframes"),
                    writes=True,
                    parameters=[_FRAME],
                    requestBody={
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                ),
            },
            "/api/frames/{t}/prompt": {
                "post": _op(
                    "object `object`'s mask on frame t from clicks and/or a box (pcvos.mask_from_prompts; "
                    "no points and no box: the most salient object): 0/1 labels, nothing stored",
                    {"200": _LABELS},
                    writes=True,
                    parameters=[_FRAME],
                    requestBody=_json_body(
                        {
                            "type": "object",
                            "required": ["object"],
                            "properties": {
                                "object": {"type": "integer", "minimum": 1},
                                "points": {
                                    "type": ["array", "null"],
                                    "description": "[x, y] clicks in pixels, inside the frame",
                                    "items": {
                                        "type": "array",
                                        "items": {"type": "number"},
                                        "minItems": 2,
                                        "maxItems": 2,
                                    },
                                    "maxItems": MAX_PROMPT_POINTS,
                                },
                                "labels": {
                                    "type": ["array", "null"],
                                    "description": "per point: 1 object, 0 background (default 1)",
                                    "items": {"enum": [0, 1]},
                                },
                                "box": {
                                    "type": ["array", "null"],
                                    "description": "[x0, y0, x1, y1] in pixels, clipped to the frame",
                                    "items": {"type": "number"},
                                    "minItems": 4,
                                    "maxItems": 4,
                                },
                                "previous": {
                                    "type": "boolean",
                                    "description": "refine the object's stored mask on frame t",
                                },
                            },
                        }
                    ),
                )
            },
            "/api/frames/{t}/prepare": {
                "post": _op(
                    "run the saliency network on frame t now (pcvos.prepare_prompts), so that a first "
                    "click or Auto there answers fast; the page calls it when a frame is shown with the "
                    "click tool; nothing stored but a cache",
                    {"204": {"description": "prepared"}},
                    writes=True,
                    parameters=[_FRAME],
                    requestBody=_EMPTY_BODY,
                )
            },
            "/api/frames/{t}/import": {
                "post": _op(
                    f"read a mask image at the frame size into labels (new ids become objects, at most "
                    f"{MAX_OBJECTS} in all)",
                    {"200": _LABELS},
                    writes=True,
                    parameters=[
                        _FRAME,
                        {
                            "name": "object",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "pattern": INDEX_PATTERN},
                        },
                    ],
                    requestBody={
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                )
            },
            "/api/objects": {
                "post": _op(
                    "add an object", _json_ok("201", "the object"), writes=True, requestBody=_NAME_BODY
                )
            },
            "/api/objects/{oid}": {
                "patch": _op(
                    "rename an object",
                    _json_ok("200", "the object"),
                    writes=True,
                    parameters=[_OBJECT],
                    requestBody=_NAME_BODY,
                ),
                "delete": _op(
                    "remove an object from every frame",
                    _json_ok("200", "state"),
                    writes=True,
                    parameters=[_OBJECT],
                    requestBody=_EMPTY_BODY,
                ),
            },
            "/api/propagate": {
                "post": _op(
                    "start propagating from keyframe `frame`",
                    _json_ok("202", "the job"),
                    writes=True,
                    requestBody=_json_body(
                        {
                            "type": "object",
                            "required": ["frame"],
                            "properties": {
                                "frame": {"type": "integer", "minimum": 0},
                                "direction": {"enum": ["both", "forward", "backward"]},
                                "until": {"enum": ["keyframe", "end"]},
                                "objects": {
                                    "type": ["array", "null"],
                                    "items": {"type": "integer", "minimum": 1},
                                    "minItems": 1,
                                },
                            },
                        }
                    ),
                )
            },
            "/api/suggest": {
                "get": _op(
                    "the k frames most likely wrong after propagation (pcvos.Session.suggest), most "
                    "suspicious first: {k, frames}",
                    _json_ok("200", "k and frames"),
                    parameters=[
                        {
                            "name": "k",
                            "in": "query",
                            "required": False,
                            "description": f"1..{MAX_SUGGEST}, default {SUGGEST_K}",
                            "schema": {"type": "string", "pattern": INDEX_PATTERN},
                        }
                    ],
                )
            },
            "/api/export": {
                "post": _op(
                    "start the export (PNGs, cut-outs, overlay MP4; `formats` adds COCO JSON / YOLO-seg)",
                    _json_ok("202", "the job"),
                    writes=True,
                    requestBody=_json_body(
                        {
                            "type": "object",
                            "properties": {
                                "formats": {
                                    "type": ["array", "null"],
                                    "items": {"enum": list(EXPORT_FORMATS)},
                                }
                            },
                        },
                        required=False,
                    ),
                )
            },
            "/api/cancel": {
                "post": _op(
                    "ask the running job to stop",
                    _json_ok("200", "the job"),
                    writes=True,
                    requestBody=_EMPTY_BODY,
                )
            },
            "/api/export/download": {
                "get": _op("the latest export as a zip", {"200": {"description": "application/zip"}})
            },
            "/files/{path}": {
                "get": _op(
                    "a file under export/, masks/ or frames/ of the workspace",
                    {"200": {"description": "the file"}},
                    parameters=[
                        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                )
            },
        },
    }
