"""HTTP third-party copy (COPY with `Source:` = pull, `Destination:` = push), as gfal2/davix/FTS drive it.

Everything that can be decided up front (headers, schemes, Credential, Overwrite, permissions, local
file state) is answered with a plain HTTP error before any body. An accepted copy is answered `202` at
once with a chunked `text/perf-marker-stream`: a marker immediately, then at most `marker_interval`
(5 s) apart, then exactly one `success: Created` or `failure: <reason>` line. The transfer itself runs
as a task; if the client goes away the task is cancelled.

Pull writes through the same atomic upload as PUT, so a failed, aborted or unverifiable pull leaves
nothing at the destination (XRootD 5.5.3 leaves a 0-byte file, which later fails as "file exists").
`TransferHeader<X>` headers become `<X>` on *every* outbound request, a fallback HEAD for the checksum
included (xrootd#1826/#1882), and are never logged. Push sends `Expect: 100-continue` for bodies >= 1 MiB and
re-sends the body on 307/308 redirects (the StoRM -> EOS failure of eos#38).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat as stat_mod
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from aiohttp import web

from junodcs.core.checksums import format_digest, parse_digest
from junodcs.core.errors import NotFound
from junodcs.storage.markers import format_final, format_marker
from junodcs.storage.server.auth import Activity, Principal
from junodcs.storage.server.context import Progress, SEContext, pump, stream_chunks
from junodcs.storage.server.paths import BadRequest, SEError, SEPath
from junodcs.storage.server.store import PreconditionFailed
from junodcs.storage.server.webdav import parse_tf

log = logging.getLogger(__name__)

EXPECT_CONTINUE_THRESHOLD = 1 << 20
MAX_REDIRECTS = 5
TRANSFER_HEADER = "transferheader"


class TPCFailure(Exception):
    """The copy failed; the message becomes the `failure:` line."""


def remote_url(value: str) -> str:
    parts = urlsplit(value.strip())
    scheme = {"dav": "http", "davs": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"third-party copy needs an http(s)/dav(s) URL, not {value!r}", code="bad-tpc-url")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def parse_true_false(value: str | None, *, header: str, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise BadRequest(f"{header} must be true or false, not {value!r}", code="bad-header")
    return text == "true"


def forwarded_headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(TRANSFER_HEADER) and len(name) > len(TRANSFER_HEADER):
            out[name[len(TRANSFER_HEADER):]] = value
    return out


async def copy(ctx: SEContext, request: web.Request, path: SEPath, principal: Principal) -> web.StreamResponse:
    source = request.headers.get("Source")
    destination = request.headers.get("Destination")
    if bool(source) == bool(destination):
        raise BadRequest("COPY needs exactly one of the Source (pull) or Destination (push) headers",
                           code="bad-tpc-request")
    url = remote_url(source or destination or "")
    credential = request.headers.get("Credential", "none").strip().lower()
    if credential != "none":
        raise BadRequest(f"unsupported Credential type {credential!r}: only 'none' (tokens in "
                           "TransferHeaderAuthorization) is supported", code="unsupported-credential")
    overwrite = parse_tf(request.headers.get("Overwrite"), header="Overwrite")
    verify = parse_true_false(request.headers.get("RequireChecksumVerification"),
                              header="RequireChecksumVerification", default=True)
    streams = request.headers.get("X-Number-Of-Streams", "1").strip() or "1"
    if not streams.isdigit() or int(streams) > 100:
        raise BadRequest(f"X-Number-Of-Streams must be 0..100, not {streams!r}", code="bad-header")
    headers = forwarded_headers(request)
    st = ctx.store.stat(path)
    mode = "pull" if source else "push"
    if mode == "pull":
        if st is not None and stat_mod.S_ISDIR(st.st_mode):
            raise SEError(f"{path.logical} is a directory", status=409, code="is-directory")
        ctx.auth.require(principal, Activity.UPLOAD, path.logical, creating=st is None)
        if st is not None and not overwrite:
            raise PreconditionFailed(f"{path.logical} exists and Overwrite is F")
    else:
        ctx.auth.require(principal, Activity.DOWNLOAD, path.logical)
        if st is None:
            raise NotFound(f"{path.logical} does not exist")
        if stat_mod.S_ISDIR(st.st_mode):
            raise SEError(f"{path.logical} is a directory; only files can be copied", status=400,
                          code="is-directory")
        if ctx.tape is not None:
            ctx.tape.require_on_disk(path.logical)
    progress = Progress()
    if mode == "pull":
        work = pull(ctx, url, path, headers, overwrite=overwrite, verify=verify, progress=progress)
    else:
        work = push(ctx, path, url, headers, overwrite=overwrite, verify=verify, progress=progress)
    return await _run_with_markers(ctx, request, work, progress, mode)


class MarkerStream(web.StreamResponse):
    """The 202 marker stream, whose status line and headers leave in the same packet as the first marker.

    aiohttp's `StreamResponse` sends its headers on `prepare()`, a `send` of their own; `web.Response`
    holds them for the body by this same class attribute. On a copy of a small file the two extra
    `send`s (headers, end-of-stream) were a tenth of the SE's work, so headers ride with the first marker
    and the end of the stream with the final line."""

    _send_headers_immediately = False


async def _run_with_markers(ctx: SEContext, request: web.Request, work: object, progress: Progress,
                            mode: str) -> web.StreamResponse:
    response = MarkerStream(status=202, headers={"Content-Type": "text/perf-marker-stream"})
    task: asyncio.Task[Any] = asyncio.ensure_future(work)  # type: ignore[arg-type]
    try:
        await response.prepare(request)
        await response.write(format_marker(0))
        while True:
            done, _ = await asyncio.wait({task}, timeout=ctx.config.marker_interval)
            if done:
                break
            await response.write(format_marker(progress.transferred))
    except (ConnectionError, asyncio.CancelledError):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.metrics.tpc.labels(se=ctx.config.name, mode=mode, outcome="aborted").inc()
        log.info("TPC %s aborted: the client went away", mode)
        raise
    try:
        stored = task.result()
        final = format_final(True, "Created", digests=stored if isinstance(stored, dict) else None)
        outcome = "success"
    except TPCFailure as exc:
        final, outcome = format_final(False, str(exc)), "failure"
    except Exception as exc:  # noqa: BLE001 - an unexpected error is still reported on the stream
        log.exception("TPC %s failed unexpectedly", mode)
        final, outcome = format_final(False, f"internal error: {exc}"), "failure"
    ctx.metrics.tpc.labels(se=ctx.config.name, mode=mode, outcome=outcome).inc()
    try:
        await response.write_eof(format_marker(progress.transferred) + final)
    except ConnectionError:
        pass
    return response


async def _remote_error(response: object, what: str) -> TPCFailure:
    text = ""
    try:
        text = (await response.content.read(300)).decode(errors="replace")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass
    status = response.status  # type: ignore[attr-defined]
    message = f"Remote side failed with status code {status} on {what}"
    if text.strip():
        message += f"; error message: {' '.join(text.split())[:200]}"
    return TPCFailure(message)


async def _source_digest(ctx: SEContext, url: str, headers: dict[str, str]) -> dict[str, str]:
    """The source's checksums from a HEAD, for sources whose GET answers `Want-Digest` without a `Digest`."""
    assert ctx.http is not None
    async with ctx.http.head(url, headers=headers, allow_redirects=True) as response:
        return parse_digest(response.headers.get("Digest")) if response.status == 200 else {}


