"""Scope policy: which capability scopes a registry group may hold in a token.

Like an IAM scope policy, this bounds every token we issue: a login, a client-credentials grant or a
token exchange may ask for less than the policy allows, never more. The rules, by group property:

* every member (any property other than Pilot alone): `compute.read compute.create compute.modify
  compute.cancel`, `storage.read:/` and write access to the user's own area
  `storage.create|modify:/user/<initial>/<username>`;
* `ProductionManagement`: also `storage.modify:/production` and `storage.stage:/` (productions read
  raw data back from tape);
* `FileCatalogAdministrator` or `ServiceAdministrator`: `storage.modify:/` and `storage.stage:/` (the
  whole namespace);
* `Pilot` alone: `compute.read compute.modify` (a pilot fetches and updates jobs, nothing more).

Storage scope paths are relative to the VO's namespace (`/juno`), as the WLCG profile says: the same
token works at a dCache, an XRootD or our SE, each of which maps `/` to its own VO prefix, and at the
catalog, which maps `/juno/...` LFNs the same way (see `Identity.allows_scope`).

Policies decide on properties, never on group names, so an operator can add groups in grid.yaml.
"""

from __future__ import annotations

from collections.abc import Iterable

from junodcs.auth.scopes import is_capability, scope_is_narrower
from junodcs.core.gridconfig import Property

#: Profile-selection scopes a client may send (`wlcg`, `offline_access`...): accepted, not put in tokens.
META_SCOPES = frozenset({"openid", "profile", "offline_access", "wlcg", "wlcg:1.0", "wlcg.groups"})

PILOT_SCOPES = ("compute.read", "compute.modify")
MEMBER_COMPUTE_SCOPES = ("compute.read", "compute.create", "compute.modify", "compute.cancel")


def user_area(vo: str, username: str) -> str:
    """The user's own namespace, DIRAC/JUNO style: `/juno/user/z/zhangxm`."""
    return f"/{vo}{relative_user_area(username)}"


def relative_user_area(username: str) -> str:
    """The user's own namespace relative to the VO prefix, as token scopes name it: `/user/z/zhangxm`."""
    return f"/user/{username[0]}/{username}"


def policy_scopes(vo: str, username: str, properties: Iterable[Property]) -> tuple[str, ...]:
    """All the scopes a member of a group with `properties` may hold, most general first."""
    props = frozenset(properties)
    scopes: list[str] = []
    if props - {Property.PILOT}:
        scopes.extend(MEMBER_COMPUTE_SCOPES)
        scopes.append("storage.read:/")
        if props & {Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR}:
            scopes.append("storage.modify:/")
        if Property.PRODUCTION_MANAGEMENT in props:
            scopes.append("storage.modify:/production")
        if props & {Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR,
                    Property.PRODUCTION_MANAGEMENT}:
            scopes.append("storage.stage:/")
        area = relative_user_area(username)
        scopes.extend((f"storage.create:{area}", f"storage.modify:{area}"))
    elif Property.PILOT in props:
        scopes.extend(PILOT_SCOPES)
    return tuple(dict.fromkeys(scopes))


class ScopeRefused(ValueError):
    """A requested scope is outside what the policy (or the token being exchanged) allows."""

    def __init__(self, refused: list[str], reason: str) -> None:
        super().__init__(f"{reason}: {' '.join(refused)}")
        self.refused = refused


def parse_scope_param(value: str | None) -> list[str] | None:
    """An OAuth `scope` parameter as a list (order kept, duplicates dropped); None when absent or empty."""
    if value is None:
        return None
    items = list(dict.fromkeys(value.split()))
    return items or None


def narrow(requested: list[str] | None, allowed: tuple[str, ...], *, reason: str) -> tuple[str, ...]:
    """The capability scopes to put in a token: all of `allowed` when nothing is requested, else the
    requested ones, each of which must be covered by `allowed` (raises `ScopeRefused` otherwise).

    Meta scopes (`wlcg`, `offline_access`, ...) are accepted and dropped; any other non-capability
    scope is refused, so a typo never silently yields a token without the scope the caller expected.
    """
    if requested is None:
        return allowed
    chosen: list[str] = []
    refused: list[str] = []
    for scope in requested:
        if scope in META_SCOPES or scope.startswith("wlcg.groups:"):
            continue
        if is_capability(scope) and (scope in allowed or scope_is_narrower(scope, allowed)):
            chosen.append(scope)
        else:
            refused.append(scope)
    if refused:
        raise ScopeRefused(refused, reason)
    if not chosen:
        return allowed
    return tuple(chosen)
