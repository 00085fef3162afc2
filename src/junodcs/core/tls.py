"""Server-side TLS shared by the central server (uvicorn) and the storage elements (aiohttp): a context that
asks for a client certificate without requiring one, and hands the presented chain to the application.

Token clients have no certificate, so the context asks but does not require one; it trusts the hashed CA
directory and allows RFC 3820 proxies (`VERIFY_ALLOW_PROXY_CERTS`). The handshake then completes whatever
OpenSSL thinks of the client chain, and `junodcs.auth.proxy.ProxyValidator` checks it all again and says why
it refuses: a user with an expired proxy or an unknown CA gets a 401 naming the reason instead of a bare
handshake alert. That needs OpenSSL's verify callback, which Python's `ssl` does not expose; it is set
through ctypes on the context's `SSL_CTX` after two sanity checks, and without them verification stays in
the handshake (still safe, only less helpful).

Standard library only: an SE process must not pay for importing the central server's application.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
from typing import Any

log = logging.getLogger(__name__)

_SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# Kept referenced for the life of the process: OpenSSL holds a raw pointer to it.
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _ok, _store: 1)


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    """Address of the `SSL_CTX` behind a CPython `ssl.SSLContext` (first field after the object head)."""
    if sys.implementation.name != "cpython" or hasattr(sys, "getobjects") or not (3, 10) <= sys.version_info < (3, 15):
        return None
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value


def tolerate_unverified_clients(context: ssl.SSLContext) -> bool:
    """Let the handshake complete whatever OpenSSL thinks of the client chain (the application validates
    it). Returns False, leaving strict verification, when the context cannot be reached safely."""
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


def server_context(cert: str, key: str, ca_dir: str | None, *, alpn: list[str] | None = None,
                   tolerant: bool = True) -> ssl.SSLContext:
    """A TLS server context; with `ca_dir`, client certificates (and proxies) are asked for, not required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols(alpn)
    if ca_dir is not None:
        context.load_verify_locations(capath=ca_dir)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VerifyFlags.VERIFY_ALLOW_PROXY_CERTS
        if tolerant and not tolerate_unverified_clients(context):
            log.info("client certificate chains that OpenSSL rejects will fail the TLS handshake")
    return context


def client_chain(transport: Any) -> list[str]:
    """PEM certificates the client presented, leaf first (the verified chain, with the trusted root when
    OpenSSL built one); empty without TLS or without a certificate."""
    if transport is None:
        return []
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        peer = ssl_object.getpeercert(binary_form=True)
        return [ssl.DER_cert_to_PEM_cert(peer)] if peer else []
    return [ssl.DER_cert_to_PEM_cert(bytes(cert)) if isinstance(cert, (bytes, bytearray)) else cert.public_bytes()
            for cert in getter() or []]
