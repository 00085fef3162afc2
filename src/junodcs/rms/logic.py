"""The rules of the request management system: state machines, derived statuses, claiming, execution.

Requests, operations and files each have one transition table (`REQUEST_TRANSITIONS`,
`OPERATION_TRANSITIONS`, `FILE_TRANSITIONS`); every change is a guarded UPDATE (`WHERE status = <old>`)
and an illegal one raises `IllegalTransition`. Operation status is derived from its files and request
status from its operations in order (DIRAC's rules): the first operation that is not Done is the current
one; a Failed one fails the request and stops the chain.

Executors claim due requests (Waiting/Scheduled with NotBefore in the past, or Assigned with an expired
lease) with a lease and a fencing counter (`claims`); every write of an execution checks that the claim
is still the request's current one, so an executor that lost its lease changes nothing. Handlers are
idempotent: each one first looks at the catalog (and the transfer service) to see what is already done.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from junodcs.core.errors import Conflict, DCSError, Forbidden, InvalidInput, NotFound
from junodcs.rms import db
from junodcs.rms.models import (
    REQUEST_FINAL,
    FileStatus,
    OperationStatus,
    OperationType,
    RequestIn,
    RequestStatus,
)

log = logging.getLogger(__name__)

R, O, F = RequestStatus, OperationStatus, FileStatus

# -- state machines ---------------------------------------------------------------------------------

REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    R.WAITING: frozenset({R.ASSIGNED, R.WAITING, R.CANCELED}),   # Waiting -> Waiting: reset
    R.SCHEDULED: frozenset({R.ASSIGNED, R.WAITING, R.CANCELED}),
    # Assigned -> Assigned: a new claim after the previous executor's lease expired
    R.ASSIGNED: frozenset({R.ASSIGNED, R.WAITING, R.SCHEDULED, R.DONE, R.FAILED, R.CANCELED}),
    R.DONE: frozenset(),
    R.FAILED: frozenset({R.WAITING}),                             # reset
    R.CANCELED: frozenset(),
}

OPERATION_TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    O.QUEUED: frozenset({O.WAITING, O.SCHEDULED, O.DONE, O.FAILED, O.CANCELED}),
    O.WAITING: frozenset({O.QUEUED, O.SCHEDULED, O.DONE, O.FAILED, O.CANCELED}),
    O.SCHEDULED: frozenset({O.WAITING, O.DONE, O.FAILED, O.CANCELED}),
    O.DONE: frozenset(),
    O.FAILED: frozenset({O.WAITING, O.QUEUED}),                   # reset
    O.CANCELED: frozenset(),
}

FILE_TRANSITIONS: dict[FileStatus, frozenset[FileStatus]] = {
    F.WAITING: frozenset({F.SCHEDULED, F.DONE, F.FAILED}),
    F.SCHEDULED: frozenset({F.WAITING, F.DONE, F.FAILED}),
    F.DONE: frozenset(),
    F.FAILED: frozenset({F.WAITING}),                             # reset
}


class IllegalTransition(DCSError):
    status = 409
    code = "illegal-transition"
    title = "Illegal state transition"


class StaleClaim(Exception):
    """The executor's claim is no longer the request's current one (lease expired and re-claimed)."""


def _check(table: dict[Any, frozenset[Any]], kind: str, old: str, new: str) -> None:
    if old == new and kind != "request":
        return
    enum = type(next(iter(table)))
    if enum(new) not in table[enum(old)]:
        raise IllegalTransition(f"{kind} status {old} -> {new} is not allowed")


def check_request_transition(old: str, new: str) -> None:
    _check(REQUEST_TRANSITIONS, "request", old, new)


def check_operation_transition(old: str, new: str) -> None:
    _check(OPERATION_TRANSITIONS, "operation", old, new)


def check_file_transition(old: str, new: str) -> None:
    _check(FILE_TRANSITIONS, "file", old, new)


def derive_operation_status(file_statuses: Iterable[str], current: bool) -> OperationStatus:
    """Files still to do keep the operation open (Scheduled if any is with the transfer service, else
    Waiting when it is the current operation, Queued otherwise); when none is left, any Failed file fails
    it, otherwise it is Done."""
    statuses = list(file_statuses)
    if any(s == F.SCHEDULED for s in statuses):
        return O.SCHEDULED
    if any(s == F.WAITING for s in statuses):
        return O.WAITING if current else O.QUEUED
    if any(s == F.FAILED for s in statuses):
        return O.FAILED
    return O.DONE


def derive_request(operations: Sequence[tuple[str, Sequence[str]]]) -> tuple[RequestStatus, list[OperationStatus]]:
    """(operation status, its file statuses) in order -> (request status, new operation statuses)."""
    out: list[OperationStatus] = []
    request: RequestStatus | None = None
    for old, files in operations:
        if request is not None:  # after the current (or failed) operation: queued
            out.append(O(old) if old in (O.DONE, O.CANCELED) else O.QUEUED)
            continue
        if old == O.CANCELED:
            out.append(O.CANCELED)
            request = R.CANCELED
            continue
        status = derive_operation_status(files, current=True)
        out.append(status)
        if status == O.DONE:
            continue
        request = {O.FAILED: R.FAILED, O.SCHEDULED: R.SCHEDULED}.get(status, R.WAITING)
    return request or R.DONE, out


# -- settings ---------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() + "Z" if value else None


@dataclass
class Settings:
    lease: float = 300.0
    """Seconds a claimed request stays with an executor."""
    max_attempts: int = 256
    """Handler runs per file before it is Failed (DIRAC's MaxAttempts)."""
    retry_delay: float = 60.0
    """First backoff after a recoverable failure; doubled per attempt, up to `max_retry_delay`."""
    max_retry_delay: float = 3600.0
    poll: float = 30.0
    """NotBefore step while files are with the transfer service."""
    requests_per_cycle: int = 100
    activity: str = "Data Consolidation"
    transfer_retry: int = 2

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(lease=float(env("DCS_RMS_LEASE", "300")), max_attempts=int(env("DCS_RMS_MAX_ATTEMPTS", "256")),
                   retry_delay=float(env("DCS_RMS_RETRY_DELAY", "60")),
                   max_retry_delay=float(env("DCS_RMS_MAX_RETRY_DELAY", "3600")),
                   poll=float(env("DCS_RMS_POLL", "30")))

    def backoff(self, attempt: int) -> float:
        return float(min(self.retry_delay * 2 ** max(attempt - 1, 0), self.max_retry_delay))


# -- handler results --------------------------------------------------------------------------------


@dataclass
class FileOutcome:
    status: FileStatus
    error: str | None = None
    attempted: bool = False
    """The handler made an attempt for this file (File.Attempt + 1)."""


@dataclass
class OperationOutcome:
    files: dict[int, FileOutcome] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)
    """Operation columns to set (transfer_job, transfer_round)."""
    delay: float | None = None
    """Seconds until the request should run again (polling), if nothing else asks for a backoff."""


