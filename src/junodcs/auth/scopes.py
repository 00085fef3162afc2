"""WLCG capability scopes: parsing and path-prefix matching.

`storage.read:/juno/raw` allows `/juno/raw` and everything below it, never `/juno/rawdata`; a scope
path ending in `/` allows only the directory's contents. `storage.modify` is a superset of
`storage.create`; every storage scope allows `stat` (`storage.read` is not implied by `stage`).
"""

from __future__ import annotations

import posixpath

STORAGE_ACTIONS = ("storage.read", "storage.create", "storage.modify", "storage.stage", "storage.poll")
COMPUTE_ACTIONS = ("compute.read", "compute.create", "compute.modify", "compute.cancel")

# A granted scope (key) also grants these requested ones.
_IMPLIES: dict[str, tuple[str, ...]] = {
    "storage.modify": ("storage.modify", "storage.create"),
    "storage.stage": ("storage.stage", "storage.poll"),
}


def is_capability(scope: str) -> bool:
    name = scope.split(":", 1)[0]
    return name in STORAGE_ACTIONS or name in COMPUTE_ACTIONS


def split_scope(scope: str) -> tuple[str, str | None]:
    """`storage.read:/juno` -> ("storage.read", "/juno"); `compute.create` -> ("compute.create", None)."""
    if ":" in scope:
        name, path = scope.split(":", 1)
        return name, path
    return scope, None


def normalize_scope_path(path: str) -> str:
    """Absolute, normalised; a trailing slash (directory only) is kept."""
    if not path.startswith("/"):
        raise ValueError(f"scope path {path!r} must be absolute")
    trailing = path.endswith("/") and path != "/"
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal + "/" if trailing else normal


def path_within(granted: str, requested: str) -> bool:
    """Prefix rule of the WLCG profile, on whole path components."""
    requested = posixpath.normpath(requested) if requested != "/" else "/"
    if granted == "/":
        return True
    if granted.endswith("/"):
        base = granted.rstrip("/")
        return requested.startswith(base + "/")
    return requested == granted or requested.startswith(granted + "/")


def scopes_allow(granted: tuple[str, ...] | list[str], wanted: str, path: str | None = None) -> bool:
    """True when one of the `granted` scopes allows action `wanted` (on `path` for storage scopes)."""
    for scope in granted:
        name, scope_path = split_scope(scope)
        grants = _IMPLIES.get(name, (name,))
        if wanted not in grants:
            continue
        if wanted.startswith("storage."):
            if scope_path is None or path is None:
                continue
            try:
                if path_within(normalize_scope_path(scope_path), path):
                    return True
            except ValueError:
                continue
        else:
            return True
    return False


def scope_is_narrower(requested: str, granted: tuple[str, ...] | list[str]) -> bool:
    """A requested scope is allowed in a token exchange only if a granted scope already covers it."""
    name, path = split_scope(requested)
    if not is_capability(requested):
        return requested in granted
    if name.startswith("storage."):
        if path is None:
            return False
        try:
            path = normalize_scope_path(path)
        except ValueError:
            return False
        return scopes_allow(granted, name, path.rstrip("/") or "/")
    return scopes_allow(granted, name)
