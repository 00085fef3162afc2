"""Catalog errors, each with a stable `code` (clients and tests match on them)."""

from __future__ import annotations

from junodcs.core.errors import Conflict, DCSError, Forbidden, InvalidInput, NotFound


class InvalidLFN(InvalidInput):
    code = "invalid-lfn"


class InvalidQuery(InvalidInput):
    code = "invalid-query"


class UnknownMetadataField(InvalidInput):
    code = "unknown-metadata-field"


class MetadataTypeMismatch(InvalidInput):
    code = "metadata-type-mismatch"


class NoSuchPath(NotFound):
    code = "no-such-path"


class NoSuchDataset(NotFound):
    code = "no-such-dataset"


class AlreadyExists(Conflict):
    code = "already-exists"


class LastReplica(Conflict):
    code = "last-replica"


class DirectoryNotEmpty(Conflict):
    code = "directory-not-empty"


class PermissionDenied(Forbidden):
    code = "permission-denied"


class TooManyEntries(DCSError):
    status = 413
    code = "too-many-entries"
    title = "Too many entries"


class BulkFailed(InvalidInput):
    """All-or-nothing bulk call with at least one bad entry: nothing was written."""

    code = "bulk-failed"