async def _precise_failure(ctx: SEContext, url: str, headers: dict[str, str]) -> TPCFailure | None:
    """A HEAD's 401/403/404 after a GET's 5xx: XRootD answers a GET with `Want-Digest` of a missing file
    with `500 Underlying filesystem failed to calculate checksum`, where its HEAD says 404, the reason
    FTS and the catalog act on (no retry of a missing source)."""
    assert ctx.http is not None
    async with ctx.http.head(url, headers=headers, allow_redirects=True) as response:
        if response.status in (401, 403, 404):
            return await _remote_error(response, f"HEAD {url}")
    return None


async def pull(ctx: SEContext, url: str, target: SEPath, headers: dict[str, str], *, overwrite: bool,
               verify: bool, progress: Progress) -> dict[str, str]:
    """GET the source into an atomic upload, checksumming as the bytes arrive, and compare with the source's
    adler32 before the rename. Returns the checksums of the file as stored.

    Why no pre-flight HEAD: the GET carries `Want-Digest`, and our SEs, XRootD and dCache answer it on the
    GET itself, so a HEAD first cost every copy a second request (and the source a second stat and
    checksum lookup) for nothing. Only when the GET's answer has no adler32 is the source asked again,
    with a HEAD after the body and before the commit, so the comparison (and RequireChecksumVerification)
    holds exactly as before."""
    import aiohttp

    assert ctx.http is not None
    base = {**headers, "Want-Digest": "adler32", "Accept-Encoding": "identity"}
    inline = _inline_metadata(ctx)
    try:
        async with ctx.http.get(url, headers=base, allow_redirects=True) as response:
            if response.status != 200:
                failure = await _remote_error(response, f"GET {url}")
                if response.status >= 500:
                    failure = await _precise_failure(ctx, url, base) or failure
                raise failure
            remote = parse_digest(response.headers.get("Digest"))
            size = response.content_length
            upload = ctx.store.begin_upload(target) if inline else await ctx.run(ctx.store.begin_upload, target)
            try:
                chunks = stream_chunks(response.content)
                if ctx.config.shaper is not None:
                    chunks = ctx.config.shaper.throttle(chunks, url)
                await pump(ctx, chunks, upload, progress)
                if size is not None and upload.size != size:
                    raise TPCFailure(f"source sent {upload.size} bytes, expected {size}")
                if "adler32" not in remote:
                    remote = {**await _source_digest(ctx, url, base), **remote}
                actual = upload.summer.adler32
                if "adler32" in remote and remote["adler32"] != actual:
                    raise TPCFailure(f"checksum mismatch: source adler32={remote['adler32']}, "
                                     f"destination adler32={actual}")
                if verify and "adler32" not in remote:
                    raise TPCFailure("RequireChecksumVerification is true but the source gave no adler32 Digest")
                try:
                    if inline:
                        stored = upload.commit(overwrite=overwrite)
                    else:
                        stored = await ctx.run(upload.commit, overwrite=overwrite)
                except PreconditionFailed as exc:
                    raise TPCFailure(str(exc)) from None
                if ctx.tape is not None:
                    ctx.tape.written(target.logical)
            except BaseException:
                upload.abort()
                raise
            ctx.metrics.bytes_in.inc(upload.size)
            return stored
    except aiohttp.ClientError as exc:
        raise TPCFailure(f"transfer from {url} failed: {exc or type(exc).__name__}") from None
    except TimeoutError:
        raise TPCFailure(f"no data from {url} for {ctx.config.tpc_idle_timeout:.0f} s") from None


