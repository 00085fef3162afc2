"""Who is calling: the one identity model every access policy decides on.

A caller authenticates with a bearer token (our issuer or a trusted one) or, over TLS, with a client
certificate or RFC 3820 proxy carrying VOMS attributes. Whatever the method, the registry turns it into
one `Identity`: the registry user, the group in effect, that group's properties and, for tokens, the
capability scopes the token carries. Policies look only at this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from junodcs.core.gridconfig import Property


class AuthMethod(StrEnum):
    TOKEN = "token"
    X509 = "x509"
    ANONYMOUS = "anonymous"


def vo_relative_path(vo: str, path: str) -> str | None:
    """`/juno/raw/x` -> `/raw/x`, `/juno` -> `/`; None for a path outside `/<vo>`."""
    prefix = f"/{vo}"
    if path == prefix or path == prefix + "/":
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix):]
    return None


@dataclass(frozen=True, slots=True)
class Identity:
    method: AuthMethod
    vo: str
    subject: str | None = None
    """Token `sub` or certificate DN of the end-entity certificate."""
    username: str | None = None
    """Registry user name; None for an identity the registry does not know (denied by policies)."""
    group: str | None = None
    properties: frozenset[Property] = frozenset()
    scopes: tuple[str, ...] = ()
    """Capability scopes of a token (`storage.read:/juno`, `compute.create`); empty for X509."""
    fqans: tuple[str, ...] = ()
    dn: str | None = None
    issuer: str | None = None
    token_id: str | None = None
    client_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def anonymous(cls, vo: str) -> Identity:
        return cls(method=AuthMethod.ANONYMOUS, vo=vo)

    @property
    def is_anonymous(self) -> bool:
        return self.method is AuthMethod.ANONYMOUS

    @property
    def is_known(self) -> bool:
        return self.username is not None and not self.is_anonymous

    def has(self, *properties: Property) -> bool:
        """True when the identity has at least one of `properties`."""
        return any(p in self.properties for p in properties)

    @property
    def has_capabilities(self) -> bool:
        """WLCG rule: a token that carries capability scopes is judged by them, not only by its groups."""
        from junodcs.auth.scopes import is_capability

        return any(is_capability(s) for s in self.scopes)

    def allows_scope(self, scope: str, path: str | None = None) -> bool:
        """True when a token-based identity carries `scope` (for `path`), or the identity has no capabilities.

        X509 identities and tokens without capability scopes are judged by their properties alone; a
        narrowed token (for example from a token exchange) can only do what its scopes say. `path` is a
        namespace path (`/juno/user/a/alice/f`); storage scopes name paths relative to the VO prefix
        (`storage.create:/user/a/alice`), so the prefix is removed before matching, and a path outside
        the VO's namespace is never allowed by a scope.
        """
        if not self.has_capabilities:
            return True
        from junodcs.auth.scopes import scopes_allow

        if path is not None:
            relative = vo_relative_path(self.vo, path)
            if relative is None:
                return False
            path = relative
        return scopes_allow(self.scopes, scope, path)

    def describe(self) -> dict[str, object]:
        return {
            "method": self.method.value,
            "vo": self.vo,
            "subject": self.subject,
            "username": self.username,
            "group": self.group,
            "properties": sorted(p.value for p in self.properties),
            "scopes": list(self.scopes),
            "fqans": list(self.fqans),
            "dn": self.dn,
            "issuer": self.issuer,
        }
