"""The registry: users, groups, properties, FQAN -> group and local accounts, read from grid.yaml.

Like DIRAC's Registry, it is configuration: operators edit `grid.yaml`, every server process reads
the same file. Lookups here are pure functions of that configuration.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from junodcs.core.errors import Forbidden, Unauthenticated
from junodcs.core.gridconfig import GridConfig, Property, User, normalize_fqan


@dataclass(frozen=True, slots=True)
class Membership:
    username: str
    group: str
    properties: frozenset[Property]


def subject_for(vo: str, username: str) -> str:
    """Opaque, stable token subject for a registry user (the WLCG profile prefers opaque subjects)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"junodcs:{vo}:{username}"))


def normalize_dn(dn: str) -> str:
    return dn.strip()


class Registry:
    def __init__(self, grid: GridConfig) -> None:
        self.grid = grid
        self.vo = grid.vo
        self._config = grid.registry
        self._by_dn = {normalize_dn(u.dn): name for name, u in self._config.users.items() if u.dn}
        self._by_subject = {subject_for(grid.vo, name): name for name in self._config.users}
        for name, user in self._config.users.items():
            if user.subject:
                self._by_subject[user.subject] = name
        self._group_by_fqan = {g.voms_fqan: name for name, g in self._config.groups.items() if g.voms_fqan}

    # -- users ---------------------------------------------------------------------------------------

    def user(self, username: str) -> User:
        try:
            return self._config.users[username]
        except KeyError:
            raise Forbidden(f"user {username!r} is not registered in VO {self.vo}") from None

    def users(self) -> dict[str, User]:
        return dict(self._config.users)

    def username_for_dn(self, dn: str) -> str | None:
        return self._by_dn.get(normalize_dn(dn))

    def username_for_subject(self, subject: str) -> str | None:
        return self._by_subject.get(subject)

    # -- groups --------------------------------------------------------------------------------------

    def groups(self) -> dict[str, object]:
        return dict(self._config.groups)

    def properties(self, group: str) -> frozenset[Property]:
        found = self._config.groups.get(group)
        return frozenset(found.properties) if found else frozenset()

    def group_for_fqan(self, fqan: str) -> str | None:
        return self._group_by_fqan.get(normalize_fqan(fqan))

    def default_group(self, username: str) -> str:
        user = self.user(username)
        if self._config.default_group in user.groups:
            return self._config.default_group
        return user.groups[0]

    def membership(self, username: str, group: str | None = None) -> Membership:
        """The group in effect for `username`: the asked one (if a member) or the default one."""
        user = self.user(username)
        chosen = group or self.default_group(username)
        if chosen not in user.groups:
            raise Forbidden(f"user {username!r} is not a member of group {chosen!r}")
        return Membership(username, chosen, self.properties(chosen))

    def membership_for_fqans(self, username: str, fqans: tuple[str, ...]) -> Membership:
        """VOMS mapping: the first FQAN (the primary one) that maps to a group the user belongs to."""
        user = self.user(username)
        for fqan in fqans:
            group = self.group_for_fqan(fqan)
            if group is not None and group in user.groups:
                return Membership(username, group, self.properties(group))
        if fqans:
            raise Forbidden(
                f"none of the FQANs {', '.join(fqans)} maps to a group of user {username!r}",
                code="fqan-not-mapped",
            )
        return self.membership(username)

    def wlcg_groups(self, group: str) -> list[str]:
        """`wlcg.groups` claim for a registry group: its FQAN as an IAM group path (`/juno/production`)."""
        groups = [f"/{self.vo}"]
        found = self._config.groups.get(group)
        if found and found.voms_fqan:
            path = "/".join(p.split("=", 1)[-1] for p in found.voms_fqan.strip("/").split("/"))
            if f"/{path}" not in groups:
                groups.append(f"/{path}")
        return groups

    # -- local accounts ------------------------------------------------------------------------------

    def local_account(self, username: str, group: str, site: str) -> str:
        """Account a site runs the user's work under: the user's own, else the group's pool account."""
        user = self.user(username)
        if site in user.local_accounts:
            return user.local_accounts[site]
        pool = self._config.groups[group].pool_accounts.get(site) if group in self._config.groups else None
        if pool is None:
            raise Forbidden(f"no local account for {username!r} ({group}) at {site}", code="no-local-account")
        return pool

    def require_known(self, username: str | None, subject: str) -> str:
        if username is None:
            raise Unauthenticated(f"{subject} is not a registered member of VO {self.vo}", code="unknown-user")
        return username