def _inline_metadata(ctx: SEContext) -> bool:
    """Whether creating the temporary and the rename (open, mkdir, setxattr, rename: metadata operations of
    microseconds on a local disk) run on the event loop. Two thread-pool hops per copy cost more than the
    operations themselves; with fsync, or a root on a file system whose writes may block (inline_writes
    off), they stay in the worker threads."""
    return ctx.config.inline_writes and not ctx.config.fsync


async def _file_body(ctx: SEContext, local: str, size: int, progress: Progress) -> AsyncIterator[bytes]:
    block = ctx.config.io_block
    fd = os.open(local, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            data = await ctx.run(os.pread, fd, min(block, size - offset), offset)
            if not data:
                raise TPCFailure(f"source file shrank to {offset} bytes during the copy")
            offset += len(data)
            progress.transferred = offset
            yield data
    finally:
        os.close(fd)


async def push(ctx: SEContext, source: SEPath, url: str, headers: dict[str, str], *, overwrite: bool,
               verify: bool, progress: Progress) -> None:
    import aiohttp

    assert ctx.http is not None
    checksums = await ctx.run(ctx.store.checksums, source, ["adler32"])
    size = os.stat(source.local).st_size
    try:
        if not overwrite:
            async with ctx.http.head(url, headers=headers, allow_redirects=True) as response:
                if response.status == 200:
                    raise TPCFailure(f"destination {url} exists and Overwrite is F")
        put_headers = {**headers, "Content-Length": str(size), "Digest": format_digest(checksums, ["adler32"]),
                       "Content-Type": "application/octet-stream"}
        if not overwrite:
            put_headers["Overwrite"] = "F"
        target = url
        expect = size >= EXPECT_CONTINUE_THRESHOLD
        for _hop in range(MAX_REDIRECTS + 2):
            progress.transferred = 0
            body = _file_body(ctx, str(source.local), size, progress)
            if ctx.config.shaper is not None:
                body = ctx.config.shaper.throttle(body, target)
            try:
                async with ctx.http.put(target, data=body, headers=put_headers, allow_redirects=False,
                                        expect100=expect) as response:
                    if response.status in (301, 302, 307, 308) and response.headers.get("Location"):
                        target = urljoin(target, response.headers["Location"])
                        continue
                    if response.status not in (200, 201, 204):
                        raise await _remote_error(response, f"PUT {target}")
                    break
            except aiohttp.ClientResponseError as exc:
                # XRootD 5.5.3 answers `Expect: 100-continue` with a 100 carrying `Connection: Close` and then
                # its real answer on the same connection, which aiohttp refuses to parse: send it again
                # without Expect (curl tolerates the quirk; the StoRM->EOS reason for Expect is redirects).
                if not expect or "Connection: close" not in str(exc.message):
                    raise
                log.info("push to %s: peer mishandles Expect: 100-continue, resending without it", target)
                expect = False
        else:
            raise TPCFailure(f"too many redirects pushing to {url}")
        ctx.metrics.bytes_out.inc(size)
        async with ctx.http.head(target, headers={**headers, "Want-Digest": "adler32"}) as response:
            remote = parse_digest(response.headers.get("Digest")) if response.status == 200 else {}
            remote_size = response.content_length if response.status == 200 else None
        if remote_size is not None and remote_size != size:
            raise TPCFailure(f"destination has {remote_size} bytes after the copy, expected {size}")
        if "adler32" in remote and remote["adler32"] != checksums["adler32"]:
            raise TPCFailure(f"checksum mismatch: source adler32={checksums['adler32']}, "
                             f"destination adler32={remote['adler32']}")
        if verify and "adler32" not in remote:
            raise TPCFailure("RequireChecksumVerification is true but the destination gave no adler32 Digest")
    except aiohttp.ClientError as exc:
        raise TPCFailure(f"transfer to {url} failed: {exc or type(exc).__name__}") from None
    except TimeoutError:
        raise TPCFailure(f"no progress pushing to {url} for {ctx.config.tpc_idle_timeout:.0f} s") from None
