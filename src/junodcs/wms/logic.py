"""The workload management rules: submission, the job state machine, user actions, pilot reports, the site
mask, sandboxes, stalled jobs and rescheduling. Imports no FastAPI.

The job state machine is the one table `TRANSITIONS`; every status change goes through `_transition`, which
raises `IllegalTransition` for a move the table does not allow (nothing is ever forced). Every change writes a
`wms_logging` row (status, minor, application, time, source) in the same transaction.

Access: a `Caller` says who acts; users act on their own jobs, `JobAdministrator` on all, and members of a
group with `ProductionManagement` on all jobs of that group (production jobs belong to the group). The router's
policy decides the coarse rights; the logic applies the per-job rule.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from junodcs.core.errors import Conflict, DCSError, Forbidden, InvalidInput, NotFound
from junodcs.core.gridconfig import GridConfig
from junodcs.wms import db
from junodcs.wms.jdl import substitute
from junodcs.wms.models import (
    ACTIVE,
    FINAL,
    PRODUCTION_JOB_TYPES,
    USER_JOB_TYPES,
    Expansion,
    Heartbeat,
    InvalidJob,
    JobDescription,
    JobStatus,
    Minor,
    SiteStatus,
    StatusReport,
    expand,
)
from junodcs.wms.sandbox import MAX_SANDBOX_BYTES, SandboxStore, parse_ref

S = JobStatus
log = logging.getLogger(__name__)

#: The job state machine: from -> the statuses it may move to. Nothing else is ever applied.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.RECEIVED: frozenset({S.CHECKING, S.WAITING, S.FAILED, S.KILLED, S.DELETED}),
    S.CHECKING: frozenset({S.STAGING, S.WAITING, S.FAILED, S.RESCHEDULED, S.KILLED, S.DELETED}),
    S.STAGING: frozenset({S.CHECKING, S.WAITING, S.FAILED, S.KILLED, S.DELETED}),
    S.WAITING: frozenset({S.MATCHED, S.CHECKING, S.RESCHEDULED, S.KILLED, S.DELETED}),
    S.MATCHED: frozenset({S.RUNNING, S.STALLED, S.FAILED, S.RESCHEDULED, S.KILLED}),
    S.RUNNING: frozenset({S.COMPLETING, S.DONE, S.FAILED, S.STALLED, S.RESCHEDULED, S.KILLED}),
    S.STALLED: frozenset({S.RUNNING, S.COMPLETING, S.FAILED, S.RESCHEDULED, S.KILLED}),
    S.COMPLETING: frozenset({S.DONE, S.FAILED, S.STALLED, S.KILLED}),
    S.RESCHEDULED: frozenset({S.RECEIVED, S.FAILED, S.KILLED, S.DELETED}),
    S.DONE: frozenset({S.DELETED}),
    S.FAILED: frozenset({S.RESCHEDULED, S.DELETED}),
    S.KILLED: frozenset({S.RESCHEDULED, S.DELETED}),
    S.DELETED: frozenset(),
}

#: Statuses a user's `kill` moves straight to Killed (no pilot holds the job) ...
KILL_AT_ONCE = frozenset({S.RECEIVED, S.CHECKING, S.STAGING, S.WAITING, S.RESCHEDULED})
#: ... and those where the pilot must also be told (a Kill command for the running attempt).
KILL_WITH_COMMAND = ACTIVE
RESCHEDULABLE = frozenset(s for s, targets in TRANSITIONS.items() if S.RESCHEDULED in targets)

CPU_LADDER = (360, 1800, 3600, 21600, 43200, 86400, 172800, 259200, 345600, 518400, 691200, 864000, 1080000)


class IllegalTransition(Conflict):
    code = "illegal-transition"


class TooManyJobs(DCSError):
    status = 413
    code = "too-many-jobs"
    title = "Too many jobs"


class NoSuchJob(NotFound):
    code = "no-such-job"


class UnknownSite(InvalidInput):
    code = "unknown-site"


class StaleAttempt(Conflict):
    code = "stale-attempt"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def cpu_bucket(seconds: int) -> int:
    for step in CPU_LADDER:
        if seconds <= step:
            return step
    return CPU_LADDER[-1]


def check_transition(job_id: int, old: str, new: JobStatus) -> None:
    allowed = TRANSITIONS.get(JobStatus(old), frozenset())
    if new not in allowed:
        raise IllegalTransition(
            f"job {job_id}: {old} -> {new} is not allowed"
            + (f" (from {old}: {', '.join(sorted(allowed))})" if allowed else f" ({old} is final)"),
            job_id=job_id, status=old,
        )


@dataclass
class WMSConfig:
    max_jobs_per_call: int = 10_000
    max_rescheduling: int = 3
    heartbeat_period: int = 300
    """Seconds between the wrapper's heartbeats (told to pilots in every match and heartbeat answer)."""
    stalled_periods: float = 3
    """No heartbeat for this many periods: Running -> Stalled."""
    failed_periods: float = 10
    """Stalled without a sign of life for this many periods: -> Failed (at once when the pilot is dead)."""
    matched_timeout: int = 3600
    """A Matched job that never sent a heartbeat for this long is rescheduled."""
    reschedule_stalled: bool = True
    memory_cap_mb: int | None = None
    """Largest MaxRAM memory-aware rescheduling may ask for (default: the largest slot in grid.yaml)."""
    memory_growth: float = 2.0
    shares: dict[str, float] = field(default_factory=dict)
    """Group -> fair share (DIRAC JobShare); groups not listed get `default_share`."""
    default_share: float = 1000.0
    running_limits: dict[str, int] = field(default_factory=dict)
    """Site -> most jobs running there at once (DIRAC RunningLimit)."""
    hold_recheck: int = 300
    """Seconds before an optimizer looks again at a job it put on hold."""
    staging_recheck: int = 120
    lease_seconds: int = 300
    sandbox_grace: int = 86400
    """Seconds an uploaded sandbox no job uses is kept before it is removed."""
    sandbox_retention: int = 7 * 86400
    """Seconds the sandboxes of ended jobs are kept after the last of them ended (output stays retrievable)."""


