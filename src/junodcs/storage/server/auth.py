"""Who may do what on the SE: every operation is an `Activity` on a path, and is checked (deny by default).

Credentials, in the order they are looked for: `Authorization: Bearer <t>` or `?authz=<t>`, where `<t>` is
a macaroon this SE issued or a JWT checked by the `verify_token` hook (WLCG profile or SciTokens); then,
with TLS on and X.509 configured, the client certificate or RFC 3820 proxy of the connection (validated
by `auth.proxy.ProxyValidator`, DN + FQANs mapped to a registry user and group, rights by
`grid_identity_allows`); nothing at all is the anonymous caller, who may read only when the SE was
started with anonymous read.
A bad credential is 401 (with `WWW-Authenticate: Bearer`), a good one without the right is 403.

JWT scopes are WLCG capabilities on paths relative to the SE's VO prefix (`storage.read:/raw` allows
`/juno/raw/...` when the prefix is `/juno`); the path-prefix rules are those of `auth.scopes`. SciTokens
`read:` and `write:` are mapped to `storage.read` and `storage.create`+`storage.modify`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from junodcs.auth.scope_policy import user_area
from junodcs.auth.scopes import normalize_scope_path, path_within, scopes_allow, split_scope
from junodcs.core.errors import Forbidden, Unauthenticated
from junodcs.core.gridconfig import Property
from junodcs.storage.server.config import TokenVerifyHook
from junodcs.storage.server.macaroons import PREFIX as MACAROON_PREFIX
from junodcs.storage.server.macaroons import MacaroonAuthority, MacaroonGrant


class Activity(StrEnum):
    """dCache's macaroon activity names, which gfal2 asks for (`activity:DOWNLOAD,LIST`)."""

    DOWNLOAD = "DOWNLOAD"
    UPLOAD = "UPLOAD"
    DELETE = "DELETE"
    MANAGE = "MANAGE"
    LIST = "LIST"
    READ_METADATA = "READ_METADATA"
    UPDATE_METADATA = "UPDATE_METADATA"
    """Tape operations: stage (bring online), cancel, release (WLCG scope `storage.stage`)."""


_READ_ONLY = frozenset({Activity.DOWNLOAD, Activity.LIST, Activity.READ_METADATA})


def wlcg_scopes_for(activity: Activity, *, creating: bool) -> tuple[str, ...]:
    """WLCG capabilities any of which allows `activity` (`creating`: a new name appears, nothing replaced)."""
    match activity:
        case Activity.DOWNLOAD | Activity.LIST:
            return ("storage.read", "storage.stage")  # WLCG profile: stage = read, possibly from tape
        case Activity.UPDATE_METADATA:
            return ("storage.stage",)
        case Activity.READ_METADATA:
            return ("storage.read", "storage.create", "storage.modify", "storage.stage")
        case Activity.UPLOAD | Activity.MANAGE:
            return ("storage.create", "storage.modify") if creating else ("storage.modify",)
        case Activity.DELETE:
            return ("storage.modify",)
    return ()


class Principal(Protocol):
    subject: str | None
    method: str

    def allows(self, activity: Activity, path: str, *, creating: bool = False) -> bool: ...


@dataclass(frozen=True, slots=True)
class AnonymousPrincipal:
    read: bool
    subject: str | None = None
    method: str = "anonymous"

    def allows(self, activity: Activity, path: str, *, creating: bool = False) -> bool:
        return self.read and activity in _READ_ONLY


@dataclass(frozen=True, slots=True)
class MacaroonPrincipal:
    grant: MacaroonGrant
    method: str = "macaroon"

    @property
    def subject(self) -> str | None:
        return self.grant.subject

    def allows(self, activity: Activity, path: str, *, creating: bool = False) -> bool:
        if self.grant.activities is not None and activity.value not in self.grant.activities:
            # like a WLCG scope, any activity allows stat (gfal2 asks LIST,DOWNLOAD[,MANAGE,UPLOAD,DELETE]
            # and then sends PROPFIND with the macaroon)
            if activity is not Activity.READ_METADATA or not self.grant.activities:
                return False
        return all(path_within(p.rstrip("/") or "/", path) for p in self.grant.paths)


