"""The HTTP leg of `FrontierClient`: keep-alive GETs to one hop (a site Squid, or the servers directly).

Why not httpx, the project's HTTP client elsewhere: a job's conditions read is a handful of GETs of large
cacheable answers, and in a job wave every worker-node core runs one. Measured on a warm Squid (8 GETs,
3.4 MB, one job): httpx spent 20-24 ms of CPU per job on request building, URL validation and its
stream layers, `http.client` 6.6-6.8 ms, and creating an httpx client loaded the CA bundle twice
(~130 ms) before the first request. The Frontier C client likewise speaks plain HTTP itself. This module
is the small part of HTTP that Frontier needs: GET with headers, absolute-URI requests to a proxy (as
Frontier clients address Squid), CONNECT tunnels for https through a proxy, separate connect and read
timeouts, one connection per hop kept alive, and one retry on a fresh connection when a kept-alive
connection turns out to be closed (GET is idempotent).
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class Unreachable(Exception):
    """The hop did not answer: `connect` is True when no connection could be made at all (refused, no
    route, connect timeout), False when an established exchange failed (reset, read timeout)."""

    def __init__(self, message: str, *, connect: bool) -> None:
        super().__init__(message)
        self.connect = connect


@dataclass
class Response:
    status_code: int
    headers: Mapping[str, str]
    content: bytes


class _ConnectFailed(Exception):
    pass


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Default verification (system trust store), built once per process and only when https is used."""
    return ssl.create_default_context()


class _Timeouts:
    """Separate connect and read timeouts (`http.client` has one), and connect failures told apart."""

    timeout: float
    read_timeout: float
    sock: socket.socket | None

    def connect(self) -> None:
        try:
            super().connect()  # type: ignore[misc]
        except (OSError, http.client.HTTPException) as exc:
            raise _ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        assert self.sock is not None
        self.sock.settimeout(self.read_timeout)


class _Plain(_Timeouts, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=connect_timeout)
        self.read_timeout = read_timeout


class _Secure(_Timeouts, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=connect_timeout, context=_tls_context())
        self.read_timeout = read_timeout


_Connection = _Plain | _Secure


def _open(host: str, port: int, *, tls: bool, connect_timeout: float, read_timeout: float) -> _Connection:
    kind = _Secure if tls else _Plain
    return kind(host, port, connect_timeout=connect_timeout, read_timeout=read_timeout)


class Transport:
    """GETs through `proxy` (`http://host:port`) or, with `proxy=None`, straight to each URL's server."""

    def __init__(self, proxy: str | None, *, connect_timeout: float, read_timeout: float) -> None:
        self.proxy = urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise ValueError(f"{proxy}: proxies are addressed as http://host:port")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._connections: dict[tuple[str, str, int], _Connection] = {}

    def _connection(self, url: str) -> tuple[_Connection, str]:
        """The kept-alive connection for `url` and the request target to send on it."""
        target = urlsplit(url)
        if target.scheme not in ("http", "https") or not target.hostname:
            raise ValueError(f"{url}: not an http(s) URL")
        tls = target.scheme == "https"
        port = target.port or (443 if tls else 80)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        key = (target.scheme, target.hostname, port)
        connection = self._connections.get(key)
        if connection is None:
            if self.proxy is None:
                connection = _open(target.hostname, port, tls=tls, connect_timeout=self.connect_timeout,
                                   read_timeout=self.read_timeout)
            else:
                assert self.proxy.hostname is not None
                connection = _open(self.proxy.hostname, self.proxy.port or 3128, tls=tls,
                                   connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
                if tls:
                    connection.set_tunnel(target.hostname, port)
            self._connections[key] = connection
        # plain HTTP through a proxy: the absolute URI (what Squid caches under); otherwise the path
        return connection, (url if self.proxy is not None and not tls else path)

    def get(self, url: str, headers: Mapping[str, str]) -> Response:
        connection, target = self._connection(url)
        for attempt in (1, 2):
            reused = connection.sock is not None
            try:
                connection.request("GET", target, headers=dict(headers))
                response = connection.getresponse()
                content = response.read()
            except _ConnectFailed as exc:
                connection.close()
                raise Unreachable(str(exc), connect=True) from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and attempt == 1 and not isinstance(exc, socket.timeout):
                    continue  # the kept-alive connection had been closed by the other end
                name = "ReadTimeout" if isinstance(exc, socket.timeout) else type(exc).__name__
                raise Unreachable(f"{name}: {exc}".rstrip(": "), connect=False) from None
            if response.will_close:
                connection.close()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, content)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