@dataclass(frozen=True)
class Caller:
    username: str
    group: str
    admin: bool = False
    """JobAdministrator: sees and manages every job, administers the site mask."""
    group_manager: bool = False
    """ProductionManagement: sees and manages every job of its group; may submit production job types."""

    @classmethod
    def system(cls, source: str = "WMS") -> Caller:
        return cls(username=source, group="dcs_admin", admin=True, group_manager=True)

    def can_act_on(self, owner: str, grp: str) -> bool:
        return self.admin or owner == self.username or (self.group_manager and grp == self.group)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def bulk_insert(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """executemany on the driver's own cursor inside the current transaction: the same rows without
    SQLAlchemy's per-row parameter processing (3x faster for a 10,000-job bulk). Values must be plain
    Python values (str, int, float, None, datetime)."""
    if not rows:
        return
    columns = list(rows[0])
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    quote = conn.dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES ({', '.join([mark] * len(columns))})")
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        for start in range(0, len(rows), 5000):
            cursor.executemany(sql, [tuple(row[c] for c in columns) for row in rows[start:start + 5000]])
    finally:
        cursor.close()


def _sites_of(grid: GridConfig) -> dict[str, Any]:
    return {site.name: site for site in grid.sites}


class WMS:
    """Workload management on one database for one grid."""

    def __init__(self, engine: Engine, grid: GridConfig, *, config: WMSConfig | None = None,
                 sandbox_store: SandboxStore | None = None) -> None:
        self.engine = engine
        self.grid = grid
        self.config = config or WMSConfig()
        self.sandbox_store = sandbox_store
        self.sites = _sites_of(grid)
        self.ces = {ce.name: (site.name, ce) for site in grid.sites for ce in site.computing_elements}
        self.platforms = sorted({ce.platform for site in grid.sites for ce in site.computing_elements})
        largest = max((ce.memory_per_slot for _, ce in self.ces.values()), default=None)
        self.memory_cap = self.config.memory_cap_mb or largest
        self.se_sites = {se.name: (site.name, se.kind.value) for site in grid.sites for se in site.storage_elements}

    # -- helpers ---------------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        with self.engine.begin() as conn:
            return work(conn)

    def _rows(self, conn: Any, ids: Sequence[int], *, lock: bool = False) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for start in range(0, len(ids), 1000):
            stmt = select(db.jobs).where(db.jobs.c.id.in_(ids[start:start + 1000]))
            if lock and conn.dialect.name != "sqlite":
                stmt = stmt.with_for_update()
            for row in conn.execute(stmt):
                found[row.id] = row
        return found

    def _row(self, conn: Any, job_id: int, caller: Caller | None = None, *, lock: bool = False) -> Any:
        row = self._rows(conn, [int(job_id)], lock=lock).get(int(job_id))
        if row is None or (caller is not None and not caller.can_act_on(row.owner, row.grp)):
            # a job of someone else is reported as missing: its existence is not disclosed
            raise NoSuchJob(f"no job {job_id}" + ("" if row is None else " of yours"), job_id=job_id)
        return row

    def _transition(self, conn: Any, rows: Sequence[Any], new: JobStatus, *, minor: str, source: str,
                    application: str | None = None, values: dict[str, Any] | None = None,
                    stamp: datetime | None = None) -> None:
        """Move `rows` (all currently in the status they show) to `new`; one UPDATE per old status, guarded
        by that status so that a concurrent change makes this transaction fail instead of overwriting it."""
        if not rows:
            return
        stamp = stamp or now()
        by_status: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            check_transition(row.id, row.status, new)
            by_status[row.status].append(row)
        minor = minor[:255]
        changes: dict[str, Any] = {"status": new.value, "minor_status": minor, "updated_at": stamp, **(values or {})}
        if application is not None:
            changes["application_status"] = application[:255]
        for old, group in by_status.items():
            ids = [r.id for r in group]
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                result = conn.execute(update(db.jobs).where(db.jobs.c.id.in_(chunk), db.jobs.c.status == old)
                                      .values(**changes))
                if result.rowcount != len(chunk):
                    raise Conflict(f"jobs changed status concurrently while moving to {new}; try again",
                                   code="concurrent-update")
        attempt_of = {r.id: r.attempt + (1 if new is S.RECEIVED and r.status == S.RESCHEDULED else 0) for r in rows}
        conn.execute(insert(db.logging), [
            {"job_id": r.id, "attempt": attempt_of[r.id], "status": new.value, "minor_status": minor,
             "application_status": (application if application is not None else r.application_status)[:255],
             "time": stamp, "source": source[:32]} for r in rows])

    def _advance(self, conn: Any, rows: Sequence[Any], path: Sequence[tuple[JobStatus, str]], *, source: str,
                 stamp: datetime, values: dict[str, Any] | None = None) -> None:
        """Move `rows` (all in one status) along `path` [(status, minor), ...] with one guarded UPDATE per
        1,000 jobs and one logging row per job and step: the history reads as if each step had been applied
        on its own (a step keeping the status logs a minor status change). Every step is checked against
        `TRANSITIONS`. For the optimizers, which move thousands of new jobs through Checking at once."""
        if not rows or not path:
            return
        old = rows[0].status
        current = old
        for status, _ in path:
            if status.value != current:
                check_transition(rows[0].id, current, status)
                current = status.value
        final_status, final_minor = path[-1]
        changes: dict[str, Any] = {"status": final_status.value, "minor_status": final_minor[:255],
                                   "updated_at": stamp, **(values or {})}
        ids = [r.id for r in rows]
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            result = conn.execute(update(db.jobs).where(db.jobs.c.id.in_(chunk), db.jobs.c.status == old)
                                  .values(**changes))
            if result.rowcount != len(chunk):
                raise Conflict(f"jobs changed status concurrently while moving to {final_status}; try again",
                               code="concurrent-update")
        bulk_insert(conn, db.logging, [
            {"job_id": r.id, "attempt": r.attempt, "status": status.value, "minor_status": minor[:255],
             "application_status": (r.application_status or "")[:255], "time": stamp, "source": source[:32]}
            for r in rows for status, minor in path])

    def _log_minor(self, conn: Any, row: Any, minor: str | None, application: str | None, source: str,
                   stamp: datetime) -> None:
        values: dict[str, Any] = {"updated_at": stamp}
        if minor is not None:
            values["minor_status"] = minor[:255]
        if application is not None:
            values["application_status"] = application[:255]
        conn.execute(update(db.jobs).where(db.jobs.c.id == row.id).values(**values))
        conn.execute(insert(db.logging).values(
            job_id=row.id, attempt=row.attempt, status=row.status,
            minor_status=(minor if minor is not None else row.minor_status)[:255],
            application_status=(application if application is not None else row.application_status)[:255],
            time=stamp, source=source[:32]))

    # -- submission ------------------------------------------------------------------------------------

    def _check_job(self, job: JobDescription, caller: Caller, where: str = "") -> str | None:
        """Grid-dependent checks of one description; returns its input sandbox digest (or None)."""
        for attribute in ("Site", "BannedSites"):
            for site in getattr(job, attribute):
                if site not in self.sites:
                    raise UnknownSite(f"{where}{attribute}: unknown site {site!r}; sites are "
                                      + ", ".join(sorted(self.sites)))
        for ce in job.GridCE:
            if ce not in self.ces:
                raise UnknownSite(f"{where}GridCE: unknown computing element {ce!r}", code="unknown-ce")
        if job.Platform and job.Platform.upper() != "ANY" and job.Platform not in self.platforms:
            raise InvalidJob(f"{where}Platform: {job.Platform!r} is offered by no CE; known: "
                             + ", ".join(self.platforms))
        if job.JobType not in USER_JOB_TYPES:
            if job.JobType not in PRODUCTION_JOB_TYPES:
                raise InvalidJob(f"{where}JobType: {job.JobType!r} is not one of "
                                 + ", ".join(USER_JOB_TYPES + PRODUCTION_JOB_TYPES))
            if not (caller.group_manager or caller.admin):
                raise Forbidden(f"{where}JobType {job.JobType} is for production managers", code="forbidden-job-type")
        vo_root = f"/{self.grid.vo}/"
        for lfn in job.InputData:
            if not lfn.startswith(vo_root):
                raise InvalidJob(f"{where}InputData: {lfn!r} is outside the VO namespace {vo_root}")
        digest: str | None = None
        for entry in job.InputSandbox:
            if entry.upper().startswith("LFN:"):
                continue
            found = parse_ref(entry)
            if found is None:
                raise InvalidJob(f"{where}InputSandbox: {entry!r} is a local file; the server cannot read it "
                                 "(`dcs job submit` uploads local files as a sandbox)", code="local-sandbox-file")
            if found == "":
                raise InvalidJob(f"{where}InputSandbox: {entry!r} is not a valid sandbox reference (SB:sha256:<hex>)")
            if digest is not None and digest != found:
                raise InvalidJob(f"{where}InputSandbox: at most one SB: reference per job")
            digest = found
        return digest

    def submit(self, sources: Sequence[str | dict[str, Any]], caller: Caller, *,
               source: str = "JobManager") -> list[int]:
        """Validate, expand and store jobs, all or nothing; returns the new job IDs in order."""
        if isinstance(sources, (str, dict)):
            sources = [sources]
        if not sources:
            raise InvalidInput("nothing to submit")
        limit = self.config.max_jobs_per_call
        expansions: list[tuple[Expansion, str | None]] = []
        total = 0
        for position, item in enumerate(sources):
            where = f"job description {position + 1}: " if len(sources) > 1 else ""
            try:
                exp = expand(item, limit=limit)
            except DCSError as exc:
                exc.detail = where + exc.detail
                raise
            total += exp.count
            if total > limit:
                raise TooManyJobs(f"{total}+ jobs in one submission: at most {limit} per call; split it")
            digest = self._check_job(exp.template, caller, where)
            if not exp.text_only:
                for index in range(exp.count):
                    if self._check_job(exp.job(index), caller, f"{where}job {index}: ") != digest:
                        raise InvalidJob(f"{where}a parametric InputSandbox may vary only in LFN: entries")
            expansions.append((exp, digest))
        digests = {d for _, d in expansions if d}
        stamp = now()

        def work(conn: Any) -> list[int]:
            if digests:
                known = set(conn.execute(select(db.sandboxes.c.hash).where(db.sandboxes.c.hash.in_(digests)))
                            .scalars())
                missing = digests - known
                if missing:
                    raise InvalidJob(f"input sandbox {sorted(missing)[0]} is unknown: upload it first",
                                     code="unknown-sandbox")
                conn.execute(update(db.sandboxes).where(db.sandboxes.c.hash.in_(digests)).values(last_access=stamp))
            first = self._allocate(conn, total)
            job_rows: list[dict[str, Any]] = []
            jdl_rows: list[dict[str, Any]] = []
            log_rows: list[dict[str, Any]] = []
            next_id = first
            for exp, digest in expansions:
                self._rows_for(exp, digest, caller, first, next_id, stamp, job_rows, jdl_rows, log_rows, source)
                next_id += exp.count
            bulk_insert(conn, db.jobs, job_rows)
            bulk_insert(conn, db.jdls, jdl_rows)
            bulk_insert(conn, db.logging, log_rows)
            return list(range(first, first + total))

        return self._transaction(work)

    def _allocate(self, conn: Any, count: int) -> int:
        """Reserve `count` consecutive job IDs; returns the first. The row update serialises submitters."""
        for _ in range(3):
            result = conn.execute(update(db.counters).where(db.counters.c.name == "job")
                                  .values(value=db.counters.c.value + count))
            if result.rowcount == 1:
                last = conn.execute(select(db.counters.c.value).where(db.counters.c.name == "job")).scalar_one()
                return int(last) - count + 1
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.counters).values(name="job", value=0))
            except IntegrityError:
                pass
        raise Conflict("could not allocate job IDs; try again", code="concurrent-update")

    def _rows_for(self, exp: Expansion, digest: str | None, caller: Caller, bulk_id: int, first: int,
                  stamp: datetime, job_rows: list[dict[str, Any]], jdl_rows: list[dict[str, Any]],
                  log_rows: list[dict[str, Any]], source: str) -> None:
        template = exp.template
        public = template.public()
        width = len(str(exp.count - 1))
        fast = exp.text_only
        base = {
            "bulk_id": bulk_id, "owner": caller.username, "grp": caller.group, "vo": self.grid.vo,
            "status": S.RECEIVED.value, "minor_status": Minor.ACCEPTED, "application_status": "",
            "site": None, "ce": None, "pilot_id": None, "memory_limit": None, "attempt": 1,
            "reschedule_counter": 0, "input_sandbox": digest, "output_sandbox": None, "tq_id": None,
            "submitted_at": stamp, "updated_at": stamp, "reschedule_time": None, "matched_at": None,
            "start_exec_time": None, "heartbeat_time": None, "end_exec_time": None, "lease_owner": None,
            "lease_until": None,
        }
        log_base = {"attempt": 1, "status": S.RECEIVED.value, "minor_status": Minor.ACCEPTED,
                    "application_status": "", "time": stamp, "source": source}
        sequences = exp.default is not None or bool(exp.named)
        for index in range(exp.count):
            job_id = first + index
            if fast:
                attributes = dict(public) if (exp.placeholder_fields or sequences) else public
                default = exp.default[index] if exp.default is not None else None
                named = {n: v[index] for n, v in exp.named.items()}
                for name in exp.placeholder_fields:
                    attributes[name] = substitute(getattr(template, name), index, width, job_id, default, named)
                if sequences:
                    attributes["ParameterNumber"] = index
                    if default is not None:
                        attributes["Parameter"] = default
                    if named:
                        attributes["ParameterValues"] = named
                job = template
            else:
                job = exp.job(index, job_id)
                attributes = job.public()
            job_rows.append({
                **base, "id": job_id, "job_type": job.JobType,
                "job_group": str(attributes.get("JobGroup", ""))[:128],
                "job_name": str(attributes.get("JobName", ""))[:255],
                "user_priority": job.Priority, "cpu_time": job.CPUTime, "max_ram": job.MaxRAM, "cores": job.cores,
            })
            jdl_rows.append({"job_id": job_id, "jdl": _json(attributes)})
            log_rows.append({**log_base, "job_id": job_id})

    # -- reading ---------------------------------------------------------------------------------------

    @staticmethod
    def view(row: Any) -> dict[str, Any]:
        return {
            "job_id": row.id, "status": row.status, "minor_status": row.minor_status,
            "application_status": row.application_status, "site": row.site, "ce": row.ce, "owner": row.owner,
            "group": row.grp, "job_type": row.job_type, "job_group": row.job_group, "job_name": row.job_name,
            "priority": row.user_priority, "cpu_time": row.cpu_time, "max_ram": row.max_ram, "cores": row.cores,
            "attempt": row.attempt, "reschedule_counter": row.reschedule_counter, "pilot_id": row.pilot_id,
            "bulk_id": row.bulk_id, "task_queue": row.tq_id,
            "submitted_at": row.submitted_at, "updated_at": row.updated_at, "matched_at": row.matched_at,
            "start_exec_time": row.start_exec_time, "heartbeat_time": row.heartbeat_time,
            "end_exec_time": row.end_exec_time, "reschedule_time": row.reschedule_time,
        }

    def status(self, ids: Sequence[int], caller: Caller) -> dict[int, dict[str, Any]]:
        ids = self._ids(ids)
        with self.engine.connect() as conn:
            rows = self._rows(conn, ids)
        return {i: self.view(rows[i]) for i in ids if i in rows and caller.can_act_on(rows[i].owner, rows[i].grp)}

    def job(self, job_id: int, caller: Caller) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self.view(self._row(conn, job_id, caller))

    @staticmethod
    def _ids(ids: Iterable[Any]) -> list[int]:
        out = []
        for value in ids:
            if isinstance(value, bool):
                raise InvalidInput(f"{value!r} is not a job ID")
            try:
                out.append(int(value))
            except (TypeError, ValueError):
                raise InvalidInput(f"{value!r} is not a job ID") from None
        if len(out) > 100_000:
            raise TooManyJobs("at most 100,000 job IDs per call")
        return list(dict.fromkeys(out))

    def select(self, caller: Caller, *, status: Sequence[str] | None = None, minor_status: str | None = None,
               application_status: str | None = None, site: str | None = None, owner: str | None = None,
               group: str | None = None, job_group: str | None = None, since: datetime | None = None,
               until: datetime | None = None, after: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Jobs matching every given condition, by ascending ID, `after` an ID (for paging)."""
        j = db.jobs.c
        conditions = []
        if status:
            bad = [s for s in status if s not in JobStatus.__members__.values()]
            if bad:
                raise InvalidInput(f"unknown status {bad[0]!r}; statuses: {', '.join(s.value for s in JobStatus)}")
            conditions.append(j.status.in_(list(status)))
        for column, value in ((j.minor_status, minor_status), (j.application_status, application_status),
                              (j.site, site), (j.owner, owner), (j.grp, group), (j.job_group, job_group)):
            if value is not None:
                conditions.append(column == value)
        if since is not None:
            conditions.append(j.submitted_at >= since)
        if until is not None:
            conditions.append(j.submitted_at < until)
        if after is not None:
            conditions.append(j.id > after)
        if not caller.admin:
            mine = j.owner == caller.username
            conditions.append(or_(mine, j.grp == caller.group) if caller.group_manager else mine)
        stmt = select(db.jobs).where(*conditions).order_by(j.id).limit(max(1, min(limit, 100_000)))
        with self.engine.connect() as conn:
            return [self.view(row) for row in conn.execute(stmt)]

    def logging_info(self, job_id: int, caller: Caller) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            self._row(conn, job_id, caller)
            rows = conn.execute(select(db.logging).where(db.logging.c.job_id == job_id).order_by(db.logging.c.id))
            return [{"status": r.status, "minor_status": r.minor_status, "application_status": r.application_status,
                     "time": r.time, "source": r.source, "attempt": r.attempt} for r in rows]

    def description(self, job_id: int, caller: Caller) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id, caller)
            text = conn.execute(select(db.jdls.c.jdl).where(db.jdls.c.job_id == job_id)).scalar_one()
        attributes = json.loads(text)
        if row.max_ram is not None:
            attributes["MaxRAM"] = row.max_ram
        return attributes

    def parameters(self, job_id: int, caller: Caller, attempt: int | None = None) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id, caller)
            stmt = select(db.parameters).where(db.parameters.c.job_id == job_id)
            if attempt is not None:
                stmt = stmt.where(db.parameters.c.attempt == attempt)
            found: dict[int, dict[str, str]] = defaultdict(dict)
            for r in conn.execute(stmt.order_by(db.parameters.c.attempt, db.parameters.c.name)):
                found[r.attempt][r.name] = r.value
            beats = conn.execute(select(db.heartbeats).where(db.heartbeats.c.job_id == job_id)
                                 .order_by(db.heartbeats.c.id.desc()).limit(1)).first()
        current = dict(found.get(row.attempt, {}))
        if beats is not None and beats.attempt == row.attempt:
            current.update({"CPUConsumed": beats.cpu, "MemoryUsedMB": beats.rss_mb, "WallClockTime": beats.wall})
        return {"job_id": job_id, "attempt": row.attempt, "parameters": current,
                "earlier_attempts": {str(a): p for a, p in found.items() if a != row.attempt}}

    def peek(self, job_id: int, caller: Caller) -> str:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id, caller)
            value = conn.execute(select(db.parameters.c.value).where(
                db.parameters.c.job_id == job_id, db.parameters.c.attempt == row.attempt,
                db.parameters.c.name == "StandardOutput")).scalar()
        return value or ""

    # -- user actions ----------------------------------------------------------------------------------

    def _bulk_action(self, ids: Sequence[Any], caller: Caller,
                     act: Callable[[Any, Any], str]) -> dict[str, Any]:
        """Apply `act(conn, row)` to each job in one transaction; per-job outcome (DIRAC Successful/Failed)."""
        ids = self._ids(ids)

        def work(conn: Any) -> dict[str, Any]:
            rows = self._rows(conn, ids, lock=True)
            ok: dict[str, str] = {}
            failed: dict[str, str] = {}
            for job_id in ids:
                row = rows.get(job_id)
                if row is None or not caller.can_act_on(row.owner, row.grp):
                    failed[str(job_id)] = "no such job" + ("" if row is None else " of yours")
                    continue
                try:
                    with conn.begin_nested():
                        ok[str(job_id)] = act(conn, row)
                except (IllegalTransition, Conflict) as exc:
                    failed[str(job_id)] = exc.detail
            return {"successful": ok, "failed": failed}

        return self._transaction(work)

    def kill(self, ids: Sequence[Any], caller: Caller, *, source: str = "JobManager") -> dict[str, Any]:
        def act(conn: Any, row: Any) -> str:
            return self._kill(conn, row, caller.username if not caller.admin else source, source)

        return self._bulk_action(ids, caller, act)

    def _kill(self, conn: Any, row: Any, who: str, source: str, minor: str | None = None) -> str:
        stamp = now()
        if row.status in KILL_AT_ONCE:
            self._transition(conn, [row], S.KILLED, minor=minor or Minor.KILLED_BY_USER, source=source,
                             values={"tq_id": None, "lease_owner": None, "lease_until": None, "end_exec_time": stamp})
            return S.KILLED.value
        if row.status in KILL_WITH_COMMAND:
            self._transition(conn, [row], S.KILLED, minor=minor or Minor.MARKED_FOR_TERMINATION, source=source,
                             values={"end_exec_time": stamp})
            self._command(conn, row, "Kill", f"killed by {who}", stamp)
            return S.KILLED.value
        check_transition(row.id, row.status, S.KILLED)  # raises: the job is final
        return row.status

    def _command(self, conn: Any, row: Any, command: str, reason: str, stamp: datetime) -> None:
        conn.execute(insert(db.commands).values(job_id=row.id, attempt=row.attempt, command=command, reason=reason,
                                                status="Pending", created_at=stamp, sent_at=None))

    def delete(self, ids: Sequence[Any], caller: Caller, *, source: str = "JobManager") -> dict[str, Any]:
        """Deleted is final; an active job is killed first. Sandboxes no other job uses are removed."""
        released: set[str] = set()

        def act(conn: Any, row: Any) -> str:
            if row.status not in (S.DONE, S.FAILED, S.KILLED, S.DELETED) and S.DELETED not in TRANSITIONS[
                    JobStatus(row.status)]:
                self._kill(conn, row, caller.username, source)
                row = self._rows(conn, [row.id])[row.id]
            self._transition(conn, [row], S.DELETED, minor=Minor.DELETED, source=source,
                             values={"tq_id": None, "lease_owner": None, "lease_until": None})
            released.update(d for d in (row.input_sandbox, row.output_sandbox) if d)
            return S.DELETED.value

        result = self._bulk_action(ids, caller, act)
        if released:
            result["sandboxes_removed"] = self.release_sandboxes(released)
        return result

    def reschedule(self, ids: Sequence[Any], caller: Caller, *, reset: bool = False,
                   source: str = "JobManager") -> dict[str, Any]:
        if reset and not caller.admin:
            raise Forbidden("only a JobAdministrator may reset the reschedule counter")

        def act(conn: Any, row: Any) -> str:
            return self._reschedule(conn, row, source=source, minor=f"Rescheduled by {caller.username}",
                                    reset=reset, manual=True)

        return self._bulk_action(ids, caller, act)

    def _reschedule(self, conn: Any, row: Any, *, source: str, minor: str, reset: bool = False,
                    max_ram: int | None = None, manual: bool = False) -> str:
        """Start a new attempt from the stored description, or fail the job when attempts are used up."""
        check_transition(row.id, row.status, S.RESCHEDULED)
        stamp = now()
        counter = (0 if reset else row.reschedule_counter) + 1
        if counter > self.config.max_rescheduling and manual and row.status in (S.FAILED, S.KILLED):
            raise Conflict(f"job {row.id} was rescheduled {row.reschedule_counter} times already (MaxRescheduling = "
                           f"{self.config.max_rescheduling}); a JobAdministrator can reset the counter",
                           code="max-rescheduling")
        if counter > self.config.max_rescheduling:
            if row.status != S.FAILED:
                self._transition(conn, [row], S.FAILED, minor=Minor.MAX_RESCHEDULING, source=source,
                                 values={"tq_id": None, "end_exec_time": row.end_exec_time or stamp})
            else:
                self._log_minor(conn, row, Minor.MAX_RESCHEDULING, None, source, stamp)
            return S.FAILED.value
        if row.input_sandbox:  # a new use of the sandbox: the cleaner keeps it; one it removed cannot run again
            kept = conn.execute(update(db.sandboxes).where(db.sandboxes.c.hash == row.input_sandbox)
                                .values(last_access=stamp)).rowcount
            if not kept and manual:
                raise Conflict(f"job {row.id}: its input sandbox was removed after the job ended; submit it again",
                               code="sandbox-removed")
        self._transition(conn, [row], S.RESCHEDULED, minor=minor, source=source, stamp=stamp)
        moved = self._rows(conn, [row.id])[row.id]
        conn.execute(update(db.commands).where(db.commands.c.job_id == row.id, db.commands.c.status == "Pending")
                     .values(status="Obsolete"))
        values = {"attempt": row.attempt + 1, "reschedule_counter": counter, "reschedule_time": stamp,
                  "site": None, "ce": None, "pilot_id": None, "memory_limit": None, "tq_id": None,
                  "matched_at": None, "start_exec_time": None, "heartbeat_time": None, "end_exec_time": None,
                  "lease_owner": None, "lease_until": None}
        if max_ram is not None:
            values["max_ram"] = max_ram
        self._transition(conn, [moved], S.RECEIVED, minor=Minor.RESCHEDULED, application="", source=source,
                         values=values, stamp=stamp)
        return S.RECEIVED.value

    # -- pilot side: heartbeats and reports ------------------------------------------------------------

    def heartbeat(self, beats: Sequence[Heartbeat], *, source: str = "JobWrapper") -> list[dict[str, Any]]:
        """Record heartbeats; each answer carries the commands for that (job, attempt), e.g. Kill."""
        stamp = now()

        def work(conn: Any) -> list[dict[str, Any]]:
            rows = self._rows(conn, [b.job_id for b in beats], lock=True)
            answers: list[dict[str, Any]] = []
            series = []
            for beat in beats:
                row = rows.get(beat.job_id)
                answer: dict[str, Any] = {"job_id": beat.job_id, "attempt": beat.attempt, "commands": [],
                                          "heartbeat_period": self.config.heartbeat_period}
                answers.append(answer)
                if row is None:
                    answer["commands"].append({"command": "Kill", "reason": "no such job"})
                    continue
                if beat.attempt != row.attempt or (beat.pilot_id and row.pilot_id and beat.pilot_id != row.pilot_id):
                    answer["commands"].append({"command": "Kill", "reason":
                                               f"attempt {beat.attempt} is over: the job was rescheduled"})
                    continue
                if row.status in FINAL:
                    answer["commands"].append({"command": "Kill", "reason": f"job is {row.status}"})
                    self._mark_sent(conn, row, stamp)
                    continue
                if row.status in (S.MATCHED, S.STALLED):
                    values = {"heartbeat_time": stamp}
                    if row.status == S.MATCHED:
                        values["start_exec_time"] = stamp
                    self._transition(conn, [row], S.RUNNING, minor="Job running" if row.status == S.MATCHED
                                     else "Heartbeat received again", source=source, values=values, stamp=stamp)
                else:
                    conn.execute(update(db.jobs).where(db.jobs.c.id == row.id).values(heartbeat_time=stamp))
                series.append({"job_id": row.id, "attempt": row.attempt, "time": stamp, "cpu": beat.cpu,
                               "rss_mb": beat.rss_mb, "wall": beat.wall})
                if beat.stdout_tail is not None:
                    self._set_parameters(conn, row, {"StandardOutput": beat.stdout_tail})
                pending = conn.execute(select(db.commands).where(
                    db.commands.c.job_id == row.id, db.commands.c.attempt == row.attempt,
                    db.commands.c.status == "Pending")).all()
                for command in pending:
                    answer["commands"].append({"command": command.command, "reason": command.reason})
                self._mark_sent(conn, row, stamp)
                if row.memory_limit and beat.rss_mb > row.memory_limit:
                    answer["commands"].append({"command": "Kill", "reason": "memory",
                                               "detail": f"RSS {beat.rss_mb:.0f} MB > slot {row.memory_limit} MB"})
            if series:
                conn.execute(insert(db.heartbeats), series)
            return answers

        return self._transaction(work)

    @staticmethod
    def _mark_sent(conn: Any, row: Any, stamp: datetime) -> None:
        conn.execute(update(db.commands).where(db.commands.c.job_id == row.id, db.commands.c.attempt == row.attempt,
                                               db.commands.c.status == "Pending").values(status="Sent", sent_at=stamp))

    @staticmethod
    def _set_parameters(conn: Any, row: Any, values: dict[str, Any]) -> None:
        if not values:
            return
        names = [str(n)[:64] for n in values]
        conn.execute(delete(db.parameters).where(db.parameters.c.job_id == row.id,
                                                 db.parameters.c.attempt == row.attempt,
                                                 db.parameters.c.name.in_(names)))
        conn.execute(insert(db.parameters), [
            {"job_id": row.id, "attempt": row.attempt, "name": str(n)[:64],
             "value": v if isinstance(v, str) else _json(v)} for n, v in values.items()])

    def report(self, reports: Sequence[StatusReport]) -> list[dict[str, Any]]:
        """Status, minor/application status and parameters reported by the job wrapper for its attempt."""

        def work(conn: Any) -> list[dict[str, Any]]:
            rows = self._rows(conn, [r.job_id for r in reports], lock=True)
            out = []
            for report in reports:
                row = rows.get(report.job_id)
                if row is None:
                    raise NoSuchJob(f"no job {report.job_id}", job_id=report.job_id)
                if report.attempt != row.attempt or (report.pilot_id and row.pilot_id
                                                     and report.pilot_id != row.pilot_id):
                    raise StaleAttempt(f"job {row.id}: attempt {report.attempt} is over (now attempt {row.attempt})",
                                       job_id=row.id)
                out.append(self._apply_report(conn, row, report))
                rows[row.id] = self._rows(conn, [row.id])[row.id]
            return out

        return self._transaction(work)

    def _apply_report(self, conn: Any, row: Any, report: StatusReport) -> dict[str, Any]:
        stamp = now()
        self._set_parameters(conn, row, report.parameters)
        new = report.status
        if new is None or new.value == row.status:
            if report.minor_status is not None or report.application_status is not None:
                self._log_minor(conn, row, report.minor_status, report.application_status, report.source, stamp)
            return {"job_id": row.id, "status": row.status}
        values: dict[str, Any] = {"heartbeat_time": stamp}
        if new == S.RUNNING and row.start_exec_time is None:
            values["start_exec_time"] = stamp
        if new in FINAL or new == S.COMPLETING:  # Completing from the wrapper: the pilot has let the job go
            values["end_exec_time"] = stamp
        minor = report.minor_status or row.minor_status
        if report.memory_exceeded_mb and new == S.FAILED:
            minor = report.minor_status or Minor.MEMORY_EXCEEDED
        self._transition(conn, [row], new, minor=minor, application=report.application_status,
                         source=report.source, values=values, stamp=stamp)
        final = new.value
        if new == S.FAILED and report.memory_exceeded_mb:
            failed = self._rows(conn, [row.id])[row.id]
            final = self._memory_reschedule(conn, failed, report.memory_exceeded_mb)
        elif new == S.FAILED and report.reschedule:
            failed = self._rows(conn, [row.id])[row.id]
            final = self._reschedule(conn, failed, source="JobWrapper", minor="Going to reschedule job")
        return {"job_id": row.id, "status": final}

    def _memory_reschedule(self, conn: Any, row: Any, peak_mb: float) -> str:
        """A job killed for memory comes back needing more: max(growth x its limit, 1.25 x the peak), rounded
        up to 500 MB, capped at the largest slot any CE offers. At the cap already: it stays Failed."""
        current = row.max_ram or row.memory_limit or 0
        cap = self.memory_cap
        if cap is None or current >= cap:
            self._log_minor(conn, row, f"{Minor.MEMORY_EXCEEDED} ({peak_mb:.0f} MB) and no CE offers more than "
                            f"{cap} MB", None, "WMS", now())
            return row.status
        wanted = max(current * self.config.memory_growth, peak_mb * 1.25)
        wanted = min(int(math.ceil(wanted / 500.0) * 500), cap)
        return self._reschedule(conn, row, source="WMS", max_ram=wanted,
                                minor=f"{Minor.MEMORY_EXCEEDED} ({peak_mb:.0f} MB): rescheduled with MaxRAM "
                                      f"{wanted} MB")

    def pilot_status(self, pilot_id: str, status: str, *, source: str = "Pilot") -> dict[str, Any]:
        """A pilot (or its site director) reports the pilot's state; a dead pilot fails its stalled jobs at once."""
        if status not in ("Running", "Done", "Failed", "Aborted"):
            raise InvalidInput("pilot status is one of Running, Done, Failed, Aborted", code="invalid-status")
        stamp = now()

        def work(conn: Any) -> dict[str, Any]:
            result = conn.execute(update(db.pilots).where(db.pilots.c.id == pilot_id)
                                  .values(status=status, last_seen=stamp))
            if result.rowcount == 0:
                raise NotFound(f"no pilot {pilot_id!r}", code="no-such-pilot")
            return {"pilot_id": pilot_id, "status": status}

        answer = self._transaction(work)
        if status != "Running":
            answer["jobs"] = self.check_stalled(pilot_dead=[pilot_id])
        return answer

    # -- stalled jobs ----------------------------------------------------------------------------------

    def check_stalled(self, at: datetime | None = None, *, pilot_dead: Sequence[str] = (),
                      source: str = "StalledJobAgent") -> dict[str, list[int]]:
        """One pass of the stalled-job agent:

        * Running/Completing without a heartbeat for `stalled_periods` -> Stalled;
        * Stalled (or Running) whose pilot is known dead -> Failed "Job stalled: pilot not running" at once;
        * Stalled without a sign of life for `failed_periods` -> Failed (a Kill is queued in case it lives);
        * Matched but never started within `matched_timeout` -> rescheduled;
        * failed-as-stalled jobs are rescheduled automatically while attempts remain (`reschedule_stalled`).
        """
        at = at or now()
        period = self.config.heartbeat_period
        stalled_before = at - timedelta(seconds=period * self.config.stalled_periods)
        failed_before = at - timedelta(seconds=period * self.config.failed_periods)
        matched_before = at - timedelta(seconds=self.config.matched_timeout)
        j = db.jobs.c
        last_sign = func.coalesce(j.heartbeat_time, j.start_exec_time, j.matched_at)
        done: dict[str, list[int]] = {"stalled": [], "failed": [], "rescheduled": []}
        # a Completing job the wrapper released (end_exec_time set) waits for its RMS requests, not a pilot
        held = or_(j.status.in_((S.RUNNING, S.MATCHED)), (j.status == S.COMPLETING) & j.end_exec_time.is_(None))

        def work(conn: Any) -> None:
            dead = set(pilot_dead) | set(conn.execute(select(db.pilots.c.id).where(
                db.pilots.c.status.in_(("Done", "Failed", "Aborted")))).scalars())
            to_stall = conn.execute(select(db.jobs).where(held, j.status != S.MATCHED,
                                                          last_sign < stalled_before)).all()
            if dead:
                to_stall += conn.execute(select(db.jobs).where(held, j.pilot_id.in_(list(dead)),
                                                               last_sign >= stalled_before)).all()
            if to_stall:
                self._transition(conn, to_stall, S.STALLED, minor=Minor.STALLED, source=source, stamp=at)
                done["stalled"] += [r.id for r in to_stall]
            stalled = conn.execute(select(db.jobs).where(j.status == S.STALLED)).all()
            failing = []
            for row in stalled:
                if row.pilot_id in dead:
                    failing.append((row, Minor.PILOT_DEAD))
                elif (row.heartbeat_time or row.start_exec_time or row.matched_at or row.updated_at) < failed_before:
                    seconds = int((at - (row.heartbeat_time or row.start_exec_time or row.updated_at)).total_seconds())
                    failing.append((row, f"Stalling for more than {seconds} s"))
            for row, reason in failing:
                self._transition(conn, [row], S.FAILED, minor=reason, source=source,
                                 values={"end_exec_time": at}, stamp=at)
                self._command(conn, row, "Kill", reason, at)
                done["failed"].append(row.id)
                if self.config.reschedule_stalled:
                    failed = self._rows(conn, [row.id])[row.id]
                    if self._reschedule(conn, failed, source=source, minor=f"{reason}: rescheduled") == S.RECEIVED:
                        done["rescheduled"].append(row.id)
            late = conn.execute(select(db.jobs).where(j.status == S.MATCHED, j.heartbeat_time.is_(None),
                                                      j.matched_at < matched_before)).all()
            for row in late:
                if self._reschedule(conn, row, source=source, minor=Minor.MATCHED_TOO_LONG) == S.RECEIVED:
                    done["rescheduled"].append(row.id)

        self._transaction(work)
        return done

    # -- site mask -------------------------------------------------------------------------------------

    def _site(self, site: str) -> str:
        if site not in self.sites:
            raise UnknownSite(f"unknown site {site!r}; sites are " + ", ".join(sorted(self.sites)))
        return site

    def site_mask(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = {r.site: r for r in conn.execute(select(db.site_mask))}
            running = dict(conn.execute(select(db.jobs.c.site, func.count()).where(
                db.jobs.c.status.in_([s.value for s in ACTIVE])).group_by(db.jobs.c.site)).all())
        out = []
        for name in self.sites:
            row = rows.get(name)
            out.append({"site": name, "status": row.status if row else SiteStatus.ACTIVE.value,
                        "reason": row.reason if row else "", "author": row.author if row else None,
                        "updated_at": row.updated_at if row else None, "running": running.get(name, 0),
                        "running_limit": self.config.running_limits.get(name)})
        return out

    def banned_sites(self, conn: Any | None = None) -> set[str]:
        stmt = select(db.site_mask.c.site).where(db.site_mask.c.status == SiteStatus.BANNED.value)
        if conn is not None:
            return set(conn.execute(stmt).scalars())
        with self.engine.connect() as c:
            return set(c.execute(stmt).scalars())

    def set_site_status(self, site: str, status: SiteStatus, reason: str, caller: Caller) -> dict[str, Any]:
        if not caller.admin:
            raise Forbidden("only a JobAdministrator changes the site mask")
        site = self._site(site)
        if not reason or not reason.strip():
            raise InvalidInput("give a reason: the next operator will read it", code="reason-required")
        stamp = now()

        def work(conn: Any) -> dict[str, Any]:
            values = {"status": status.value, "reason": reason.strip(), "author": caller.username, "updated_at": stamp}
            if conn.execute(update(db.site_mask).where(db.site_mask.c.site == site).values(**values)).rowcount == 0:
                conn.execute(insert(db.site_mask).values(site=site, **values))
            conn.execute(insert(db.site_mask_log).values(site=site, status=status.value, reason=reason.strip(),
                                                         author=caller.username, time=stamp))
            if status is SiteStatus.ACTIVE:  # held jobs waiting for this site are looked at again now
                conn.execute(update(db.jobs).where(db.jobs.c.status == S.CHECKING, db.jobs.c.lease_owner == "hold")
                             .values(lease_until=None, lease_owner=None))
            return {"site": site, "status": status.value, "reason": reason.strip(), "author": caller.username,
                    "updated_at": stamp}

        return self._transaction(work)

    def site_history(self, site: str) -> list[dict[str, Any]]:
        site = self._site(site)
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.site_mask_log).where(db.site_mask_log.c.site == site)
                                .order_by(db.site_mask_log.c.id))
            return [{"site": r.site, "status": r.status, "reason": r.reason, "author": r.author, "time": r.time}
                    for r in rows]

    # -- sandboxes -------------------------------------------------------------------------------------

    def _store(self) -> SandboxStore:
        if self.sandbox_store is None:
            raise DCSError("this server has no sandbox store", code="no-sandbox-store")
        return self.sandbox_store

    def upload_sandbox(self, data: bytes, caller: Caller, *, kind: str = "input") -> dict[str, Any]:
        if len(data) > MAX_SANDBOX_BYTES:
            raise DCSError(f"sandbox of {len(data)} bytes: at most {MAX_SANDBOX_BYTES} (put big files on an SE and "
                           "list them as LFN: entries)", code="sandbox-too-large")
        if not data:
            raise InvalidInput("empty sandbox", code="empty-sandbox")
        digest, size = self._store().put(data)
        self._record_sandbox(digest, size, caller.username, caller.group, kind)
        return {"hash": digest, "size": size, "ref": f"SB:sha256:{digest}"}

    def _record_sandbox(self, digest: str, size: int, owner: str, group: str, kind: str) -> None:
        """The metadata row of a stored archive (one per content); a second upload only refreshes it."""
        stamp = now()

        def work(conn: Any) -> None:
            if conn.execute(update(db.sandboxes).where(db.sandboxes.c.hash == digest)
                            .values(last_access=stamp)).rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(db.sandboxes).values(hash=digest, size=size, owner=owner, grp=group,
                                                                 kind=kind, created_at=stamp, last_access=stamp))
                except IntegrityError:
                    pass

        self._transaction(work)

    def sandbox(self, digest: str, caller: Caller) -> bytes:
        """The bytes of a sandbox the caller may read: its own upload, or one of the caller's jobs uses it."""
        with self.engine.connect() as conn:
            meta = conn.execute(select(db.sandboxes).where(db.sandboxes.c.hash == digest)).first()
            if meta is None:
                raise NotFound(f"no sandbox {digest}", code="no-such-sandbox")
            users = conn.execute(select(db.jobs.c.owner, db.jobs.c.grp).distinct().where(
                or_(db.jobs.c.input_sandbox == digest, db.jobs.c.output_sandbox == digest)).limit(1000)).all()
            allowed = caller.admin or meta.owner == caller.username or any(caller.can_act_on(o, g) for o, g in users)
        if not allowed:
            raise NotFound(f"no sandbox {digest} of yours", code="no-such-sandbox")
        return self._store().get(digest)

    def _attempt_row(self, job_id: int, attempt: int, pilot_id: str | None) -> Any:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id)
        if row.attempt != attempt or (pilot_id and row.pilot_id != pilot_id):
            raise StaleAttempt(f"job {job_id}: attempt {attempt} is over")
        return row

    def _stored(self, conn: Any, digest: str) -> bool:
        return conn.execute(select(db.sandboxes.c.hash).where(db.sandboxes.c.hash == digest)).first() is not None

    def _input_digest(self, row: Any) -> str:
        if not row.input_sandbox:
            raise NotFound(f"job {row.id} has no input sandbox", code="no-such-sandbox")
        with self.engine.connect() as conn:
            if not self._stored(conn, row.input_sandbox):
                raise NotFound(f"job {row.id}: its input sandbox {row.input_sandbox} was removed by the sandbox "
                               "cleaner after the job ended", code="sandbox-removed")
        return str(row.input_sandbox)

    def job_input_sandbox(self, job_id: int, attempt: int, pilot_id: str | None) -> bytes:
        """For the pilot running (job, attempt): the bytes, through the server."""
        row = self._attempt_row(job_id, attempt, pilot_id)
        return self._store().get(self._input_digest(row))

    def input_sandbox_access(self, job_id: int, attempt: int, pilot_id: str | None) -> dict[str, Any]:
        """For the pilot running (job, attempt): the SE URL of its input sandbox and a read token for that one
        file, valid 15 minutes; `url` is None when this server keeps sandboxes itself (fetch the bytes from
        `/jobs/{id}/input-sandbox` then)."""
        row = self._attempt_row(job_id, attempt, pilot_id)
        digest = self._input_digest(row)
        access = self._store().read_access(digest, row.owner)
        return self._access_view(digest, access)

    @staticmethod
    def _access_view(digest: str, access: Any) -> dict[str, Any]:
        if access is None:
            return {"sha256": digest, "url": None, "token": None, "se": None, "expires_in": None}
        return {"sha256": digest, "url": access.url, "token": access.token, "se": access.se,
                "expires_in": access.expires_in}

    def output_sandbox_access(self, job_id: int, attempt: int, pilot_id: str | None, digest: str,
                              size: int) -> dict[str, Any]:
        """Where the pilot running (job, attempt) puts its output sandbox: a create-only token for the one file
        named by the archive's sha256 (nothing stored can be overwritten); `exists` says the same content is
        stored already (register it, skip the upload)."""
        from junodcs.wms.sandbox import is_digest

        if not is_digest(digest):
            raise InvalidInput(f"{digest!r} is not a sha256 hex digest", code="invalid-digest")
        if not 0 < size <= MAX_SANDBOX_BYTES:
            raise DCSError(f"output sandbox of {size} bytes: between 1 and {MAX_SANDBOX_BYTES}",
                           code="sandbox-too-large")
        row = self._attempt_row(job_id, attempt, pilot_id)
        store = self._store()
        access = store.write_access(digest, row.owner)
        view = self._access_view(digest, access)
        view["exists"] = access is not None and store.size(digest) == size
        return view

    def register_output_sandbox(self, job_id: int, attempt: int, pilot_id: str | None, digest: str,
                                size: int) -> dict[str, Any]:
        """The pilot uploaded its output sandbox to the SE: check the file is there with that size and that its
        bytes hash to the name, then record it.

        The server reads the archive back (at most `MAX_SANDBOX_BYTES`, usually a few kB) rather than trust the
        pilot: a content-addressed name holding other bytes would hand a user someone else's (or no) output,
        and, with create-only tokens, block the right bytes from ever being stored. Such a file is removed."""
        from junodcs.wms.sandbox import is_digest

        if not is_digest(digest):
            raise InvalidInput(f"{digest!r} is not a sha256 hex digest", code="invalid-digest")
        row = self._attempt_row(job_id, attempt, pilot_id)
        stored = self._store().size(digest)
        if stored is None:
            raise NotFound(f"output sandbox {digest} is not on the sandbox SE: upload it first",
                           code="no-such-sandbox")
        if stored != size:
            raise Conflict(f"output sandbox {digest}: {stored} bytes stored, {size} announced", code="size-mismatch")
        self._verify_stored(digest)
        self._record_sandbox(digest, stored, row.owner, row.grp, "output")
        return self._set_output_sandbox(row, digest, stored)

    def _verify_stored(self, digest: str) -> None:
        store = self._store()
        if not store.intact(digest):
            with self.engine.connect() as conn:
                recorded = self._stored(conn, digest)
            if not recorded:  # never accepted: nobody's output, safe to remove so the right bytes can be put
                store.delete(digest)
            raise Conflict(f"output sandbox {digest}: the bytes on the sandbox SE have another sha256"
                           + ("" if recorded else "; removed, upload it again"), code="sha256-mismatch")

    def _set_output_sandbox(self, row: Any, digest: str, size: int) -> dict[str, Any]:
        previous = row.output_sandbox
        self._transaction(lambda conn: conn.execute(update(db.jobs).where(db.jobs.c.id == row.id)
                                                    .values(output_sandbox=digest)))
        if previous and previous != digest:
            self.release_sandboxes({previous})
        return {"hash": digest, "size": size, "ref": f"SB:sha256:{digest}"}

    def store_output_sandbox(self, job_id: int, attempt: int, pilot_id: str | None, data: bytes) -> dict[str, Any]:
        """The output sandbox uploaded through the server (stores without direct pilot access)."""
        row = self._attempt_row(job_id, attempt, pilot_id)
        info = self.upload_sandbox(data, Caller(row.owner, row.grp), kind="output")
        return self._set_output_sandbox(row, info["hash"], info["size"])

    def output_sandbox(self, job_id: int, caller: Caller) -> bytes:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id, caller)
            if row.output_sandbox and not self._stored(conn, row.output_sandbox):
                raise NotFound(f"job {job_id}: its output sandbox was removed by the sandbox cleaner "
                               f"{self.config.sandbox_retention // 86400} days after the job ended",
                               code="sandbox-removed")
        if not row.output_sandbox:
            raise NotFound(f"job {job_id} ({row.status}) has no output sandbox yet", code="no-output-sandbox")
        return self._store().get(row.output_sandbox)

    def release_sandboxes(self, digests: Iterable[str]) -> list[str]:
        """Remove each sandbox that no job other than Deleted ones uses any more; returns those removed."""
        removed: list[str] = []
        j = db.jobs.c
        for digest in digests:
            def work(conn: Any, digest: str = digest) -> bool:
                used = conn.execute(select(exists().where(or_(j.input_sandbox == digest, j.output_sandbox == digest),
                                                          j.status != S.DELETED))).scalar()
                if used:
                    return False
                conn.execute(update(db.jobs).where(j.input_sandbox == digest).values(input_sandbox=None))
                conn.execute(update(db.jobs).where(j.output_sandbox == digest).values(output_sandbox=None))
                return conn.execute(delete(db.sandboxes).where(db.sandboxes.c.hash == digest)).rowcount > 0

            if self._transaction(work):
                self._delete_bytes(digest)
                removed.append(digest)
        return removed

    def _delete_bytes(self, digest: str) -> None:
        """The row is gone first: bytes left behind by a failed delete waste space but never break a job."""
        if self.sandbox_store is None:
            return
        try:
            self.sandbox_store.delete(digest)
        except DCSError as exc:
            log.warning("sandbox %s: row removed but the archive could not be deleted: %s", digest, exc)

    def sandbox_references(self, digests: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Per sandbox: how many jobs use it (`jobs`) and how many of those are still not ended (`active`)."""
        j = db.jobs.c
        ended = [S.DONE.value, S.FAILED.value, S.KILLED.value, S.DELETED.value]
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"jobs": 0, "active": 0})
        wanted = set(digests) if digests is not None else None
        with self.engine.connect() as conn:
            for column in (j.input_sandbox, j.output_sandbox):
                stmt = (select(column, func.count(), func.sum(case((j.status.in_(ended), 0), else_=1)))
                        .where(column.is_not(None)).group_by(column))
                if wanted is not None:
                    stmt = stmt.where(column.in_(list(wanted)))
                for digest, total, active in conn.execute(stmt):
                    counts[digest]["jobs"] += int(total)
                    counts[digest]["active"] += int(active or 0)
        return dict(counts)

    def clean_sandboxes(self, at: datetime | None = None) -> list[str]:
        """One pass of the sandbox cleaner. A sandbox goes (database row, then the archive on the SE) when

        * no job uses it and it was uploaded or last used more than `sandbox_grace` ago, or
        * every job using it has ended (Done, Failed, Killed, Deleted) more than `sandbox_retention` ago
          (the output stays retrievable that long), and it was not used since.

        One scan over the jobs table finds the sandboxes still needed; each removal is guarded by
        `last_access`, which every new use (submission, output upload, rescheduling) refreshes, so a
        sandbox taken into use during the pass is kept."""
        at = at or now()
        grace_cutoff = at - timedelta(seconds=self.config.sandbox_grace)
        retention_cutoff = at - timedelta(seconds=self.config.sandbox_retention)
        j = db.jobs.c
        ended = [S.DONE.value, S.FAILED.value, S.KILLED.value, S.DELETED.value]
        still_needed = or_(j.status.not_in(ended), func.coalesce(j.end_exec_time, j.updated_at) >= retention_cutoff)
        with self.engine.connect() as conn:
            needed: set[str] = set()
            for column in (j.input_sandbox, j.output_sandbox):
                needed.update(conn.execute(select(column).distinct().where(column.is_not(None), still_needed))
                              .scalars())
            candidates = [h for h in conn.execute(select(db.sandboxes.c.hash).where(
                db.sandboxes.c.last_access < grace_cutoff)).scalars() if h not in needed]
        removed: list[str] = []
        for digest in candidates:
            def work(conn: Any, digest: str = digest) -> bool:
                gone = conn.execute(delete(db.sandboxes).where(db.sandboxes.c.hash == digest,
                                                               db.sandboxes.c.last_access < grace_cutoff)).rowcount
                if gone:  # Deleted jobs forget it; ended jobs keep the hash as the trace of what they had
                    conn.execute(update(db.jobs).where(j.input_sandbox == digest, j.status == S.DELETED)
                                 .values(input_sandbox=None))
                    conn.execute(update(db.jobs).where(j.output_sandbox == digest, j.status == S.DELETED)
                                 .values(output_sandbox=None))
                return bool(gone)

            if self._transaction(work):
                self._delete_bytes(digest)
                removed.append(digest)
        if removed:
            log.info("sandbox cleaner: removed %d sandboxes", len(removed))
        return removed

    def purge_unused_sandboxes(self, at: datetime | None = None) -> list[str]:
        """The sandbox cleaner's pass (kept name): see `clean_sandboxes`."""
        return self.clean_sandboxes(at)

    # -- task queues (read side) -----------------------------------------------------------------------

    def task_queues(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            counts = dict(conn.execute(select(db.jobs.c.tq_id, func.count()).where(db.jobs.c.tq_id.is_not(None))
                                       .group_by(db.jobs.c.tq_id)).all())
            rows = conn.execute(select(db.task_queues).order_by(db.task_queues.c.id)).all()
        return [{"id": r.id, "owner": r.owner, "group": r.grp, "job_type": r.job_type, "cpu_time": r.cpu_time,
                 "platform": r.platform, "tags": json.loads(r.tags), "min_ram": r.min_ram, "cores": r.cores,
                 "sites": json.loads(r.sites), "ces": json.loads(r.ces), "waiting": counts.get(r.id, 0)}
                for r in rows]


def wms_for_state(state: Any) -> WMS:
    """The one `WMS` of a server process (routes and agents share it), made on first use."""
    found = getattr(state, "wms", None)
    if found is None:
        store = getattr(state, "sandbox_store", None)
        if store is None:
            from junodcs.core.paths import data_dir
            from junodcs.wms.sandbox import store_for_grid

            store = state.sandbox_store = store_for_grid(state.grid, _token_issue(state), data_dir() / "sandboxes")
            log.info("job sandboxes are kept %s", f"on SE {state.grid.servers.sandbox_se}"
                     if state.grid.servers.sandbox_se else "on this server's disk (grid.yaml names no sandbox_se)")
        config = getattr(state, "wms_config", None) or WMSConfig()
        found = state.wms = WMS(state.engine, state.grid, config=config, sandbox_store=store)
    return found


def _token_issue(state: Any) -> Any:
    """issue(username, scopes, audience, lifetime) on this server's token issuer, or None without one."""
    issuer = getattr(state, "token_issuer", None)
    if issuer is None:
        return None
    group = state.grid.registry.default_group

    def issue(username: str, scopes: tuple[str, ...], audience: str, lifetime: int) -> str:
        token, _ = issuer.issue_access_token(username=username, group=group, scopes=scopes, audience=audience,
                                             lifetime=lifetime)
        return str(token)

    return issue
