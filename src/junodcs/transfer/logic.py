"""The rules of the transfer service: state machines, checksum and retry rules, scheduling, bookkeeping.

File and job state machines are one transition table each (`FILE_TRANSITIONS`, `JOB_TRANSITIONS`).
Every file state change is a guarded UPDATE (`WHERE file_state IN <allowed predecessors>`, plus the
claim's `attempt` for a worker's results), so an illegal or stale transition changes nothing and is
reported, never silently applied. The job state is derived from its files (FTS3's rule).
"""

from __future__ import annotations

import functools
import json
import logging
import random
import socket
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import Engine

from junodcs.core.errors import Conflict, DCSError, Forbidden, InvalidInput, NotFound
from junodcs.transfer import db
from junodcs.transfer.models import (
    FILE_TERMINAL,
    JOB_TERMINAL,
    FileState,
    JobState,
    LinkConfig,
    SELimits,
    SubmitJob,
    TransferMode,
)
from junodcs.transfer.optimizer import Decision, LinkSample, Previous, Range, optimize

log = logging.getLogger(__name__)

F = FileState
J = JobState

# -- state machines ---------------------------------------------------------------------------------

FILE_TRANSITIONS: dict[FileState, frozenset[FileState]] = {
    F.STAGING: frozenset({F.STARTED, F.SUBMITTED, F.FAILED, F.CANCELED}),
    F.STARTED: frozenset({F.SUBMITTED, F.STAGING, F.FAILED, F.CANCELED}),
    F.SUBMITTED: frozenset({F.READY, F.FAILED, F.CANCELED}),
    F.READY: frozenset({F.ACTIVE, F.SUBMITTED, F.FAILED, F.CANCELED}),
    # ACTIVE -> SUBMITTED: a recoverable failure with retries left (or a lost lease); -> STAGING: a retry of a
    # file that came from tape.
    F.ACTIVE: frozenset({F.FINISHED, F.FAILED, F.CANCELED, F.SUBMITTED, F.STAGING, F.ARCHIVING}),
    F.ARCHIVING: frozenset({F.FINISHED, F.FAILED, F.CANCELED}),
    F.NOT_USED: frozenset({F.SUBMITTED, F.STAGING, F.CANCELED}),
    F.FINISHED: frozenset(),
    F.FAILED: frozenset(),
    F.CANCELED: frozenset(),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.SUBMITTED: frozenset({J.STAGING, J.ACTIVE, J.ARCHIVING} | JOB_TERMINAL),
    J.STAGING: frozenset({J.SUBMITTED, J.ACTIVE, J.ARCHIVING} | JOB_TERMINAL),
    J.READY: frozenset({J.ACTIVE, J.SUBMITTED} | JOB_TERMINAL),
    J.ACTIVE: frozenset({J.STAGING, J.ARCHIVING} | JOB_TERMINAL),
    J.ARCHIVING: frozenset({J.ACTIVE} | JOB_TERMINAL),
    J.FINISHED: frozenset(),
    J.FINISHEDDIRTY: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELED: frozenset(),
}


class IllegalTransition(DCSError):
    status = 409
    code = "illegal-transition"
    title = "Illegal state transition"


def predecessors(target: FileState) -> list[str]:
    return [str(s) for s, targets in FILE_TRANSITIONS.items() if target in targets]


def check_file_transition(old: FileState | str, new: FileState | str) -> None:
    if FileState(new) not in FILE_TRANSITIONS[FileState(old)]:
        raise IllegalTransition(f"file state {old} -> {new} is not allowed")


def check_job_transition(old: JobState | str, new: JobState | str) -> None:
    if old != new and JobState(new) not in JOB_TRANSITIONS[JobState(old)]:
        raise IllegalTransition(f"job state {old} -> {new} is not allowed")


def derive_job_state(files: Iterable[tuple[int, str]], current: JobState | str = J.SUBMITTED) -> JobState:
    """FTS3's rule over (file_index, file_state): a multi-source file counts once (its best replica).
    All FINISHED -> FINISHED; some FINISHED and some FAILED/CANCELED -> FINISHEDDIRTY; only failures ->
    FAILED; only cancellations -> CANCELED; otherwise the most advanced active state."""
    groups: dict[int, list[str]] = defaultdict(list)
    for index, state in files:
        groups[index].append(state)
    outcomes: list[str] = []
    for states in groups.values():
        if F.FINISHED in states:
            outcomes.append(F.FINISHED)
        elif all(s in (F.FAILED, F.CANCELED) for s in states):
            outcomes.append(F.CANCELED if all(s == F.CANCELED for s in states) else F.FAILED)
        else:
            live = [s for s in states if s not in FILE_TERMINAL]
            outcomes.append(live[0] if len(live) == 1 else _most_advanced(live))
    if not outcomes:
        return J.FAILED
    if all(o in FILE_TERMINAL for o in outcomes):
        if all(o == F.FINISHED for o in outcomes):
            return J.FINISHED
        if any(o == F.FINISHED for o in outcomes):
            return J.FINISHEDDIRTY
        return J.CANCELED if all(o == F.CANCELED for o in outcomes) else J.FAILED
    live = [o for o in outcomes if o not in FILE_TERMINAL]
    if any(o in (F.READY, F.ACTIVE) for o in live) or any(o in FILE_TERMINAL for o in outcomes):
        state = J.ACTIVE
    elif all(o == F.ARCHIVING for o in live):
        state = J.ARCHIVING
    elif all(o in (F.STAGING, F.STARTED) for o in live):
        state = J.STAGING
    elif any(o == F.ARCHIVING for o in live):
        state = J.ACTIVE
    else:
        state = J.SUBMITTED
    if JobState(current) in (J.ACTIVE, J.ARCHIVING) and state in (J.SUBMITTED, J.STAGING):
        return J.ACTIVE  # a job that has started stays ACTIVE while files wait for a retry
    return state


_ORDER = [F.NOT_USED, F.STAGING, F.STARTED, F.SUBMITTED, F.READY, F.ACTIVE, F.ARCHIVING]


def _most_advanced(states: Sequence[str]) -> str:
    return max(states, key=lambda s: _ORDER.index(FileState(s)) if s in _ORDER else -1)


# -- checksums, timeouts, errors -------------------------------------------------------------------

SUPPORTED_CHECKSUMS = ("adler32", "md5")


def parse_checksum(value: str | None) -> tuple[str, str | None]:
    """`"ADLER32:1a2b3c4d"` -> ("adler32", "1a2b3c4d"); `"ADLER32"` or None -> ("adler32", None)."""
    if not value:
        return "adler32", None
    alg, _, hexval = value.partition(":")
    alg = alg.strip().lower() or "adler32"
    if alg not in SUPPORTED_CHECKSUMS:
        raise InvalidInput(f"checksum algorithm {alg.upper()} is not supported (ADLER32, MD5)", code="bad-checksum")
    hexval = hexval.strip().lower()
    if not hexval:
        return alg, None
    try:
        int(hexval, 16)
    except ValueError:
        raise InvalidInput(f"checksum {value!r}: the value is not hexadecimal", code="bad-checksum") from None
    if alg == "adler32":
        if len(hexval) > 8:
            raise InvalidInput(f"checksum {value!r}: adler32 has at most 8 hex digits", code="bad-checksum")
        hexval = hexval.zfill(8)
    return alg, hexval


def verify_mode(value: bool | str | None, has_checksum: bool) -> str:
    """FTS3 `_check_checksum`: one letter s(ource)/t(arget)/b(oth)/n(one)."""
    if isinstance(value, bool) or value is None:
        if value:
            return "b"
        return "t" if has_checksum else "n"
    text = value.strip().lower()
    if text in ("s", "source"):
        return "s"
    if text in ("t", "target", "destination"):
        return "t"
    if text in ("b", "both", "true"):
        return "b"
    if text in ("n", "none", "false", ""):
        return "t" if has_checksum and text in ("false",) else "n"
    raise InvalidInput(f"verify_checksum must be true, false, source, target, both or none, not {value!r}",
                       code="bad-verify-checksum")


def transfer_timeout(filesize: int | None, given: int | None) -> float:
    """FTS3's default: 600 s + 2 s per MB, unless the job gives one."""
    if given and given > 0:
        return float(given)
    return 600.0 + 2.0 * ((filesize or 0) / 1e6)


@dataclass(frozen=True, slots=True)
class Classified:
    recoverable: bool
    reason: str


