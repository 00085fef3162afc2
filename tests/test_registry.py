"""Registry lookups (DN, subject, FQAN -> group, local accounts) and the access-policy mechanism."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest

from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.policies import AccessPolicy
from junodcs.auth.registry import Registry, subject_for
from junodcs.core.errors import Forbidden, Unauthenticated
from junodcs.core.gridconfig import GridConfig, Property


@pytest.fixture
def registry(grid: GridConfig) -> Registry:
    return Registry(grid)


def test_users_are_found_by_dn_and_by_opaque_subject(registry: Registry) -> None:
    assert registry.username_for_dn("/C=CN/O=JUNO/OU=IHEP/CN=Xiaomei Zhang") == "zhangxm"
    assert registry.username_for_dn("/C=CN/O=JUNO/OU=IHEP/CN=Somebody Else") is None
    subject = subject_for("juno", "alice")
    assert registry.username_for_subject(subject) == "alice"
    assert subject != "alice" and subject == subject_for("juno", "alice")  # opaque but stable
    assert subject_for("cepc", "alice") != subject


def test_membership_defaults_and_refusals(registry: Registry) -> None:
    assert registry.membership("alice").group == "juno_user"
    production = registry.membership("zhangxm", "juno_production")
    assert Property.PRODUCTION_MANAGEMENT in production.properties
    with pytest.raises(Forbidden, match="not a member of group 'juno_production'"):
        registry.membership("alice", "juno_production")
    with pytest.raises(Forbidden, match="not registered"):
        registry.membership("mallory")


def test_the_primary_fqan_decides_the_group(registry: Registry) -> None:
    first = registry.membership_for_fqans("zhangxm", ("/juno/Role=production/Capability=NULL", "/juno"))
    assert first.group == "juno_production"
    plain = registry.membership_for_fqans("zhangxm", ("/juno/Role=NULL/Capability=NULL",))
    assert plain.group == "juno_user"
    # a role the user does not hold is skipped for the next FQAN
    assert registry.membership_for_fqans("alice", ("/juno/Role=production", "/juno")).group == "juno_user"
    with pytest.raises(Forbidden) as refused:
        registry.membership_for_fqans("alice", ("/juno/Role=production",))
    assert refused.value.code == "fqan-not-mapped"
    assert registry.group_for_fqan("/juno/Role=admin/Capability=NULL") == "juno_admin"


def test_local_accounts_prefer_the_user_then_the_group_pool(registry: Registry) -> None:
    assert registry.local_account("zhangxm", "juno_user", "GRID.IHEP.cn") == "zhangxm"
    assert registry.local_account("alice", "juno_user", "GRID.IHEP.cn") == ".juno"
    with pytest.raises(Forbidden) as none:
        registry.local_account("alice", "juno_user", "GRID.CNAF.it")
    assert none.value.code == "no-local-account"


def test_wlcg_groups_follow_the_group_fqan(registry: Registry) -> None:
    assert registry.wlcg_groups("juno_production") == ["/juno", "/juno/production"]
    assert registry.wlcg_groups("juno_pilot") == ["/juno"]


class Action(StrEnum):
    READ = "read things"
    WRITE = "write things"


class ReadersOnly(AccessPolicy):
    """Known members may read; nobody may write."""

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        return action is Action.READ and identity.is_known


def test_policies_deny_by_default_and_explain(registry: Registry) -> None:
    anonymous = Identity.anonymous("juno")
    with pytest.raises(Unauthenticated, match="needs credentials"):
        ReadersOnly.check(anonymous, Action.READ)
    stranger = Identity(method=AuthMethod.TOKEN, vo="juno", subject="someone-else")
    with pytest.raises(Forbidden, match="not registered"):
        ReadersOnly.check(stranger, Action.READ)
    member = registry.membership("alice")
    alice = Identity(method=AuthMethod.TOKEN, vo="juno", subject="x", username="alice", group=member.group,
                     properties=member.properties)
    ReadersOnly.check(alice, Action.READ)
    with pytest.raises(Forbidden, match="alice \\(group juno_user\\) may not write things path=/juno"):
        ReadersOnly.check(alice, Action.WRITE, path="/juno")
    with pytest.raises(Forbidden):
        AccessPolicy.check(alice, Action.READ)  # the base policy allows nothing
