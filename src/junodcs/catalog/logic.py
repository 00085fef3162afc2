"""The catalog's rules: namespace, files, replicas, metadata, provenance, datasets, usage.

Imports no FastAPI. Every write runs in one transaction (a failure leaves nothing behind) and keeps
`cat_usage` exact in that same transaction. Access decisions are the router's policy: a `Caller` carries
a callback that answers "may this caller <action> <path>, given the nearest directory's owner, group and
mode?", and the logic asks it for every entry (bulk calls report a refusal per entry). `Caller.system()`
(in-process tools, benchmarks) is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from itertools import chain
from typing import Any

from sqlalchemy import Engine, String, and_, bindparam, delete, func, or_, select, type_coerce, update
from sqlalchemy.exc import IntegrityError

from junodcs.catalog import db
from junodcs.catalog.errors import (
    AlreadyExists,
    BulkFailed,
    DirectoryNotEmpty,
    InvalidLFN,
    InvalidQuery,
    LastReplica,
    MetadataTypeMismatch,
    NoSuchDataset,
    NoSuchPath,
    PermissionDenied,
    TooManyEntries,
    UnknownMetadataField,
)
from junodcs.catalog.gcpause import collector_paused
from junodcs.catalog.guids import TimeOrderedGuids
from junodcs.catalog.prepared import Prepared, iso
from junodcs.catalog.query import (
    FIELD_RE,
    LIKE_ESCAPE,
    STANDARD,
    Term,
    has_wildcard,
    parse_json,
    to_json,
    wildcard_to_like,
)
from junodcs.core.errors import Conflict, DCSError, InvalidInput

MAX_BULK = 10_000
MAX_LFN = 1024
MAX_NAME = 255
DEFAULT_DIR_MODE = 0o755
DEFAULT_FILE_MODE = 0o644
FILE_STATUSES = ("AprioriGood", "Trash", "Removing", "Probing")
REPLICA_STATUSES = ("AprioriGood", "Trash", "Removing", "Probing", "Problematic")
FIELD_TYPES = ("int", "float", "string", "date")
BATCH = 1000
IN_CHUNK = 1000
_CHECKSUM_RE = re.compile(r"^[0-9a-f]{1,8}$")
_SE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: what a plain LFN never contains: control characters, empty, '.' or '..' components, a trailing slash
_LFN_SUSPECT = re.compile(r"[\x00-\x1f\x7f]|//|/\.\.?(?:/|$)|/$")
_HEX_DIGITS = "0123456789abcdef"
#: metadata types whose values are stored as given when they have this Python type
_PLAIN: dict[str, type] = {"int": int, "float": float, "string": str}
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,254}$")


class Action:
    READ = "read"
    CREATE = "create"
    MODIFY = "modify"


Authorizer = Callable[[str, str, "DirInfo | None"], bool]


@dataclass(frozen=True)
class DirInfo:
    path: str
    owner: str
    group: str
    mode: int


@dataclass(frozen=True)
class Caller:
    username: str
    group: str
    admin: bool = False
    authorize: Authorizer | None = None

    @classmethod
    def system(cls) -> Caller:
        return cls(username="dcs", group="dcs_admin", admin=True)

    def allows(self, action: str, path: str, node: DirInfo | None) -> bool:
        return self.authorize is None or self.authorize(action, path, node)

    def check(self, action: str, path: str, node: DirInfo | None) -> None:
        if not self.allows(action, path, node):
            raise PermissionDenied(f"{self.username} (group {self.group}) may not {action} {path}", path=path)


@dataclass(frozen=True)
class StorageElementInfo:
    name: str
    base_url: str | None
    path: str = "/juno"


@dataclass(frozen=True)
class Field:
    id: int
    name: str
    type: str
    level: str


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def path_hash(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def prefixes(path: str) -> list[str]:
    """`/juno/a/b` -> [`/`, `/juno`, `/juno/a`, `/juno/a/b`]."""
    if path == "/":
        return ["/"]
    parts = path.split("/")[1:]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def normalize_checksum(value: Any) -> str:
    if not isinstance(value, str) or not _CHECKSUM_RE.match(value.strip().lower()):
        raise InvalidInput(f"checksum {value!r} is not an adler32 (up to 8 hex digits)", code="invalid-checksum")
    return value.strip().lower().zfill(8)


def _like_prefix(path: str) -> str:
    base = path.rstrip("/")
    return base.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "/%"


def _encode_cursor(kind: str, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, name]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        kind, name = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        assert kind in ("d", "f") and isinstance(name, str)
        return kind, name
    except Exception:
        raise InvalidInput("invalid listing cursor", code="invalid-cursor") from None


class Catalog:
    """The catalog of one VO on one database."""

    def __init__(
        self,
        engine: Engine,
        *,
        vo: str = "juno",
        storage_elements: Iterable[StorageElementInfo] | None = None,
    ) -> None:
        self.engine = engine
        self.vo = vo
        self.root = f"/{vo}"
        self._root_slash = self.root + "/"
        self.storage_elements = {se.name: se for se in storage_elements or ()}
        self._fields: dict[str, Field] = {}

    # -- helpers ---------------------------------------------------------------------------------------

    def normalize_lfn(self, lfn: Any) -> str:
        # fast path: one regex search proves a plain LFN valid; anything odd takes the careful path below,
        # which also words the error
        if (type(lfn) is str and len(lfn) <= MAX_NAME and lfn.startswith(self._root_slash)
                and not _LFN_SUSPECT.search(lfn) and lfn.isascii()):
            return lfn
        return self._normalize_lfn_slow(lfn)

    def _normalize_lfn_slow(self, lfn: Any) -> str:
        if not isinstance(lfn, str) or not lfn:
            raise InvalidLFN(f"an LFN must be a non-empty string, not {lfn!r}")
        if "\x00" in lfn:
            raise InvalidLFN("an LFN may not contain NUL bytes")
        if len(lfn.encode()) > MAX_LFN:
            raise InvalidLFN(f"LFN longer than {MAX_LFN} bytes")
        if not lfn.startswith("/"):
            raise InvalidLFN(f"LFN {lfn!r} is relative: LFNs start with {self.root}/")
        if lfn != "/" and lfn.endswith("/"):
            lfn = lfn.rstrip("/")
        parts = lfn.split("/")[1:]
        for part in parts:
            if part in ("", ".", ".."):
                raise InvalidLFN(f"LFN {lfn!r} has an empty, '.' or '..' component")
            if len(part.encode()) > MAX_NAME:
                raise InvalidLFN(f"LFN component longer than {MAX_NAME} bytes in {lfn[:80]!r}...")
            if any(ord(c) < 32 or c == "\x7f" for c in part):
                raise InvalidLFN(f"LFN {lfn!r} contains control characters")
        if not parts or parts[0] != self.vo:
            raise InvalidLFN(f"LFN {lfn!r} is outside the VO namespace {self.root}")
        return lfn

    def _check_se(self, se: Any) -> str:
        if not isinstance(se, str) or not _SE_RE.match(se):
            raise InvalidInput(f"invalid storage element name {se!r}", code="unknown-se")
        if self.storage_elements and se not in self.storage_elements:
            raise InvalidInput(f"unknown storage element {se!r}", code="unknown-se")
        return se

    def replica_url(self, lfn: str, se: str) -> str | None:
        info = self.storage_elements.get(se)
        if info is None or info.base_url is None:
            return None
        relative = lfn[len(self.root) :] if lfn.startswith(self.root + "/") else lfn
        return f"{info.base_url.rstrip('/')}{info.path.rstrip('/')}{relative}"

    @staticmethod
    def _check_bulk(entries: Any) -> None:
        if not isinstance(entries, list):
            raise InvalidInput("entries must be a list")
        if len(entries) > MAX_BULK:
            raise TooManyEntries(f"{len(entries)} entries: at most {MAX_BULK} per call, split the request")

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(conn)` in one transaction; a unique-key race is retried (the retry sees the winner)."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except IntegrityError as exc:
                if attempt == 2:
                    raise Conflict(f"concurrent change, try again ({exc.orig})", code="concurrent-change") from None
        raise AssertionError("unreachable")

    def _dirs(self, conn: Any, paths: Iterable[str], cache: dict[str, Any]) -> dict[str, Any]:
        wanted = [p for p in dict.fromkeys(paths) if p not in cache]
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            by_hash = {path_hash(p): p for p in chunk}
            for row in conn.execute(select(db.dirs).where(db.dirs.c.path_hash.in_(list(by_hash)))):
                cache[row.path] = row
        return {p: cache[p] for p in paths if p in cache}

    @staticmethod
    def _info(row: Any) -> DirInfo:
        return DirInfo(path=row.path, owner=row.owner, group=row.grp, mode=row.mode)

    def _nearest(self, conn: Any, path: str, cache: dict[str, Any]) -> Any:
        chain = prefixes(path)
        found = self._dirs(conn, chain, cache)
        for p in reversed(chain):
            if p in found:
                return found[p]
        return None

    def _mkdirs(self, conn: Any, path: str, caller: Caller, cache: dict[str, Any], mode: int | None = None) -> Any:
        """mkdir -p: the directory row for `path`, creating what is missing (permission checked once)."""
        chain = prefixes(path)
        found = self._dirs(conn, chain, cache)
        if path in found:
            return found[path]
        nearest = next(found[p] for p in reversed(chain) if p in found) if found else None
        if path != "/" and caller.authorize is not None:
            caller.check(Action.CREATE, path, self._info(nearest) if nearest is not None else None)
        stamp = now()
        parent = None
        for depth, p in enumerate(chain):
            if p in found:
                parent = found[p]
                continue
            if p != "/" and self._file_row(conn, p) is not None:
                raise InvalidInput(f"{p} is a file, not a directory", code="not-a-directory")
            values = {
                "parent_id": parent.id if parent is not None else None,
                "name": p.rsplit("/", 1)[-1] if p != "/" else "",
                "path": p,
                "path_hash": path_hash(p),
                "depth": depth,
                "owner": caller.username if p != "/" else "dcs",
                "grp": caller.group if p != "/" else "dcs_admin",
                "mode": (mode if mode is not None and p == path else DEFAULT_DIR_MODE),
                "created_at": stamp,
                "modified_at": stamp,
            }
            new_id = conn.execute(db.dirs.insert().values(**values)).inserted_primary_key[0]
            parent = _Row(id=new_id, **values)
            cache[p] = parent
        return parent

    def _chain_ids(self, conn: Any, path: str, cache: dict[str, Any]) -> list[int]:
        rows = self._dirs(conn, prefixes(path), cache)
        return [rows[p].id for p in prefixes(path)]

    @staticmethod
    def _apply_usage(conn: Any, deltas: dict[tuple[int, str], list[int]]) -> None:
        rows = [
            {"dir_id": d, "se": se, "files": v[0], "bytes": v[1]}
            for (d, se), v in sorted(deltas.items())
            if v[0] or v[1]
        ]
        if not rows:
            return
        table = db.usage
        dialect = conn.dialect.name
        if dialect == "mysql":
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table)
            stmt = stmt.on_duplicate_key_update(
                files=table.c.files + stmt.inserted.files, bytes=table.c.bytes + stmt.inserted.bytes
            )
        else:
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as upsert
            else:
                from sqlalchemy.dialects.sqlite import insert as upsert
            stmt = upsert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=["dir_id", "se"],
                set_={"files": table.c.files + stmt.excluded.files, "bytes": table.c.bytes + stmt.excluded.bytes},
            )
        conn.execute(stmt, rows)

    # -- metadata fields -----------------------------------------------------------------------------

    def fields(self, reload: bool = False) -> dict[str, Field]:
        if reload or not self._fields:
            with self.engine.connect() as conn:
                rows = conn.execute(select(db.meta_fields)).all()
            self._fields = {r.name: Field(r.id, r.name, r.type, r.level) for r in rows}
        return self._fields

    def field(self, name: str) -> Field:
        found = self.fields().get(name) or self.fields(reload=True).get(name)
        if found is None:
            raise UnknownMetadataField(f"unknown metadata field {name!r}; define it with `dcs dm meta define`")
        return found

    def define_field(self, name: str, type_: str, level: str = "file", caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()
        if not isinstance(name, str) or not FIELD_RE.match(name):
            raise InvalidInput(f"invalid metadata field name {name!r}", code="invalid-field-name")
        if name.lower() in STANDARD or name.lower() in ("path", "lfn"):
            raise InvalidInput(f"{name!r} is a standard attribute", code="reserved-field-name")
        if type_ not in FIELD_TYPES:
            raise InvalidInput(f"type must be one of {', '.join(FIELD_TYPES)}", code="invalid-field-type")
        if level not in ("file", "dir"):
            raise InvalidInput("level must be 'file' or 'dir'", code="invalid-field-level")
        existing = self.fields(reload=True).get(name)
        if existing is not None:
            if (existing.type, existing.level) == (type_, level):
                return {"name": name, "type": type_, "level": level, "created": False}
            raise AlreadyExists(f"metadata field {name!r} exists as a {existing.level} field of type {existing.type}")

        def work(conn: Any) -> None:
            conn.execute(
                db.meta_fields.insert().values(
                    name=name, type=type_, level=level, created_at=now(), created_by=caller.username
                )
            )

        self._transaction(work)
        self.fields(reload=True)
        return {"name": name, "type": type_, "level": level, "created": True}

    def list_fields(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "type": f.type, "level": f.level} for f in sorted(self.fields(True).values(), key=lambda f: f.name)]

    @staticmethod
    def coerce(name: str, type_: str, value: Any) -> Any:
        try:
            if type_ == "int":
                if isinstance(value, bool) or isinstance(value, float):
                    raise ValueError
                return int(value)
            if type_ == "float":
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if type_ == "string":
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError
                text = str(value)
                if len(text) > 128 or "\x00" in text:
                    raise ValueError
                return text
            if type_ == "date":
                if isinstance(value, datetime):
                    return value.replace(tzinfo=None)
                if isinstance(value, date):
                    return datetime(value.year, value.month, value.day)
                parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
                if parsed.tzinfo is not None:
                    parsed = parsed.astimezone(UTC).replace(tzinfo=None)
                return parsed
        except (TypeError, ValueError):
            pass
        raise MetadataTypeMismatch(f"{name}: {value!r} is not a valid {type_}", field=name)

    def _file_meta_values(self, metadata: Any) -> list[tuple[Field, Any]]:
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata must be an object {field: value}")
        out = []
        for name, value in metadata.items():
            fld = self.field(name)
            if fld.level != "file":
                raise InvalidInput(f"{name!r} is a directory field: set it on a directory", code="metadata-level-mismatch")
            out.append((fld, self.coerce(name, fld.type, value)))
        return out

    # -- namespace -----------------------------------------------------------------------------------

    def mkdir(self, path: str, caller: Caller | None = None, *, mode: int | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        if mode is not None and not (0 <= mode <= 0o777):
            raise InvalidInput("mode must be between 0 and 0777", code="invalid-mode")

        def work(conn: Any) -> dict[str, Any]:
            cache: dict[str, Any] = {}
            if self._file_row(conn, path) is not None:
                raise AlreadyExists(f"{path} is a file")
            existing = self._dirs(conn, [path], cache).get(path)
            row = self._mkdirs(conn, path, caller, cache, mode)
            return {**self._dir_view(row), "created": existing is None}

        return self._transaction(work)

    @staticmethod
    def _dir_view(row: Any) -> dict[str, Any]:
        return {
            "lfn": row.path,
            "type": "directory",
            "owner": row.owner,
            "group": row.grp,
            "mode": f"{row.mode:o}",
            "created_at": row.created_at.isoformat() if row.created_at else None,
        }

    def _file_view(self, row: Any, lfn: str) -> dict[str, Any]:
        return {
            "lfn": lfn,
            "type": "file",
            "size": row.size,
            "checksum": row.checksum,
            "checksum_type": "adler32",
            "guid": row.guid,
            "owner": row.owner,
            "group": row.grp,
            "mode": f"{row.mode:o}",
            "status": row.status,
            "created_at": row.created_at.isoformat(),
        }

    def _file_row(self, conn: Any, lfn: str) -> Any:
        """The file's row with its directory's owner, group, mode and path (one indexed join), or None."""
        directory, _, name = lfn.rpartition("/")
        return _FILE_BY_PATH.first(conn, dir_hash=path_hash(directory or "/"), name=name)

    def _file_or_raise(self, conn: Any, lfn: str) -> Any:
        row = self._file_row(conn, lfn)
        if row is None:
            raise NoSuchPath(f"no such file: {lfn}", lfn=lfn)
        return row

    @staticmethod
    def _dir_of_file(row: Any) -> DirInfo:
        return DirInfo(path=row.dir_path, owner=row.dir_owner, group=row.dir_grp, mode=row.dir_mode)

    def stat(self, lfn: str, caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)
        with self.engine.connect() as conn:
            row = self._file_row(conn, lfn)
            if row is not None:
                caller.check(Action.READ, lfn, self._dir_of_file(row))
                return self._file_view(row, lfn)
            drow = _DIR_BY_HASH.first(conn, path_hash=path_hash(lfn))
        if drow is None:
            raise NoSuchPath(f"no such file or directory: {lfn}", lfn=lfn)
        caller.check(Action.READ, lfn, self._info(drow))
        return self._dir_view(drow)

    def _dir_or_raise(self, conn: Any, path: str) -> Any:
        row = _DIR_BY_HASH.first(conn, path_hash=path_hash(path))
        if row is None:
            if self._file_row(conn, path) is not None:
                raise InvalidInput(f"{path} is a file, not a directory", code="not-a-directory")
            raise NoSuchPath(f"no such directory: {path}", lfn=path)
        return row

    def ls(self, path: str, caller: Caller | None = None, *, cursor: str | None = None,
           limit: int = 1000) -> dict[str, Any]:
        """One page of a directory: subdirectories then files, by name; `next_cursor` continues."""
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        if not 1 <= limit <= MAX_BULK:
            raise InvalidInput(f"limit must be between 1 and {MAX_BULK}")
        kind, after = _decode_cursor(cursor) if cursor else ("d", None)
        entries: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            drow = self._dir_or_raise(conn, path)
            caller.check(Action.READ, path, self._info(drow))
            if kind == "d":
                stmt = select(db.dirs).where(db.dirs.c.parent_id == drow.id)
                if after is not None:
                    stmt = stmt.where(db.dirs.c.name > after)
                for row in conn.execute(stmt.order_by(db.dirs.c.name).limit(limit + 1)):
                    entries.append(self._dir_view(row) | {"name": row.name})
                if len(entries) > limit:
                    entries = entries[:limit]
                    return {"lfn": path, "entries": entries, "next_cursor": _encode_cursor("d", entries[-1]["name"])}
                after = None
            stmt = select(db.files).where(db.files.c.dir_id == drow.id)
            if after is not None:
                stmt = stmt.where(db.files.c.name > after)
            room = limit - len(entries)
            rows = conn.execute(stmt.order_by(db.files.c.name).limit(room + 1)).all()
        prefix = path.rstrip("/")
        for row in rows[:room]:
            entries.append(self._file_view(row, f"{prefix}/{row.name}") | {"name": row.name})
        next_cursor = _encode_cursor("f", rows[room - 1].name) if len(rows) > room else None
        return {"lfn": path, "entries": entries, "next_cursor": next_cursor}

    def iter_ls(self, path: str, caller: Caller | None = None, *, batch: int = BATCH) -> Iterator[dict[str, Any]]:
        """Every entry of a directory, fetched page by page: bounded memory for huge directories."""
        page = self.ls(path, caller, limit=batch)
        while True:
            yield from page["entries"]
            if not page["next_cursor"]:
                return
            page = self.ls(path, caller, cursor=page["next_cursor"], limit=batch)

    # -- registration --------------------------------------------------------------------------------

    def register(self, entries: list[dict[str, Any]], caller: Caller | None = None, *,
                 all_or_nothing: bool = False) -> list[dict[str, Any]]:
        """Bulk registration: per-entry results; bad entries never stop good ones unless all_or_nothing."""
        caller = caller or Caller.system()
        self._check_bulk(entries)
        with collector_paused():  # see gcpause: the collector would otherwise cost about 30 % here
            return self._transaction(lambda conn: self._register(conn, entries, caller, all_or_nothing))

    def _register(self, conn: Any, entries: list[dict[str, Any]], caller: Caller,
                  all_or_nothing: bool) -> list[dict[str, Any]]:
        """Set-based: validate every entry in Python, then a handful of statements per call (directories
        level by level, a few multi-row INSERTs per table), whatever the number of entries."""
        results: list[Any] = [None] * len(entries)
        fields = dict(self.fields())
        fast = {f.name: (f.type, f.id, _PLAIN[f.type]) for f in fields.values()
                if f.level == "file" and f.type in _PLAIN}
        se_ok: dict[str, str] = {}
        guids = TimeOrderedGuids(len(entries))
        prepared: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            try:
                item = self._prepare_entry(entry, fields, fast, se_ok, guids, i)
                if item[0] in seen:
                    raise AlreadyExists(f"{item[0]} appears twice in this request", lfn=item[0])
                seen.add(item[0])
                prepared.append((i, *item))
            except DCSError as exc:
                results[i] = {"lfn": entry.get("lfn") if isinstance(entry, dict) else None, "ok": False,
                              "code": exc.code, "detail": exc.detail}
        # prepared item: (i, lfn, dpath, name, size, checksum, guid, status, mode, ses, meta, ancestors)
        dropped: set[int] = set()

        def refuse(ks: Iterable[int], code: str, detail: str) -> None:
            for k in ks:
                dropped.add(k)
                results[prepared[k][0]] = {"lfn": prepared[k][1], "ok": False, "code": code, "detail": detail}

        by_dir: dict[str, list[int]] = {}
        for k, item in enumerate(prepared):
            ks = by_dir.get(item[2])
            if ks is None:
                by_dir[item[2]] = [k]
            else:
                ks.append(k)
        # directories: every prefix looked up at once; the missing ones are planned, checked, then created
        # level by level (mkdir -p, permission checked once per target directory against the nearest one)
        cache: dict[str, Any] = {}
        chains = {d: prefixes(d) for d in by_dir}
        self._dirs(conn, {p for chain in chains.values() for p in chain}, cache)
        missing_top: dict[str, list[str]] = {}  # first missing component (its parent exists) -> targets
        for dpath in by_dir:
            if dpath not in cache:
                top = next(p for p in chains[dpath] if p not in cache)
                missing_top.setdefault(top, []).append(dpath)
        blocked = self._files_in_the_way(conn, [p for p in missing_top if p != "/"], cache)
        to_create: dict[str, None] = {}
        for dpath, ks in by_dir.items():
            row = cache.get(dpath)
            try:
                if row is not None:
                    if caller.authorize is not None:
                        caller.check(Action.CREATE, dpath, self._info(row))
                    continue
                chain = chains[dpath]
                top = next(p for p in chain if p not in cache)
                if top in blocked:
                    raise InvalidInput(f"{top} is a file, not a directory", code="not-a-directory")
                if caller.authorize is not None:
                    nearest = next((cache[p] for p in reversed(chain) if p in cache), None)
                    caller.check(Action.CREATE, dpath, self._info(nearest) if nearest is not None else None)
                for p in chain:
                    if p not in cache:
                        to_create[p] = None
            except DCSError as exc:
                refuse(ks, exc.code, exc.detail)
        # names already taken: existing files or subdirectories of existing directories, and directories
        # this request creates
        for dpath, ks in by_dir.items():
            row = cache.get(dpath)
            if row is None:
                continue
            ks = [k for k in ks if k not in dropped]
            names = [prepared[k][3] for k in ks]
            taken: set[str] = set()
            for j in range(0, len(names), IN_CHUNK):
                chunk = names[j : j + IN_CHUNK]
                taken.update(conn.execute(select(db.files.c.name).where(
                    db.files.c.dir_id == row.id, db.files.c.name.in_(chunk))).scalars())
                taken.update(conn.execute(select(db.dirs.c.name).where(
                    db.dirs.c.parent_id == row.id, db.dirs.c.name.in_(chunk))).scalars())
            if taken:
                for k in ks:
                    if prepared[k][3] in taken:
                        refuse([k], "already-exists", f"{prepared[k][1]} is already registered")
        if to_create:
            clashes = [k for k, item in enumerate(prepared) if item[1] in to_create and k not in dropped]
            for k in clashes:
                refuse([k], "already-exists", f"{prepared[k][1]} is a directory of this request")
        good = [item for k, item in enumerate(prepared) if k not in dropped] if dropped else prepared
        # ancestors must exist (in the catalog or in this request)
        if any(item[11] for item in good):
            in_batch = {item[1] for item in good}
            known_ancestors = self._file_ids(conn, {a for item in good for a in item[11] if a not in in_batch})
            still_good = []
            for item in good:
                missing = [a for a in item[11] if a not in in_batch and a not in known_ancestors]
                if missing:
                    results[item[0]] = {"lfn": item[1], "ok": False, "code": "no-such-path",
                                        "detail": f"ancestor {missing[0]} is not registered"}
                else:
                    still_good.append(item)
            good = still_good
        else:
            known_ancestors = {}
        for item in good:
            results[item[0]] = {"lfn": item[1], "ok": True}
        if all_or_nothing and len(good) != len(entries):
            failed = len(entries) - len(good)
            raise BulkFailed(f"{failed} of {len(entries)} entries refused; nothing registered", results=results)
        if not good:
            return results
        stamp = now()
        if to_create:
            self._create_dirs(conn, list(to_create), caller, cache, stamp)
        self._insert_registered(conn, good, caller, cache, stamp, known_ancestors)
        return results

    def _prepare_entry(self, entry: Any, fields: dict[str, Field], fast: dict[str, tuple[str, int, type]],
                       se_ok: dict[str, str], guids: TimeOrderedGuids, i: int) -> tuple[Any, ...]:
        """One entry checked and normalized: (lfn, dir, name, size, checksum, guid, status, mode, ses, meta,
        ancestors), meta as (type, field id, value). Plain values take fast paths; the rest the full checks.
        `fast`: file-level fields whose values need no conversion when of this Python type."""
        if type(entry) is not dict and not isinstance(entry, dict):
            raise InvalidInput("an entry is an object with lfn, size, checksum")
        get = entry.get
        lfn = get("lfn")
        # the fast path of `normalize_lfn`, inlined: this runs once per registered file
        if not (type(lfn) is str and len(lfn) <= MAX_NAME and lfn.startswith(self._root_slash)
                and not _LFN_SUSPECT.search(lfn) and lfn.isascii()):
            lfn = self._normalize_lfn_slow(lfn)
            if lfn == self.root:
                raise InvalidLFN(f"{lfn} is the VO root directory")
        dpath, _, name = lfn.rpartition("/")
        size = get("size")
        if type(size) is not int or size < 0:
            raise InvalidInput(f"size {size!r} must be a non-negative integer", code="invalid-size")
        checksum = get("checksum")
        if type(checksum) is not str or len(checksum) != 8 or checksum.strip(_HEX_DIGITS):
            checksum = normalize_checksum(checksum)
        guid = get("guid")
        if guid:
            try:
                guid = str(uuid.UUID(str(guid))).upper()
            except ValueError:
                raise InvalidInput(f"GUID {guid!r} is not a UUID", code="invalid-guid") from None
        else:
            guid = guids[i]
        status = get("status", "AprioriGood")
        if status not in FILE_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(FILE_STATUSES)}", code="invalid-status")
        mode = get("mode", DEFAULT_FILE_MODE)
        if type(mode) is not int or not 0 <= mode <= 0o777:
            raise InvalidInput("mode must be between 0 and 0777", code="invalid-mode")
        ses: Any = get("replicas")
        if ses is None:
            se = get("se")
            ses = () if not se else (se if type(se) is str and se in se_ok else self._check_se_cached(se, se_ok),)
        else:
            if not isinstance(ses, list):
                raise InvalidInput("replicas must be a list of SE names")
            ses = tuple(se if type(se) is str and se in se_ok else self._check_se_cached(se, se_ok)
                        for se in dict.fromkeys(s if isinstance(s, str) else repr(s) for s in ses))
        meta: Any = ()
        given = get("metadata")
        if given:
            if not isinstance(given, dict):
                raise InvalidInput("metadata must be an object {field: value}")
            meta = []
            for fname, value in given.items():
                spec = fast.get(fname)
                if spec is not None and type(value) is spec[2] and (
                        spec[2] is not str or (len(value) <= 128 and "\x00" not in value)):
                    meta.append((spec[0], spec[1], value))
                    continue
                fld = fields.get(fname)
                if fld is None:
                    fld = fields[fname] = self.field(fname)
                if fld.level != "file":
                    raise InvalidInput(f"{fname!r} is a directory field: set it on a directory",
                                       code="metadata-level-mismatch")
                kind, vt = fld.type, type(value)
                if not ((kind == "int" and vt is int) or (kind == "float" and vt is float)
                        or (kind == "string" and vt is str and len(value) <= 128 and "\x00" not in value)):
                    value = self.coerce(fname, kind, value)
                meta.append((kind, fld.id, value))
        ancestors: Any = ()
        given = get("ancestors")
        if given:
            if not isinstance(given, list):
                raise InvalidInput("ancestors must be a list of LFNs")
            ancestors = [self.normalize_lfn(a) for a in given]
            if lfn in ancestors:
                raise InvalidInput(f"{lfn} cannot be its own ancestor", code="ancestry-cycle")
        return lfn, dpath, name, size, checksum, guid, status, mode, ses, meta, ancestors

    def _check_se_cached(self, se: Any, se_ok: dict[str, str]) -> str:
        checked = self._check_se(se)
        se_ok[checked] = checked
        return checked

    def _files_in_the_way(self, conn: Any, paths: list[str], cache: dict[str, Any]) -> set[str]:
        """Which of these would-be directories (each with an existing parent) are files."""
        by_parent: dict[int, list[str]] = defaultdict(list)
        for p in paths:
            by_parent[cache[parent_of(p)].id].append(p.rsplit("/", 1)[-1])
        out: set[str] = set()
        for parent_id, names in by_parent.items():
            parent = next(r for r in cache.values() if r.id == parent_id)
            prefix = parent.path.rstrip("/")
            for j in range(0, len(names), IN_CHUNK):
                for name in conn.execute(select(db.files.c.name).where(
                        db.files.c.dir_id == parent_id, db.files.c.name.in_(names[j : j + IN_CHUNK]))).scalars():
                    out.add(f"{prefix}/{name}")
        return out

    def _create_dirs(self, conn: Any, paths: list[str], caller: Caller, cache: dict[str, Any],
                     stamp: datetime) -> None:
        """Insert missing directories (their parents exist or are in `paths`), one statement per level."""
        levels: dict[int, list[str]] = defaultdict(list)
        for p in paths:
            levels[0 if p == "/" else p.count("/")].append(p)
        for depth in sorted(levels):
            rows = []
            for p in levels[depth]:
                parent = cache.get(parent_of(p)) if p != "/" else None
                rows.append({
                    "parent_id": parent.id if parent is not None else None,
                    "name": p.rsplit("/", 1)[-1] if p != "/" else "",
                    "path": p,
                    "path_hash": path_hash(p),
                    "depth": depth,
                    "owner": caller.username if p != "/" else "dcs",
                    "grp": caller.group if p != "/" else "dcs_admin",
                    "mode": DEFAULT_DIR_MODE,
                    "created_at": stamp,
                    "modified_at": stamp,
                })
            conn.execute(db.dirs.insert(), rows)
            self._dirs(conn, levels[depth], cache)

    def _insert_registered(self, conn: Any, good: list[tuple[Any, ...]], caller: Caller, cache: dict[str, Any],
                           stamp: datetime, known_ancestors: dict[str, int]) -> None:
        """Files, replicas, metadata and provenance of checked entries: a few multi-row INSERTs per table
        (`_insert_rows`), file ids allocated up front where the database allows it."""
        dialect = conn.dialect
        to_db = db.files.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        when = to_db(stamp) if to_db else stamp
        owner, grp = caller.username, caller.group
        dir_ids = {d: cache[d].id for d in {item[2] for item in good}}
        ids = self._new_file_ids(conn, len(good))
        columns = "dir_id, name, size, checksum, guid, owner, grp, mode, status, created_at, modified_at"
        if ids is None:  # MariaDB/MySQL: auto-increment, ids read back by key
            _insert_rows(conn, f"cat_files ({columns})", 11, [
                (dir_ids[it[2]], it[3], it[4], it[5], it[6], owner, grp, it[8], it[7], when, when) for it in good])
            ids = self._read_file_ids(conn, [(dir_ids[it[2]], it[3]) for it in good])
        else:
            _insert_rows(conn, f"cat_files (id, {columns})", 12, [
                (fid, dir_ids[it[2]], it[3], it[4], it[5], it[6], owner, grp, it[8], it[7], when, when)
                for fid, it in zip(ids, good, strict=True)])
        replica_rows = []
        meta_rows: dict[str, list[tuple[Any, ...]]] = {}
        ancestry_rows = []
        lfn_ids = {it[1]: fid for fid, it in zip(ids, good, strict=True)} if any(it[11] for it in good) else {}
        per_dir: dict[str, dict[str, list[int]]] = {}
        for fid, it in zip(ids, good, strict=True):
            size, ses = it[4], it[9]
            acc = per_dir.get(it[2])
            if acc is None:
                acc = per_dir[it[2]] = {"": [0, 0]}
            total = acc[""]
            total[0] += 1
            total[1] += size
            for se in ses:
                replica_rows.append((fid, se, "AprioriGood", when))
                total = acc.get(se)
                if total is None:
                    total = acc[se] = [0, 0]
                total[0] += 1
                total[1] += size
            for kind, field_id, value in it[10]:
                rows = meta_rows.get(kind)
                if rows is None:
                    rows = meta_rows[kind] = []
                rows.append((fid, field_id, value))
            for a in it[11]:
                ancestry_rows.append((fid, lfn_ids.get(a) or known_ancestors[a]))
        if replica_rows:
            _insert_rows(conn, "cat_replicas (file_id, se, status, created_at)", 4, replica_rows)
        for kind, rows in meta_rows.items():
            to_value = db.file_meta[kind].c.value.type.dialect_impl(dialect).bind_processor(dialect)
            if to_value is not None:
                rows = [(f, k, to_value(v)) for f, k, v in rows]
            _insert_rows(conn, f"cat_fmeta_{kind} (file_id, field_id, value)", 3, rows)
        if ancestry_rows:
            _insert_rows(conn, "cat_ancestry (file_id, ancestor_id)", 2, list(dict.fromkeys(ancestry_rows)))
        deltas: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        for dpath, acc in per_dir.items():
            for did in (cache[p].id for p in prefixes(dpath)):
                for se, (n, b) in acc.items():
                    d = deltas[(did, se)]
                    d[0] += n
                    d[1] += b
        self._apply_usage(conn, deltas)

    @staticmethod
    def _new_file_ids(conn: Any, count: int) -> list[int] | None:
        """Ids for `count` new files, allocated up front where the database allows it safely: SQLite (the
        transaction holds the only write lock once it writes; a stale snapshot fails, never duplicates) and
        PostgreSQL (the column's sequence). None: let the database assign them (MariaDB)."""
        name = conn.dialect.name
        if name == "sqlite":
            top = conn.exec_driver_sql("SELECT max(id) FROM cat_files").scalar() or 0
            return list(range(top + 1, top + 1 + count))
        if name == "postgresql":
            return list(conn.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence('cat_files', 'id')) FROM generate_series(1, %(n)s)",
                {"n": count}).scalars())
        return None

    @staticmethod
    def _read_file_ids(conn: Any, keys: list[tuple[int, str]]) -> list[int]:
        ids: dict[tuple[int, str], int] = {}
        by_dir: dict[int, list[str]] = defaultdict(list)
        for dir_id, name in keys:
            by_dir[dir_id].append(name)
        for dir_id, names in by_dir.items():
            for j in range(0, len(names), IN_CHUNK):
                for fid, name in conn.execute(select(db.files.c.id, db.files.c.name).where(
                        db.files.c.dir_id == dir_id, db.files.c.name.in_(names[j : j + IN_CHUNK]))):
                    ids[(dir_id, name)] = fid
        return [ids[key] for key in keys]

    def _file_ids(self, conn: Any, lfns: Iterable[str]) -> dict[str, int]:
        by_dir: dict[str, list[str]] = defaultdict(list)
        for lfn in lfns:
            by_dir[parent_of(lfn)].append(lfn.rsplit("/", 1)[-1])
        out: dict[str, int] = {}
        for dpath, names in by_dir.items():
            for j in range(0, len(names), 500):
                stmt = (
                    select(db.files.c.id, db.files.c.name)
                    .select_from(db.files.join(db.dirs, db.files.c.dir_id == db.dirs.c.id))
                    .where(db.dirs.c.path_hash == path_hash(dpath), db.files.c.name.in_(names[j : j + 500]))
                )
                for fid, name in conn.execute(stmt):
                    out[f"{dpath.rstrip('/')}/{name}"] = fid
        return out

    # -- replicas ------------------------------------------------------------------------------------

    def add_replicas(self, entries: list[dict[str, Any]], caller: Caller | None = None, *,
                     all_or_nothing: bool = False) -> list[dict[str, Any]]:
        caller = caller or Caller.system()
        self._check_bulk(entries)

        def work(conn: Any) -> list[dict[str, Any]]:
            results: list[dict[str, Any]] = []
            rows = []
            deltas: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
            cache: dict[str, Any] = {}
            stamp = now()
            pending: set[tuple[int, str]] = set()
            for entry in entries:
                try:
                    if not isinstance(entry, dict):
                        raise InvalidInput("an entry is an object with lfn and se")
                    lfn = self.normalize_lfn(entry.get("lfn"))
                    se = self._check_se(entry.get("se"))
                    status = entry.get("status", "AprioriGood")
                    if status not in REPLICA_STATUSES:
                        raise InvalidInput(f"status must be one of {', '.join(REPLICA_STATUSES)}", code="invalid-status")
                    row = self._file_or_raise(conn, lfn)
                    caller.check(Action.MODIFY, lfn, self._dir_of_file(row))
                    exists = conn.execute(select(db.replicas.c.se).where(
                        db.replicas.c.file_id == row.id, db.replicas.c.se == se)).first()
                    if exists is not None or (row.id, se) in pending:
                        raise AlreadyExists(f"{lfn} already has a replica at {se}", code="replica-exists")
                    pending.add((row.id, se))
                    rows.append({"file_id": row.id, "se": se, "status": status, "created_at": stamp})
                    for did in self._chain_ids(conn, row.dir_path, cache):
                        d = deltas[(did, se)]
                        d[0] += 1
                        d[1] += row.size
                    results.append({"lfn": lfn, "se": se, "ok": True})
                except DCSError as exc:
                    results.append({"lfn": entry.get("lfn") if isinstance(entry, dict) else None,
                                    "se": entry.get("se") if isinstance(entry, dict) else None,
                                    "ok": False, "code": exc.code, "detail": exc.detail})
            if all_or_nothing and any(not r["ok"] for r in results):
                raise BulkFailed("some replicas were refused; nothing registered", results=results)
            if rows:
                conn.execute(db.replicas.insert(), rows)
                self._apply_usage(conn, deltas)
            return results

        return self._transaction(work)

    def replicas(self, lfns: list[str], caller: Caller | None = None) -> dict[str, list[dict[str, Any]]]:
        caller = caller or Caller.system()
        self._check_bulk(lfns)
        lfns = [self.normalize_lfn(lfn) for lfn in lfns]
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for lfn in lfns:
                row = self._file_or_raise(conn, lfn)
                caller.check(Action.READ, lfn, self._dir_of_file(row))
                reps = conn.execute(select(db.replicas).where(db.replicas.c.file_id == row.id)
                                    .order_by(db.replicas.c.se)).all()
                out[lfn] = [{"se": r.se, "url": self.replica_url(lfn, r.se), "status": r.status} for r in reps]
        return out

    def remove_replica(self, lfn: str, se: str, caller: Caller | None = None, *, force: bool = False) -> dict[str, Any]:
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)

        def work(conn: Any) -> dict[str, Any]:
            row = self._file_or_raise(conn, lfn)
            caller.check(Action.MODIFY, lfn, self._dir_of_file(row))
            ses = set(conn.execute(select(db.replicas.c.se).where(db.replicas.c.file_id == row.id)).scalars())
            if se not in ses:
                raise NoSuchPath(f"{lfn} has no replica at {se}", code="no-such-replica")
            if len(ses) == 1 and not force:
                raise LastReplica(f"{se} holds the last replica of {lfn}; use force to remove it anyway")
            conn.execute(delete(db.replicas).where(db.replicas.c.file_id == row.id, db.replicas.c.se == se))
            self._apply_usage(conn, {(did, se): [-1, -row.size] for did in self._chain_ids(conn, row.dir_path, {})})
            return {"lfn": lfn, "se": se, "removed": True, "remaining": sorted(ses - {se})}

        return self._transaction(work)

    def set_replica_status(self, lfn: str, se: str, status: str, caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)
        if status not in REPLICA_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(REPLICA_STATUSES)}", code="invalid-status")

        def work(conn: Any) -> dict[str, Any]:
            row = self._file_or_raise(conn, lfn)
            caller.check(Action.MODIFY, lfn, self._dir_of_file(row))
            done = conn.execute(update(db.replicas).where(db.replicas.c.file_id == row.id, db.replicas.c.se == se)
                                .values(status=status))
            if done.rowcount == 0:
                raise NoSuchPath(f"{lfn} has no replica at {se}", code="no-such-replica")
            return {"lfn": lfn, "se": se, "status": status}

        return self._transaction(work)

    def set_file_status(self, lfn: str, status: str, caller: Caller | None = None) -> dict[str, Any]:
        """DIRAC's `setFileStatus`: the file's own status (AprioriGood, Trash, ...), e.g. set by a request."""
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)
        if status not in FILE_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(FILE_STATUSES)}", code="invalid-status")

        def work(conn: Any) -> dict[str, Any]:
            row = self._file_or_raise(conn, lfn)
            caller.check(Action.MODIFY, lfn, self._dir_of_file(row))
            conn.execute(update(db.files).where(db.files.c.id == row.id).values(status=status))
            return {"lfn": lfn, "status": status}

        return self._transaction(work)

    # -- removal and moves ---------------------------------------------------------------------------

    def _file_usage(self, conn: Any, file_ids: list[int]) -> tuple[int, int, dict[str, list[int]]]:
        """(files, bytes, {se: [files, bytes]}) of some files."""
        total = [0, 0]
        per_se: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for j in range(0, len(file_ids), 500):
            chunk = file_ids[j : j + 500]
            n, b = conn.execute(select(func.count(), func.coalesce(func.sum(db.files.c.size), 0))
                                .where(db.files.c.id.in_(chunk))).one()
            total[0] += n
            total[1] += int(b)
            stmt = (select(db.replicas.c.se, func.count(), func.coalesce(func.sum(db.files.c.size), 0))
                    .select_from(db.replicas.join(db.files, db.files.c.id == db.replicas.c.file_id))
                    .where(db.replicas.c.file_id.in_(chunk)).group_by(db.replicas.c.se))
            for se, n, b in conn.execute(stmt):
                per_se[se][0] += n
                per_se[se][1] += int(b)
        return total[0], total[1], per_se

    @staticmethod
    def _delete_files(conn: Any, file_ids: list[int]) -> None:
        for j in range(0, len(file_ids), 500):
            chunk = file_ids[j : j + 500]
            for table in db.file_meta.values():
                conn.execute(delete(table).where(table.c.file_id.in_(chunk)))
            conn.execute(delete(db.replicas).where(db.replicas.c.file_id.in_(chunk)))
            conn.execute(delete(db.ancestry).where(or_(db.ancestry.c.file_id.in_(chunk),
                                                       db.ancestry.c.ancestor_id.in_(chunk))))
            conn.execute(delete(db.files).where(db.files.c.id.in_(chunk)))

    def remove(self, path: str, caller: Caller | None = None, *, recursive: bool = False,
               force: bool = False) -> dict[str, Any]:
        """Remove a file (all its replicas from the catalog) or a directory (`recursive` when not empty)."""
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        if path == self.root:
            raise InvalidInput(f"{self.root} cannot be removed", code="protected-path")

        def work(conn: Any) -> dict[str, Any]:
            cache: dict[str, Any] = {}
            row = self._file_row(conn, path)
            if row is not None:
                caller.check(Action.MODIFY, path, self._dir_of_file(row))
                n, b, per_se = self._file_usage(conn, [row.id])
                self._delete_files(conn, [row.id])
                deltas: dict[tuple[int, str], list[int]] = {}
                for did in self._chain_ids(conn, row.dir_path, cache):
                    deltas[(did, "")] = [-n, -b]
                    for se, (sn, sb) in per_se.items():
                        deltas[(did, se)] = [-sn, -sb]
                self._apply_usage(conn, deltas)
                return {"lfn": path, "type": "file", "removed_files": 1, "removed_directories": 0}
            drow = self._dir_or_raise(conn, path)
            caller.check(Action.MODIFY, path, self._info(drow))
            subtree = conn.execute(select(db.dirs.c.id, db.dirs.c.depth, db.dirs.c.path, db.dirs.c.owner,
                                          db.dirs.c.grp, db.dirs.c.mode)
                                   .where(or_(db.dirs.c.id == drow.id,
                                              db.dirs.c.path.like(_like_prefix(path), escape=LIKE_ESCAPE)))).all()
            dir_ids = [r.id for r in subtree]
            has_files = conn.execute(select(db.files.c.id).where(db.files.c.dir_id.in_(dir_ids[:500])).limit(1)).first()
            if (len(dir_ids) > 1 or has_files is not None) and not recursive:
                raise DirectoryNotEmpty(f"{path} is not empty; remove it recursively")
            for r in subtree:
                if r.id != drow.id:
                    caller.check(Action.MODIFY, r.path, DirInfo(r.path, r.owner, r.grp, r.mode))
            totals = {se: (f, b) for se, f, b in conn.execute(
                select(db.usage.c.se, db.usage.c.files, db.usage.c.bytes).where(db.usage.c.dir_id == drow.id))}
            removed = 0
            for j in range(0, len(dir_ids), 500):
                while True:
                    fids = list(conn.execute(select(db.files.c.id).where(
                        db.files.c.dir_id.in_(dir_ids[j : j + 500])).limit(5000)).scalars())
                    if not fids:
                        break
                    self._delete_files(conn, fids)
                    removed += len(fids)
            for j in range(0, len(dir_ids), 500):
                chunk = dir_ids[j : j + 500]
                conn.execute(delete(db.dir_meta).where(db.dir_meta.c.dir_id.in_(chunk)))
                conn.execute(delete(db.usage).where(db.usage.c.dir_id.in_(chunk)))
            for r in sorted(subtree, key=lambda r: -r.depth):
                conn.execute(delete(db.dirs).where(db.dirs.c.id == r.id))
            deltas = {}
            for did in self._chain_ids(conn, parent_of(path), cache):
                for se, (f, b) in totals.items():
                    deltas[(did, se)] = [-f, -b]
            self._apply_usage(conn, deltas)
            return {"lfn": path, "type": "directory", "removed_files": removed, "removed_directories": len(dir_ids)}

        return self._transaction(work)

    def move(self, source: str, destination: str, caller: Caller | None = None) -> dict[str, Any]:
        """Rename a file or a whole directory subtree; usage moves with it."""
        caller = caller or Caller.system()
        source, destination = self.normalize_lfn(source), self.normalize_lfn(destination)
        if source == self.root:
            raise InvalidInput(f"{self.root} cannot be moved", code="protected-path")
        if destination == source or destination.startswith(source + "/"):
            raise InvalidInput(f"cannot move {source} into itself", code="invalid-move")

        def work(conn: Any) -> dict[str, Any]:
            cache: dict[str, Any] = {}
            if self._file_row(conn, destination) is not None or self._dirs(conn, [destination], cache):
                raise AlreadyExists(f"{destination} exists")
            frow = self._file_row(conn, source)
            if frow is not None:
                caller.check(Action.MODIFY, source, self._dir_of_file(frow))
                target_dir = self._mkdirs(conn, parent_of(destination), caller, cache)
                caller.check(Action.CREATE, destination, self._info(target_dir))
                n, b, per_se = self._file_usage(conn, [frow.id])
                totals = {"": (n, b)} | {se: (v[0], v[1]) for se, v in per_se.items()}
                old_chain = self._chain_ids(conn, frow.dir_path, cache)
                conn.execute(update(db.files).where(db.files.c.id == frow.id).values(
                    dir_id=target_dir.id, name=destination.rsplit("/", 1)[-1], modified_at=now()))
                new_chain = self._chain_ids(conn, target_dir.path, cache)
                kind = "file"
            else:
                drow = self._dir_or_raise(conn, source)
                caller.check(Action.MODIFY, source, self._info(drow))
                target_parent = self._mkdirs(conn, parent_of(destination), caller, cache)
                caller.check(Action.CREATE, destination, self._info(target_parent))
                totals = {se: (f, b) for se, f, b in conn.execute(
                    select(db.usage.c.se, db.usage.c.files, db.usage.c.bytes).where(db.usage.c.dir_id == drow.id))}
                old_chain = self._chain_ids(conn, parent_of(source), cache)
                subtree = conn.execute(select(db.dirs.c.id, db.dirs.c.path, db.dirs.c.depth).where(
                    db.dirs.c.path.like(_like_prefix(source), escape=LIKE_ESCAPE))).all()
                shift = target_parent.depth + 1 - drow.depth
                conn.execute(update(db.dirs).where(db.dirs.c.id == drow.id).values(
                    parent_id=target_parent.id, name=destination.rsplit("/", 1)[-1], path=destination,
                    path_hash=path_hash(destination), depth=drow.depth + shift, modified_at=now()))
                updates = [{"b_id": r.id, "b_path": destination + r.path[len(source):],
                            "b_hash": path_hash(destination + r.path[len(source):]), "b_depth": r.depth + shift}
                           for r in subtree]
                if updates:
                    conn.execute(update(db.dirs).where(db.dirs.c.id == _bindparam("b_id")).values(
                        path=_bindparam("b_path"), path_hash=_bindparam("b_hash"), depth=_bindparam("b_depth")),
                        updates)
                cache.clear()
                new_chain = self._chain_ids(conn, target_parent.path, cache)
                kind = "directory"
            deltas: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
            for did in old_chain:
                for se, (f, b) in totals.items():
                    deltas[(did, se)][0] -= f
                    deltas[(did, se)][1] -= b
            for did in new_chain:
                for se, (f, b) in totals.items():
                    deltas[(did, se)][0] += f
                    deltas[(did, se)][1] += b
            self._apply_usage(conn, deltas)
            return {"source": source, "destination": destination, "type": kind}

        return self._transaction(work)

    def chmod(self, path: str, mode: int, caller: Caller | None = None) -> dict[str, Any]:
        return self._set_attrs(path, caller, mode=mode)

    def chown(self, path: str, caller: Caller | None = None, *, owner: str | None = None,
              group: str | None = None) -> dict[str, Any]:
        return self._set_attrs(path, caller, owner=owner, group=group)

    def _set_attrs(self, path: str, caller: Caller | None, **attrs: Any) -> dict[str, Any]:
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        values = {("grp" if k == "group" else k): v for k, v in attrs.items() if v is not None}
        if "mode" in values and not (isinstance(values["mode"], int) and 0 <= values["mode"] <= 0o777):
            raise InvalidInput("mode must be between 0 and 0777", code="invalid-mode")
        if "owner" in values and not caller.admin:
            raise PermissionDenied("only catalog administrators change owners")

        def work(conn: Any) -> dict[str, Any]:
            frow = self._file_row(conn, path)
            if frow is not None:
                owner, node, table, key = frow.owner, self._dir_of_file(frow), db.files, frow.id
            else:
                drow = self._dir_or_raise(conn, path)
                owner, node, table, key = drow.owner, self._info(drow), db.dirs, drow.id
            if not caller.admin and owner != caller.username:
                raise PermissionDenied(f"only the owner of {path} ({owner}) or an administrator may change it")
            caller.check(Action.MODIFY, path, node)
            conn.execute(update(table).where(table.c.id == key).values(**values, modified_at=now()))
            return {"lfn": path, **{k: (f"{v:o}" if k == "mode" else v) for k, v in attrs.items() if v is not None}}

        return self._transaction(work)

    # -- usage ---------------------------------------------------------------------------------------

    def usage(self, path: str, caller: Caller | None = None, *, children: bool = False) -> dict[str, Any]:
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        with self.engine.connect() as conn:
            drow = self._dir_or_raise(conn, path)
            caller.check(Action.READ, path, self._info(drow))
            rows = conn.execute(select(db.usage).where(db.usage.c.dir_id == drow.id)).all()
            result = self._usage_view(path, rows)
            if children:
                subs = conn.execute(select(db.dirs.c.id, db.dirs.c.path).where(db.dirs.c.parent_id == drow.id)
                                    .order_by(db.dirs.c.name)).all()
                per: dict[int, list[Any]] = defaultdict(list)
                ids = [s.id for s in subs]
                for j in range(0, len(ids), 500):
                    for r in conn.execute(select(db.usage).where(db.usage.c.dir_id.in_(ids[j : j + 500]))):
                        per[r.dir_id].append(r)
                result["children"] = [self._usage_view(s.path, per[s.id]) for s in subs]
        return result

    @staticmethod
    def _usage_view(path: str, rows: list[Any]) -> dict[str, Any]:
        total = next(((r.files, r.bytes) for r in rows if r.se == ""), (0, 0))
        return {
            "lfn": path,
            "files": int(total[0]),
            "bytes": int(total[1]),
            "per_se": {r.se: {"files": int(r.files), "bytes": int(r.bytes)}
                       for r in sorted(rows, key=lambda r: r.se) if r.se and r.files},
        }

    def se_usage(self, caller: Caller | None = None) -> dict[str, Any]:
        return self.usage(self.root, caller)["per_se"]

    # -- metadata values -----------------------------------------------------------------------------

    def set_metadata(self, entries: list[dict[str, Any]], caller: Caller | None = None, *,
                     all_or_nothing: bool = False) -> list[dict[str, Any]]:
        """Bulk: `[{path, metadata: {field: value | null}}]`; null removes the value."""
        caller = caller or Caller.system()
        self._check_bulk(entries)

        def work(conn: Any) -> list[dict[str, Any]]:
            results = []
            deletes: dict[str, list[dict[str, Any]]] = defaultdict(list)
            inserts: dict[str, list[dict[str, Any]]] = defaultdict(list)
            dir_deletes: list[dict[str, Any]] = []
            dir_inserts: list[dict[str, Any]] = []
            for entry in entries:
                try:
                    if not isinstance(entry, dict) or not isinstance(entry.get("metadata"), dict):
                        raise InvalidInput("an entry is an object {path, metadata: {field: value}}")
                    path = self.normalize_lfn(entry.get("path") or entry.get("lfn"))
                    frow = self._file_row(conn, path)
                    if frow is not None:
                        caller.check(Action.MODIFY, path, self._dir_of_file(frow))
                        level, target = "file", frow.id
                    else:
                        drow = self._dir_or_raise(conn, path)
                        caller.check(Action.MODIFY, path, self._info(drow))
                        level, target = "dir", drow.id
                    staged = []
                    for name, value in entry["metadata"].items():
                        fld = self.field(name)
                        if fld.level != level:
                            where = "a directory" if fld.level == "dir" else "a file"
                            raise InvalidInput(f"{name!r} is a {fld.level} field: set it on {where}",
                                               code="metadata-level-mismatch")
                        staged.append((fld, None if value is None else self.coerce(name, fld.type, value)))
                    for fld, value in staged:
                        if level == "file":
                            deletes[fld.type].append({"b_file": target, "b_field": fld.id})
                            if value is not None:
                                inserts[fld.type].append({"file_id": target, "field_id": fld.id, "value": value})
                        else:
                            dir_deletes.append({"b_dir": target, "b_field": fld.id})
                            if value is not None:
                                dir_inserts.append({"dir_id": target, "field_id": fld.id,
                                                    "v_int": None, "v_float": None, "v_string": None,
                                                    "v_date": None, f"v_{fld.type}": value})
                    results.append({"path": path, "ok": True})
                except DCSError as exc:
                    results.append({"path": entry.get("path") if isinstance(entry, dict) else None, "ok": False,
                                    "code": exc.code, "detail": exc.detail})
            if all_or_nothing and any(not r["ok"] for r in results):
                raise BulkFailed("some entries were refused; nothing changed", results=results)
            for kind, rows in deletes.items():
                t = db.file_meta[kind]
                conn.execute(delete(t).where(t.c.file_id == _bindparam("b_file"), t.c.field_id == _bindparam("b_field")),
                             rows)
            for kind, rows in inserts.items():
                conn.execute(db.file_meta[kind].insert(), _last_wins(rows, ("file_id", "field_id")))
            if dir_deletes:
                t = db.dir_meta
                conn.execute(delete(t).where(t.c.dir_id == _bindparam("b_dir"), t.c.field_id == _bindparam("b_field")),
                             dir_deletes)
            if dir_inserts:
                conn.execute(db.dir_meta.insert(), _last_wins(dir_inserts, ("dir_id", "field_id")))
            return results

        return self._transaction(work)

    def get_metadata(self, path: str, caller: Caller | None = None) -> dict[str, Any]:
        """A file's or directory's metadata, directory fields inherited from above (`inherited_from`)."""
        caller = caller or Caller.system()
        path = self.normalize_lfn(path)
        fields_by_id = {f.id: f for f in self.fields(reload=True).values()}
        with self.engine.connect() as conn:
            frow = self._file_row(conn, path)
            values: dict[str, Any] = {}
            origin: dict[str, str] = {}
            if frow is not None:
                caller.check(Action.READ, path, self._dir_of_file(frow))
                for kind, t in db.file_meta.items():
                    for r in conn.execute(select(t.c.field_id, t.c.value).where(t.c.file_id == frow.id)):
                        values[fields_by_id[r.field_id].name] = _jsonable(r.value)
                        origin[fields_by_id[r.field_id].name] = path
                dir_path = frow.dir_path
            else:
                drow = self._dir_or_raise(conn, path)
                caller.check(Action.READ, path, self._info(drow))
                dir_path = path
            chain = self._dirs(conn, prefixes(dir_path), {})
            ids = {row.id: p for p, row in chain.items()}
            rows = conn.execute(select(db.dir_meta).where(db.dir_meta.c.dir_id.in_(list(ids)))).all()
            rows.sort(key=lambda r: len(ids[r.dir_id]))
            for r in rows:
                fld = fields_by_id[r.field_id]
                values[fld.name] = _jsonable(getattr(r, f"v_{fld.type}"))
                origin[fld.name] = ids[r.dir_id]
        return {"lfn": path, "metadata": values, "inherited_from": {k: v for k, v in origin.items() if v != path}}

    # -- provenance ----------------------------------------------------------------------------------

    def add_ancestors(self, lfn: str, ancestors: list[str], caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)
        ancestors = [self.normalize_lfn(a) for a in ancestors]

        def work(conn: Any) -> dict[str, Any]:
            row = self._file_or_raise(conn, lfn)
            caller.check(Action.MODIFY, lfn, self._dir_of_file(row))
            ids = self._file_ids(conn, ancestors)
            missing = [a for a in ancestors if a not in ids]
            if missing:
                raise NoSuchPath(f"ancestor {missing[0]} is not registered", lfn=missing[0])
            descendants = {d for d, _ in self._walk(conn, [row.id], "down", 100)} | {row.id}
            if descendants & set(ids.values()):
                raise InvalidInput(f"making these ancestors of {lfn} would create a cycle", code="ancestry-cycle")
            existing = set(conn.execute(select(db.ancestry.c.ancestor_id).where(db.ancestry.c.file_id == row.id)).scalars())
            rows = [{"file_id": row.id, "ancestor_id": a} for a in dict.fromkeys(ids.values()) if a not in existing]
            if rows:
                conn.execute(db.ancestry.insert(), rows)
            return {"lfn": lfn, "added": len(rows)}

        return self._transaction(work)

    def _walk(self, conn: Any, start: list[int], direction: str, depth: int) -> list[tuple[int, int]]:
        here, there = ((db.ancestry.c.file_id, db.ancestry.c.ancestor_id) if direction == "up"
                       else (db.ancestry.c.ancestor_id, db.ancestry.c.file_id))
        seen: dict[int, int] = {}
        frontier = list(start)
        for level in range(1, depth + 1):
            nxt: list[int] = []
            for j in range(0, len(frontier), 500):
                for fid in conn.execute(select(there).where(here.in_(frontier[j : j + 500]))).scalars():
                    if fid not in seen and fid not in start:
                        seen[fid] = level
                        nxt.append(fid)
            if not nxt:
                break
            frontier = nxt
        return list(seen.items())

    def provenance(self, lfn: str, direction: str, caller: Caller | None = None, *, depth: int = 1) -> list[dict[str, Any]]:
        """Ancestors (`up`) or descendants (`down`) to `depth` generations, each with its depth."""
        caller = caller or Caller.system()
        lfn = self.normalize_lfn(lfn)
        if direction not in ("up", "down") or not 1 <= depth <= 100:
            raise InvalidInput("direction is up or down; depth between 1 and 100")
        with self.engine.connect() as conn:
            row = self._file_or_raise(conn, lfn)
            caller.check(Action.READ, lfn, self._dir_of_file(row))
            found = self._walk(conn, [row.id], direction, depth)
            names = self._lfns(conn, [fid for fid, _ in found])
        return sorted(({"lfn": names[fid], "depth": d} for fid, d in found), key=lambda x: (x["depth"], x["lfn"]))

    def _lfns(self, conn: Any, ids: list[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for j in range(0, len(ids), 500):
            stmt = (select(db.files.c.id, db.files.c.name, db.dirs.c.path)
                    .select_from(db.files.join(db.dirs, db.files.c.dir_id == db.dirs.c.id))
                    .where(db.files.c.id.in_(ids[j : j + 500])))
            for fid, name, dpath in conn.execute(stmt):
                out[fid] = f"{dpath.rstrip('/')}/{name}"
        return out

    # -- queries -------------------------------------------------------------------------------------

    def parse_query(self, query: Any) -> list[Term]:
        terms = parse_json(query)
        for term in terms:
            if term.field not in STANDARD:
                self.field(term.field)
        return terms

    def find(self, query: Any, path: str | None = None, caller: Caller | None = None, *,
             limit: int | None = None, batch: int = BATCH) -> Iterator[dict[str, Any]]:
        """Files matching `query` under `path`, streamed in id order, `batch` rows per database round trip."""
        caller = caller or Caller.system()
        terms = self.parse_query(query)
        root = self.normalize_lfn(path or self.root)
        with self.engine.connect() as conn:
            drow = self._dir_or_raise(conn, root)
            caller.check(Action.READ, root, self._info(drow))
            stmt = self._query_statement(conn, terms, drow)
        return self._stream(stmt, limit, batch)

    def _stream(self, stmt: Any, limit: int | None, batch: int) -> Iterator[dict[str, Any]]:
        if stmt is None:
            return
        # keyset pagination on the file id; one row more than a page tells whether another page follows,
        # so a result that fits one page costs one round trip
        page = stmt.where(db.files.c.id > bindparam("after")).order_by(db.files.c.id).limit(bindparam("size"))
        after = 0
        sent = 0
        while True:
            size = batch if limit is None else min(batch, limit - sent)
            if size <= 0:
                return
            with self.engine.connect() as conn:
                # the driver's tuples straight from the cursor: no Row objects for rows turned into dicts
                result = conn.execute(page, {"after": after, "size": size + 1})
                try:
                    rows = result.cursor.fetchall()
                finally:
                    result.close()
            more = len(rows) > size
            if more:
                rows = rows[:size]
            stamps: dict[Any, str | None] = {}  # files registered together share their creation time
            for fid, name, fsize, checksum, guid, status, owner, grp, created, dir_path in rows:
                stamp = stamps.get(created)
                if stamp is None:
                    stamp = stamps[created] = iso(created)
                yield {"lfn": f"{dir_path}/{name}", "size": fsize, "checksum": checksum, "guid": guid,
                       "status": status, "owner": owner, "group": grp, "created_at": stamp}
            sent += len(rows)
            if not more:
                return
            after = rows[-1][0]

    def count(self, query: Any, path: str | None = None, caller: Caller | None = None) -> dict[str, int]:
        caller = caller or Caller.system()
        terms = self.parse_query(query)
        root = self.normalize_lfn(path or self.root)
        with self.engine.connect() as conn:
            drow = self._dir_or_raise(conn, root)
            caller.check(Action.READ, root, self._info(drow))
            stmt = self._query_statement(conn, terms, drow)
            if stmt is None:
                return {"files": 0, "bytes": 0}
            sub = stmt.subquery()
            n, b = conn.execute(select(func.count(), func.coalesce(func.sum(sub.c.size), 0))).one()
        return {"files": int(n), "bytes": int(b)}

    def _query_statement(self, conn: Any, terms: list[Term], root: Any) -> Any:
        f = db.files
        # created_at as the driver gives it (`iso` formats it): no per-row date-time parsing on SQLite
        stmt = select(f.c.id, f.c.name, f.c.size, f.c.checksum, f.c.guid, f.c.status, f.c.owner, f.c.grp,
                      type_coerce(f.c.created_at, String()).label("created_at"),
                      db.dirs.c.path.label("dir_path")).select_from(
            f.join(db.dirs, f.c.dir_id == db.dirs.c.id))
        dir_terms = [t for t in terms if t.field not in STANDARD and self.field(t.field).level == "dir"]
        if dir_terms:
            dir_ids = self._compatible_dirs(conn, dir_terms, root)
            if not dir_ids:
                return None
            stmt = stmt.where(f.c.dir_id.in_(dir_ids))
        elif root.path != self.root:
            stmt = stmt.where(or_(db.dirs.c.id == root.id,
                                  db.dirs.c.path.like(_like_prefix(root.path), escape=LIKE_ESCAPE)))
        for term in terms:
            if term.field in STANDARD:
                stmt = stmt.where(self._standard_condition(term))
            elif term in dir_terms:
                continue
            else:
                stmt = stmt.where(self._file_meta_condition(term, self.field(term.field)))
        return stmt

    def _values(self, term: Term, type_: str) -> Any:
        if term.op in ("in", "nin"):
            return [self.coerce(term.field, type_, v) for v in term.value]
        if term.op in ("exists", "missing"):
            return None
        if type_ == "string" and has_wildcard(term.value):
            if term.op not in ("=", "!="):
                raise InvalidQuery(f"wildcards only work with = and != ({term.field})")
            return term.value
        return self.coerce(term.field, type_, term.value)

    def _compare(self, column: Any, term: Term, type_: str) -> Any:
        value = self._values(term, type_)
        op = term.op
        if type_ == "string" and op in ("=", "!=") and has_wildcard(value):
            cond = column.like(wildcard_to_like(value), escape=LIKE_ESCAPE)
            return cond if op == "=" else ~cond
        return {
            "=": lambda: column == value,
            "!=": lambda: column != value,
            "<": lambda: column < value,
            ">": lambda: column > value,
            "<=": lambda: column <= value,
            ">=": lambda: column >= value,
            "in": lambda: column.in_(value),
            "nin": lambda: column.not_in(value),
        }[op]()

    def _file_meta_condition(self, term: Term, fld: Field) -> Any:
        t = db.file_meta[fld.type]
        present = select(t.c.file_id).where(t.c.field_id == fld.id)
        if term.op == "exists":
            return db.files.c.id.in_(present)
        if term.op == "missing":
            return db.files.c.id.not_in(present)
        return db.files.c.id.in_(present.where(self._compare(t.c.value, term, fld.type)))

    def _standard_condition(self, term: Term) -> Any:
        f = db.files
        type_ = STANDARD[term.field]
        if term.field == "se":
            on = select(db.replicas.c.file_id)
            if term.op == "exists":
                return f.c.id.in_(on)
            if term.op == "missing":
                return f.c.id.not_in(on)
            if term.op in ("!=", "nin"):
                positive = Term("se", "=" if term.op == "!=" else "in", term.value)
                return f.c.id.not_in(on.where(self._compare(db.replicas.c.se, positive, "string")))
            return f.c.id.in_(on.where(self._compare(db.replicas.c.se, term, "string")))
        if term.op in ("exists", "missing"):
            return and_(True) if term.op == "exists" else and_(False)
        column = {"size": f.c.size, "created": f.c.created_at, "owner": f.c.owner, "group": f.c.grp,
                  "status": f.c.status, "name": f.c.name, "guid": f.c.guid, "checksum": f.c.checksum}[term.field]
        if term.field == "guid":
            term = Term(term.field, term.op, [str(v).upper() for v in term.value] if isinstance(term.value, list)
                        else str(term.value).upper())
        return self._compare(column, term, type_)

    def _compatible_dirs(self, conn: Any, terms: list[Term], root: Any) -> list[int]:
        """Directories under `root` whose effective (inherited) directory metadata satisfy `terms`."""
        fields = {t.field: self.field(t.field) for t in terms}
        field_ids = [fl.id for fl in fields.values()]
        subtree = conn.execute(select(db.dirs.c.id, db.dirs.c.parent_id, db.dirs.c.depth).where(
            or_(db.dirs.c.id == root.id, db.dirs.c.path.like(_like_prefix(root.path), escape=LIKE_ESCAPE)))).all()
        above = self._dirs(conn, prefixes(root.path)[:-1], {})
        ids = [r.id for r in subtree] + [r.id for r in above.values()]
        values: dict[int, dict[int, Any]] = defaultdict(dict)
        for j in range(0, len(ids), 500):
            for r in conn.execute(select(db.dir_meta).where(db.dir_meta.c.dir_id.in_(ids[j : j + 500]),
                                                            db.dir_meta.c.field_id.in_(field_ids))):
                fld = next(fl for fl in fields.values() if fl.id == r.field_id)
                values[r.dir_id][r.field_id] = getattr(r, f"v_{fld.type}")
        inherited: dict[int, Any] = {}
        for p in prefixes(root.path)[:-1]:
            inherited.update(values.get(above[p].id, {}) if p in above else {})
        effective: dict[int, dict[int, Any]] = {}
        out = []
        for r in sorted(subtree, key=lambda r: r.depth):
            base = inherited if r.id == root.id else effective.get(r.parent_id, inherited)
            mine = {**base, **values.get(r.id, {})} if r.id in values else base
            effective[r.id] = mine
            if all(self._match(t, fields[t.field], mine.get(fields[t.field].id)) for t in terms):
                out.append(r.id)
        return out

    def _match(self, term: Term, fld: Field, value: Any) -> bool:
        if term.op == "exists":
            return value is not None
        if term.op == "missing":
            return value is None
        if value is None:
            return False
        wanted = self._values(term, fld.type)
        if fld.type == "string" and term.op in ("=", "!=") and has_wildcard(wanted):
            hit = fnmatchcase(value, wanted)
            return hit if term.op == "=" else not hit
        return {
            "=": lambda: value == wanted, "!=": lambda: value != wanted, "<": lambda: value < wanted,
            ">": lambda: value > wanted, "<=": lambda: value <= wanted, ">=": lambda: value >= wanted,
            "in": lambda: value in wanted, "nin": lambda: value not in wanted,
        }[term.op]()

    # -- datasets ------------------------------------------------------------------------------------

    def create_dataset(self, name: str, query: Any, path: str | None = None, caller: Caller | None = None, *,
                       description: str = "") -> dict[str, Any]:
        caller = caller or Caller.system()
        if not isinstance(name, str) or not _DATASET_RE.match(name) or ".." in name:
            raise InvalidInput(f"invalid dataset name {name!r}", code="invalid-dataset-name")
        terms = self.parse_query(query)
        root = self.normalize_lfn(path or self.root)
        stamp = now()

        def work(conn: Any) -> dict[str, Any]:
            drow = self._dir_or_raise(conn, root)
            caller.check(Action.READ, root, self._info(drow))
            if conn.execute(select(db.datasets.c.id).where(db.datasets.c.name == name)).first():
                raise AlreadyExists(f"dataset {name!r} exists")
            conn.execute(db.datasets.insert().values(
                name=name, path=root, query=json.dumps(to_json(terms), default=str), status="Dynamic",
                owner=caller.username, grp=caller.group, description=description or "", created_at=stamp,
                modified_at=stamp))
            return {"name": name, "status": "Dynamic", "path": root, "query": to_json(terms)}

        return self._transaction(work)

    def _dataset_row(self, conn: Any, name: str) -> Any:
        row = conn.execute(select(db.datasets).where(db.datasets.c.name == name)).first()
        if row is None:
            raise NoSuchDataset(f"no dataset {name!r}")
        return row

    def _dataset_view(self, row: Any) -> dict[str, Any]:
        return {
            "name": row.name, "status": row.status, "path": row.path, "query": json.loads(row.query),
            "owner": row.owner, "group": row.grp, "description": row.description, "files": row.files,
            "bytes": row.bytes, "content_hash": row.content_hash, "created_at": row.created_at.isoformat(),
            "frozen_at": row.frozen_at.isoformat() if row.frozen_at else None,
        }

    def _owner_check(self, row: Any, caller: Caller) -> None:
        if not caller.admin and row.owner != caller.username:
            raise PermissionDenied(f"dataset {row.name!r} belongs to {row.owner}")

    def freeze_dataset(self, name: str, caller: Caller | None = None) -> dict[str, Any]:
        """Snapshot the query's current result: file list, count, total size, content hash."""
        caller = caller or Caller.system()

        def work(conn: Any) -> dict[str, Any]:
            row = self._dataset_row(conn, name)
            self._owner_check(row, caller)
            if row.status == "Frozen":
                raise Conflict(f"dataset {name!r} is already frozen; release it first", code="dataset-frozen")
            count, total, digest, chunk = 0, 0, 0, []
            for item in self.find(json.loads(row.query), row.path, caller):
                chunk.append({"dataset_id": row.id, "seq": count, "lfn": item["lfn"], "size": item["size"],
                              "checksum": item["checksum"]})
                count += 1
                total += item["size"]
                digest = (digest + _line_hash(item)) % (1 << 256)
                if len(chunk) >= 5000:
                    conn.execute(db.dataset_files.insert(), chunk)
                    chunk = []
            if chunk:
                conn.execute(db.dataset_files.insert(), chunk)
            stamp = now()
            conn.execute(update(db.datasets).where(db.datasets.c.id == row.id).values(
                status="Frozen", files=count, bytes=total, content_hash=f"{digest:064x}", frozen_at=stamp,
                modified_at=stamp))
            return self._dataset_view(self._dataset_row(conn, name))

        return self._transaction(work)

    def release_dataset(self, name: str, caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()

        def work(conn: Any) -> dict[str, Any]:
            row = self._dataset_row(conn, name)
            self._owner_check(row, caller)
            if row.status != "Frozen":
                raise Conflict(f"dataset {name!r} is not frozen", code="dataset-not-frozen")
            conn.execute(delete(db.dataset_files).where(db.dataset_files.c.dataset_id == row.id))
            conn.execute(update(db.datasets).where(db.datasets.c.id == row.id).values(
                status="Dynamic", files=None, bytes=None, content_hash=None, frozen_at=None, modified_at=now()))
            return self._dataset_view(self._dataset_row(conn, name))

        return self._transaction(work)

    def list_datasets(self, caller: Caller | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.datasets).order_by(db.datasets.c.name)).all()
        return [self._dataset_view(r) for r in rows]

    def show_dataset(self, name: str, caller: Caller | None = None) -> dict[str, Any]:
        """Frozen: the snapshot's numbers. Dynamic: the query's current count and size."""
        with self.engine.connect() as conn:
            row = self._dataset_row(conn, name)
        view = self._dataset_view(row)
        if row.status != "Frozen":
            current = self.count(json.loads(row.query), row.path, caller)
            view.update(files=current["files"], bytes=current["bytes"])
        return view

    def dataset_files(self, name: str, caller: Caller | None = None) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            row = self._dataset_row(conn, name)
        if row.status != "Frozen":
            return self.find(json.loads(row.query), row.path, caller)
        return self._frozen_files(row.id)

    def _frozen_files(self, dataset_id: int) -> Iterator[dict[str, Any]]:
        last = -1
        t = db.dataset_files
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t).where(t.c.dataset_id == dataset_id, t.c.seq > last)
                                    .order_by(t.c.seq).limit(BATCH)).all()
            for r in rows:
                yield {"lfn": r.lfn, "size": r.size, "checksum": r.checksum}
            if len(rows) < BATCH:
                return
            last = rows[-1].seq

    def remove_dataset(self, name: str, caller: Caller | None = None) -> dict[str, Any]:
        caller = caller or Caller.system()

        def work(conn: Any) -> dict[str, Any]:
            row = self._dataset_row(conn, name)
            self._owner_check(row, caller)
            conn.execute(delete(db.dataset_files).where(db.dataset_files.c.dataset_id == row.id))
            conn.execute(delete(db.datasets).where(db.datasets.c.id == row.id))
            return {"name": name, "removed": True}

        return self._transaction(work)


