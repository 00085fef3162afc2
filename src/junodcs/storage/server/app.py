"""The SE's aiohttp application: one catch-all route dispatching on the WebDAV method.

Why one route: WebDAV methods (PROPFIND, MKCOL, COPY, MOVE) and arbitrary paths do not fit a router;
and `Expect: 100-continue` must be decided (path, credential, overwrite) before the client sends a
byte, which aiohttp lets a route do through its `expect_handler`.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from junodcs.core.errors import DCSError
from junodcs.storage.server import tpc, webdav
from junodcs.storage.server.config import SEConfig
from junodcs.storage.server.context import SEContext
from junodcs.storage.server.paths import SEPath

log = logging.getLogger("junodcs.storage.server")

CONTEXT: web.AppKey[SEContext] = web.AppKey("se_context", SEContext)

HANDLERS: dict[str, webdav.Handler] = {
    "OPTIONS": webdav.options,
    "HEAD": webdav.head,
    "GET": webdav.get,
    "PUT": webdav.put,
    "DELETE": webdav.delete,
    "MKCOL": webdav.mkcol,
    "PROPFIND": webdav.propfind,
    "MOVE": webdav.move,
    "COPY": tpc.copy,
    "POST": webdav.post,
}


def problem_response(error: DCSError) -> web.Response:
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="junodcs-se"'
    return web.json_response(error.to_problem(), status=error.status, headers=headers,
                             content_type="application/problem+json")


def _finish_unread(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """A request whose body we refused to read must not keep the connection: the client may still send it."""
    if request.can_read_body and not request.content.at_eof():
        response.force_close()
    return response


def authenticate(ctx: SEContext, request: web.Request) -> Any:
    from junodcs.core.tls import client_chain

    return ctx.auth.authenticate(request.headers.get("Authorization"), request.query.get("authz"),
                                 lambda: client_chain(request.transport))


def _resolve(ctx: SEContext, request: web.Request) -> tuple[SEPath, Any]:
    path = ctx.store.paths.from_raw(request.raw_path)
    return path, authenticate(ctx, request)


def _tape_route(handler: Any) -> Any:
    async def route(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        try:
            return await handler(ctx, request, authenticate(ctx, request))
        except DCSError as exc:
            return _finish_unread(request, problem_response(exc))
    return route


async def dispatch(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    handler = HANDLERS.get(request.method)
    try:
        if handler is None:
            response: web.StreamResponse = web.Response(status=405, headers={"Allow": webdav.ALLOW},
                                                        text=f"method {request.method} is not supported\n")
            return _finish_unread(request, response)
        path, principal = _resolve(ctx, request)
        return await handler(ctx, request, path, principal)
    except DCSError as exc:
        return _finish_unread(request, problem_response(exc))
    except OSError as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        error = DCSError(f"storage error: {exc.strerror or exc}", code="storage-error")
        return _finish_unread(request, problem_response(error))


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` only after the PUT could succeed; otherwise the final error, no body."""
    ctx = request.app[CONTEXT]
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
    if request.method == "PUT":
        try:
            path, principal = _resolve(ctx, request)
            webdav.check_put(ctx, request, path, principal)
        except DCSError as exc:
            response = problem_response(exc)
            response.force_close()
            return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return web.json_response({"status": "ok", "se": ctx.config.name})


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    ctx = request.app[CONTEXT]
    return web.Response(body=generate_latest(ctx.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    ctx = request.app[CONTEXT]
    ctx.metrics.requests.labels(se=ctx.config.name, method=request.method, status=str(response.status)).inc()
    return response


class AccessLogger(AbstractAccessLogger):
    """Method, path, status, size, time: never the query string, which may carry `authz=` tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.3f', request.remote, request.method, request.path,
                         response.status, response.body_length, time)


def create_app(config: SEConfig) -> web.Application:
    ctx = SEContext.create(config)
    removed = ctx.store.sweep_temporaries()
    if removed:
        log.warning("%s: removed %d upload temporaries left by an earlier crash", config.name, removed)
    # A large read buffer keeps aiohttp from pausing the socket every 64 KiB during uploads.
    app = web.Application(middlewares=[count_requests], client_max_size=1 << 20,
                          handler_args={"read_bufsize": config.io_block})
    app[CONTEXT] = ctx

    async def on_startup(_: web.Application) -> None:
        await ctx.start_client()

    async def on_cleanup(_: web.Application) -> None:
        await ctx.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("GET", "/healthz", healthz)
    app.router.add_route("GET", "/metrics", metrics)
    if ctx.tape is not None:
        from junodcs.storage.server import taperest

        for method, route, handler in taperest.ROUTES:
            app.router.add_route(method, route, _tape_route(handler))
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect_continue)
    return app


