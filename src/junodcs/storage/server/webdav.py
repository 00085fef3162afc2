"""The WebDAV subset gfal2 and davix use: HEAD, GET (+Range), PUT, DELETE, MKCOL, PROPFIND, MOVE, OPTIONS,
and POST for macaroon requests. COPY (HTTP-TPC) lives in `tpc.py`.

GET is served by aiohttp's `FileResponse`, which uses sendfile(2): the bytes never pass through Python,
which is what keeps GET on par with XRootD (reference/components.md, "Measured: HTTP data path").
"""

from __future__ import annotations

import json
import os
import stat as stat_mod
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from junodcs.core.checksums import format_digest, parse_digest, parse_want_digest
from junodcs.core.checksums import normalize_md5
from junodcs.core.errors import Forbidden, NotFound, Unauthenticated
from junodcs.storage.server.auth import Activity, Principal
from junodcs.storage.server.context import SEContext, pump, stream_chunks
from junodcs.storage.server.macaroons import DEFAULT_VALIDITY, parse_duration
from junodcs.storage.server.paths import BadPath, BadRequest, SEError, SEPath
from junodcs.storage.server.propfind import http_date, multistatus, response_xml
from junodcs.storage.server.store import PreconditionFailed

Handler = Callable[[SEContext, web.Request, SEPath, Principal], Awaitable[web.StreamResponse]]

ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, PROPFIND, MOVE, COPY, POST"


def parse_tf(value: str | None, *, header: str, default: bool = True) -> bool:
    """RFC 4918 `Overwrite: T|F`; anything else is a client error, not a silent default."""
    if value is None or value.strip() == "":
        return default
    text = value.strip().upper()
    if text not in ("T", "F"):
        raise BadRequest(f"{header} must be T or F, not {value!r}", code="bad-header")
    return text == "T"


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


async def _digest_header(ctx: SEContext, request: web.Request, path: SEPath) -> dict[str, str]:
    want = parse_want_digest(request.headers.get("Want-Digest"))
    if not want:
        return {}
    stored = ctx.store.stored_checksums(path)
    if any(a not in stored for a in want[:1]):
        stored = await ctx.run(ctx.store.checksums, path, want[:1])
    value = format_digest(stored, want[:1])
    return {"Digest": value} if value else {}


def _stat_or_404(ctx: SEContext, path: SEPath) -> os.stat_result:
    st = ctx.store.stat(path)
    if st is None:
        raise NotFound(f"{path.logical} does not exist")
    return st