_NEVER = (
    ("checksum mismatch", "checksum mismatch"),
    ("checksum do not match", "checksum mismatch"),
    ("overwrite is f", "destination file exists and overwrite is not enabled"),
    ("exists and overwrite", "destination file exists and overwrite is not enabled"),
    ("file exists", "destination file exists and overwrite is not enabled"),
    ("no such file", "source file does not exist"),
    ("does not exist", "source file does not exist"),
    ("status code 404", "source file does not exist"),
    ("permission denied", "permission denied"),
    ("status code 401", "permission denied"),
    ("status code 403", "permission denied"),
    ("not online", "the source file is not on disk (ONLINE)"),
    ("is a directory", "is a directory"),
)
_ALWAYS = ("performance marker", "timed out", "timeout", "connection", "reset", "end-of-file", "eof",
           "forcefully killed", "lease", "temporarily", "unavailable", "stalled", "name or service")


def classify(error: BaseException | str, phase: str = "TRANSFER") -> Classified:
    """Recoverable (retried after the delay) or not, with a readable reason (FTS3 url-copy heuristics)."""
    from junodcs.core.errors import Conflict as ConflictError
    from junodcs.core.errors import Forbidden as ForbiddenError
    from junodcs.core.errors import NotFound as NotFoundError
    from junodcs.core.errors import Unauthenticated

    text = str(error)
    low = text.lower()
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    if name == "ChecksumMismatch" or "checksum mismatch" in low:
        return Classified(False, f"{phase}: checksum mismatch: {text}")
    if isinstance(error, (ForbiddenError, Unauthenticated)):
        return Classified(False, f"{phase}: permission denied: {text}")
    if isinstance(error, ConflictError):
        return Classified(False, f"DESTINATION: destination file exists and overwrite is not enabled: {text}")
    if isinstance(error, NotFoundError):
        where = "SOURCE" if phase in ("SOURCE", "TRANSFER") else phase
        return Classified(False, f"{where}: source file does not exist: {text}")
    if isinstance(error, TimeoutError) or name in ("ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout",
                                                   "TransferTimeout", "Stalled"):
        return Classified(True, f"{phase}: timeout: {text or name}")
    if name in ("ConnectError", "ReadError", "WriteError", "RemoteProtocolError", "NetworkError",
                "ConnectionResetError", "ConnectionRefusedError", "BrokenPipeError"):
        return Classified(True, f"{phase}: connection error: {text or name}")
    for needle, reason in _NEVER:
        if needle in low:
            return Classified(False, f"{phase}: {reason}: {text}")
    if any(needle in low for needle in _ALWAYS):
        return Classified(True, f"{phase}: {text}")
    if "http 5" in low or "status code 5" in low:
        return Classified(True, f"{phase}: server error: {text}")
    if "http 4" in low:
        return Classified(False, f"{phase}: {text}")
    return Classified(True, f"{phase}: {text or name}")


