"""Running an SE: in the foreground (`dcs se serve`) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl  # noqa: F401
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from junodcs.storage.server.app import AccessLogger, create_app
from junodcs.storage.server.config import SEConfig


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path
    key: Path
    ca_dir: Path | None = None


def server_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """HTTPS for davs:// clients; client certificates and proxies are asked for but optional (tokens are
    the norm) and judged by the application (`core.tls`)."""
    from junodcs.core.tls import server_context

    return server_context(str(tls.cert), str(tls.key), str(tls.ca_dir) if tls.ca_dir is not None else None)


def serve(config: SEConfig, *, host: str, port: int, tls: TLSFiles | None = None) -> None:
    app = create_app(config)
    web.run_app(app, host=host, port=port, ssl_context=server_ssl_context(tls) if tls else None,
                access_log_class=AccessLogger, access_log=logging.getLogger("junodcs.storage.access"),
                print=None, handle_signals=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackgroundSE:
    """An SE on its own event loop in a daemon thread; `url` is ready when the constructor returns."""

    def __init__(self, config: SEConfig, *, host: str = "127.0.0.1", port: int | None = None,
                 tls: TLSFiles | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port or free_port()
        self.scheme = "https" if tls else "http"
        self.url = f"{self.scheme}://{host}:{self.port}"
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True, name=f"se-{config.name}")
        self._thread.start()
        ready.wait(30)
        if self._error is not None:
            raise self._error

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(create_app(self.config), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port,
                               ssl_context=server_ssl_context(self._tls) if self._tls else None)
            self._loop.run_until_complete(site.start())
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._error = exc
            ready.set()
            return
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._runner is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(15)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)

    def __enter__(self) -> BackgroundSE:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