async def options(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    return web.Response(status=200, headers={"DAV": "1,2", "Allow": ALLOW, "Accept-Ranges": "bytes"})


async def head(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    ctx.auth.require(principal, Activity.READ_METADATA, path.logical)
    st = _stat_or_404(ctx, path)
    headers = {"Last-Modified": http_date(st.st_mtime), "Accept-Ranges": "bytes"}
    if stat_mod.S_ISDIR(st.st_mode):
        headers["Content-Type"] = "httpd/unix-directory"
        headers["Content-Length"] = "0"
    else:
        headers.update({"Content-Type": "application/octet-stream", "ETag": _etag(st),
                        "Content-Length": str(st.st_size)})
        headers.update(await _digest_header(ctx, request, path))
    response = web.Response(status=200, headers=headers)
    return response


async def get(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    st = ctx.store.stat(path)
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        ctx.auth.require(principal, Activity.LIST, path.logical)
        return _html_listing(ctx, path)
    ctx.auth.require(principal, Activity.DOWNLOAD, path.logical)
    if st is None:
        raise NotFound(f"{path.logical} does not exist")
    if ctx.tape is not None:
        ctx.tape.require_on_disk(path.logical)
    headers = {"Content-Type": "application/octet-stream"}
    headers.update(await _digest_header(ctx, request, path))
    return web.FileResponse(path.local, chunk_size=1 << 20, headers=headers)


def _html_listing(ctx: SEContext, path: SEPath) -> web.Response:
    base = path.logical.rstrip("/")
    rows = []
    for entry in sorted(ctx.store.listdir(path), key=lambda e: e.name):
        suffix = "/" if entry.is_dir else ""
        rows.append(f'<li><a href="{quote(f"{base}/{entry.name}")}{suffix}">{entry.name}{suffix}</a></li>')
    body = f"<html><body><h1>{path.logical}</h1><ul>{''.join(rows)}</ul></body></html>\n"
    return web.Response(text=body, content_type="text/html")


def _expected_checksums(request: web.Request) -> dict[str, str]:
    expected = parse_digest(request.headers.get("Digest"))
    content_md5 = request.headers.get("Content-MD5")
    if content_md5:
        try:
            expected["md5"] = normalize_md5(content_md5)
        except ValueError:
            raise BadRequest(f"Content-MD5 {content_md5!r} is not an md5 checksum", code="bad-header") from None
    return expected


def _put_overwrite(request: web.Request) -> bool:
    if request.headers.get("If-None-Match", "").strip() == "*":
        return False
    return parse_tf(request.headers.get("Overwrite"), header="Overwrite")


def check_put(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> bool:
    """Everything a PUT is decided on before its body: shared by PUT and its `Expect: 100-continue` check.
    Returns whether the target exists."""
    st = ctx.store.stat(path)
    exists = st is not None
    ctx.auth.require(principal, Activity.UPLOAD, path.logical, creating=not exists)
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        raise SEError(f"{path.logical} is a directory", status=409, code="is-directory")
    if exists and not _put_overwrite(request):
        raise PreconditionFailed(f"{path.logical} exists and overwrite is not allowed")
    return exists


async def put(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    exists = check_put(ctx, request, path, principal)
    expected = _expected_checksums(request)
    upload = await ctx.run(ctx.store.begin_upload, path, md5="md5" in expected)
    try:
        await pump(ctx, stream_chunks(request.content), upload)
        values = await ctx.run(upload.commit, expected=expected, overwrite=_put_overwrite(request),
                               expected_size=request.content_length)
    except BaseException:
        upload.abort()
        raise
    ctx.metrics.bytes_in.inc(upload.size)
    if ctx.tape is not None:
        ctx.tape.written(path.logical)
    return web.Response(status=204 if exists else 201, headers={"Digest": format_digest(values, ["adler32"])})


async def delete(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    ctx.auth.require(principal, Activity.DELETE, path.logical)
    await ctx.run(ctx.store.delete, path)
    if ctx.tape is not None:
        ctx.tape.removed(path.logical)
    return web.Response(status=204)


async def mkcol(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    ctx.auth.require(principal, Activity.MANAGE, path.logical, creating=True)
    if request.can_read_body and await request.content.read(1):
        raise SEError("MKCOL with a body is not supported", status=415, code="unsupported-body")
    ctx.store.mkcol(path)
    return web.Response(status=201)


def destination_path(ctx: SEContext, value: str | None) -> SEPath:
    if not value:
        raise BadRequest("MOVE needs a Destination header", code="bad-header")
    parts = urlsplit(value)
    raw = parts.path if (parts.scheme or value.startswith("/")) else ""
    if not raw:
        raise BadPath(f"Destination {value!r} is not a URL or an absolute path")
    return ctx.store.paths.from_raw(raw)


async def move(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    target = destination_path(ctx, request.headers.get("Destination"))
    overwrite = parse_tf(request.headers.get("Overwrite"), header="Overwrite")
    ctx.auth.require(principal, Activity.MANAGE, path.logical)
    ctx.auth.require(principal, Activity.MANAGE, target.logical, creating=ctx.store.stat(target) is None)
    replaced = await ctx.run(ctx.store.move, path, target, overwrite=overwrite)
    if ctx.tape is not None:
        ctx.tape.moved(path.logical, target.logical)
    return web.Response(status=204 if replaced else 201)


async def propfind(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    depth = request.headers.get("Depth", "1").strip().lower()
    if depth not in ("0", "1"):
        raise SEError("PROPFIND with Depth: infinity is not supported; use 0 or 1", status=403,
                      code="propfind-finite-depth")
    st = ctx.store.stat(path)
    is_dir = st is not None and stat_mod.S_ISDIR(st.st_mode)
    activity = Activity.LIST if depth == "1" and is_dir else Activity.READ_METADATA
    ctx.auth.require(principal, activity, path.logical)
    if st is None:
        raise NotFound(f"{path.logical} does not exist")
    if request.can_read_body:
        await request.read()  # the requested property set does not change what we answer
    parts = [response_xml(path.logical, st, ctx.store.stored_checksums(path) if not is_dir else None)]
    if depth == "1" and is_dir:
        for entry in sorted(ctx.store.listdir(path), key=lambda e: e.name):
            checks = None if entry.is_dir else ctx.store.stored_checksums(ctx.store.paths.resolve(entry.logical))
            parts.append(response_xml(entry.logical, entry.stat, checks))
    return web.Response(status=207, body=multistatus(parts).encode(), content_type="application/xml",
                        charset="utf-8")


async def post(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    """Only macaroon requests; any other POST is 405, never the file (StoRM once returned the file)."""
    if request.content_type != "application/macaroon-request":
        raise SEError("POST is only for macaroon requests (Content-Type: application/macaroon-request)",
                      status=405, code="method-not-allowed")
    macaroons = ctx.auth.macaroons
    if macaroons is None:
        raise SEError("this storage element issues no macaroons", status=405, code="method-not-allowed")
    if principal.method == "anonymous":
        raise Unauthenticated("a macaroon request needs a credential", code="unauthenticated")
    try:
        body = json.loads(await request.content.read(65536) or b"{}")
    except ValueError:
        raise BadRequest("macaroon request body is not JSON", code="bad-macaroon-request") from None
    if not isinstance(body, dict) or not isinstance(body.get("caveats", []), list):
        raise BadRequest("macaroon request must be {\"caveats\": [...], \"validity\": \"PT..\"}",
                           code="bad-macaroon-request")
    caveats = [str(c) for c in body.get("caveats", [])]
    validity = parse_duration(str(body["validity"])) if body.get("validity") else DEFAULT_VALIDITY
    requested: set[Activity] | None = None
    other: list[str] = []
    for caveat in caveats:
        kind, _, value = caveat.partition(":")
        if kind == "activity":
            names = {v.strip().upper() for v in value.split(",") if v.strip()}
            unknown = names - {a.value for a in Activity}
            if unknown:
                raise BadRequest(f"unknown activities {sorted(unknown)}", code="bad-caveat")
            wanted = {Activity(n) for n in names}
            requested = wanted if requested is None else requested & wanted
        else:
            other.append(caveat)
    candidates = requested if requested is not None else set(Activity)
    granted = {a for a in candidates if principal.allows(a, path.logical)}
    if requested is not None and granted != requested:
        missing = ", ".join(sorted(a.value for a in requested - granted))
        raise Forbidden(f"your credential does not allow {missing} on {path.logical}", code="forbidden")
    if not granted:
        raise Forbidden(f"your credential allows nothing on {path.logical}", code="forbidden")
    activity_caveat = "activity:" + ",".join(sorted(a.value for a in granted))
    macaroon, expires = macaroons.mint(subject=principal.subject, caveats=[activity_caveat,
                                       f"path:{path.logical}", *other], validity=validity)
    token = macaroon.serialize()
    base = ctx.config.public_url or f"{request.scheme}://{request.host}"
    target = f"{base.rstrip('/')}{quote(path.logical)}"
    answer = {
        "macaroon": token,
        "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uri": {"targetWithMacaroon": f"{target}?authz={token}", "baseWithMacaroon": f"{base}/?authz={token}",
                "target": target, "base": base},
    }
    return web.json_response(answer)
