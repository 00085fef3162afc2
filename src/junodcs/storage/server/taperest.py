"""The WLCG Tape REST API v1 of a tape SE (reference/data-management.md section 5.2).

| call | rights |
|---|---|
| `GET /.well-known/wlcg-tape-rest-api` | none (discovery) |
| `POST /api/v1/stage` `{"files": [{"path", "diskLifetime"?, "targetedMetadata"?}]}` -> 201 `{"requestId"}` | UPDATE_METADATA (`storage.stage`) on every path |
| `GET /api/v1/stage/{id}` | READ_METADATA on the request's paths |
| `POST /api/v1/stage/{id}/cancel` `{"paths"}`, `DELETE /api/v1/stage/{id}`, `POST /api/v1/release/{id}` `{"paths"}` | UPDATE_METADATA |
| `POST /api/v1/archiveinfo` `{"paths"}` -> `[{"path", "locality"} or {"path", "error"}]` | READ_METADATA |

Errors are RFC 7807 problem JSON, like every other SE error. The state machine is `tape.TapeSystem`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from junodcs.storage.server.auth import Activity, Principal
from junodcs.storage.server.context import SEContext
from junodcs.storage.server.tape import TapeRequestError, TapeSystem, parse_body, parse_lifetime

MAX_BODY = 4 << 20
API = "/api/v1"


def _path(ctx: SEContext, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TapeRequestError(f"path {value!r} is not a non-empty string")
    text = value.strip()
    if "://" in text:  # a full URL (some clients send SURLs): keep its path
        text = "/" + text.split("://", 1)[1].partition("/")[2]
    while "//" in text:
        text = text.replace("//", "/")
    return ctx.store.paths.resolve(text).logical


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise TapeRequestError(f"request body larger than {MAX_BODY} bytes")
    data = await request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise TapeRequestError(f"request body larger than {MAX_BODY} bytes")
    return data


def _tape(ctx: SEContext) -> TapeSystem:
    assert ctx.tape is not None
    return ctx.tape


def _require_all(ctx: SEContext, principal: Principal, activity: Activity, paths: list[str]) -> None:
    for path in dict.fromkeys(paths):
        ctx.auth.require(principal, activity, path)


async def discovery(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    base = (ctx.config.public_url or f"{request.scheme}://{request.host}").rstrip("/")
    return web.json_response({
        "sitename": ctx.config.name,
        "description": f"junodcs tape storage element {ctx.config.name}",
        "endpoints": [{"uri": f"{base}{API}", "version": "v1", "metadata": {}}],
    })


async def stage(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    files = []
    for entry in parse_body(await _body(request), "files"):
        if not isinstance(entry, dict):
            raise TapeRequestError('each entry of "files" must be an object with a "path"')
        lifetime = entry.get("diskLifetime")
        files.append((_path(ctx, entry.get("path")), None if lifetime is None else parse_lifetime(lifetime)))
    _require_all(ctx, principal, Activity.UPDATE_METADATA, [p for p, _ in files])
    request_id = _tape(ctx).stage(files, owner=principal.subject)
    base = (ctx.config.public_url or f"{request.scheme}://{request.host}").rstrip("/")
    return web.json_response({"requestId": request_id}, status=201,
                             headers={"Location": f"{base}{API}/stage/{request_id}"})


async def stage_status(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    tape = _tape(ctx)
    request_id = request.match_info["id"]
    _require_all(ctx, principal, Activity.READ_METADATA, tape.request_paths(request_id))
    return web.json_response(tape.request(request_id))


async def _paths(ctx: SEContext, request: web.Request) -> list[str]:
    return [_path(ctx, p) for p in parse_body(await _body(request), "paths")]


async def cancel(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    paths = await _paths(ctx, request)
    _require_all(ctx, principal, Activity.UPDATE_METADATA, paths)
    _tape(ctx).cancel(request.match_info["id"], paths)
    return web.Response(status=200)


async def delete(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    tape = _tape(ctx)
    request_id = request.match_info["id"]
    _require_all(ctx, principal, Activity.UPDATE_METADATA, tape.request_paths(request_id))
    tape.delete(request_id)
    return web.Response(status=200)


async def release(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    paths = await _paths(ctx, request)
    _require_all(ctx, principal, Activity.UPDATE_METADATA, paths)
    _tape(ctx).release(request.match_info["id"], paths)
    return web.Response(status=200)


async def archiveinfo(ctx: SEContext, request: web.Request, principal: Principal) -> web.StreamResponse:
    paths = await _paths(ctx, request)
    _require_all(ctx, principal, Activity.READ_METADATA, paths)
    return web.json_response(_tape(ctx).archiveinfo(paths))


_SLASH = "{slash:/?}"  # gfal2 2.21 posts to `.../archiveinfo/` and `.../stage/`
_ID = "{id:[^/]+}"
ROUTES = [
    ("GET", "/.well-known/wlcg-tape-rest-api" + _SLASH, discovery),
    ("POST", f"{API}/stage{_SLASH}", stage),
    ("GET", f"{API}/stage/{_ID}{_SLASH}", stage_status),
    ("POST", f"{API}/stage/{_ID}/cancel{_SLASH}", cancel),
    ("DELETE", f"{API}/stage/{_ID}{_SLASH}", delete),
    ("POST", f"{API}/release/{_ID}{_SLASH}", release),
    ("POST", f"{API}/archiveinfo{_SLASH}", archiveinfo),
]