def se_key(url: str) -> str:
    """FTS3 names an SE by `scheme://host[:port]` of its URLs (dav/davs written as http/https)."""
    parts = urlsplit(url)
    scheme = {"dav": "http", "davs": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return f"{scheme}://{parts.netloc.lower()}" if parts.netloc else f"{scheme}://"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


def worker_id() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# -- the service ------------------------------------------------------------------------------------

DETERMINISTIC_BASE = uuid.UUID("01874efb-4735-4595-bc9c-591aef8240c9")


@dataclass
class Submitter:
    username: str | None
    group: str | None
    vo: str
    dn: str


@dataclass
class Settings:
    default_retry: int = 3
    default_retry_delay: int = 120
    lease: float = 60.0
    """Seconds a claimed file stays with a worker without a renewal."""
    stall_timeout: float = 180.0
    """A copy whose markers show no progress for this long fails (recoverable)."""
    optimizer_window: float = 300.0
    se_inbound_max_active: int = 200
    se_outbound_max_active: int = 200
    max_files_per_job: int = 10_000
    public_weight: float = 1.0

    @classmethod
    def from_env(cls) -> Settings:
        """`DCS_TRANSFER_RETRY`, `DCS_TRANSFER_RETRY_DELAY`, `DCS_TRANSFER_LEASE`, `DCS_TRANSFER_STALL_TIMEOUT`."""
        import os

        env = os.environ.get
        return cls(default_retry=int(env("DCS_TRANSFER_RETRY", "3")),
                   default_retry_delay=int(env("DCS_TRANSFER_RETRY_DELAY", "120")),
                   lease=float(env("DCS_TRANSFER_LEASE", "60")),
                   stall_timeout=float(env("DCS_TRANSFER_STALL_TIMEOUT", "180")))


@dataclass
class Claimed:
    """A file as a worker executes it (one claim = one attempt)."""

    file_id: int
    job_id: str
    attempt: int
    retry: int
    source_surl: str
    dest_surl: str
    source_se: str
    dest_se: str
    filesize: int | None
    checksum: str | None
    verify: str
    overwrite: bool
    timeout: int | None
    mode: str | None
    src_token: str | None
    dst_token: str | None
    username: str | None
    group: str | None
    vo: str
    archive_timeout: int
    bring_online: int
    activity: str = "default"


@dataclass
class Outcome:
    """What a worker reports for one attempt."""

    file_id: int
    attempt: int
    state: FileState
    reason: str | None = None
    recoverable: bool | None = None
    filesize: int | None = None
    duration: float | None = None
    mode: str | None = None
    start: datetime | None = None
    finish: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    """The file's job, when the reporter knows it (a worker does, from its claim): a FINISHED result then
    needs no read of the file before its update."""


class TransferService:
    def __init__(self, engine: Engine, *, vo: str = "juno", settings: Settings | None = None,
                 se_names: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.vo = vo
        self.settings = settings or Settings()
        self.se_names: dict[str, str] = dict(se_names or {})
        """SE key (`https://host:port`) -> grid.yaml SE name, for display and configuration by name."""
        self._sqlite = engine.dialect.name == "sqlite"
        self.config_version = 0
        """Bumped by every configuration change made through this instance (workers drop cached settings)."""
        self._shape: tuple[float, list[Any]] | None = None
        """Until when the queue's shape the last claim read may be used again, and that shape."""
        self._config: tuple[int, float, Any] | None = None
        """The configuration version, expiry and settings the last claim read (`_claim_config`)."""

    # -- names ------------------------------------------------------------------------------------

    def se_display(self, key: str) -> str:
        return self.se_names.get(key, key)

    def resolve_se(self, value: str) -> str:
        if value == "*" or "://" in value:
            return se_key(value) if "://" in value else value
        for key, name in self.se_names.items():
            if name == value:
                return key
        raise InvalidInput(f"unknown storage element {value!r}: give a grid SE name, an SE URL or *",
                           code="unknown-se")

    # -- submission -------------------------------------------------------------------------------

    def submit(self, body: SubmitJob | dict[str, Any], submitter: Submitter, submit_host: str = "") -> str:
        job = body if isinstance(body, SubmitJob) else SubmitJob.model_validate(body)
        if job.delete:
            raise InvalidInput("deletion jobs are no longer supported", code="not-supported")
        if job.staging and not job.files:
            raise InvalidInput("staging-only jobs are not supported; submit transfers with bring_online",
                               code="not-supported")
        if not job.files:
            raise InvalidInput("no transfers in the job (files is empty)", code="no-files")
        p = job.params
        if p.multihop:
            raise InvalidInput("multihop jobs are not supported", code="not-supported")
        priority = 3 if p.priority is None else max(1, min(5, int(p.priority)))
        retry = self.settings.default_retry if not p.retry else max(0, int(p.retry))
        retry_delay = int(p.retry_delay) if p.retry_delay and p.retry_delay > 0 else self.settings.default_retry_delay
        bring_online = int(p.bring_online) if p.bring_online is not None else -1
        pin = int(p.copy_pin_lifetime) if p.copy_pin_lifetime is not None else -1
        staging = bring_online > 0 or pin > 0
        archive_timeout = int(p.archive_timeout) if p.archive_timeout is not None else -1
        max_in_queue = _hours_or_seconds(p.max_time_in_queue)
        if p.id_generator == "deterministic":
            if not p.sid:
                raise InvalidInput("id_generator deterministic needs a sid", code="bad-sid")
            job_id = str(uuid.uuid5(uuid.uuid5(DETERMINISTIC_BASE, submitter.vo), p.sid))
        else:
            job_id = str(uuid.uuid1())
        t = now()
        rows: list[dict[str, Any]] = []
        any_checksum = False
        next_index = 0
        for index, f in enumerate(job.files):
            if len(f.sources) > 1 and len(f.destinations) > 1:
                raise InvalidInput(f"files[{index}]: several sources and several destinations at once",
                                   code="bad-file")
            checksum = f.checksum or p.checksum
            alg, value = parse_checksum(checksum)
            any_checksum = any_checksum or value is not None
            metadata = f.metadata if f.metadata is not None else p.file_metadata
            if isinstance(metadata, str):
                metadata = {"label": metadata}
            multi = len(f.sources) > 1
            group_index = next_index
            for si, source in enumerate(f.sources):
                for di, destination in enumerate(f.destinations):
                    src_token = _nth(f.source_tokens, si)
                    dst_token = _nth(f.destination_tokens, di)
                    first = si == 0
                    state = (F.STAGING if staging else F.SUBMITTED) if first or not multi else F.NOT_USED
                    rows.append(dict(
                        job_id=job_id, file_index=group_index if multi else next_index,
                        vo_name=submitter.vo, activity=f.activity or p.activity or "default", priority=priority,
                        source_se=se_key(source), dest_se=se_key(destination), source_surl=source,
                        dest_surl=destination, file_state=str(state), user_filesize=f.filesize or p.filesize,
                        filesize=f.filesize or p.filesize,
                        checksum=f"{alg.upper()}:{value}" if value else alg.upper(), submit_time=t, retry=0,
                        attempt=0, file_metadata=_dump(metadata), staging_metadata=_dump(f.staging_metadata),
                        archive_metadata=_dump(f.archive_metadata), src_token=src_token, dst_token=dst_token,
                        hashed_id=zlib.crc32(f"{job_id}{group_index}".encode()) & 0xFFFF,
                    ))
                    if not multi:
                        next_index += 1
            if multi:
                next_index += 1
        if len(rows) > self.settings.max_files_per_job:
            raise InvalidInput(f"{len(rows)} transfers in one job; at most {self.settings.max_files_per_job}",
                               code="too-many-files")
        mode = verify_mode(p.verify_checksum, any_checksum)
        known = set(type(p).model_fields)
        internal = {k: v for k, v in (p.model_extra or {}).items() if k not in known}
        source_ses = {r["source_se"] for r in rows}
        dest_ses = {r["dest_se"] for r in rows}
        job_row = dict(
            job_id=job_id, job_state=str(J.STAGING if staging else J.SUBMITTED),
            job_type="R" if len(job.files[0].sources) > 1 else ("Y" if p.reuse else "N"),
            source_se=next(iter(source_ses)) if len(source_ses) == 1 else None,
            dest_se=next(iter(dest_ses)) if len(dest_ses) == 1 else None,
            user_dn=submitter.dn, username=submitter.username, grp=submitter.group, vo_name=submitter.vo,
            submit_host=submit_host or socket.gethostname(), submit_time=t, priority=priority,
            verify_checksum=mode, overwrite_flag=bool(p.overwrite or p.overwrite_on_retry), retry=retry,
            retry_delay=retry_delay, bring_online=bring_online, copy_pin_lifetime=pin,
            archive_timeout=archive_timeout, max_time_in_queue=max_in_queue, timeout=p.timeout,
            transfer_mode=str(p.transfer_mode) if p.transfer_mode else None, job_metadata=_dump(p.job_metadata),
            internal_job_params=_dump(internal) if internal else None, cancel_job=False,
        )
        with self.engine.begin() as conn:
            if p.id_generator == "deterministic":
                existing = conn.execute(sa.select(db.jobs.c.job_id).where(db.jobs.c.job_id == job_id)).first()
                if existing is not None:
                    return job_id  # idempotent re-submission
            conn.execute(db.jobs.insert(), job_row)
            conn.execute(db.files.insert(), rows)
        self._shape = None
        return job_id

    # -- reading ----------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.jobs).where(db.jobs.c.job_id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"no transfer job {job_id}", code="no-such-job")
        return self._job_out(dict(row))

    def jobs(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [self.job(j) for j in job_ids]

    def _job_out(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k not in ("internal_job_params", "username", "grp")}
        for key in ("submit_time", "job_finished"):
            out[key] = iso(row[key])
        out["job_metadata"] = _load(row["job_metadata"])
        out["cancel_job"] = bool(row["cancel_job"])
        out["overwrite_flag"] = bool(row["overwrite_flag"])
        out["source_se"] = row["source_se"]
        out["dest_se"] = row["dest_se"]
        out["user"] = row["username"]
        out["group"] = row["grp"]
        out["internal_job_params"] = row["internal_job_params"]
        return out

    def files(self, job_id: str) -> list[dict[str, Any]]:
        self.job(job_id)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.files).where(db.files.c.job_id == job_id)
                                .order_by(db.files.c.file_index, db.files.c.file_id)).mappings().all()
        return [self._file_out(dict(r)) for r in rows]

    def _file_out(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k not in ("src_token", "dst_token", "lease_until", "attempt",
                                                          "next_attempt")}
        for key in ("submit_time", "start_time", "finish_time", "staging_start", "staging_finished",
                    "archive_start_time", "archive_finish_time"):
            out[key] = iso(row[key])
        out["file_metadata"] = _load(row["file_metadata"])
        out["staging_metadata"] = _load(row["staging_metadata"])
        out["archive_metadata"] = _load(row["archive_metadata"])
        out["recoverable"] = bool(row["recoverable"]) if row["recoverable"] is not None else False
        out["source_se_name"] = self.se_display(row["source_se"])
        out["dest_se_name"] = self.se_display(row["dest_se"])
        return out

    def retries(self, job_id: str, file_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.retry_errors).join(db.files)
                                .where(db.files.c.job_id == job_id, db.files.c.file_id == file_id)
                                .order_by(db.retry_errors.c.id)).mappings().all()
        return [{"attempt": r["attempt"], "datetime": iso(r["datetime"]), "reason": r["reason"],
                 "transfer_host": r["transfer_host"]} for r in rows]

    def list_jobs(self, *, states: Sequence[str] | None = None, username: str | None = None,
                  vo: str | None = None, source_se: str | None = None, dest_se: str | None = None,
                  limit: int = 100, time_window: float | None = None) -> list[dict[str, Any]]:
        q = sa.select(db.jobs)
        if states:
            q = q.where(db.jobs.c.job_state.in_(states))
        if username:
            q = q.where(db.jobs.c.username == username)
        if vo:
            q = q.where(db.jobs.c.vo_name == vo)
        if source_se:
            q = q.where(db.jobs.c.source_se == self.resolve_se(source_se))
        if dest_se:
            q = q.where(db.jobs.c.dest_se == self.resolve_se(dest_se))
        if time_window:
            q = q.where(db.jobs.c.submit_time >= now() - timedelta(seconds=time_window))
        q = q.order_by(db.jobs.c.submit_time.desc()).limit(max(1, min(limit, 10_000)))
        with self.engine.connect() as conn:
            return [self._job_out(dict(r)) for r in conn.execute(q).mappings()]

    def owner(self, job_id: str) -> tuple[str | None, str]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.jobs.c.username, db.jobs.c.vo_name)
                               .where(db.jobs.c.job_id == job_id)).first()
        if row is None:
            raise NotFound(f"no transfer job {job_id}", code="no-such-job")
        return row[0], row[1]

    # -- cancel / modify --------------------------------------------------------------------------

    def cancel(self, job_id: str, file_ids: Sequence[int] | None = None,
               reason: str = "Job canceled by the user") -> dict[str, Any]:
        """Non-terminal files -> CANCELED (a worker's running copy sees it at its next report and stops)."""
        self.job(job_id)
        live = [s for s in F if s not in FILE_TERMINAL]
        t = now()
        with self.engine.begin() as conn:
            q = db.files.update().where(db.files.c.job_id == job_id, db.files.c.file_state.in_(live))
            if file_ids is not None:
                q = q.where(db.files.c.file_id.in_(list(file_ids)))
            conn.execute(q.values(file_state=str(F.CANCELED), reason=reason, finish_time=t, transfer_host=None,
                                  lease_until=None))
            if file_ids is None:
                conn.execute(db.jobs.update().where(db.jobs.c.job_id == job_id).values(cancel_job=True))
            self._refresh_jobs(conn, [job_id], reason=reason)
        return self.job(job_id)

    def file_states(self, job_id: str, file_ids: Sequence[int]) -> list[str]:
        with self.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(db.files.c.file_id, db.files.c.file_state)
                                     .where(db.files.c.job_id == job_id, db.files.c.file_id.in_(list(file_ids)))).all())
        return [rows.get(i, "NOT_FOUND") for i in file_ids]

    def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        priority = max(1, min(5, int(priority)))
        with self.engine.begin() as conn:
            conn.execute(db.jobs.update().where(db.jobs.c.job_id == job_id).values(priority=priority))
            conn.execute(db.files.update().where(db.files.c.job_id == job_id).values(priority=priority))
        return self.job(job_id)

    # -- job state --------------------------------------------------------------------------------

    def _refresh_jobs(self, conn: sa.Connection, job_ids: Iterable[str], reason: str | None = None) -> None:
        for job_id in set(job_ids):
            found = conn.execute(_statements().job_state, {"job": job_id}).first()
            if found is None or found[0] in JOB_TERMINAL:
                continue
            current, job_type = found
            if job_type == "R":  # multi-source: a file counts once, by its best replica
                states = conn.execute(sa.select(db.files.c.file_index, db.files.c.file_state)
                                      .where(db.files.c.job_id == job_id)).all()
                pairs = [(i, s) for i, s in states]
            else:  # one row per file: the rule depends only on which states occur (not on 500 rows each time)
                distinct = conn.execute(_statements().job_file_states, {"job": job_id}).scalars().all()
                pairs = list(enumerate(distinct))
            new = derive_job_state(pairs, current)
            if new == current:
                continue
            check_job_transition(current, new)
            values: dict[str, Any] = {"job_state": str(new)}
            if new in JOB_TERMINAL:
                values["job_finished"] = now()
                if new != J.FINISHED:
                    first = conn.execute(sa.select(db.files.c.reason).where(
                        db.files.c.job_id == job_id, db.files.c.file_state.in_([F.FAILED, F.CANCELED]),
                        db.files.c.reason.is_not(None)).limit(1)).scalar()
                    values["reason"] = reason if new == J.CANCELED and reason else (
                        "One or more files failed. Please have a look at the details for more information"
                        if new in (J.FAILED, J.FINISHEDDIRTY) else first)
            conn.execute(db.jobs.update().where(db.jobs.c.job_id == job_id, db.jobs.c.job_state == current)
                         .values(**values))

    # -- claiming (the scheduler) -------------------------------------------------------------------

    def claim(self, worker: str, slots: int, decisions: dict[tuple[str, str], int] | None = None,
              rng: random.Random | None = None) -> list[Claimed]:
        """Pick up to `slots` SUBMITTED files due now, within each link's optimizer decision, each SE's
        inbound/outbound cap, by VO share, then activity share, then priority; move them to READY under a
        lease held by `worker`. Safe in several workers at once (guarded UPDATE, SKIP LOCKED off SQLite)."""
        if slots <= 0:
            return []
        rng = rng or random.Random()
        t = now()
        f = db.files
        with self.engine.begin() as conn:
            queues = self._queue_shape(conn, t)
            if not queues:
                return []
            active_rows = conn.execute(_statements().active_per_link).all()
            link_active: dict[tuple[str, str], int] = {(s, d): n for s, d, n in active_rows}
            out_active: dict[str, int] = defaultdict(int)
            in_active: dict[str, int] = defaultdict(int)
            for (s, d), n in link_active.items():
                out_active[s] += n
                in_active[d] += n
            limits, share_rows, decided, defaults = self._claim_config(conn)
            decisions = decisions if decisions is not None else decided
            by_link: dict[tuple[str, str], dict[tuple[str, str], int]] = defaultdict(dict)
            for s, d, vo, act, n in queues:
                by_link[(s, d)][(vo, act)] = n
            picked: list[int] = []
            links = list(by_link)
            rng.shuffle(links)
            for link in links:
                if len(picked) >= slots:
                    break
                s, d = link
                if link in decisions:
                    decision = decisions[link]
                elif link in defaults:
                    decision = defaults[link]
                else:
                    decision = defaults[link] = self._default_decision(conn, s, d)
                allowed = decision - link_active.get(link, 0)
                allowed = min(allowed, self._se_cap(limits, s, "outbound") - out_active[s],
                              self._se_cap(limits, d, "inbound") - in_active[d], slots - len(picked))
                if allowed <= 0:
                    continue
                pending = dict(by_link[link])
                while allowed > 0 and pending:
                    vo, act = self._pick_share(pending, share_rows, rng)
                    pick = _statements().pick if self._sqlite else _statements().pick_skip_locked
                    ids = list(conn.execute(pick, {"src": s, "dst": d, "vo": vo, "act": act, "t": t,
                                                   "n": allowed}).scalars())
                    picked.extend(ids)
                    allowed -= len(ids)
                    out_active[s] += len(ids)
                    in_active[d] += len(ids)
                    del pending[(vo, act)]
            if not picked:
                return []
            lease = t + timedelta(seconds=self.settings.lease)
            claimed: list[int] = []
            for chunk in _chunks(picked, 500):
                result = conn.execute(_statements().take, {"ids": chunk, "host": worker, "lease": lease})
                if result.rowcount == len(chunk):
                    claimed.extend(chunk)
                else:  # somebody else took some: keep only ours
                    claimed.extend(r[0] for r in conn.execute(sa.select(f.c.file_id).where(
                        f.c.file_id.in_(chunk), f.c.transfer_host == worker, f.c.file_state == str(F.READY))))
            rows = []
            for chunk in _chunks(claimed, 500):
                rows.extend(conn.execute(_statements().claimed, {"ids": chunk}).mappings().all())
            # a claim can only make a job ACTIVE: jobs that are already need no refresh
            self._refresh_jobs(conn, {r["job_id"] for r in rows if r["job_state"] != str(J.ACTIVE)})
        return [Claimed(file_id=r["file_id"], job_id=r["job_id"], attempt=r["attempt"], retry=r["retry"],
                        source_surl=r["source_surl"], dest_surl=r["dest_surl"], source_se=r["source_se"],
                        dest_se=r["dest_se"], filesize=r["filesize"], checksum=r["checksum"],
                        verify=r["verify_checksum"], overwrite=bool(r["overwrite_flag"]), timeout=r["timeout"],
                        mode=r["job_mode"], src_token=r["src_token"], dst_token=r["dst_token"],
                        username=r["username"], group=r["grp"], vo=r["vo_name"],
                        archive_timeout=r["archive_timeout"], bring_online=r["bring_online"],
                        activity=r["activity"]) for r in rows]

    CONFIG_TTL = 1.0
    """Seconds a claim may reuse the SE limits, shares and optimizer decisions read by an earlier one (a
    change through this instance is seen at once; one made elsewhere within this time)."""

    def _claim_config(self, conn: sa.Connection) -> tuple[dict[str, Any], list[Any], dict[tuple[str, str], int],
                                                          dict[tuple[str, str], int]]:
        """(SE limits, shares, optimizer decisions, default decisions of links without one, filled as needed)."""
        cached = self._config
        if cached is not None and cached[0] == self.config_version and cached[1] > time.monotonic():
            return cached[2]
        config = ({r.storage: r for r in conn.execute(sa.select(db.ses))}, conn.execute(sa.select(db.shares)).all(),
                  self._decisions(conn), {})
        self._config = (self.config_version, time.monotonic() + self.CONFIG_TTL, config)
        return config

    SHAPE_TTL = 0.5
    """Seconds a claim may reuse the queue's shape read by an earlier one."""

    def _queue_shape(self, conn: sa.Connection, t: datetime) -> list[Any]:
        """(source, destination, VO, activity, count) of the files due now.

        This read passes over every queued file, which at high rates costs more than the rest of the claim;
        the picks that follow read the files themselves, so a shape a fraction of a second old only delays a
        new (link, VO, activity) by that much, and costs an empty pick for one that ran dry. An empty queue is
        never cached (an idle worker sees new work at once) and a submit through this instance drops it."""
        cached = self._shape
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        queues = list(conn.execute(_statements().queue_shape, {"t": t}))
        self._shape = (time.monotonic() + self.SHAPE_TTL, queues) if queues else None
        return queues

    def _se_cap(self, limits: dict[str, Any], se: str, direction: str) -> int:
        row = limits.get(se) or limits.get("*")
        value = getattr(row, f"{direction}_max_active", None) if row is not None else None
        if value is None:
            return self.settings.se_inbound_max_active if direction == "inbound" else self.settings.se_outbound_max_active
        return int(value)

    def _pick_share(self, pending: dict[tuple[str, str], int], share_rows: Sequence[Any],
                    rng: random.Random) -> tuple[str, str]:
        """Weighted random VO (FTS3 shares; unlisted VOs share the public weight), then activity."""
        vo_weights = {r.vo: r.weight for r in share_rows if r.activity == "*"}
        vos = sorted({vo for vo, _ in pending})
        weights = [vo_weights.get(vo, self.settings.public_weight) for vo in vos]
        vo = _weighted(vos, weights, rng)
        acts = sorted(a for v, a in pending if v == vo)
        act_weights = {r.activity: r.weight for r in share_rows if r.vo == vo and r.activity != "*"}
        default = act_weights.get("default", 1.0 if not act_weights else min(act_weights.values()) or 0.0)
        act = _weighted(acts, [act_weights.get(a, default) for a in acts], rng)
        return vo, act

    def _decisions(self, conn: sa.Connection) -> dict[tuple[str, str], int]:
        return {(r.source_se, r.dest_se): r.active for r in conn.execute(sa.select(db.optimizer))}

    def _default_decision(self, conn: sa.Connection, source: str, dest: str) -> int:
        cfg = self.link_config_for(source, dest, conn)
        lo, hi = cfg.min_active, cfg.max_active
        return hi if cfg.symbolicname and cfg.source != "*" and cfg.destination != "*" else lo + (hi - lo) // 2

    # -- results ----------------------------------------------------------------------------------

    def mark_active(self, items: Sequence[tuple[int, int, str | None]], worker: str) -> set[int]:
        """READY -> ACTIVE for (file_id, attempt, mode) of this worker; returns the file ids that may run."""
        if not items:
            return set()
        with self.engine.begin() as conn:
            return self._mark_active(conn, items, worker)

    def apply(self, started: Sequence[tuple[int, int, str | None]], outcomes: Sequence[Outcome],
              worker: str) -> tuple[set[int], dict[int, str]]:
        """A worker's flush in one transaction: the start marks (`mark_active`), then the results (`report`).
        Marks first: a copy queues its mark before its result, so every result here has its mark in this
        flush or an earlier one. One commit instead of two per flush halves the reporter's database time."""
        if not started and not outcomes:
            return set(), {}
        with self.engine.begin() as conn:
            ok = self._mark_active(conn, started, worker) if started else set()
            return ok, self._report(conn, outcomes, worker) if outcomes else {}

    def _mark_active(self, conn: sa.Connection, items: Sequence[tuple[int, int, str | None]],
                     worker: str) -> set[int]:
        """One guarded executemany for the batch; what it changed is read back only when the row count says
        that some file was not changed (canceled or claimed again meanwhile)."""
        t = now()
        wanted = {file_id: attempt for file_id, attempt, _ in items}
        result = conn.execute(_statements().mark_active, [{"fid": file_id, "att": attempt, "mode": mode,
                                                          "host": worker, "begun": t}
                                                         for file_id, attempt, mode in items])
        if len(wanted) == len(items) and _all_changed(conn, result, len(items)):
            return set(wanted)
        ok: set[int] = set()
        for chunk in _chunks(list(wanted), 500):
            ok.update(i for i, att in conn.execute(_statements().active_of, {"ids": chunk, "host": worker})
                      if wanted[i] == att)
        return ok

    def report(self, outcomes: Sequence[Outcome], worker: str) -> dict[int, str]:
        """Apply a worker's results in one transaction. A FAILED outcome that is recoverable with retries
        left becomes SUBMITTED after the job's retry delay (the reason kept in the retry history); a failed
        replica of a multi-source file promotes the next NOT_USED replica. Stale results (another claim
        since, or the file canceled) change nothing. Returns file_id -> the state applied (or 'stale')."""
        if not outcomes:
            return {}
        with self.engine.begin() as conn:
            return self._report(conn, outcomes, worker)

    def _report(self, conn: sa.Connection, outcomes: Sequence[Outcome], worker: str) -> dict[int, str]:
        applied: dict[int, str] = {}
        f = db.files
        jobs_touched: set[str] = set()
        # FINISHED from a worker that says which job the file is of needs no read first: the guarded
        # executemany checks attempt, holder and state itself. (A result repeated for the same attempt then
        # changes nothing either, but is reported FINISHED rather than stale.) Everything else is read first.
        unread = [o for o in outcomes if o.job_id is None or FileState(o.state) != F.FINISHED]
        held: dict[int, Any] = {}
        for chunk in _chunks([o.file_id for o in unread], 500):
            for r in conn.execute(_statements().held, {"ids": chunk, "host": worker}):
                held[r.file_id] = r
        rows = {o.file_id: r for o in unread if (r := held.get(o.file_id)) is not None and r.attempt == o.attempt}
        finished = [o for o in outcomes if FileState(o.state) == F.FINISHED and (o.job_id or o.file_id in rows)]
        if finished:
            applied.update(self._report_finished(conn, finished, worker))
            jobs_touched.update(o.job_id or rows[o.file_id].job_id for o in finished if applied[o.file_id] != "stale")
        for o in outcomes:
            if o.file_id in applied:
                continue
            row = rows.get(o.file_id)
            if row is None:
                applied[o.file_id] = "stale"
                continue
            target = FileState(o.state)
            values: dict[str, Any] = {"reason": o.reason, "recoverable": o.recoverable}
            if o.filesize is not None:
                values["filesize"] = o.filesize
            if o.mode:
                values["transfer_mode"] = o.mode
            if target == F.FAILED and o.recoverable and row.retry < row.max_retry:
                conn.execute(db.retry_errors.insert().values(file_id=o.file_id, attempt=row.retry + 1,
                                                             datetime=now(), reason=o.reason or "",
                                                             transfer_host=worker))
                target = F.SUBMITTED
                values.update(retry=row.retry + 1, next_attempt=now() + timedelta(seconds=row.retry_delay),
                              transfer_host=None, lease_until=None, start_time=None)
            elif target in FILE_TERMINAL:
                values.update(finish_time=o.finish or now(), transfer_host=None, lease_until=None)
                if o.duration is not None:
                    values["tx_duration"] = o.duration
                    if o.filesize and o.duration > 0 and target == F.FINISHED:
                        values["throughput"] = o.filesize / 1e6 / o.duration
            elif target == F.ARCHIVING:
                values.update(archive_start_time=now(), tx_duration=o.duration,
                              throughput=(o.filesize / 1e6 / o.duration) if o.filesize and o.duration else None)
            if o.start is not None:
                values.setdefault("start_time", o.start)
            values.update(file_state=str(target))
            result = conn.execute(f.update().where(f.c.file_id == o.file_id, f.c.attempt == o.attempt,
                                                   f.c.transfer_host == worker,
                                                   f.c.file_state.in_(predecessors(target)))
                                  .values(**values))
            if not result.rowcount:
                applied[o.file_id] = "stale"
                continue
            applied[o.file_id] = str(target)
            jobs_touched.add(row.job_id)
            if target == F.FAILED:
                self._promote_next_replica(conn, row.job_id, row.file_index, row.bring_online)
        self._refresh_jobs(conn, jobs_touched)
        return applied

    def _report_finished(self, conn: sa.Connection, outcomes: Sequence[Outcome], worker: str) -> dict[int, str]:
        """The common case of `report`, ACTIVE -> FINISHED for a batch, as one guarded executemany; a row it
        did not change (canceled meanwhile, or claimed again) is reported 'stale'. FINISHED with the
        same attempt can only be this worker's doing: a new claim bumps the attempt."""
        t = now()
        params = []
        for o in outcomes:
            rate = o.filesize / 1e6 / o.duration if o.filesize and o.duration and o.duration > 0 else None
            params.append({"fid": o.file_id, "att": o.attempt, "host": worker, "why": o.reason, "size": o.filesize,
                           "tmode": o.mode, "begun": o.start, "ended": o.finish or t, "dur": o.duration,
                           "rate": rate})
        result = conn.execute(_statements().finish, params)
        if len({o.file_id for o in outcomes}) == len(outcomes) and _all_changed(conn, result, len(outcomes)):
            return {o.file_id: str(F.FINISHED) for o in outcomes}
        done: dict[int, int] = {}
        for chunk in _chunks([o.file_id for o in outcomes], 500):
            done.update(conn.execute(_statements().finished_of, {"ids": chunk}).all())
        return {o.file_id: str(F.FINISHED) if done.get(o.file_id) == o.attempt else "stale" for o in outcomes}

    def _promote_next_replica(self, conn: sa.Connection, job_id: str, file_index: int, bring_online: int) -> None:
        f = db.files
        nxt = conn.execute(sa.select(f.c.file_id).where(f.c.job_id == job_id, f.c.file_index == file_index,
                                                        f.c.file_state == str(F.NOT_USED))
                           .order_by(f.c.file_id).limit(1)).scalar()
        if nxt is not None:
            state = F.STAGING if bring_online and bring_online > 0 else F.SUBMITTED
            conn.execute(f.update().where(f.c.file_id == nxt, f.c.file_state == str(F.NOT_USED))
                         .values(file_state=str(state)))
            self._shape = None  # maybe another link

    def is_canceled(self, file_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(db.files.c.file_state).where(db.files.c.file_id == file_id)).scalar() \
                == str(F.CANCELED)

    def renew_leases(self, worker: str, file_ids: Sequence[int]) -> None:
        if not file_ids:
            return
        lease = now() + timedelta(seconds=self.settings.lease)
        with self.engine.begin() as conn:
            for chunk in _chunks(list(file_ids), 500):
                conn.execute(db.files.update().where(db.files.c.file_id.in_(chunk), db.files.c.transfer_host == worker,
                                                     db.files.c.file_state.in_([*map(str, (F.READY, F.ACTIVE,
                                                                                         F.ARCHIVING, F.STAGING,
                                                                                         F.STARTED))]))
                             .values(lease_until=lease))

    def release(self, worker: str, file_ids: Sequence[int]) -> int:
        """A stopping worker's files, claimed ahead (READY) or interrupted by the stop (ACTIVE), go back to
        SUBMITTED: no retry is counted (the stop is nobody's failure), and the next claim bumps `attempt` as
        always, so a late result of the interrupted copy is ignored. The SE never keeps a partial copy."""
        f = db.files
        held = sa.and_(f.c.transfer_host == worker, f.c.file_state.in_([str(F.READY), str(F.ACTIVE)]))
        jobs: set[str] = set()
        n = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(list(file_ids), 500):
                jobs.update(conn.execute(sa.select(f.c.job_id).where(f.c.file_id.in_(chunk), held)).scalars())
                n += conn.execute(f.update().where(f.c.file_id.in_(chunk), held)
                                  .values(file_state=str(F.SUBMITTED), transfer_host=None, lease_until=None,
                                          start_time=None)).rowcount
            self._refresh_jobs(conn, jobs)
        if n:
            self._shape = None
        return n

    def reap_expired(self) -> int:
        """Files whose worker lost its lease (killed, hung, partitioned) go back to SUBMITTED, the loss noted in
        the retry history; the next claim bumps `attempt`, so a late result from the old worker is ignored."""
        t = now()
        f = db.files
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(f.c.file_id, f.c.job_id, f.c.attempt, f.c.transfer_host).where(
                f.c.file_state.in_([str(F.READY), str(F.ACTIVE)]), f.c.lease_until < t)).all()
            for file_id, job_id, attempt, host in rows:
                r = conn.execute(f.update().where(f.c.file_id == file_id, f.c.attempt == attempt,
                                                  f.c.file_state.in_([str(F.READY), str(F.ACTIVE)]), f.c.lease_until < t)
                                 .values(file_state=str(F.SUBMITTED), transfer_host=None, lease_until=None,
                                         start_time=None,
                                         reason=f"lease of worker {host} expired; transfer queued again"))
                if r.rowcount:
                    conn.execute(db.retry_errors.insert().values(
                        file_id=file_id, attempt=attempt, datetime=t, transfer_host=host,
                        reason=f"worker {host} lost its lease (killed or hung): transfer queued again"))
            # staging / archiving leases simply lapse: the next poller takes them over
            conn.execute(f.update().where(f.c.file_state.in_([str(F.STAGING), str(F.STARTED), str(F.ARCHIVING)]),
                                          f.c.lease_until < t).values(transfer_host=None, lease_until=None))
            self._refresh_jobs(conn, {r[1] for r in rows})
        if rows:
            self._shape = None
        return len(rows)

    def expire_queued(self) -> int:
        """max_time_in_queue: queued files of jobs older than their limit are CANCELED."""
        t = now()
        n = 0
        with self.engine.begin() as conn:
            jobs = conn.execute(sa.select(db.jobs.c.job_id, db.jobs.c.submit_time, db.jobs.c.max_time_in_queue).where(
                db.jobs.c.max_time_in_queue > 0, db.jobs.c.job_state.in_([str(J.SUBMITTED), str(J.STAGING)]))).all()
            expired = [j for j, sub, m in jobs if sub + timedelta(seconds=m) < t]
            for job_id in expired:
                r = conn.execute(db.files.update().where(db.files.c.job_id == job_id, db.files.c.file_state.in_(
                    [str(F.SUBMITTED), str(F.STAGING), str(F.NOT_USED)])).values(
                    file_state=str(F.CANCELED), finish_time=t, reason="Job has been canceled because it stayed in "
                                                                      "the queue for too long"))
                n += r.rowcount
            self._refresh_jobs(conn, expired, reason="max_time_in_queue exceeded")
        return n

    # -- staging (tape sources) and archiving (tape destinations) ----------------------------------

    def claim_phase(self, worker: str, states: Sequence[FileState], limit: int = 200) -> list[dict[str, Any]]:
        """Files in STAGING/STARTED/ARCHIVING not held by a live lease, now held by `worker`."""
        t = now()
        f = db.files
        lease = t + timedelta(seconds=self.settings.lease)
        with self.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(sa.select(f.c.file_id).where(
                f.c.file_state.in_([str(s) for s in states]),
                sa.or_(f.c.lease_until.is_(None), f.c.lease_until < t, f.c.transfer_host == worker)).limit(limit))]
            if not ids:
                return []
            conn.execute(f.update().where(f.c.file_id.in_(ids), sa.or_(f.c.lease_until.is_(None), f.c.lease_until < t,
                                                                      f.c.transfer_host == worker))
                         .values(transfer_host=worker, lease_until=lease))
            rows = conn.execute(sa.select(f, db.jobs.c.bring_online, db.jobs.c.copy_pin_lifetime,
                                          db.jobs.c.archive_timeout, db.jobs.c.username, db.jobs.c.grp)
                                .join(db.jobs, db.jobs.c.job_id == f.c.job_id)
                                .where(f.c.file_id.in_(ids), f.c.transfer_host == worker)).mappings().all()
        return [dict(r) for r in rows]

    def phase_update(self, file_id: int, old: FileState, new: FileState, **values: Any) -> bool:
        check_file_transition(old, new)
        with self.engine.begin() as conn:
            r = conn.execute(db.files.update().where(db.files.c.file_id == file_id, db.files.c.file_state == str(old))
                             .values(file_state=str(new), **values))
            if r.rowcount:
                if new == F.SUBMITTED:
                    self._shape = None
                job_id = conn.execute(sa.select(db.files.c.job_id).where(db.files.c.file_id == file_id)).scalar()
                self._refresh_jobs(conn, [job_id])
            return bool(r.rowcount)

    # -- configuration -----------------------------------------------------------------------------

    def links_config(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [self._link_out(dict(r)) for r in conn.execute(sa.select(db.links)).mappings()]

    def _link_out(self, r: dict[str, Any]) -> dict[str, Any]:
        return {"symbolicname": r["symbolic_name"], "source": r["source_se"], "destination": r["dest_se"],
                "source_name": self.se_display(r["source_se"]), "destination_name": self.se_display(r["dest_se"]),
                "min_active": r["min_active"], "max_active": r["max_active"], "optimizer_mode": r["optimizer_mode"],
                "nostreams": r["nostreams"], "tcp_buffer_size": r["tcp_buffer_size"], "tpc_mode": r["tpc_mode"]}

    def set_link(self, cfg: LinkConfig) -> dict[str, Any]:
        if cfg.min_active > cfg.max_active:
            raise InvalidInput("min_active is larger than max_active", code="bad-range")
        source, dest = self.resolve_se(cfg.source), self.resolve_se(cfg.destination)
        name = cfg.symbolicname or f"{self.se_display(source)}-{self.se_display(dest)}"
        values = dict(symbolic_name=name, min_active=cfg.min_active, max_active=cfg.max_active,
                      optimizer_mode=cfg.optimizer_mode, nostreams=cfg.nostreams, tcp_buffer_size=cfg.tcp_buffer_size,
                      tpc_mode=str(cfg.tpc_mode) if cfg.tpc_mode else None)
        with self.engine.begin() as conn:
            clash = conn.execute(sa.select(db.links.c.source_se, db.links.c.dest_se)
                                 .where(db.links.c.symbolic_name == name)).first()
            if clash is not None and tuple(clash) != (source, dest):
                raise Conflict(f"symbolic name {name} is already used by {clash[0]} -> {clash[1]}", code="name-taken")
            r = conn.execute(db.links.update().where(db.links.c.source_se == source, db.links.c.dest_se == dest)
                             .values(**values))
            if not r.rowcount:
                conn.execute(db.links.insert().values(source_se=source, dest_se=dest, **values))
            conn.execute(db.optimizer.delete().where(db.optimizer.c.source_se == source, db.optimizer.c.dest_se == dest))
        self.config_version += 1
        return self._link_out({"source_se": source, "dest_se": dest, **values})

    def delete_link(self, name: str) -> None:
        with self.engine.begin() as conn:
            r = conn.execute(db.links.delete().where(db.links.c.symbolic_name == name))
        self.config_version += 1
        if not r.rowcount:
            raise NotFound(f"no link configuration named {name}", code="no-such-link")

    def link_config_for(self, source: str, dest: str, conn: sa.Connection | None = None) -> LinkConfig:
        """Lookup precedence (FTS3): exact pair > source -> * > * -> destination > * -> * > defaults."""
        def rows(c: sa.Connection) -> dict[tuple[str, str], Any]:
            return {(r.source_se, r.dest_se): r for r in c.execute(sa.select(db.links).where(
                db.links.c.source_se.in_([source, "*"]), db.links.c.dest_se.in_([dest, "*"])))}
        if conn is None:
            with self.engine.connect() as c:
                found = rows(c)
        else:
            found = rows(conn)
        for key in ((source, dest), (source, "*"), ("*", dest), ("*", "*")):
            r = found.get(key)
            if r is not None:
                return LinkConfig(symbolicname=r.symbolic_name, source=r.source_se, destination=r.dest_se,
                                  min_active=r.min_active, max_active=r.max_active, optimizer_mode=r.optimizer_mode,
                                  nostreams=r.nostreams, tcp_buffer_size=r.tcp_buffer_size, tpc_mode=r.tpc_mode)
        return LinkConfig()

    def tpc_mode_for(self, source: str, dest: str, job_mode: str | None = None) -> str:
        """Job's own mode > link configuration > destination SE > source SE > pull (FTS3/gfal2 default)."""
        if job_mode:
            return job_mode
        cfg = self.link_config_for(source, dest)
        if cfg.tpc_mode:
            return str(cfg.tpc_mode)
        with self.engine.connect() as conn:
            modes = dict(conn.execute(sa.select(db.ses.c.storage, db.ses.c.tpc_mode)
                                      .where(db.ses.c.storage.in_([dest, source]))).all())
        return modes.get(dest) or modes.get(source) or str(TransferMode.PULL)

    def se_config(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {self.se_display(r["storage"]): {"storage": r["storage"], **{k: r[k] for k in SELimits.model_fields}}
                    for r in conn.execute(sa.select(db.ses)).mappings()}

    def set_se(self, se: str, limits: SELimits) -> dict[str, Any]:
        key = self.resolve_se(se)
        values = limits.model_dump()
        if values.get("tpc_mode"):
            values["tpc_mode"] = str(values["tpc_mode"])
        with self.engine.begin() as conn:
            r = conn.execute(db.ses.update().where(db.ses.c.storage == key).values(**values))
            if not r.rowcount:
                conn.execute(db.ses.insert().values(storage=key, **values))
        self.config_version += 1
        return {"storage": key, **values}

    def shares(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(db.shares)).mappings()]

    def set_share(self, vo: str, activity: str, weight: float) -> None:
        with self.engine.begin() as conn:
            r = conn.execute(db.shares.update().where(db.shares.c.vo == vo, db.shares.c.activity == activity)
                             .values(weight=weight))
            if not r.rowcount:
                conn.execute(db.shares.insert().values(vo=vo, activity=activity, weight=weight))
        self.config_version += 1

    # -- monitoring and the optimizer ---------------------------------------------------------------

    def link_stats(self, window: float | None = None) -> list[dict[str, Any]]:
        """Per link: queue, active, finished/failed in the window, success rate, throughput (MB/s, sum of the
        bytes finished in the window over the window's busy time) and the optimizer's current decision."""
        window = window or self.settings.optimizer_window
        since = now() - timedelta(seconds=window)
        f = db.files
        stats: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {
            "queue": 0, "active": 0, "finished": 0, "failed": 0, "retries": 0, "bytes": 0, "staging": 0,
            "first": None, "last": None, "sizes": []})
        with self.engine.connect() as conn:
            for s, d, state, n in conn.execute(sa.select(f.c.source_se, f.c.dest_se, f.c.file_state, sa.func.count())
                                               .where(f.c.file_state.in_([str(x) for x in (
                                                   F.SUBMITTED, F.READY, F.ACTIVE, F.STAGING, F.STARTED)]))
                                               .group_by(f.c.source_se, f.c.dest_se, f.c.file_state)):
                key = "queue" if state == F.SUBMITTED else ("staging" if state in (F.STAGING, F.STARTED) else "active")
                stats[(s, d)][key] += n
            for r in conn.execute(sa.select(f.c.source_se, f.c.dest_se, f.c.file_state, f.c.filesize, f.c.start_time,
                                            f.c.finish_time).where(f.c.finish_time >= since,
                                                                   f.c.file_state.in_([str(F.FINISHED), str(F.FAILED)]))):
                st = stats[(r.source_se, r.dest_se)]
                if r.file_state == F.FINISHED:
                    st["finished"] += 1
                    st["bytes"] += r.filesize or 0
                    st["sizes"].append(r.filesize or 0)
                    start = r.start_time or r.finish_time
                    st["first"] = start if st["first"] is None else min(st["first"], start)
                    st["last"] = r.finish_time if st["last"] is None else max(st["last"], r.finish_time)
                else:
                    st["failed"] += 1
            for s, d, n in conn.execute(sa.select(f.c.source_se, f.c.dest_se, sa.func.count())
                                        .select_from(db.retry_errors.join(f))
                                        .where(db.retry_errors.c.datetime >= since).group_by(f.c.source_se, f.c.dest_se)):
                stats[(s, d)]["retries"] += n
            decisions = {(r.source_se, r.dest_se): r for r in conn.execute(sa.select(db.optimizer))}
        out = []
        for (s, d), st in sorted(stats.items()):
            ended = st["finished"] + st["failed"]
            busy = (st["last"] - st["first"]).total_seconds() if st["first"] and st["last"] else 0.0
            throughput = st["bytes"] / 1e6 / busy if busy > 0 else 0.0
            sizes = st.pop("sizes")
            avg = sum(sizes) / len(sizes) if sizes else 0.0
            std = (sum((x - avg) ** 2 for x in sizes) / len(sizes)) ** 0.5 if sizes else 0.0
            dec = decisions.get((s, d))
            st.pop("first"), st.pop("last")
            out.append({"source_se": s, "dest_se": d, "source": self.se_display(s), "destination": self.se_display(d),
                        **st, "success_rate": 100.0 * st["finished"] / ended if ended else 100.0,
                        "throughput": throughput, "filesize_avg": avg, "filesize_stddev": std,
                        "optimizer_active": dec.active if dec else None, "ema": dec.ema if dec else None,
                        "window": window})
        return out

    def run_optimizer(self, stats: list[dict[str, Any]] | None = None) -> list[Decision]:
        """One optimizer pass over every link with work or history: decide, store, note the evolution."""
        stats = stats if stats is not None else self.link_stats()
        decided = []
        with self.engine.begin() as conn:
            previous = {(r.source_se, r.dest_se): r for r in conn.execute(sa.select(db.optimizer))}
            limits = {r.storage: r for r in conn.execute(sa.select(db.ses))}
            for st in stats:
                s, d = st["source_se"], st["dest_se"]
                cfg = self.link_config_for(s, d, conn)
                specific = cfg.source != "*" and cfg.destination != "*" and cfg.symbolicname is not None
                hi = cfg.max_active
                if not specific and cfg.source == "*" and cfg.destination == "*":
                    hi = min(hi, self._se_cap(limits, s, "outbound"), self._se_cap(limits, d, "inbound"))
                rng = Range(cfg.min_active, max(cfg.min_active, hi), cfg.optimizer_mode, specific)
                prev_row = previous.get((s, d))
                prev = Previous(prev_row.active, prev_row.ema, prev_row.success, prev_row.retries,
                                prev_row.filesize_avg) if prev_row else None
                over = self._over_cap(limits, s, d, stats)
                sample = LinkSample(st["throughput"], st["success_rate"], st["retries"], st["active"], st["queue"],
                                    st["filesize_avg"], st["filesize_stddev"], st["finished"] + st["failed"])
                dec = optimize(sample, prev, rng, over)
                t = now()
                row = dict(datetime=t, ema=dec.ema, active=dec.active, success=st["success_rate"],
                           retries=st["retries"], filesize_avg=st["filesize_avg"])
                if prev_row is None:
                    conn.execute(db.optimizer.insert().values(source_se=s, dest_se=d, **row))
                else:
                    conn.execute(db.optimizer.update().where(db.optimizer.c.source_se == s,
                                                             db.optimizer.c.dest_se == d).values(**row))
                if prev_row is None or dec.diff or not prev_row or (t - prev_row.datetime).total_seconds() > 300:
                    conn.execute(db.optimizer_evolution.insert().values(
                        source_se=s, dest_se=d, datetime=t, ema=dec.ema, active=dec.active,
                        throughput=st["throughput"], success=st["success_rate"], filesize_avg=st["filesize_avg"],
                        filesize_stddev=st["filesize_stddev"], actual_active=st["active"], queue_size=st["queue"],
                        rationale=dec.rationale, diff=dec.diff))
                decided.append(dec)
        self._config = None  # new decisions for this instance's next claim
        return decided

    def _over_cap(self, limits: dict[str, Any], s: str, d: str, stats: list[dict[str, Any]]) -> bool:
        out_cap = getattr(limits.get(s), "outbound_max_throughput", None)
        in_cap = getattr(limits.get(d), "inbound_max_throughput", None)
        if out_cap and sum(x["throughput"] for x in stats if x["source_se"] == s) > out_cap:
            return True
        return bool(in_cap and sum(x["throughput"] for x in stats if x["dest_se"] == d) > in_cap)

    def optimizer_evolution(self, source: str | None = None, dest: str | None = None,
                            limit: int = 100) -> list[dict[str, Any]]:
        q = sa.select(db.optimizer_evolution).order_by(db.optimizer_evolution.c.id.desc()).limit(limit)
        if source:
            q = q.where(db.optimizer_evolution.c.source_se == self.resolve_se(source))
        if dest:
            q = q.where(db.optimizer_evolution.c.dest_se == self.resolve_se(dest))
        with self.engine.connect() as conn:
            return [{**dict(r), "datetime": iso(r["datetime"])} for r in conn.execute(q).mappings()]

    # -- the HTTP-TPC test matrix -------------------------------------------------------------------

    def record_test(self, source: str, destination: str, mode: str, ok: bool, size: int,
                    duration: float | None, error: str | None) -> None:
        rate = size / 1e6 / duration if ok and duration else None
        with self.engine.begin() as conn:
            conn.execute(db.test_matrix.insert().values(source=source, destination=destination, mode=mode,
                                                        datetime=now(), ok=ok, size=size, duration=duration,
                                                        rate=rate, error=error))

    def test_matrix(self) -> list[dict[str, Any]]:
        """Latest result per (source, destination, mode), with the last error and the success history."""
        t = db.test_matrix
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id)).mappings().all()
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in rows:
            key = (r["source"], r["destination"], r["mode"])
            entry = latest.setdefault(key, {"source": r["source"], "destination": r["destination"], "mode": r["mode"],
                                            "runs": 0, "successes": 0, "last_error": None, "last_error_time": None})
            entry["runs"] += 1
            entry["successes"] += int(bool(r["ok"]))
            entry.update(ok=bool(r["ok"]), time=iso(r["datetime"]), rate=r["rate"], duration=r["duration"],
                         size=r["size"])
            if not r["ok"]:
                entry.update(last_error=r["error"], last_error_time=iso(r["datetime"]))
        return list(latest.values())


