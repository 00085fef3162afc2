"""Run the central server under uvicorn (plain HTTP or TLS with client-certificate authentication)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from junodcs.core.gridconfig import GridConfig
from junodcs.server.app import ServerOptions, create_app

log = logging.getLogger(__name__)


@dataclass
class TLSFiles:
    certfile: Path
    keyfile: Path
    ca_dir: Path
    """Hashed directory of trusted CAs; client certificates and proxies must chain to one of them."""
    vomsdir: Path | None = None
    """`<vo>/<host>.lsc` files naming the VOMS servers whose attribute certificates we trust."""


def serve(
    grid: GridConfig,
    *,
    host: str,
    port: int,
    options: ServerOptions,
    database_url: str | None = None,
    tls: TLSFiles | None = None,
    log_level: str = "info",
) -> None:
    import uvicorn

    from junodcs.db.engine import create_engine

    engine = create_engine(database_url)
    if tls is not None:
        options.tls = True
        options.extra_state.setdefault("tls_files", tls)
    app = create_app(grid, engine, options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
    if tls is not None:
        from junodcs.server.tls import apply_tls

        apply_tls(config, tls)
    server = uvicorn.Server(config)
    log.info("junodcs server on %s (systems: %s)", options.public_url, ", ".join(options.systems))
    server.run()
