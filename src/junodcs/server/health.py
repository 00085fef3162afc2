"""Health and metrics: what load balancers and Prometheus poll."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from junodcs import __version__
from junodcs.auth.policies import PublicAccess, requires


router = APIRouter(tags=["health"])


@router.get("/healthz", dependencies=[requires(PublicAccess)])
def healthz(request: Request) -> dict[str, object]:
    """Liveness plus a database round trip: a server that cannot reach its database is not healthy."""
    from junodcs.core.errors import ServiceUnavailable

    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver error means unhealthy
        raise ServiceUnavailable(f"database unreachable: {exc.__class__.__name__}", code="database-down") from None
    return {
        "status": "ok",
        "version": __version__,
        "vo": request.app.state.grid.vo,
        "systems": list(request.app.state.options.systems),
        "database": request.app.state.engine.dialect.name,
    }


@router.get("/metrics", dependencies=[requires(PublicAccess)], include_in_schema=False)
def metrics() -> Response:
    from junodcs.monitoring.metrics import render_latest

    body, content_type = render_latest()
    return Response(body, media_type=content_type)