@dataclass
class Claim:
    request_id: int
    claims: int
    executor: str


Handler = Callable[[dict[str, Any], list[dict[str, Any]], Any], OperationOutcome]


# -- the service ------------------------------------------------------------------------------------


def _json(value: str | None) -> Any:
    return json.loads(value) if value else {}


class RequestService:
    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings or Settings()
        self._sqlite = engine.dialect.name == "sqlite"

    # -- create / read ------------------------------------------------------------------------------

    def create(self, body: RequestIn, owner: str, group: str | None) -> int:
        """Store a request; a name already used by the same owner returns that request (idempotent
        re-submission, e.g. a job wrapper retrying after a lost answer)."""
        from junodcs.db.retry import retry_transaction

        t = now()
        name = body.name or f"{owner}_{t.strftime('%Y%m%d%H%M%S%f')}_{os.urandom(3).hex()}"
        not_before = t + timedelta(seconds=body.not_before or 0)

        def work() -> int:
            with self.engine.begin() as conn:
                existing = conn.execute(sa.select(db.requests.c.request_id, db.requests.c.owner)
                                        .where(db.requests.c.name == name)).first()
                if existing is not None:
                    if existing.owner != owner:
                        raise Conflict(f"request name {name!r} is taken", code="request-exists")
                    return int(existing.request_id)
                rid = conn.execute(db.requests.insert().values(
                    name=name, owner=owner, owner_group=group, job_id=body.job_id,
                    source_component=body.source_component, status=str(R.WAITING), created_at=t, last_update=t,
                    not_before=not_before, claims=0)).inserted_primary_key[0]
                for position, op in enumerate(body.operations):
                    _validate(op)
                    oid = conn.execute(db.operations.insert().values(
                        request_id=rid, position=position, type=str(op.type),
                        status=str(O.WAITING if position == 0 else O.QUEUED),
                        arguments=json.dumps(op.arguments) if op.arguments else None, source_se=op.source_se,
                        target_se=",".join(op.target_se) or None, transfer_round=0, created_at=t,
                        last_update=t)).inserted_primary_key[0]
                    conn.execute(db.files.insert(), [
                        {"operation_id": oid, "lfn": f.lfn, "pfn": f.pfn, "guid": f.guid, "size": f.size,
                         "checksum_type": f.checksum_type, "checksum": f.checksum, "status": str(F.WAITING),
                         "attempt": 0, "last_update": t} for f in op.files])
                return int(rid)

        return retry_transaction(work)

    def get(self, request_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._load(conn, request_id)

    def _load(self, conn: Any, request_id: int) -> dict[str, Any]:
        row = conn.execute(sa.select(db.requests).where(db.requests.c.request_id == request_id)).mappings().first()
        if row is None:
            raise NotFound(f"no request {request_id}", code="no-such-request")
        out = _request_dict(row)
        ops = conn.execute(sa.select(db.operations).where(db.operations.c.request_id == request_id)
                           .order_by(db.operations.c.position)).mappings().all()
        op_ids = [o["operation_id"] for o in ops]
        by_op: dict[int, list[dict[str, Any]]] = {i: [] for i in op_ids}
        if op_ids:
            for f in conn.execute(sa.select(db.files).where(db.files.c.operation_id.in_(op_ids))
                                  .order_by(db.files.c.file_id)).mappings():
                d = dict(f)
                d["last_update"] = iso(d["last_update"])
                by_op[f["operation_id"]].append(d)
        out["operations"] = []
        for o in ops:
            d = dict(o)
            d["arguments"] = _json(d["arguments"])
            d["target_se"] = [s for s in (d["target_se"] or "").split(",") if s]
            d["created_at"], d["last_update"] = iso(d["created_at"]), iso(d["last_update"])
            d["files"] = by_op[o["operation_id"]]
            out["operations"].append(d)
        return out

    def list(self, *, owner: str | None = None, statuses: Sequence[str] | None = None, job_id: int | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        r = db.requests
        q = sa.select(r).order_by(r.c.request_id.desc()).limit(limit)
        if owner:
            q = q.where(r.c.owner == owner)
        if statuses:
            q = q.where(r.c.status.in_(list(statuses)))
        if job_id is not None:
            q = q.where(r.c.job_id == job_id)
        with self.engine.connect() as conn:
            rows = [_request_dict(row) for row in conn.execute(q).mappings()]
            ids = [row["request_id"] for row in rows]
            if ids:
                o = db.operations
                counts = conn.execute(sa.select(o.c.request_id, sa.func.count(), sa.func.sum(
                    sa.case((o.c.status == str(O.DONE), 1), else_=0))).where(o.c.request_id.in_(ids))
                    .group_by(o.c.request_id)).all()
                summary = {rid: (int(n), int(done or 0)) for rid, n, done in counts}
                for row in rows:
                    row["operations"], row["operations_done"] = summary.get(row["request_id"], (0, 0))
        return rows

    def summary(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {s: int(n) for s, n in conn.execute(sa.select(db.requests.c.status, sa.func.count())
                                                       .group_by(db.requests.c.status))}

    # -- operator actions ---------------------------------------------------------------------------

    def reset(self, request_id: int) -> dict[str, Any]:
        """Failed files back to Waiting with their attempts cleared, the request due now (DIRAC's
        `dirac-rms-request --Reset`). A Done request or one being executed cannot be reset."""
        t = now()
        with self.engine.begin() as conn:
            req = self._lock_request(conn, request_id)
            check_request_transition(req.status, str(R.WAITING))
            op_rows = conn.execute(sa.select(db.operations).where(db.operations.c.request_id == request_id)
                                   .order_by(db.operations.c.position)).mappings().all()
            for o in op_rows:
                if o["status"] in (O.FAILED,):
                    check_operation_transition(o["status"], str(O.WAITING))
                    conn.execute(db.files.update().where(db.files.c.operation_id == o["operation_id"],
                                                         db.files.c.status == str(F.FAILED))
                                 .values(status=str(F.WAITING), attempt=0, error=None, last_update=t))
                    conn.execute(db.operations.update().where(db.operations.c.operation_id == o["operation_id"])
                                 .values(error=None, transfer_job=None, last_update=t))
                conn.execute(db.files.update().where(db.files.c.operation_id == o["operation_id"],
                                                     db.files.c.status == str(F.WAITING))
                             .values(attempt=0, last_update=t))
            self._derive(conn, request_id, t)
            conn.execute(db.requests.update().where(db.requests.c.request_id == request_id)
                         .values(not_before=t, error=None, last_update=t))
            return self._load(conn, request_id)

    def cancel(self, request_id: int) -> dict[str, Any]:
        t = now()
        with self.engine.begin() as conn:
            req = self._lock_request(conn, request_id)
            check_request_transition(req.status, str(R.CANCELED))
            o = db.operations
            conn.execute(o.update().where(o.c.request_id == request_id,
                                          o.c.status.notin_([str(O.DONE), str(O.FAILED), str(O.CANCELED)]))
                         .values(status=str(O.CANCELED), last_update=t))
            conn.execute(db.requests.update().where(db.requests.c.request_id == request_id,
                                                    db.requests.c.status == req.status)
                         .values(status=str(R.CANCELED), executor=None, lease_until=None, last_update=t))
            return self._load(conn, request_id)

    def _lock_request(self, conn: Any, request_id: int) -> Any:
        q = sa.select(db.requests).where(db.requests.c.request_id == request_id)
        if not self._sqlite:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise NotFound(f"no request {request_id}", code="no-such-request")
        return row

    # -- claiming -----------------------------------------------------------------------------------

    def claim(self, executor: str, limit: int | None = None) -> list[Claim]:
        """Due requests (Waiting/Scheduled with NotBefore past, or Assigned with a lapsed lease) become
        Assigned to `executor` under a lease. Safe in several executors (guarded UPDATE, SKIP LOCKED)."""
        from junodcs.db.retry import retry_transaction

        limit = limit or self.settings.requests_per_cycle

        def work() -> list[Claim]:
            t = now()
            r = db.requests
            due = sa.or_(sa.and_(r.c.status.in_([str(R.WAITING), str(R.SCHEDULED)]), r.c.not_before <= t),
                         sa.and_(r.c.status == str(R.ASSIGNED), r.c.lease_until < t))
            with self.engine.begin() as conn:
                q = sa.select(r.c.request_id, r.c.status, r.c.claims).where(due).order_by(r.c.not_before).limit(limit)
                if not self._sqlite:
                    q = q.with_for_update(skip_locked=True)
                rows = conn.execute(q).all()
                out = []
                lease = t + timedelta(seconds=self.settings.lease)
                for row in rows:
                    check_request_transition(row.status, str(R.ASSIGNED))
                    result = conn.execute(r.update().where(r.c.request_id == row.request_id,
                                                           r.c.claims == row.claims, r.c.status == row.status)
                                          .values(status=str(R.ASSIGNED), executor=executor, lease_until=lease,
                                                  claims=row.claims + 1, last_update=t))
                    if result.rowcount == 1:
                        if row.status == R.ASSIGNED:
                            log.info("request %s: previous executor's lease expired, taken by %s",
                                     row.request_id, executor)
                        out.append(Claim(int(row.request_id), int(row.claims) + 1, executor))
                return out

        return retry_transaction(work)

    def _fence(self, conn: Any, claim: Claim) -> Any:
        row = self._lock_request(conn, claim.request_id)
        if row.claims != claim.claims or row.executor != claim.executor or row.status != R.ASSIGNED:
            raise StaleClaim(f"request {claim.request_id}: claim {claim.claims} of {claim.executor} is stale")
        return row

    def renew(self, claim: Claim) -> None:
        with self.engine.begin() as conn:
            self._fence(conn, claim)
            conn.execute(db.requests.update().where(db.requests.c.request_id == claim.request_id).values(
                lease_until=now() + timedelta(seconds=self.settings.lease)))

    # -- execution ----------------------------------------------------------------------------------

    def current_operation(self, claim: Claim) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]] | None:
        """The request, its current (first non-Done) operation and that operation's open files."""
        with self.engine.connect() as conn:
            request = self._load(conn, claim.request_id)
        for op in request["operations"]:
            if op["status"] == O.DONE:
                continue
            if op["status"] in (O.FAILED, O.CANCELED):
                return None
            open_files = [f for f in op["files"] if f["status"] in (F.WAITING, F.SCHEDULED)]
            return request, op, open_files
        return None

    def apply(self, claim: Claim, operation_id: int, outcome: OperationOutcome) -> None:
        """Write a handler's outcome (fenced): file transitions, attempts, errors, retries with backoff; the
        lease is extended, so a long request keeps its executor as long as operations complete."""
        t = now()
        s = self.settings
        with self.engine.begin() as conn:
            self._fence(conn, claim)
            delays: list[float] = []
            f = db.files
            current = {row.file_id: row for row in conn.execute(sa.select(f).where(f.c.operation_id == operation_id))}
            for file_id, result in outcome.files.items():
                row = current[file_id]
                attempt = row.attempt + (1 if result.attempted else 0)
                status = result.status
                if status == F.WAITING and result.error:  # a recoverable failure: backoff, or give up
                    if attempt >= s.max_attempts:
                        status = F.FAILED
                        result.error = f"{result.error or 'failed'} (gave up after {attempt} attempts)"
                    else:
                        delays.append(s.backoff(attempt))
                check_file_transition(row.status, str(status))
                conn.execute(f.update().where(f.c.file_id == file_id, f.c.status == row.status).values(
                    status=str(status), attempt=attempt, error=result.error if status != F.DONE else None,
                    last_update=t))
            values: dict[str, Any] = {"last_update": t, **outcome.updates}
            errors = [r.error for r in outcome.files.values() if r.error and r.status != F.DONE]
            values["error"] = errors[0][:2000] if errors else None
            conn.execute(db.operations.update().where(db.operations.c.operation_id == operation_id).values(**values))
            delay = max(delays) if delays else outcome.delay
            request_values: dict[str, Any] = {"lease_until": t + timedelta(seconds=s.lease)}  # still working
            if delay:
                request_values["not_before"] = t + timedelta(seconds=delay)
            conn.execute(db.requests.update().where(db.requests.c.request_id == claim.request_id)
                         .values(**request_values))

    def release(self, claim: Claim) -> str:
        """Put the request back (fenced): statuses derived, lease dropped. Returns the request status."""
        t = now()
        with self.engine.begin() as conn:
            self._fence(conn, claim)
            status = self._derive(conn, claim.request_id, t)
            values: dict[str, Any] = {"executor": None, "lease_until": None, "last_update": t}
            if status in (R.WAITING, R.SCHEDULED):
                nb = conn.execute(sa.select(db.requests.c.not_before)
                                  .where(db.requests.c.request_id == claim.request_id)).scalar_one()
                values["not_before"] = max(nb, t)
            conn.execute(db.requests.update().where(db.requests.c.request_id == claim.request_id).values(**values))
            return status

    def _derive(self, conn: Any, request_id: int, t: datetime) -> str:
        o, f, r = db.operations, db.files, db.requests
        ops = conn.execute(sa.select(o.c.operation_id, o.c.status, o.c.error).where(o.c.request_id == request_id)
                           .order_by(o.c.position)).all()
        files: dict[int, list[str]] = {op.operation_id: [] for op in ops}
        if ops:
            for fid, status in conn.execute(sa.select(f.c.operation_id, f.c.status)
                                            .where(f.c.operation_id.in_(list(files)))):
                files[fid].append(status)
        status, op_statuses = derive_request([(op.status, files[op.operation_id]) for op in ops])
        error = None
        for op, new in zip(ops, op_statuses, strict=True):
            if new == O.FAILED and error is None:
                error = op.error
            if new != op.status:
                check_operation_transition(op.status, str(new))
                conn.execute(o.update().where(o.c.operation_id == op.operation_id, o.c.status == op.status)
                             .values(status=str(new), last_update=t))
        old = conn.execute(sa.select(r.c.status).where(r.c.request_id == request_id)).scalar_one()
        if old != status:
            check_request_transition(old, str(status))
        conn.execute(r.update().where(r.c.request_id == request_id).values(status=str(status), error=error,
                                                                           last_update=t))
        return str(status)


def _request_dict(row: Any) -> dict[str, Any]:
    d = dict(row)
    for key in ("created_at", "last_update", "not_before", "lease_until"):
        d[key] = iso(d[key])
    return d


def _validate(op: Any) -> None:
    needs_target = {OperationType.REPLICATE_AND_REGISTER, OperationType.REMOVE_REPLICA,
                    OperationType.REGISTER_REPLICA, OperationType.PUT_AND_REGISTER, OperationType.REGISTER_FILE}
    if op.type in needs_target and not op.target_se:
        raise InvalidInput(f"{op.type} needs target_se", code="no-target-se")
    if op.type == OperationType.PUT_AND_REGISTER and not op.source_se and not all(f.pfn for f in op.files):
        raise InvalidInput("PutAndRegister needs source_se (the failover SE) or a PFN per file", code="no-source")
    if op.type == OperationType.REGISTER_FILE and not all(f.size is not None and f.checksum for f in op.files):
        raise InvalidInput("RegisterFile needs size and checksum per file", code="invalid-input")


def check_owner(identity: Any, request: dict[str, Any], admin: bool) -> None:
    if not admin and request["owner"] != identity.username:
        raise Forbidden(f"request {request['request_id']} belongs to {request['owner']}", code="forbidden")


FINAL_REQUEST = REQUEST_FINAL