@dataclass(frozen=True, slots=True)
class TokenPrincipal:
    scopes: tuple[str, ...]
    vo_prefix: str
    subject: str | None = None
    method: str = "token"

    def relative(self, path: str) -> str | None:
        prefix = self.vo_prefix.rstrip("/")
        if not prefix:
            return path
        if path == prefix:
            return "/"
        if path.startswith(prefix + "/"):
            return path[len(prefix):]
        return None

    def allows(self, activity: Activity, path: str, *, creating: bool = False) -> bool:
        relative = self.relative(path)
        if relative is None:
            return False
        return any(scopes_allow(self.scopes, scope, relative) for scope in wlcg_scopes_for(activity, creating=creating))


_WRITE = frozenset({Activity.UPLOAD, Activity.DELETE, Activity.MANAGE, Activity.UPDATE_METADATA})
_ADMIN = frozenset({Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR})


def grid_identity_allows(*, vo: str, username: str, properties: frozenset[Property], activity: Activity,
                         path: str, creating: bool = False) -> bool:
    """Path rule for a certificate / VOMS proxy identity (a registry user in a group with `properties`):

    - `FileCatalogAdministrator` or `ServiceAdministrator`: everything, everywhere on the SE;
    - every VO member (any property but `Pilot` alone) reads (DOWNLOAD, LIST, READ_METADATA) under `/<vo>`;
    - every member writes (UPLOAD, DELETE, MANAGE, and UPDATE_METADATA = stage/release on tape) under
      their own area `/<vo>/user/<initial>/<username>`;
    - `ProductionManagement` also writes under `/<vo>/production`;
    - a writer may create (MKCOL, `creating`) the missing directories leading to its write area
      (`gfal-mkdir -p` of one's own area), nothing else there.

    It is the token issuer's scope policy (`auth.scope_policy.policy_scopes`) in path form, so a user has
    the same rights on the SE with a proxy as with a token of the central server.
    """
    if properties & _ADMIN:
        return True
    if not properties - {Property.PILOT}:
        return False
    if activity in _READ_ONLY:
        return path_within(f"/{vo}", path)
    if activity not in _WRITE:
        return False
    areas = [user_area(vo, username)]
    if Property.PRODUCTION_MANAGEMENT in properties:
        areas.append(f"/{vo}/production")
    if any(path_within(area, path) for area in areas):
        return True
    return creating and activity is Activity.MANAGE and any(path_within(path, area) for area in areas)


@dataclass(frozen=True, slots=True)
class X509Principal:
    dn: str
    username: str
    group: str
    properties: frozenset[Property]
    vo: str
    fqans: tuple[str, ...] = ()
    method: str = "x509"

    @property
    def subject(self) -> str | None:
        return self.dn

    def allows(self, activity: Activity, path: str, *, creating: bool = False) -> bool:
        return grid_identity_allows(vo=self.vo, username=self.username, properties=self.properties,
                                    activity=activity, path=path, creating=creating)


class X509Authenticator:
    """Client chain (PEM, leaf first) -> `X509Principal`, or `Unauthenticated`/`Forbidden` with the reason."""

    def __init__(self, ca_dir: Any, vomsdir: Any, registry: Any) -> None:
        from junodcs.auth.proxy import ProxyValidator

        self.registry = registry
        self.validator = ProxyValidator(ca_dir, vomsdir, registry.vo)

    def principal(self, chain: list[str]) -> X509Principal:
        credential = self.validator.validate(chain)
        username = self.registry.require_known(self.registry.username_for_dn(credential.dn), credential.dn)
        membership = self.registry.membership_for_fqans(username, tuple(credential.fqans))
        return X509Principal(dn=credential.dn, username=username, group=membership.group,
                             properties=frozenset(membership.properties), vo=self.registry.vo,
                             fqans=tuple(credential.fqans))


