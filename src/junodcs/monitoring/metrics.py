"""Prometheus metrics shared by every server: request counts and latencies per route.

A plain ASGI middleware (not Starlette's `BaseHTTPMiddleware`) so that streamed responses pass through
untouched and the per-request cost stays a few microseconds.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter(
    "dcs_http_requests_total", "HTTP requests handled", ["method", "route", "status"]
)
LATENCY = Histogram(
    "dcs_http_request_seconds",
    "Time to the response's first byte",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def render_latest() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                LATENCY.labels(scope["method"], template).observe(time.perf_counter() - start)
                REQUESTS.labels(scope["method"], template, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
