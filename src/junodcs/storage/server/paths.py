"""Mapping request paths to files under the SE root, refusing everything that could escape it.

The checks run on the raw request target, before any normalisation by the HTTP stack, because a
normaliser that quietly turns `/a/../../etc` into `/etc` hides the attack instead of refusing it:
- encoded slashes (`%2F`) and backslashes are refused: they make one path segment look like two to
  some component and like one to another;
- NUL bytes (raw or `%00`) are refused: the OS would truncate the name;
- `.` and `..` segments (also percent-encoded) are refused outright;
- after that, the real path (symlinks resolved) must still lie under the real root, else 403.
Names of files the SE keeps for itself (upload temporaries, sidecars) are not addressable at all.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from junodcs.core.errors import DCSError

INTERNAL_PREFIX = ".dcs-"
"""Files whose name starts with this belong to the SE (upload temporaries, checksum sidecars)."""


class SEError(DCSError):
    """An error with an explicit HTTP status (WebDAV has more statuses than the generic errors)."""

    def __init__(self, detail: str, *, status: int, code: str) -> None:
        super().__init__(detail, code=code)
        self.status = status


class BadRequest(DCSError):
    """A malformed request (header, body): 400, which davix and gfal2 report with the body text."""

    status = 400
    code = "bad-request"
    title = "Bad request"


class BadPath(DCSError):
    status = 400
    code = "bad-path"
    title = "Bad path"


class PathOutsideRoot(DCSError):
    status = 403
    code = "path-outside-root"
    title = "Path outside the storage root"


@dataclass(frozen=True, slots=True)
class SEPath:
    """One request path: `logical` is the normalised URL path (`/juno/raw/f`), `local` the file under root."""

    logical: str
    local: Path

    @property
    def is_root(self) -> bool:
        return self.logical == "/"


def split_raw_path(raw: str) -> str:
    """The path part of a raw request target (no query, no fragment); absolute URLs reduced to their path."""
    if "://" in raw.split("?", 1)[0]:
        after = raw.split("://", 1)[1]
        slash = after.find("/")
        raw = after[slash:] if slash >= 0 else "/"
    return raw.split("?", 1)[0].split("#", 1)[0]


def logical_path(raw_path: str) -> str:
    """Validate a raw (still percent-encoded) path and return it decoded and normalised."""
    if not raw_path.startswith("/"):
        raise BadPath(f"path {raw_path!r} must be absolute")
    if "\x00" in raw_path:
        raise BadPath("path contains a NUL byte")
    segments = []
    for raw_segment in raw_path.split("/"):
        lowered = raw_segment.lower()
        if "%2f" in lowered or "%5c" in lowered:
            raise BadPath("path contains an encoded slash or backslash (%2F/%5C)")
        if "%00" in lowered:
            raise BadPath("path contains an encoded NUL byte (%00)")
        try:
            segment = unquote(raw_segment, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("path is not valid UTF-8") from None
        if "\x00" in segment or "\\" in segment:
            raise BadPath("path contains a NUL byte or a backslash")
        if segment in (".", ".."):
            raise BadPath("path contains '.' or '..' segments")
        if segment.startswith(INTERNAL_PREFIX):
            raise PathOutsideRoot(f"names starting with {INTERNAL_PREFIX!r} are reserved by the storage element")
        if segment:
            segments.append(segment)
    return "/" + "/".join(segments)


def check_logical(path: str) -> str:
    """Validate an already decoded path (from a `Destination:` header path or a scope)."""
    if not path.startswith("/") or "\x00" in path or "\\" in path:
        raise BadPath(f"bad path {path!r}")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadPath("path contains '.' or '..' segments")
    if any(p.startswith(INTERNAL_PREFIX) for p in parts):
        raise PathOutsideRoot(f"names starting with {INTERNAL_PREFIX!r} are reserved by the storage element")
    return "/" + "/".join(parts)


class PathMapper:
    """Resolves logical paths to local paths under one root and enforces confinement."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def from_raw(self, raw_target: str) -> SEPath:
        return self.resolve(logical_path(split_raw_path(raw_target)))

    def resolve(self, logical: str) -> SEPath:
        logical = check_logical(logical)
        local = self.root.joinpath(*[p for p in logical.split("/") if p])
        self.confine(local)
        return SEPath(logical, local)

    def confine(self, local: Path) -> None:
        """The real location (symlinks followed as far as they exist) must stay under the root."""
        real = os.path.realpath(local)
        root = str(self.root)
        if real != root and not real.startswith(root + os.sep):
            raise PathOutsideRoot("path resolves outside the storage root (symbolic link?)")

    def to_logical(self, local: Path) -> str:
        rel = os.path.relpath(local, self.root)
        return "/" if rel == "." else "/" + posixpath.join(*rel.split(os.sep))
