"""Conditions rules: immutable payloads, lockable tags, IOVs with "latest insertion wins", global tags.

Resolution of (global tag, payload type, run): the global tag maps the type to a tag; among the tag's IOVs
with `since <= run`, the greatest `since` applies and, when several IOVs share it, the latest insertion.
Its validity ends at the next greater `since` of the tag (open-ended when there is none).

Every write records the change time of the tables it touched in `cond_changes` in the same transaction,
which is what the Frontier endpoint's `Last-Modified` and `304` answers rest on. Imports no FastAPI.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from junodcs.conditions import db
from junodcs.conditions.models import (
    RESERVED_NAMES,
    GlobalTagInfo,
    GlobalTagStatus,
    IOVCreate,
    IOVInfo,
    PayloadInfo,
    Resolution,
    TagCreate,
    TagInfo,
)
from junodcs.core.errors import Conflict, InvalidInput, NotFound

MAX_PAYLOAD = 256 * 1024 * 1024
MAX_BULK = 10_000


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ConditionsError(Conflict):
    code = "conditions-conflict"


class Locked(Conflict):
    code = "locked"
    title = "Locked"


def touch(connection: Connection, *tables: str) -> None:
    """Record that `tables` changed now (inside the caller's transaction)."""
    now_us = time.time_ns() // 1000
    for name in tables:
        updated = connection.execute(
            update(db.changes).where(db.changes.c.table_name == name).values(changed_us=now_us)
        ).rowcount
        if not updated:
            try:
                with connection.begin_nested():
                    connection.execute(insert(db.changes).values(table_name=name, changed_us=now_us))
            except IntegrityError:  # created concurrently
                connection.execute(
                    update(db.changes).where(db.changes.c.table_name == name).values(changed_us=now_us)
                )


def change_times(engine: Engine) -> dict[str, float]:
    """Last change (UNIX seconds) of each conditions table that ever changed."""
    with engine.connect() as connection:
        return {row.table_name: row.changed_us / 1e6 for row in connection.execute(select(db.changes))}


class Conditions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- payloads ------------------------------------------------------------------------------------
    def put_payload(self, payload_type: str, data: bytes | None, *, user: str, uri: str | None = None,
                    hash: str | None = None, size: int | None = None) -> tuple[PayloadInfo, bool]:
        """Store a payload (idempotent: the same bytes give the same hash). Returns (info, created)."""
        _check_name(payload_type, "payload type")
        if data is None:
            if not uri or not hash or size is None:
                raise InvalidInput("a payload is either its bytes or a uri with its sha256 hash and size")
            if len(hash) != 64 or any(c not in "0123456789abcdef" for c in hash):
                raise InvalidInput("hash: 64 lower-case hex digits (sha256)")
        else:
            if len(data) > MAX_PAYLOAD:
                raise InvalidInput(f"payload of {len(data)} bytes: at most {MAX_PAYLOAD}", code="too-large")
            digest = sha256_hex(data)
            if hash and hash != digest:
                raise InvalidInput(f"sha256 mismatch: sent {hash}, computed {digest}", code="checksum-mismatch")
            hash, size = digest, len(data)
        existing = self.payload_info(hash, missing_ok=True)
        if existing is not None:
            if existing.payload_type != payload_type:
                raise ConditionsError(f"payload {hash} exists with type {existing.payload_type}")
            return existing, False
        row = {"hash": hash, "payload_type": payload_type, "size": size, "data": data, "uri": uri,
               "created_at": _now(), "created_by": user}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(db.payloads).values(**row))
                touch(connection, db.payloads.name)
        except IntegrityError:
            info = self.payload_info(hash)
            assert info is not None
            return info, False
        return PayloadInfo(**{k: v for k, v in row.items() if k != "data"}), True

    def payload_info(self, hash: str, *, missing_ok: bool = False) -> PayloadInfo | None:
        c = db.payloads.c
        with self.engine.connect() as connection:
            row = connection.execute(
                select(c.hash, c.payload_type, c.size, c.uri, c.created_at, c.created_by).where(c.hash == hash)
            ).first()
        if row is None:
            if missing_ok:
                return None
            raise NotFound(f"no payload {hash}", code="payload-not-found")
        return PayloadInfo(**row._mapping)

    def payload_data(self, hash: str) -> tuple[PayloadInfo, bytes | None]:
        c = db.payloads.c
        with self.engine.connect() as connection:
            row = connection.execute(select(db.payloads).where(c.hash == hash)).first()
        if row is None:
            raise NotFound(f"no payload {hash}", code="payload-not-found")
        mapping = dict(row._mapping)
        data = mapping.pop("data")
        return PayloadInfo(**mapping), (bytes(data) if data is not None else None)

    # -- tags ----------------------------------------------------------------------------------------
    def create_tag(self, spec: TagCreate, *, user: str) -> TagInfo:
        row = {"name": spec.name, "payload_type": spec.payload_type, "time_type": spec.time_type.value,
               "description": spec.description, "locked": False, "created_at": _now(), "created_by": user,
               "locked_at": None}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(db.tags).values(**row))
                touch(connection, db.tags.name)
        except IntegrityError:
            raise Conflict(f"tag {spec.name} exists", code="tag-exists") from None
        return TagInfo(**row)

    def tag(self, name: str, connection: Connection | None = None) -> TagInfo:
        if connection is None:
            with self.engine.connect() as own:
                return self.tag(name, own)
        row = connection.execute(select(db.tags).where(db.tags.c.name == name)).first()
        if row is None:
            raise NotFound(f"no tag {name}", code="tag-not-found")
        count = connection.execute(select(func.count()).where(db.iovs.c.tag_name == name)).scalar_one()
        return TagInfo(**row._mapping, iovs=count)

    def list_tags(self, payload_type: str | None = None) -> list[TagInfo]:
        counts = (select(db.iovs.c.tag_name, func.count().label("n")).group_by(db.iovs.c.tag_name)).subquery()
        query = select(db.tags, counts.c.n).outerjoin(counts, counts.c.tag_name == db.tags.c.name)
        if payload_type:
            query = query.where(db.tags.c.payload_type == payload_type)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(db.tags.c.name)).all()
        return [TagInfo(**{k: v for k, v in r._mapping.items() if k != "n"}, iovs=r.n or 0) for r in rows]

    def lock_tag(self, name: str) -> TagInfo:
        with self.engine.begin() as connection:
            self.tag(name, connection)
            connection.execute(update(db.tags).where(db.tags.c.name == name, db.tags.c.locked.is_(False))
                               .values(locked=True, locked_at=_now()))
            touch(connection, db.tags.name)
            return self.tag(name, connection)

    # -- IOVs ----------------------------------------------------------------------------------------
    def add_iovs(self, tag: str, entries: Iterable[IOVCreate], *, user: str) -> int:
        """Append IOVs to an open tag, all or nothing; payloads must exist and have the tag's type."""
        entries = list(entries)
        if not entries:
            raise InvalidInput("no IOVs given")
        if len(entries) > MAX_BULK:
            raise InvalidInput(f"{len(entries)} IOVs: at most {MAX_BULK} per call", code="too-many-entries")
        now = _now()
        with self.engine.begin() as connection:
            row = connection.execute(select(db.tags).where(db.tags.c.name == tag).with_for_update()).first()
            if row is None:
                raise NotFound(f"no tag {tag}", code="tag-not-found")
            if row.locked:
                raise Locked(f"tag {tag} is locked: its IOVs never change; make a new tag")
            hashes = sorted({e.payload_hash for e in entries})
            found = {
                r.hash: r.payload_type
                for r in connection.execute(
                    select(db.payloads.c.hash, db.payloads.c.payload_type).where(db.payloads.c.hash.in_(hashes))
                )
            }
            missing = [h for h in hashes if h not in found]
            if missing:
                raise NotFound(f"no payload {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""),
                               code="payload-not-found")
            wrong = [h for h in hashes if found[h] != row.payload_type]
            if wrong:
                raise InvalidInput(f"payload {wrong[0]} has type {found[wrong[0]]}, tag {tag} holds {row.payload_type}",
                                   code="type-mismatch")
            connection.execute(insert(db.iovs), [
                {"tag_name": tag, "since": e.since, "payload_hash": e.payload_hash, "insertion_time": now,
                 "inserted_by": user} for e in entries
            ])
            touch(connection, db.iovs.name)
        return len(entries)

    def list_iovs(self, tag: str, *, effective: bool = False) -> list[IOVInfo]:
        """A tag's IOVs in (since, insertion) order, with `until` derived. `effective`: only the IOV that
        wins for each `since` (the latest insertion)."""
        c = db.iovs.c
        with self.engine.connect() as connection:
            self.tag(tag, connection)
            rows = connection.execute(select(db.iovs).where(c.tag_name == tag).order_by(c.since, c.id)).all()
        sinces = sorted({r.since for r in rows})
        following = {s: (sinces[i + 1] if i + 1 < len(sinces) else None) for i, s in enumerate(sinces)}
        if effective:
            latest: dict[int, Any] = {}
            for r in rows:
                latest[r.since] = r
            rows = [latest[s] for s in sinces]
        return [IOVInfo(id=r.id, tag=r.tag_name, since=r.since, until=following[r.since],
                        payload_hash=r.payload_hash, insertion_time=r.insertion_time, inserted_by=r.inserted_by)
                for r in rows]

    # -- global tags ---------------------------------------------------------------------------------
    def create_global_tag(self, name: str, description: str, *, user: str) -> GlobalTagInfo:
        _check_name(name, "global tag")
        if name.lower() in RESERVED_NAMES:
            raise InvalidInput(f"{name!r} is reserved")
        now = _now()
        row = {"name": name, "status": GlobalTagStatus.OPEN.value, "description": description,
               "created_at": now, "created_by": user, "modified_at": now}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(db.global_tags).values(**row))
                touch(connection, db.global_tags.name)
        except IntegrityError:
            raise Conflict(f"global tag {name} exists", code="global-tag-exists") from None
        return GlobalTagInfo(**row, tags={})

    def global_tag(self, name: str, connection: Connection | None = None) -> GlobalTagInfo:
        if connection is None:
            with self.engine.connect() as own:
                return self.global_tag(name, own)
        row = connection.execute(select(db.global_tags).where(db.global_tags.c.name == name)).first()
        if row is None:
            raise NotFound(f"no global tag {name}", code="global-tag-not-found")
        m = db.global_tag_map.c
        mapping = {r.payload_type: r.tag_name for r in connection.execute(
            select(m.payload_type, m.tag_name).where(m.global_tag == name).order_by(m.payload_type))}
        return GlobalTagInfo(**row._mapping, tags=mapping)

    def list_global_tags(self) -> list[GlobalTagInfo]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(db.global_tags).order_by(db.global_tags.c.name)).all()
        return [GlobalTagInfo(**r._mapping) for r in rows]

    def add_to_global_tag(self, name: str, tag: str, payload_type: str | None = None) -> GlobalTagInfo:
        with self.engine.begin() as connection:
            gt = connection.execute(select(db.global_tags).where(db.global_tags.c.name == name)
                                    .with_for_update()).first()
            if gt is None:
                raise NotFound(f"no global tag {name}", code="global-tag-not-found")
            if gt.status != GlobalTagStatus.OPEN:
                raise Locked(f"global tag {name} is {gt.status}: its tags never change")
            info = self.tag(tag, connection)
            payload_type = payload_type or info.payload_type
            if payload_type != info.payload_type:
                raise InvalidInput(f"tag {tag} holds {info.payload_type}, not {payload_type}", code="type-mismatch")
            m = db.global_tag_map.c
            changed = connection.execute(update(db.global_tag_map)
                                         .where(m.global_tag == name, m.payload_type == payload_type)
                                         .values(tag_name=tag, added_at=_now())).rowcount
            if not changed:
                connection.execute(insert(db.global_tag_map).values(global_tag=name, payload_type=payload_type,
                                                                    tag_name=tag, added_at=_now()))
            connection.execute(update(db.global_tags).where(db.global_tags.c.name == name).values(modified_at=_now()))
            touch(connection, db.global_tag_map.name, db.global_tags.name)
            return self.global_tag(name, connection)

    def set_global_tag_status(self, name: str, status: GlobalTagStatus) -> GlobalTagInfo:
        """open -> locked (all its tags must be locked: a locked global tag never changes), open|locked ->
        invalid. Nothing goes back."""
        with self.engine.begin() as connection:
            gt = self.global_tag(name, connection)
            allowed = {GlobalTagStatus.OPEN: {GlobalTagStatus.LOCKED, GlobalTagStatus.INVALID},
                       GlobalTagStatus.LOCKED: {GlobalTagStatus.INVALID}, GlobalTagStatus.INVALID: set()}
            if status == gt.status:
                return gt
            if status not in allowed[gt.status]:
                raise Locked(f"global tag {name} is {gt.status}: it cannot become {status}")
            if status == GlobalTagStatus.LOCKED:
                open_tags = [t for t in (gt.tags or {}).values() if not self.tag(t, connection).locked]
                if open_tags:
                    raise ConditionsError(f"global tag {name} maps open tags ({', '.join(sorted(open_tags))}): "
                                          "lock them first", code="open-tags")
            connection.execute(update(db.global_tags).where(db.global_tags.c.name == name)
                               .values(status=status.value, modified_at=_now()))
            touch(connection, db.global_tags.name)
            return self.global_tag(name, connection)

    # -- resolution ----------------------------------------------------------------------------------
    def resolve(self, global_tag: str, payload_type: str, run: int) -> Resolution:
        gt_c, m, t, i, p = (db.global_tags.c, db.global_tag_map.c, db.tags.c, db.iovs.c, db.payloads.c)
        with self.engine.connect() as connection:
            head = connection.execute(
                select(gt_c.status, m.tag_name, t.locked)
                .select_from(db.global_tags.outerjoin(db.global_tag_map, and_(m.global_tag == gt_c.name,
                                                                              m.payload_type == payload_type))
                             .outerjoin(db.tags, t.name == m.tag_name))
                .where(gt_c.name == global_tag)
            ).first()
            if head is None:
                raise NotFound(f"no global tag {global_tag}", code="global-tag-not-found")
            if head.status == GlobalTagStatus.INVALID:
                raise ConditionsError(f"global tag {global_tag} is invalid", code="global-tag-invalid")
            if head.tag_name is None:
                raise NotFound(f"global tag {global_tag} has no tag for {payload_type}", code="type-not-in-global-tag")
            iov = connection.execute(
                select(i.since, i.payload_hash, p.size, p.uri).join(db.payloads, p.hash == i.payload_hash)
                .where(i.tag_name == head.tag_name, i.since <= run).order_by(i.since.desc(), i.id.desc()).limit(1)
            ).first()
            if iov is None:
                raise NotFound(f"tag {head.tag_name} has no IOV for run {run}", code="no-iov")
            until = connection.execute(
                select(func.min(i.since)).where(i.tag_name == head.tag_name, i.since > iov.since)).scalar()
        return Resolution(global_tag=global_tag, payload_type=payload_type, tag=head.tag_name, run=run,
                          since=iov.since, until=until, payload_hash=iov.payload_hash, size=iov.size, uri=iov.uri,
                          cacheable=head.status == GlobalTagStatus.LOCKED and bool(head.locked))


def _check_name(value: str, what: str) -> None:
    import re

    from junodcs.conditions.models import NAME_PATTERN

    if not re.match(NAME_PATTERN, value or ""):
        raise InvalidInput(f"{what} {value!r}: letters, digits, '.', '_', '-' (at most 128)")
