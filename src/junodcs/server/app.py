"""The central server's application factory.

`create_app` mounts the routers of the systems a deployment enables (all by default) on one FastAPI
application, with the cross-cutting parts every system shares: problem+json errors, Prometheus
metrics, health, the registry and the token verifier. Systems scale out by running several server
processes with different `systems` against one database.

Deny by default is enforced here: if any mounted route declares no access policy, the factory raises
instead of serving it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from junodcs import __version__
from junodcs.auth.policies import declared_policies
from junodcs.auth.registry import Registry
from junodcs.core.errors import DCSError
from junodcs.core.gridconfig import GridConfig

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: system name -> "module:attribute" of its router. A system's router module is imported only when the
#: deployment enables it, so a server running one system does not pay for the others.
SYSTEMS: dict[str, str] = {
    "auth": "junodcs.auth.router:router",
    "config": "junodcs.config.router:router",
    "catalog": "junodcs.catalog.router:router",
    "wms": "junodcs.wms.router:router",
    "transfer": "junodcs.transfer.router:router",
    "rms": "junodcs.rms.router:router",
    "conditions": "junodcs.conditions.router:router",
}
#: Routers every deployment mounts (health, metrics, OpenID discovery and keys).
ALWAYS: tuple[str, ...] = (
    "junodcs.server.health:router",
    "junodcs.auth.router:well_known_router",
)


@dataclass
class ServerOptions:
    """What a server process needs beyond grid.yaml (filled from `dcs server` flags and `DCS_*`)."""

    public_url: str
    """URL clients use to reach this server; also the token issuer (`iss`) unless grid.yaml says otherwise."""
    systems: tuple[str, ...] = tuple(SYSTEMS)
    agents: tuple[str, ...] = ()
    """Background agents to run in this process (`dcs server` runs those of its systems by default)."""
    migrate: bool = True
    tls: bool = False
    extra_state: dict[str, Any] = field(default_factory=dict)


def problem_response(status: int, problem: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_STATUS_CODES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "too-many-requests",
}


def install_error_handlers(app: FastAPI) -> None:
    async def dcs_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DCSError)
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else None
        return problem_response(exc.status, exc.to_problem(), headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"location": ".".join(str(p) for p in error["loc"]), "message": error["msg"]} for error in exc.errors()
        ]
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
        problem = DCSError(detail, code="invalid-input").to_problem()
        problem.update(status=422, title="Invalid input", errors=errors)
        return problem_response(422, problem)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _STATUS_CODES.get(exc.status_code, "http-error")
        problem = DCSError(str(exc.detail), code=code).to_problem()
        problem.update(status=exc.status_code, title=str(exc.detail))
        return problem_response(exc.status_code, problem, dict(exc.headers or {}))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, DCSError("internal server error; see the server log").to_problem())

    app.add_exception_handler(DCSError, dcs_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def iter_api_routes(routes: Iterable[Any]) -> Iterable[APIRoute]:
    """Every APIRoute, including those of included routers (FastAPI >= 0.160 no longer copies them into
    `app.routes` but keeps each included router as one entry holding `original_router`)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from iter_api_routes(included.routes)


def check_every_route_has_a_policy(app: FastAPI) -> None:
    missing = [
        f"{','.join(sorted(route.methods or ()))} {route.path}"
        for route in iter_api_routes(app.routes)
        if not declared_policies(route.endpoint, route.dependant)
    ]
    if missing:
        raise RuntimeError("routes without an access policy (deny by default): " + "; ".join(missing))


def create_app(grid: GridConfig, engine: Engine, options: ServerOptions) -> FastAPI:
    unknown = sorted(set(options.systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    if options.migrate:
        from junodcs.db.migrate import upgrade

        upgrade(engine)

    app = FastAPI(
        lifespan=_agents_lifespan,
        title="junodcs",
        version=__version__,
        description="JUNO distributed computing system: central services",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
    )
    issuer = (grid.servers.issuer or options.public_url).rstrip("/")
    app.state.grid = grid
    app.state.registry = Registry(grid)
    app.state.engine = engine
    app.state.options = options
    app.state.public_url = options.public_url.rstrip("/")
    app.state.issuer_url = issuer
    for key, value in options.extra_state.items():
        setattr(app.state, key, value)

    from junodcs.auth.service import install_auth

    install_auth(app)
    install_error_handlers(app)

    from junodcs.monitoring.metrics import MetricsMiddleware

    app.add_middleware(MetricsMiddleware)

    for target in ALWAYS:
        app.include_router(_import(target))
    for system in _unique(options.systems):
        app.include_router(_import(SYSTEMS[system]))
    check_every_route_has_a_policy(app)
    return app


@contextlib.asynccontextmanager
async def _agents_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the deployment's agents with the server and stop them with it."""
    from junodcs.server.agents import AgentRunner

    runner = AgentRunner(app.state, app.state.options.agents).start()
    try:
        yield
    finally:
        runner.stop()


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
