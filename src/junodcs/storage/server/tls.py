"""HTTPS for the SE: server context that asks for (never requires) a client certificate, allows RFC 3820
proxies, and leaves the decision on the presented chain to `auth.proxy.ProxyValidator`.

The verify-callback trick and the chain extraction are those of `junodcs.server.tls` (read its
docstring); they are repeated here in small so that an SE process does not import the central
server's application (about 1 s of start-up per SE).
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
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _ok, _store: 1)  # referenced for the process's life


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    if sys.implementation.name != "cpython" or hasattr(sys, "getobjects") or not (3, 10) <= sys.version_info < (3, 15):
        return None
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value


def tolerate_unverified_clients(context: ssl.SSLContext) -> bool:
    """Complete the handshake whatever OpenSSL thinks of the client chain; False (strict) when unsafe."""
    try:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        get_mode, get_options = library.SSL_CTX_get_verify_mode, library.SSL_CTX_get_options
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
        return False
    set_verify(pointer, _SSL_VERIFY_PEER, _ACCEPT_ANY)
    return True


def server_context(cert: str, key: str, ca_dir: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca_dir is not None:
        context.load_verify_locations(capath=ca_dir)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VerifyFlags.VERIFY_ALLOW_PROXY_CERTS
        if not tolerate_unverified_clients(context):
            log.info("client certificate chains that OpenSSL rejects will fail the TLS handshake")
    return context


def client_chain(transport: Any) -> list[str]:
    """PEM certificates the client presented, leaf first (empty without TLS or without a certificate)."""
    if transport is None:
        return []
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        peer = ssl_object.getpeercert(binary_form=True)
        return [ssl.DER_cert_to_PEM_cert(peer)] if peer else []
    pems: list[str] = []
    for cert in getter() or []:
        pems.append(ssl.DER_cert_to_PEM_cert(bytes(cert)) if isinstance(cert, (bytes, bytearray))
                    else cert.public_bytes())
    return pems
