"""HTTP face of the identity system: OpenID discovery, JWKS, the OAuth token and revocation endpoints,
and the `/api/v1/auth` API (whoami, proxy login, registry, OAuth clients, key rotation).

The token endpoint speaks OAuth, not problem+json: form-encoded requests, `{error, error_description}`
answers with the statuses of RFC 6749 §5.2, `Cache-Control: no-store`. The rules are in `auth.logic`.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.logic import (
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE,
    GRANT_TYPES,
    OAuthError,
    TokenService,
)
from junodcs.auth.policies import AccessPolicy, Guard, PublicAccess, requires
from junodcs.auth.scope_policy import META_SCOPES, policy_scopes
from junodcs.core.gridconfig import Property

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class AuthAction(StrEnum):
    WHOAMI = "show who is calling"
    LOGIN = "log in with a certificate or proxy"
    READ_GROUPS = "read the registry groups"
    READ_USERS = "read registry users"
    MANAGE_CLIENTS = "manage OAuth clients"
    ROTATE_KEYS = "rotate the token signing key"


class AuthPolicy(AccessPolicy):
    """Rules of the identity API:

    * whoami: any authenticated caller (even one the registry does not know, so they can see why);
    * login: an X509 certificate or VOMS proxy of a registered user (a token cannot log in again);
    * registry groups: any registered member;
    * registry users: ServiceAdministrator, or a user reading their own entry (`user=` context);
    * OAuth clients and signing-key rotation: ServiceAdministrator, with a certificate or with a token
      that was not narrowed: a delegated token (token exchange, fewer scopes than the group's policy)
      can only do what its scopes say, and no scope grants administration.
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if action is AuthAction.WHOAMI:
            return not identity.is_anonymous
        if not identity.is_known:
            return False
        if action is AuthAction.LOGIN:
            return identity.method is AuthMethod.X509
        if action is AuthAction.READ_GROUPS:
            return True
        if action is AuthAction.READ_USERS:
            if identity.has(Property.SERVICE_ADMINISTRATOR) and _full_power(identity):
                return True
            return context.get("user") is not None and context.get("user") == identity.username
        if action in (AuthAction.MANAGE_CLIENTS, AuthAction.ROTATE_KEYS):
            return identity.has(Property.SERVICE_ADMINISTRATOR) and _full_power(identity)
        return False


def _full_power(identity: Identity) -> bool:
    """A certificate, or a token carrying every scope the policy gives its group (not a delegated one)."""
    if identity.method is AuthMethod.X509:
        return True
    assert identity.username is not None
    wanted = policy_scopes(identity.vo, identity.username, identity.properties)
    return set(wanted) <= set(identity.scopes)


def _service(request: Request) -> TokenService:
    state = request.app.state
    return TokenService(state.engine, state.token_issuer, state.token_verifier, state.registry)


def _oauth_error(exc: OAuthError, basic: bool = False) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="junodcs"' if basic else 'Bearer error="invalid_client"'
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


# -- discovery, keys, token endpoint ------------------------------------------------------------------

well_known_router = APIRouter(tags=["oauth2"])
Public = Annotated[Guard, requires(PublicAccess)]


def _discovery(request: Request) -> dict[str, Any]:
    state = request.app.state
    issuer: str = state.issuer_url
    vo: str = state.grid.vo
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/oauth2/jwks",
        "token_endpoint": f"{issuer}/oauth2/token",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [state.token_issuer.algorithm],
        "token_endpoint_auth_signing_alg_values_supported": [state.token_issuer.algorithm],
        "scopes_supported": sorted(
            {"compute.read", "compute.create", "compute.modify", "compute.cancel",
             f"storage.read:/{vo}", f"storage.create:/{vo}", f"storage.modify:/{vo}", *META_SCOPES}
        ),
        "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "wlcg.ver",
                             "wlcg.groups", "dcs.group", "client_id", "preferred_username"],
        "dcs_login_endpoint": f"{state.public_url}/api/v1/auth/login",
    }


@well_known_router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request, _guard: Public) -> dict[str, Any]:
    """OpenID Connect discovery: how verifiers find our keys (`jwks_uri`) and clients our endpoints."""
    return _discovery(request)


@well_known_router.get("/.well-known/oauth-authorization-server")
def oauth_authorization_server(request: Request, _guard: Public) -> dict[str, Any]:
    """RFC 8414 metadata (the same document), for OAuth clients that look here first."""
    return _discovery(request)


@well_known_router.get("/oauth2/jwks")
def jwks(request: Request, _guard: Public) -> Response:
    """Public signing keys, including retired keys whose tokens may still be valid."""
    import json

    body = json.dumps(request.app.state.token_issuer.jwks())
    return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})


