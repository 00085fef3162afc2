"""The rules of the token service: grants, refresh-token rotation, revocation, clients, proxy login.

No FastAPI here: the router parses HTTP and renders answers, this module decides. OAuth failures are
`OAuthError`s carrying the RFC 6749 error code (`invalid_client`, `invalid_grant`, `invalid_scope`...)
and the HTTP status the RFC prescribes, because OAuth clients (IAM tooling, oidc-agent, gfal2's token
helpers) match on those, not on our problem codes.

Rules in short:

* client_credentials: a registered, enabled client with the right secret gets an access token for its
  owner in its group; the scopes are the client's allowed scopes, cut down to what the scope policy
  allows the owner in that group today (registry changes take effect at once). No refresh token.
* refresh_token: rotation with reuse detection (see `auth.db`); the new tokens carry the stored
  scopes, again cut down to the current policy; a user who left the group gets `invalid_grant`.
* token exchange (RFC 8693): the subject token must be one of ours; the new token may have fewer
  scopes and another audience, never more scopes, and never outlives the subject token.
* login (X509/VOMS): the group is the one the proxy's FQANs map to, or a group the user asks for and
  belongs to; returns an access and a refresh token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from junodcs.auth import db
from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.registry import Registry
from junodcs.auth.scope_policy import ScopeRefused, narrow, parse_scope_param, policy_scopes
from junodcs.auth.tokens import TokenIssuer, TokenVerifier
from junodcs.core.errors import Conflict, DCSError, Forbidden, InvalidInput, NotFound

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_TYPES = (GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE)
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_REFRESH = "urn:ietf:params:oauth:token-type:refresh_token"


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` is the registered code, `status` 400 or 401."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


# -- client secrets -----------------------------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_secret(secret: str) -> str:
    """scrypt hash in a self-describing string, so parameters can be raised later without a migration."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_secret(secret: str, stored: str) -> bool:
    """Constant-time comparison against a `hash_secret` string; False for any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None
    issued_token_type: str | None = None
    extra: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        if self.issued_token_type is not None:
            body["issued_token_type"] = self.issued_token_type
        if self.extra:
            body.update(self.extra)
        return body


def _now(issuer: TokenIssuer) -> datetime:
    return datetime.fromtimestamp(issuer.clock(), UTC)


class TokenService:
    """Grants and client management on top of one issuer, verifier, registry and database."""

    def __init__(self, engine: Engine, issuer: TokenIssuer, verifier: TokenVerifier, registry: Registry) -> None:
        self.engine = engine
        self.issuer = issuer
        self.verifier = verifier
        self.registry = registry
        self.vo = registry.vo

    # -- helpers -----------------------------------------------------------------------------------

    def allowed_scopes(self, username: str, group: str) -> tuple[str, ...]:
        membership = self.registry.membership(username, group)
        return policy_scopes(self.vo, username, membership.properties)

    def _access(
        self,
        username: str,
        group: str,
        scopes: tuple[str, ...],
        audience: tuple[str, ...] | None,
        client_id: str | None = None,
        not_after: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        return self.issuer.issue_access_token(
            username=username,
            group=group,
            scopes=scopes,
            audience=audience or None,
            client_id=client_id,
            not_after=not_after,
        )

    def _response(self, token: str, claims: dict[str, Any], **kwargs: Any) -> TokenResponse:
        return TokenResponse(
            access_token=token,
            expires_in=max(0, int(claims["exp"] - self.issuer.clock())),
            scope=claims["scope"],
            **kwargs,
        )

    def _new_refresh_token(
        self,
        conn: Any,
        *,
        family_id: str,
        username: str,
        group: str,
        client_id: str | None,
        scopes: tuple[str, ...],
        audience: tuple[str, ...],
    ) -> str:
        token = secrets.token_urlsafe(48)
        now = _now(self.issuer)
        db.insert_refresh_token(
            conn,
            token_hash=refresh_token_hash(token),
            family_id=family_id,
            username=username,
            group=group,
            client_id=client_id,
            scopes=scopes,
            audience=audience,
            issued_at=now,
            expires_at=now + timedelta(seconds=self.issuer.lifetimes.refresh),
        )
        return token

    def authenticate_client(self, client_id: str | None, secret: str | None, *, basic: bool) -> db.ClientRow:
        status = 401
        if not client_id or secret is None:
            raise OAuthError("invalid_client", "client authentication required (client_id and client_secret)", status)
        with self.engine.connect() as conn:
            client = db.get_client(conn, client_id)
        # Hash even for an unknown client, so response time does not reveal which client ids exist.
        valid = check_secret(secret, client.secret_hash if client else hash_secret("x"))
        if client is None or not valid:
            raise OAuthError("invalid_client", "unknown client or wrong secret", status)
        if client.disabled:
            raise OAuthError("invalid_client", f"client {client_id} is disabled", status)
        return client

    # -- grants ------------------------------------------------------------------------------------

    def client_credentials(
        self,
        client_id: str | None,
        secret: str | None,
        scope: str | None,
        audience: tuple[str, ...] = (),
        *,
        basic: bool = False,
    ) -> TokenResponse:
        client = self.authenticate_client(client_id, secret, basic=basic)
        try:
            allowed = self.allowed_scopes(client.owner, client.group)
        except DCSError as exc:
            raise OAuthError("unauthorized_client", f"client {client.client_id}: {exc.detail}") from None
        # The client may use its registered scopes as far as the owner's policy still allows them.
        usable = tuple(s for s in client.scopes if _covered(s, allowed))
        try:
            scopes = narrow(parse_scope_param(scope), usable, reason="scopes not allowed for this client")
        except ScopeRefused as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if not scopes:
            raise OAuthError("invalid_scope", "the scope policy leaves this client no scope")
        token, claims = self._access(client.owner, client.group, scopes, audience, client_id=client.client_id)
        return self._response(token, claims)

    def refresh(
        self,
        refresh_token: str | None,
        scope: str | None,
        client_id: str | None = None,
        secret: str | None = None,
        *,
        basic: bool = False,
    ) -> TokenResponse:
        if not refresh_token:
            raise OAuthError("invalid_request", "refresh_token is required")
        token_hash = refresh_token_hash(refresh_token)
        now = _now(self.issuer)
        reused = False
        with self.engine.begin() as conn:
            row = db.get_refresh_token(conn, token_hash)
            if row is None:
                raise OAuthError("invalid_grant", "unknown refresh token")
            if row.client_id is not None:
                client = self.authenticate_client(client_id, secret, basic=basic)
                if client.client_id != row.client_id:
                    raise OAuthError("invalid_grant", "this refresh token was issued to another client")
            if row.revoked_at is not None:
                raise OAuthError("invalid_grant", "the refresh token was revoked; log in again")
            if row.expires_at <= now:
                raise OAuthError("invalid_grant", "the refresh token expired; log in again")
            if row.used_at is None:
                # Check the request before consuming the token: a refused request must leave it usable.
                try:
                    allowed = self.allowed_scopes(row.username, row.group)
                except DCSError as exc:
                    raise OAuthError("invalid_grant", exc.detail) from None
                kept = tuple(s for s in row.scopes if _covered(s, allowed))
                if not kept:
                    raise OAuthError("invalid_grant", "the scope policy no longer allows this session's scopes")
                try:
                    scopes = narrow(parse_scope_param(scope), kept, reason="scopes beyond the original grant")
                except ScopeRefused as exc:
                    raise OAuthError("invalid_scope", str(exc)) from None
            if row.used_at is not None or not db.mark_refresh_token_used(conn, token_hash, now):
                db.revoke_family(conn, row.family_id, now)
                reused = True
            else:
                new_refresh = self._new_refresh_token(
                    conn,
                    family_id=row.family_id,
                    username=row.username,
                    group=row.group,
                    client_id=row.client_id,
                    scopes=kept,
                    audience=row.audience,
                )
        if reused:
            raise OAuthError(
                "invalid_grant",
                "refresh token reuse detected: this login session has been revoked; log in again",
            )
        token, claims = self._access(row.username, row.group, scopes, row.audience, client_id=row.client_id)
        return self._response(token, claims, refresh_token=new_refresh)

    def exchange(
        self,
        subject_token: str | None,
        subject_token_type: str | None,
        scope: str | None,
        audience: tuple[str, ...] = (),
        requested_token_type: str | None = None,
    ) -> TokenResponse:
        if not subject_token:
            raise OAuthError("invalid_request", "subject_token is required")
        if subject_token_type not in (TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT):
            raise OAuthError("invalid_request", f"subject_token_type must be {TOKEN_TYPE_ACCESS}")
        if requested_token_type not in (None, "", TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT):
            raise OAuthError("invalid_request", f"only {TOKEN_TYPE_ACCESS} can be requested")
        try:
            claims = self.verifier.verify(subject_token)
        except DCSError as exc:
            raise OAuthError("invalid_grant", f"subject token rejected ({exc.code}): {exc.detail}") from None
        if claims.get("iss") != self.issuer.issuer:
            raise OAuthError("invalid_grant", "only tokens of this issuer can be exchanged here")
        username = self.registry.username_for_subject(str(claims["sub"]))
        group = claims.get("dcs.group")
        if username is None or not isinstance(group, str):
            raise OAuthError("invalid_grant", "the subject token does not name a registered user and group")
        try:
            allowed = self.allowed_scopes(username, group)
        except DCSError as exc:
            raise OAuthError("invalid_grant", exc.detail) from None
        granted = tuple(s for s in str(claims.get("scope", "")).split() if _covered(s, allowed))
        try:
            scopes = narrow(parse_scope_param(scope), granted, reason="scopes wider than the subject token's")
        except ScopeRefused as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        if not scopes:
            raise OAuthError("invalid_scope", "the subject token carries no scope that can be delegated")
        if audience:
            new_audience: tuple[str, ...] = audience
        else:
            aud = claims.get("aud")
            new_audience = (aud,) if isinstance(aud, str) else tuple(aud or ())
        token, new_claims = self._access(
            username,
            group,
            scopes,
            new_audience,
            client_id=claims.get("client_id"),
            not_after=float(claims["exp"]),
        )
        return self._response(token, new_claims, issued_token_type=TOKEN_TYPE_ACCESS)

    def revoke(self, token: str | None, hint: str | None = None) -> None:
        """RFC 7009: revoke a refresh token (and its whole family). Unknown tokens and access tokens
        (self-contained JWTs that simply expire) are accepted silently, as the RFC requires."""
        if not token:
            raise OAuthError("invalid_request", "token is required")
        if hint not in (None, "", "refresh_token", "access_token"):
            raise OAuthError("unsupported_token_type", f"cannot revoke tokens of type {hint!r}")
        now = _now(self.issuer)
        with self.engine.begin() as conn:
            row = db.get_refresh_token(conn, refresh_token_hash(token))
            if row is not None:
                db.revoke_family(conn, row.family_id, now)

    # -- login with a proxy ----------------------------------------------------------------------

    def login(
        self,
        identity: Identity,
        group: str | None = None,
        scope: str | None = None,
        audience: tuple[str, ...] = (),
    ) -> TokenResponse:
        if identity.method is not AuthMethod.X509 or identity.username is None:
            raise Forbidden("login needs an X509 certificate or VOMS proxy of a registered user")
        chosen = group or identity.group
        if chosen is None:
            raise Forbidden("no group: the proxy's FQANs map to no group and none was asked for")
        allowed = self.allowed_scopes(identity.username, chosen)
        try:
            scopes = narrow(parse_scope_param(scope), allowed, reason="scopes beyond the scope policy")
        except ScopeRefused as exc:
            raise InvalidInput(str(exc), code="invalid-scope") from None
        if not scopes:
            raise Forbidden(f"the scope policy gives group {chosen} no scope", code="no-scope")
        with self.engine.begin() as conn:
            refresh = self._new_refresh_token(
                conn,
                family_id=str(uuid.uuid4()),
                username=identity.username,
                group=chosen,
                client_id=None,
                scopes=scopes,
                audience=audience,
            )
        token, claims = self._access(identity.username, chosen, scopes, audience)
        return self._response(
            token,
            claims,
            refresh_token=refresh,
            extra={"username": identity.username, "group": chosen},
        )

    # -- OAuth clients -----------------------------------------------------------------------------

    def create_client(
        self, *, owner: str, group: str, scopes: list[str] | None, description: str = ""
    ) -> tuple[db.ClientRow, str]:
        """Register a client for `owner` acting in `group`; returns it and its secret (shown once)."""
        allowed = self.allowed_scopes(owner, group)
        try:
            chosen = narrow(scopes or None, allowed, reason="scopes beyond the owner's scope policy")
        except ScopeRefused as exc:
            raise InvalidInput(str(exc), code="invalid-scope") from None
        if not chosen:
            raise InvalidInput(f"the scope policy gives {owner} in {group} no scope", code="invalid-scope")
        if len(description) > 255:
            raise InvalidInput("description: at most 255 characters")
        client_id = f"{self.vo}-{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        now = _now(self.issuer)
        with self.engine.begin() as conn:
            if db.get_client(conn, client_id) is not None:  # 64 random bits: practically never
                raise Conflict(f"client {client_id} exists; try again")
            db.insert_client(
                conn,
                client_id=client_id,
                secret_hash=hash_secret(secret),
                owner=owner,
                group=group,
                scopes=chosen,
                description=description,
                now=now,
            )
            row = db.get_client(conn, client_id)
        assert row is not None
        return row, secret

    def list_clients(self, owner: str | None = None) -> list[db.ClientRow]:
        with self.engine.connect() as conn:
            return db.list_clients(conn, owner)

    def delete_client(self, client_id: str) -> None:
        with self.engine.begin() as conn:
            if not db.delete_client(conn, client_id):
                raise NotFound(f"no OAuth client {client_id!r}", code="unknown-client")

    # -- registry views ----------------------------------------------------------------------------

    def group_views(self) -> list[dict[str, Any]]:
        groups = self.registry.grid.registry.groups
        return [
            {
                "name": name,
                "properties": [p.value for p in group.properties],
                "voms_fqan": group.voms_fqan,
                "default": name == self.registry.grid.registry.default_group,
                "wlcg_groups": self.registry.wlcg_groups(name),
            }
            for name, group in groups.items()
        ]

    def user_view(self, username: str) -> dict[str, Any]:
        from junodcs.auth.registry import subject_for

        user = self.registry.user(username)
        return {
            "username": username,
            "dn": user.dn,
            "email": user.email,
            "subject": user.subject or subject_for(self.vo, username),
            "groups": list(user.groups),
            "default_group": self.registry.default_group(username),
            "local_accounts": dict(user.local_accounts),
        }

    def user_views(self) -> list[dict[str, Any]]:
        return [self.user_view(name) for name in self.registry.users()]


def _covered(scope: str, allowed: tuple[str, ...]) -> bool:
    """True when `scope` is one of `allowed` or narrower than one of them."""
    try:
        return narrow([scope], allowed, reason="") == (scope,)
    except ScopeRefused:
        return False