def _weighted(items: Sequence[str], weights: Sequence[float], rng: random.Random) -> str:
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        return items[0]
    x = rng.random() * total
    for item, w in zip(items, weights, strict=True):
        if w <= 0:
            continue
        x -= w
        if x <= 0:
            return item
    return items[-1]


def _all_changed(conn: sa.Connection, result: sa.CursorResult[Any], expected: int) -> bool:
    """Whether an executemany changed one row per parameter set, where the driver's row count can say so
    (SQLite, psycopg); otherwise False, and the caller reads back what changed."""
    return bool(conn.dialect.supports_sane_multi_rowcount) and result.rowcount == expected


class _HotStatements:
    """The statements a transfer worker runs for every file, built once.

    Why: building a SQLAlchemy UPDATE with a dozen guarded columns and computing its cache key cost more
    CPU than executing it on SQLite (a third of the worker's reporting time, measured with py-spy); built
    once, the statement's cache key is memoized and each batch only binds its parameters."""

    def __init__(self) -> None:
        f = db.files
        host = sa.bindparam("host", type_=sa.String)
        ids = sa.bindparam("ids", expanding=True)
        self.mark_active = (
            f.update().where(f.c.file_id == sa.bindparam("fid"), f.c.attempt == sa.bindparam("att"),
                             f.c.transfer_host == host, _state_is(f.c.file_state, predecessors(F.ACTIVE)))
            .values(file_state=str(F.ACTIVE), start_time=sa.bindparam("begun", type_=sa.DateTime),
                    transfer_mode=sa.bindparam("mode", type_=sa.String)))
        self.active_of = sa.select(f.c.file_id, f.c.attempt).where(
            f.c.file_id.in_(ids), f.c.transfer_host == host, f.c.file_state == str(F.ACTIVE))
        self.finish = (
            f.update().where(f.c.file_id == sa.bindparam("fid"), f.c.attempt == sa.bindparam("att"),
                             f.c.transfer_host == host, _state_is(f.c.file_state, predecessors(F.FINISHED)))
            .values(file_state=str(F.FINISHED), reason=sa.bindparam("why", type_=sa.Text), recoverable=None,
                    filesize=sa.func.coalesce(sa.bindparam("size", type_=sa.BigInteger), f.c.filesize),
                    transfer_mode=sa.func.coalesce(sa.bindparam("tmode", type_=sa.String), f.c.transfer_mode),
                    start_time=sa.func.coalesce(sa.bindparam("begun", type_=sa.DateTime), f.c.start_time),
                    finish_time=sa.bindparam("ended", type_=sa.DateTime),
                    tx_duration=sa.func.coalesce(sa.bindparam("dur", type_=sa.Float), f.c.tx_duration),
                    throughput=sa.func.coalesce(sa.bindparam("rate", type_=sa.Float), f.c.throughput),
                    transfer_host=None, lease_until=None))
        self.held = (sa.select(f.c.file_id, f.c.attempt, f.c.job_id, f.c.file_index, f.c.retry, f.c.file_state,
                               db.jobs.c.retry.label("max_retry"), db.jobs.c.retry_delay, db.jobs.c.bring_online)
                     .join(db.jobs, db.jobs.c.job_id == f.c.job_id)
                     .where(f.c.file_id.in_(ids), f.c.transfer_host == host))
        job = sa.bindparam("job", type_=sa.String)
        self.job_state = sa.select(db.jobs.c.job_state, db.jobs.c.job_type).where(db.jobs.c.job_id == job)
        self.job_file_states = sa.select(f.c.file_state).where(f.c.job_id == job).distinct()
        # the claim
        self.active_per_link = (sa.select(f.c.source_se, f.c.dest_se, sa.func.count())
                                .where(f.c.file_state.in_([str(F.READY), str(F.ACTIVE)]))
                                .group_by(f.c.source_se, f.c.dest_se))
        t = sa.bindparam("t", type_=sa.DateTime)
        due = sa.and_(f.c.file_state == str(F.SUBMITTED), sa.or_(f.c.next_attempt.is_(None), f.c.next_attempt <= t))
        self.queue_shape = (sa.select(f.c.source_se, f.c.dest_se, f.c.vo_name, f.c.activity, sa.func.count())
                            .where(due).group_by(f.c.source_se, f.c.dest_se, f.c.vo_name, f.c.activity))
        self.pick = (sa.select(f.c.file_id)
                     .where(due, f.c.source_se == sa.bindparam("src"), f.c.dest_se == sa.bindparam("dst"),
                            f.c.vo_name == sa.bindparam("vo"), f.c.activity == sa.bindparam("act"))
                     .order_by(f.c.priority.desc(), f.c.file_id).limit(sa.bindparam("n", type_=sa.Integer)))
        self.pick_skip_locked = self.pick.with_for_update(skip_locked=True)
        self.take = (f.update().where(f.c.file_id.in_(ids), f.c.file_state == str(F.SUBMITTED))
                     .values(file_state=str(F.READY), transfer_host=host,
                             lease_until=sa.bindparam("lease", type_=sa.DateTime), attempt=f.c.attempt + 1))
        self.claimed = (sa.select(f.c.file_id, f.c.job_id, f.c.attempt, f.c.retry, f.c.source_surl, f.c.dest_surl,
                                  f.c.source_se, f.c.dest_se, f.c.filesize, f.c.checksum, f.c.src_token,
                                  f.c.dst_token, f.c.vo_name, f.c.activity, db.jobs.c.verify_checksum,
                                  db.jobs.c.overwrite_flag, db.jobs.c.timeout, db.jobs.c.transfer_mode.label("job_mode"),
                                  db.jobs.c.username, db.jobs.c.grp, db.jobs.c.archive_timeout, db.jobs.c.bring_online,
                                  db.jobs.c.job_state)
                        .join(db.jobs, db.jobs.c.job_id == f.c.job_id).where(f.c.file_id.in_(ids)))
        # reporting
        self.finished_of = sa.select(f.c.file_id, f.c.attempt).where(
            f.c.file_id.in_(sa.bindparam("ids", expanding=True)), f.c.file_state == str(F.FINISHED))


@functools.cache
def _statements() -> _HotStatements:
    return _HotStatements()


def _state_is(column: sa.ColumnElement[Any], states: Sequence[str]) -> sa.ColumnElement[bool]:
    """`column IN (states)` with plain bound values (an expanding IN cannot be used in an executemany)."""
    return sa.or_(*(column == state for state in states))


def _chunks(items: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _nth(values: list[str] | None, i: int) -> str | None:
    if not values:
        return None
    return values[i] if i < len(values) else values[-1]


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value)
    if len(text) > 65_000:
        raise InvalidInput("metadata larger than 64 kB", code="metadata-too-large")
    return text


def _load(text: str | None) -> Any:
    return json.loads(text) if text else None


def _hours_or_seconds(value: int | str | None) -> int | None:
    """max_time_in_queue: an integer is hours (FTS3), `"30s"`, `"10m"`, `"2h"` are explicit."""
    if value in (None, "", 0):
        return None
    if isinstance(value, int):
        return value * 3600 if value > 0 else None
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * 3600)


def check_owner(identity_username: str | None, owner: str | None, admin: bool) -> None:
    if not admin and identity_username != owner:
        raise Forbidden(f"{identity_username} may not change transfer jobs of {owner}", code="not-owner")