#: hot lookups, compiled once per dialect (see `prepared`)
_FILE_BY_PATH = Prepared(
    select(db.files, db.dirs.c.owner.label("dir_owner"), db.dirs.c.grp.label("dir_grp"),
           db.dirs.c.mode.label("dir_mode"), db.dirs.c.path.label("dir_path"))
    .select_from(db.files.join(db.dirs, db.files.c.dir_id == db.dirs.c.id))
    .where(db.dirs.c.path_hash == bindparam("dir_hash"), db.files.c.name == bindparam("name")),
    "FileRow",
)
_DIR_BY_HASH = Prepared(select(db.dirs).where(db.dirs.c.path_hash == bindparam("path_hash")), "DirRow")

_MULTI_ROWS = 250


def _insert_rows(conn: Any, target: str, width: int, rows: list[tuple[Any, ...]]) -> None:
    """INSERT of many rows. SQLite: multi-row VALUES statements of up to `_MULTI_ROWS` rows, within the
    library's bound-variable limit (about 2.5 times cheaper per row than executemany's one statement step
    per row); elsewhere the driver's executemany (psycopg pipelines it, PyMySQL rewrites it into multi-row
    INSERTs)."""
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {target} VALUES ({', '.join(['%s'] * width)})", rows)
        return
    raw = conn.connection.driver_connection
    per = max(1, min(_MULTI_ROWS, raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    one = "(" + ",".join("?" * width) + ")"
    full = len(rows) - len(rows) % per
    flat = chain.from_iterable
    if full:
        sql = f"INSERT INTO {target} VALUES " + ",".join([one] * per)
        conn.exec_driver_sql(sql, [tuple(flat(rows[j : j + per])) for j in range(0, full, per)])
    if full < len(rows):
        rest = rows[full:]
        conn.exec_driver_sql(f"INSERT INTO {target} VALUES " + ",".join([one] * len(rest)), tuple(flat(rest)))


class _Row:
    """A freshly inserted directory, shaped like a result row."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _bindparam(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


def _last_wins(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    return list({tuple(r[k] for k in key): r for r in rows}.values())


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _line_hash(item: dict[str, Any]) -> int:
    line = f"{item['lfn']}\t{item['size']}\t{item['checksum']}\n".encode()
    return int.from_bytes(hashlib.sha256(line).digest(), "big")