def _client_auth(request: Request, form: dict[str, str]) -> tuple[str | None, str | None, bool]:
    """Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts) or from the form."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic authorization header", 401) from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise OAuthError("invalid_client", "malformed Basic authorization header", 401)
        if form.get("client_secret"):
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        return unquote_plus(client_id), unquote_plus(secret), True
    return form.get("client_id") or None, form.get("client_secret"), False


async def _form(request: Request) -> tuple[dict[str, str], list[str]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = await request.form()
    audiences = [str(v) for v in form.getlist("audience") if str(v).strip()]
    values: dict[str, str] = {}
    for key in form.keys():
        items = form.getlist(key)
        if key != "audience" and len(items) > 1:
            raise OAuthError("invalid_request", f"parameter {key!r} given more than once")
        values[key] = str(items[0])
    return values, audiences


@well_known_router.post("/oauth2/token")
async def token(request: Request, _guard: Public) -> JSONResponse:
    """OAuth 2.0 token endpoint: client_credentials, refresh_token and RFC 8693 token exchange."""
    basic = False
    try:
        form, audiences = await _form(request)
        client_id, secret, basic = _client_auth(request, form)
        grant = form.get("grant_type")
        service = _service(request)
        scope = form.get("scope")
        if grant == GRANT_CLIENT_CREDENTIALS:
            result = await run_in_threadpool(
                service.client_credentials, client_id, secret, scope, tuple(audiences), basic=basic
            )
        elif grant == GRANT_REFRESH_TOKEN:
            result = await run_in_threadpool(
                service.refresh, form.get("refresh_token"), scope, client_id, secret, basic=basic
            )
        elif grant == GRANT_TOKEN_EXCHANGE:
            result = await run_in_threadpool(
                service.exchange,
                form.get("subject_token"),
                form.get("subject_token_type"),
                scope,
                tuple(audiences),
                form.get("requested_token_type"),
            )
        elif not grant:
            raise OAuthError("invalid_request", "grant_type is required")
        else:
            raise OAuthError("unsupported_grant_type", f"grant type {grant!r} is not supported here")
    except OAuthError as exc:
        return _oauth_error(exc, basic)
    return JSONResponse(result.to_json(), headers=NO_STORE)


@well_known_router.post("/oauth2/revoke")
async def revoke(request: Request, _guard: Public) -> Response:
    """RFC 7009 revocation: a refresh token (and its rotation family) stops working at once."""
    try:
        form, _ = await _form(request)
        client_id, secret, basic = _client_auth(request, form)
        service = _service(request)
        if client_id is not None:
            await run_in_threadpool(service.authenticate_client, client_id, secret, basic=basic)
        await run_in_threadpool(service.revoke, form.get("token"), form.get("token_type_hint"))
    except OAuthError as exc:
        return _oauth_error(exc)
    return Response(status_code=200, headers=NO_STORE)


# -- /api/v1/auth -------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

WhoamiAccess = Annotated[Guard, requires(AuthPolicy, AuthAction.WHOAMI)]
LoginAccess = Annotated[Guard, requires(AuthPolicy, AuthAction.LOGIN)]
GroupsAccess = Annotated[Guard, requires(AuthPolicy, AuthAction.READ_GROUPS)]
UsersAccess = Annotated[Guard, requires(AuthPolicy)]
ClientsAccess = Annotated[Guard, requires(AuthPolicy, AuthAction.MANAGE_CLIENTS)]
KeysAccess = Annotated[Guard, requires(AuthPolicy, AuthAction.ROTATE_KEYS)]


class LoginRequest(BaseModel):
    group: str | None = Field(default=None, description="group to act in; default: the one the FQANs map to")
    scope: str | None = Field(default=None, description="space-separated scopes, a subset of the policy")
    audience: list[str] = Field(default_factory=list, description="audiences of the access tokens")


class ClientRequest(BaseModel):
    owner: str
    group: str
    scopes: list[str] = Field(default_factory=list, description="allowed scopes; default: the owner's policy")
    description: str = Field(default="", max_length=255)


@router.get("/whoami")
def whoami(guard: WhoamiAccess) -> dict[str, Any]:
    """The caller as the server sees them: user, group, properties, scopes, how they authenticated."""
    return guard.identity.describe()


@router.post("/login")
def login(request: Request, guard: LoginAccess, body: LoginRequest | None = None) -> JSONResponse:
    """Exchange an X509 certificate or VOMS proxy (TLS client authentication) for access + refresh tokens."""
    body = body or LoginRequest()
    result = _service(request).login(guard.identity, body.group, body.scope, tuple(body.audience))
    return JSONResponse(result.to_json(), headers=NO_STORE)


@router.get("/registry/groups")
def registry_groups(request: Request, _guard: GroupsAccess) -> list[dict[str, Any]]:
    return _service(request).group_views()


@router.get("/registry/users")
def registry_users(request: Request, guard: UsersAccess) -> list[dict[str, Any]]:
    """All users for a ServiceAdministrator; other members see only their own entry."""
    service = _service(request)
    if guard.allows(AuthAction.READ_USERS):
        return service.user_views()
    guard.check(AuthAction.READ_USERS, user=guard.identity.username)
    assert guard.identity.username is not None
    return [service.user_view(guard.identity.username)]


@router.get("/registry/users/{username}")
def registry_user(request: Request, username: str, guard: UsersAccess) -> dict[str, Any]:
    guard.check(AuthAction.READ_USERS, user=username)
    return _service(request).user_view(username)


@router.post("/clients", status_code=201)
def create_client(request: Request, body: ClientRequest, _guard: ClientsAccess) -> JSONResponse:
    """Register an OAuth client (a robot acting for `owner` in `group`); the secret is shown only here."""
    row, secret = _service(request).create_client(
        owner=body.owner, group=body.group, scopes=body.scopes, description=body.description
    )
    return JSONResponse({**row.public_view(), "client_secret": secret}, status_code=201, headers=NO_STORE)


@router.get("/clients")
def list_clients(request: Request, _guard: ClientsAccess) -> list[dict[str, Any]]:
    return [c.public_view() for c in _service(request).list_clients()]


@router.delete("/clients/{client_id}", status_code=204)
def delete_client(request: Request, client_id: str, _guard: ClientsAccess) -> Response:
    _service(request).delete_client(client_id)
    return Response(status_code=204)


@router.post("/keys/rotate")
def rotate_keys(request: Request, _guard: KeysAccess) -> dict[str, Any]:
    """Start signing with a new key; the old ones stay in the JWKS until their tokens have expired."""
    state = request.app.state
    kid = state.token_issuer.rotate()
    state.token_verifier.invalidate_local_keys()
    return {"kid": kid, "published": [k["kid"] for k in state.token_issuer.jwks()["keys"]]}
