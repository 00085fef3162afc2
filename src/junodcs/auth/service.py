"""Wire the identity system into a server application.

Every server gets the token verifier (our own issuer's keys straight from the database, other trusted
issuers through OpenID discovery and JWKS); the central server also issues tokens. When the server runs
TLS, the X509 validator checks client certificates and RFC 3820 proxies with their VOMS attributes.
"""

from __future__ import annotations

from fastapi import FastAPI


def install_auth(app: FastAPI) -> None:
    from junodcs.auth.tokens import TokenIssuer, TokenVerifier

    state = app.state
    state.token_issuer = TokenIssuer(state.engine, issuer=state.issuer_url, registry=state.registry)
    state.token_verifier = TokenVerifier(
        audiences=(state.public_url, state.issuer_url),
        local_issuer=state.token_issuer,
        trusted_issuers=state.grid.servers.trusted_issuers,
        verify_tls=getattr(state, "issuer_tls_verify", True),
    )
    tls_files = getattr(state, "tls_files", None)
    if tls_files is not None:
        from junodcs.auth.proxy import ProxyValidator

        state.x509_validator = ProxyValidator(
            ca_dir=tls_files.ca_dir, vomsdir=tls_files.vomsdir, vo=state.grid.vo
        )
