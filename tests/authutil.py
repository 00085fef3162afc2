"""Helpers shared by the token-side identity tests: apps, tokens, a real loopback server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from junodcs.auth.scope_policy import policy_scopes
from junodcs.core.gridconfig import GridConfig, Servers
from junodcs.server.app import ServerOptions, create_app

TEST_URL = "http://testserver"


def make_app(grid: GridConfig, engine: Engine, url: str = TEST_URL, **state: Any) -> FastAPI:
    return create_app(grid, engine, ServerOptions(public_url=url, extra_state=state))


def with_trusted_issuers(grid: GridConfig, *issuers: str) -> GridConfig:
    return grid.model_copy(update={"servers": Servers(trusted_issuers=tuple(issuers))})


def full_token(app: FastAPI, username: str, group: str | None = None, **kwargs: Any) -> str:
    """An access token with every scope the policy gives `username` in `group` (as a login would)."""
    registry = app.state.registry
    membership = registry.membership(username, group)
    scopes = policy_scopes(registry.vo, username, membership.properties)
    token, _ = app.state.token_issuer.issue_access_token(
        username=username, group=membership.group, scopes=scopes, **kwargs
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class ProxyCredential:
    dn: str
    fqans: tuple[str, ...]
    vo: str | None


class ChainByDN:
    """Stand-in for the X509/VOMS validator (`auth.proxy.ProxyValidator`, built and tested on the X509
    side): maps a presented "chain" to the DN and FQANs it stands for, so these tests exercise what the
    token side does with a validated credential (login, group choice, policies)."""

    def __init__(self, credentials: dict[str, ProxyCredential]) -> None:
        self.credentials = credentials

    def validate(self, chain_pem: list[str]) -> ProxyCredential:
        from junodcs.core.errors import Unauthenticated

        try:
            return self.credentials[chain_pem[0]]
        except KeyError:
            raise Unauthenticated("certificate chain not trusted", code="bad-certificate") from None


class PresentChain:
    """ASGI wrapper that puts a client-certificate chain in the TLS scope extension, as `server.tls`
    does for a real TLS connection."""

    def __init__(self, app: FastAPI, chain: list[str] | None) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.chain is not None:
            scope = dict(scope)
            scope["extensions"] = {**scope.get("extensions", {}), "tls": {"client_cert_chain": self.chain}}
        await self.app(scope, receive, send)


def bound_socket() -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def serve(app: Any, sock: socket.socket) -> Iterator[None]:
    """Run `app` under a real uvicorn on the already bound loopback socket, in a thread."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