def token_scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    """`scope` claim -> WLCG storage capabilities (SciTokens `read:`/`write:` translated)."""
    raw = claims.get("scope", "")
    items = raw.split() if isinstance(raw, str) else [str(s) for s in raw or ()]
    scopes: list[str] = []
    for item in items:
        name, sep, path = item.partition(":")
        if name == "read" and sep:
            scopes.append(f"storage.read:{path or '/'}")
        elif name == "write" and sep:
            scopes += [f"storage.create:{path or '/'}", f"storage.modify:{path or '/'}"]
        elif name.startswith("storage."):
            scopes.append(item)
    return tuple(scopes)


def _within(area: str, scope_path: str) -> bool:
    try:
        return path_within(area, normalize_scope_path(scope_path))
    except ValueError:
        return False


class Authorizer:
    def __init__(self, *, vo_prefix: str, anonymous_read: bool, verify_token: TokenVerifyHook | None,
                 macaroons: MacaroonAuthority | None, x509: X509Authenticator | None = None) -> None:
        self.vo_prefix = vo_prefix
        self.x509 = x509
        self.anonymous = AnonymousPrincipal(read=anonymous_read)
        self.verify_token = verify_token
        self.macaroons = macaroons

    def authenticate(self, authorization: str | None, authz_query: str | None,
                     client_chain: Callable[[], list[str]] | None = None) -> Principal:
        token: str | None = None
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("only 'Authorization: Bearer <token>' is accepted", code="invalid-token")
            token = value.strip()
        elif authz_query:
            token = authz_query.strip()
            if token.lower().startswith("bearer "):
                token = token[7:].strip()
        if not token:
            if self.x509 is not None and client_chain is not None:
                chain = client_chain()
                if chain:
                    return self.x509.principal(chain)
            return self.anonymous
        if token.startswith(MACAROON_PREFIX):
            if self.macaroons is None:
                raise Unauthenticated("this storage element does not accept macaroons", code="invalid-token")
            return MacaroonPrincipal(self.macaroons.verify(token))
        if self.verify_token is None:
            raise Unauthenticated("this storage element accepts no JWT issuer", code="unknown-issuer")
        try:
            claims = self.verify_token(token)
        except Unauthenticated:
            raise
        except Exception as exc:  # a verifier must never turn a bad token into a 500
            raise Unauthenticated(f"invalid token: {exc}", code="invalid-token") from None
        return TokenPrincipal(token_scopes(claims), self.vo_prefix, subject=str(claims.get("sub") or "") or None)

    @property
    def private_area(self) -> str:
        """Job sandboxes (`<vo>/sandbox`, see `wms.sandbox`) belong to the WMS and to each job's owner."""
        return f"{self.vo_prefix.rstrip('/')}/sandbox"

    def _may_enter(self, principal: Principal, activity: Activity, path: str, creating: bool) -> bool:
        """VO-wide rights (a member's `storage.read:/`, a proxy's read-everything rule) stop at the private
        area: inside it only administrators and grants named for paths inside it count (the WMS's own token
        and the per-file tokens it hands to pilots)."""
        if not path_within(self.private_area, path):
            return True
        if isinstance(principal, TokenPrincipal):
            area = principal.relative(self.private_area)
            inside = tuple(s for s in principal.scopes
                           if area and (p := split_scope(s)[1]) and _within(area, p))
            return TokenPrincipal(inside, principal.vo_prefix).allows(activity, path, creating=creating)
        if isinstance(principal, X509Principal):
            return bool(principal.properties & _ADMIN)
        if isinstance(principal, MacaroonPrincipal):
            return all(path_within(self.private_area, p) for p in principal.grant.paths)
        return False

    def require(self, principal: Principal, activity: Activity, path: str, *, creating: bool = False) -> None:
        if principal.allows(activity, path, creating=creating) and self._may_enter(principal, activity, path, creating):
            return
        if principal.method == "anonymous":
            raise Unauthenticated(f"{activity.value} on {path} needs a credential", code="unauthenticated")
        raise Forbidden(f"{principal.method} credential does not allow {activity.value} on {path}",
                        code="forbidden")
