"""Scope policy per group and WLCG path-prefix rules (pure functions, no database)."""

from __future__ import annotations

import pytest

from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.scope_policy import ScopeRefused, narrow, policy_scopes
from junodcs.auth.scopes import scope_is_narrower, scopes_allow
from junodcs.core.gridconfig import Property


def test_policy_scopes_by_property():
    member = policy_scopes("juno", "alice", {Property.NORMAL_USER})
    assert set(member) == {
        "compute.read", "compute.create", "compute.modify", "compute.cancel", "storage.read:/",
        "storage.create:/user/a/alice", "storage.modify:/user/a/alice"}
    production = policy_scopes("juno", "zhangxm", {Property.NORMAL_USER, Property.PRODUCTION_MANAGEMENT})
    assert "storage.modify:/production" in production and "storage.modify:/" not in production
    assert "storage.stage:/" in production and not any(s.startswith("storage.stage") for s in member)
    for admin in (Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR):
        granted = policy_scopes("juno", "boris", {Property.NORMAL_USER, admin})
        assert "storage.modify:/" in granted and "storage.stage:/" in granted
    assert policy_scopes("juno", "pilot", {Property.PILOT}) == ("compute.read", "compute.modify")
    assert policy_scopes("juno", "nobody", set()) == ()


@pytest.mark.parametrize(
    ("granted", "wanted", "path", "allowed"),
    [
        ("storage.read:/juno/raw", "storage.read", "/juno/raw", True),
        ("storage.read:/juno/raw", "storage.read", "/juno/raw/2024/run1.root", True),
        ("storage.read:/juno/raw", "storage.read", "/juno/rawdata", False),
        ("storage.read:/juno/raw", "storage.read", "/juno/rawdata/x", False),
        ("storage.read:/juno/raw", "storage.read", "/juno", False),
        ("storage.read:/juno/raw/", "storage.read", "/juno/raw/x", True),
        ("storage.read:/juno/raw/", "storage.read", "/juno/raw", False),
        ("storage.read:/juno/raw", "storage.read", "/juno/raw/../production", False),
        ("storage.read:/", "storage.read", "/anything", True),
        ("storage.modify:/juno/user/a/alice", "storage.create", "/juno/user/a/alice/f", True),
        ("storage.create:/juno/user/a/alice", "storage.modify", "/juno/user/a/alice/f", False),
        ("storage.stage:/juno", "storage.read", "/juno/f", False),
        ("storage.read:/juno", "storage.modify", "/juno/f", False),
    ],
)
def test_scope_path_prefix_rules(granted, wanted, path, allowed):
    assert scopes_allow((granted,), wanted, path) is allowed


def test_narrowing_rules():
    granted = ("compute.read", "storage.read:/juno/raw", "storage.modify:/juno/user/a/alice")
    assert narrow(["storage.read:/juno/raw/2024"], granted, reason="x") == ("storage.read:/juno/raw/2024",)
    assert narrow(["storage.create:/juno/user/a/alice/out"], granted, reason="x")
    assert narrow(None, granted, reason="x") == granted
    assert narrow(["wlcg", "offline_access"], granted, reason="x") == granted
    # trailing slash (directory only) is narrower than the directory itself, and equal scopes are fine
    assert narrow(["storage.read:/juno/raw/"], granted, reason="x") == ("storage.read:/juno/raw/",)
    assert narrow(["storage.read:/juno/raw/"], ("storage.read:/juno/raw/",), reason="x")
    for wider in ("storage.read:/juno/rawdata", "storage.read:/juno", "compute.create", "storage.read",
                  "storage.read:relative", "made.up", "storage.modify:/juno/raw"):
        with pytest.raises(ScopeRefused) as info:
            narrow([wider], granted, reason="too wide")
        assert info.value.refused == [wider]
    assert not scope_is_narrower("storage.read:/juno/raw/../production", ("storage.read:/juno/raw",))


def test_identity_with_capabilities_is_judged_by_its_scopes():
    narrowed = Identity(method=AuthMethod.TOKEN, vo="juno", username="alice",
                        properties=frozenset({Property.NORMAL_USER}), scopes=("storage.read:/raw",))
    # scope paths are relative to the VO namespace: /raw is /juno/raw
    assert narrowed.allows_scope("storage.read", "/juno/raw/f")
    assert not narrowed.allows_scope("storage.read", "/juno/rawdata/f")
    assert not narrowed.allows_scope("storage.read", "/raw/f")  # outside /juno: never by a scope
    assert not narrowed.allows_scope("storage.read", "/junoextra/raw/f")
    whole = Identity(method=AuthMethod.TOKEN, vo="juno", username="alice", scopes=("storage.read:/",))
    assert whole.allows_scope("storage.read", "/juno") and whole.allows_scope("storage.read", "/juno/x/y")
    assert not narrowed.allows_scope("compute.create")
    x509 = Identity(method=AuthMethod.X509, vo="juno", username="alice")
    assert x509.allows_scope("compute.create")
