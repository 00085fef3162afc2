"""HTTPS for the central server with X.509 / RFC 3820 proxy client authentication under uvicorn.

Three things uvicorn does not do are added here:

1. The SSL context asks for a client certificate without requiring one (token clients have none),
   trusts the hashed CA directory and allows RFC 3820 proxies (`VERIFY_ALLOW_PROXY_CERTS`).
2. The TLS layer accepts a chain OpenSSL could not verify and leaves the decision to
   `junodcs.auth.proxy.ProxyValidator` (both in `junodcs.core.tls`, shared with the storage elements).
3. The client chain reaches the application as `scope["extensions"]["tls"]["client_cert_chain"]`
   (PEM strings, leaf first, the ASGI TLS extension): a subclass of uvicorn's HTTP protocol wraps the
   per-connection app in `connection_made`, once the handshake is done.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from junodcs.core.tls import client_chain, server_context
from junodcs.server.run import TLSFiles

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


# -- files ----------------------------------------------------------------------------------------------


def default_tls_files(*, cert: Path | None = None, key: Path | None = None, ca_dir: Path | None = None,
                      vomsdir: Path | None = None, host: str = "127.0.0.1") -> TLSFiles:
    """TLS files of a server: the given ones, else a host certificate from the project CA (created on
    first use) for `host`, localhost and the loopback addresses; the project CA's trust directory; the
    vomsdir given, `$X509_VOMS_DIR`, or the local grid's."""
    from junodcs.auth.voms import VOMSServer
    from junodcs.auth.x509 import CertificateAuthority

    ca: CertificateAuthority | None = None
    if cert is None or ca_dir is None:
        ca = CertificateAuthority.load_or_init()
    if cert is None:
        assert ca is not None
        names = tuple(n for n in ("localhost", "127.0.0.1", "::1") if n != host)
        cert, key = ca.host_credential(host if host not in ("0.0.0.0", "::") else "localhost", alt_names=names)
    if ca_dir is None:
        assert ca is not None
        ca_dir = ca.trust_dir
    if vomsdir is None:
        vomsdir = Path(os.environ["X509_VOMS_DIR"]) if os.environ.get("X509_VOMS_DIR") else VOMSServer.default_vomsdir()
        vomsdir.mkdir(parents=True, exist_ok=True)
    return TLSFiles(certfile=Path(cert), keyfile=Path(key or cert), ca_dir=Path(ca_dir), vomsdir=Path(vomsdir))


# -- SSL context ----------------------------------------------------------------------------------------


def server_ssl_context(tls: TLSFiles, *, tolerant: bool = True) -> ssl.SSLContext:
    return server_context(str(tls.certfile), str(tls.keyfile), str(tls.ca_dir), alpn=["http/1.1"],
                          tolerant=tolerant)


# -- the client chain in the ASGI scope -----------------------------------------------------------------


class ClientChainApp:
    """ASGI wrapper for one connection: adds the ASGI TLS extension with the client chain."""

    def __init__(self, app: ASGIApp, chain: list[str], tls_version: str | None, cipher: str | None) -> None:
        self.app = app
        self.tls = {"client_cert_chain": chain, "tls_version": tls_version, "cipher_suite": cipher,
                    "server_cert": None, "client_cert_name": None, "client_cert_error": None}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = dict(self.tls)
            scope = {**scope, "extensions": extensions}
        await self.app(scope, receive, send)


def client_chain_protocol(base: type) -> type:
    """A subclass of uvicorn's HTTP protocol `base` that exposes the client chain to the app."""

    class ClientChainProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                return
            cipher = ssl_object.cipher()
            self.app = ClientChainApp(self.app, client_chain(transport), ssl_object.version(),
                                      cipher[0] if cipher else None)

    ClientChainProtocol.__name__ = ClientChainProtocol.__qualname__ = f"ClientChain{base.__name__}"
    return ClientChainProtocol


def _http_protocol_class(http: Any) -> type:
    """The class uvicorn would use for `config.http` ("auto" = httptools when installed, else h11)."""
    if isinstance(http, type):
        return http
    if http == "auto":
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        return AutoHTTPProtocol
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(HTTP_PROTOCOLS.get(http, http))  # type: ignore[no-any-return]


def apply_tls(config: Any, tls_files: TLSFiles, *, tolerant: bool = True) -> None:
    """Turn a `uvicorn.Config` into an HTTPS server with client-certificate authentication."""
    config.ssl_certfile = str(tls_files.certfile)
    config.ssl_keyfile = str(tls_files.keyfile)
    config.http = client_chain_protocol(_http_protocol_class(config.http))
    if hasattr(config, "ssl_context_factory"):
        config.ssl_context_factory = lambda _config, _default: server_ssl_context(tls_files, tolerant=tolerant)
        return
    original_load = config.load  # uvicorn without ssl_context_factory: replace the context after loading

    def load() -> None:
        original_load()
        config.ssl = server_ssl_context(tls_files, tolerant=tolerant)

    config.load = load
