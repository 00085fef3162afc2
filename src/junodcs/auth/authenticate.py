"""Turn a request's credentials into an `Identity`.

Order: a bearer token (`Authorization: Bearer ...`) wins; otherwise the TLS client certificate chain
(an X509 certificate or an RFC 3820 proxy with VOMS attributes) that the TLS layer verified and put in
the ASGI scope (`scope["extensions"]["tls"]["client_cert_chain"]`, see `server.tls`); otherwise the
caller is anonymous and policies decide (they deny almost everything).

Invalid credentials are a 401 with the reason, never silently downgraded to anonymous: a user whose
token expired must be told so, not be shown an empty listing.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import Request

from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.registry import Registry
from junodcs.core.errors import Unauthenticated

MAX_TOKEN_LENGTH = 16 * 1024


class TokenVerifierLike(Protocol):
    def verify(self, token: str) -> dict[str, Any]: ...


class X509CredentialLike(Protocol):
    dn: str
    fqans: tuple[str, ...]
    vo: str | None


class X509ValidatorLike(Protocol):
    def validate(self, chain_pem: list[str]) -> X509CredentialLike: ...


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'", code="bad-authorization-header")
    token = value.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("bearer token too long", code="invalid-token")
    return token


def client_certificate_chain(request: Request) -> list[str] | None:
    tls = request.scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or []
    return list(chain) or None


def identity_from_claims(claims: dict[str, Any], registry: Registry, local_issuer: str | None) -> Identity:
    subject = str(claims["sub"])
    scopes = tuple(str(claims.get("scope", "")).split())
    username = registry.username_for_subject(subject)
    group: str | None = None
    if username is not None:
        asked = claims.get("dcs.group") if claims.get("iss") == local_issuer else None
        membership = registry.membership(username, asked)
        group = membership.group
        properties = membership.properties
    else:
        properties = frozenset()
    return Identity(
        method=AuthMethod.TOKEN,
        vo=registry.vo,
        subject=subject,
        username=username,
        group=group,
        properties=properties,
        scopes=scopes,
        issuer=str(claims.get("iss")),
        token_id=str(claims.get("jti")) if claims.get("jti") else None,
        client_id=str(claims["client_id"]) if claims.get("client_id") else None,
    )


def identity_from_x509(credential: X509CredentialLike, registry: Registry) -> Identity:
    if credential.vo is not None and credential.vo != registry.vo:
        raise Unauthenticated(f"VO {credential.vo!r} is not served here (this is VO {registry.vo!r})", code="wrong-vo")
    username = registry.username_for_dn(credential.dn)
    if username is None:
        raise Unauthenticated(f"{credential.dn} is not a registered member of VO {registry.vo}", code="unknown-user")
    membership = registry.membership_for_fqans(username, tuple(credential.fqans))
    return Identity(
        method=AuthMethod.X509,
        vo=registry.vo,
        subject=credential.dn,
        username=username,
        group=membership.group,
        properties=membership.properties,
        fqans=tuple(credential.fqans),
        dn=credential.dn,
    )


async def authenticate_request(request: Request) -> Identity:
    state = request.app.state
    registry: Registry = state.registry
    token = bearer_token(request)
    if token is not None:
        claims = state.token_verifier.verify(token)
        return identity_from_claims(claims, registry, state.issuer_url)
    chain = client_certificate_chain(request)
    if chain is not None:
        validator: X509ValidatorLike | None = getattr(state, "x509_validator", None)
        if validator is None:
            raise Unauthenticated("this server does not accept certificates", code="x509-disabled")
        return identity_from_x509(validator.validate(chain), registry)
    return Identity.anonymous(registry.vo)
