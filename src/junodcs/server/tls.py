"""HTTPS for the central server with X.509 / RFC 3820 proxy client authentication under uvicorn.

Three things uvicorn does not do are added here:

1. The SSL context asks for a client certificate without requiring one (token clients have none),
   trusts the hashed CA directory and allows RFC 3820 proxies (`VERIFY_ALLOW_PROXY_CERTS`).
2. The TLS layer accepts a chain OpenSSL could not verify and leaves the decision to
   `junodcs.auth.proxy.ProxyValidator`, which checks everything again and says why it refuses: a user
   with an expired proxy or an unknown CA gets a 401 naming the reason instead of a bare handshake
   alert. This needs OpenSSL's verify callback, which Python's `ssl` does not expose; it is set through
   ctypes on the context's `SSL_CTX` after two sanity checks, and without them the server falls back to
   strict verification in the handshake (still safe, only less helpful).
3. The client chain reaches the application as `scope["extensions"]["tls"]["client_cert_chain"]`
   (PEM strings, leaf first, the ASGI TLS extension): a subclass of uvicorn's HTTP protocol wraps the
   per-connection app in `connection_made`, once the handshake is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from junodcs.server.run import TLSFiles

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

_SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# Kept referenced for the life of the process: OpenSSL holds a raw pointer to it.
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _ok, _store: 1)


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


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    """Address of the `SSL_CTX` behind a CPython `ssl.SSLContext` (first field after the object head)."""
    if sys.implementation.name != "cpython" or hasattr(sys, "getobjects") or not (3, 10) <= sys.version_info < (3, 15):
        return None
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value


def tolerate_unverified_clients(context: ssl.SSLContext) -> bool:
    """Let the handshake complete whatever OpenSSL thinks of the client chain (the application
    validates it). Returns False, leaving strict verification, when the context cannot be reached safely."""
    try:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)  # resolves libssl's symbols as the ssl module links them
        get_mode = library.SSL_CTX_get_verify_mode
        get_options = library.SSL_CTX_get_options
        set_verify = library.SSL_CTX_set_verify
    except (OSError, AttributeError, ImportError):
        return False
    pointer = _ssl_ctx_pointer(context)
    if not pointer:
        return False
    get_mode.restype, get_mode.argtypes = ctypes.c_int, [ctypes.c_void_p]
    get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    set_verify.restype, set_verify.argtypes = None, [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    if get_mode(pointer) != _SSL_VERIFY_PEER or get_options(pointer) != int(context.options):
        log.warning("cannot reach OpenSSL's verify callback; client chains are verified in the TLS handshake")
        return False
    set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return True


def server_ssl_context(tls: TLSFiles, *, tolerant: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    context.load_verify_locations(capath=str(tls.ca_dir))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VerifyFlags.VERIFY_ALLOW_PROXY_CERTS
    context.set_alpn_protocols(["http/1.1"])
    if tolerant and not tolerate_unverified_clients(context):
        log.info("client certificate chains that OpenSSL rejects will fail the TLS handshake")
    return context


# -- the client chain in the ASGI scope -----------------------------------------------------------------


def client_chain(transport: Any) -> list[str]:
    """PEM certificates the client presented, leaf first (the verified chain, with the trusted root when
    OpenSSL built one)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        peer = ssl_object.getpeercert(binary_form=True)
        return [ssl.DER_cert_to_PEM_cert(peer)] if peer else []
    chain = getter() or []
    pems: list[str] = []
    for cert in chain:
        if isinstance(cert, (bytes, bytearray)):
            pems.append(ssl.DER_cert_to_PEM_cert(bytes(cert)))
        else:
            pems.append(cert.public_bytes())
    return pems


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
