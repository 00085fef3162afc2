"""Optimizers: from Received to Waiting (or Staging, on hold, Failed), as one agent loop safe in several copies.

Each pass claims jobs with a lease (`lease_owner`, `lease_until`): Received jobs, and held (Checking) or Staging
jobs whose re-check time has come, or any claimed job whose optimizer died (lease expired). PostgreSQL and
MariaDB claim with `SELECT ... FOR UPDATE SKIP LOCKED`; SQLite, whose writers are serialised, with one
`UPDATE ... WHERE id IN (SELECT ... LIMIT n)`.

For each job: sandbox sanity -> input data through the catalog (a `ReplicaResolver`: sites with a disk replica
of every file; tape only -> Staging) -> candidate sites = requested ∩ data − BannedSites, restricted to sites
with a CE that can ever satisfy the job (platform, tags, memory, cores, GridCE) -> not all masked -> a task
queue keyed by the requirements -> Waiting. A job that can match nowhere stays in Checking, on hold, with the
reason as its minor status, and is looked at again after `hold_recheck` seconds (at once when a site is allowed).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from junodcs.core.errors import DCSError
from junodcs.wms import db
from junodcs.wms.logic import WMS, JobStatus, cpu_bucket, now
from junodcs.wms.models import JobDescription, Minor

S = JobStatus
USABLE_REPLICA_STATUSES = frozenset({"AprioriGood", "Probing"})


class ReplicaResolver(Protocol):
    def replicas(self, lfns: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """LFN -> [(SE, replica status)]; LFNs the catalog does not know are left out."""


class CatalogLogicResolver:
    """In-process: the catalog system is mounted in the same server (same database)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog

    def replicas(self, lfns: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        from junodcs.catalog.errors import NoSuchPath

        out: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(lfns), 10_000):
            chunk = list(lfns[start:start + 10_000])
            try:
                found = self.catalog.replicas(chunk)
            except NoSuchPath:
                found = {}
                for lfn in chunk:
                    try:
                        found.update(self.catalog.replicas([lfn]))
                    except NoSuchPath:
                        continue
            for lfn, reps in found.items():
                out[lfn] = [(r["se"], r["status"]) for r in reps]
        return out


class CatalogClientResolver:
    """Through the catalog's REST API (the catalog runs in another server process)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def replicas(self, lfns: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(lfns), 10_000):
            chunk = list(lfns[start:start + 10_000])
            try:
                found = self.client.replicas(chunk)
            except DCSError as exc:
                if exc.code != "no-such-path":
                    raise
                found = {}
                for lfn in chunk:
                    try:
                        found.update(self.client.replicas([lfn]))
                    except DCSError as inner:
                        if inner.code != "no-such-path":
                            raise
            for lfn, reps in found.items():
                out[lfn] = [(r["se"], r["status"]) for r in reps]
        return out


class NoCatalog:
    def replicas(self, lfns: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        raise DCSError("input data cannot be resolved: no catalog is configured", code="no-catalog")


@dataclass
class Outcome:
    status: JobStatus
    minor: str
    tq_key: tuple[Any, ...] | None = None
    lease_owner: str | None = None
    lease_seconds: int | None = None


_DEFAULTS: dict[str, Any] | None = None

#: The description attributes the optimizers decide on (the rest, e.g. Arguments, never changes a decision).
SCHEDULING_ATTRIBUTES = ("Site", "BannedSites", "GridCE", "InputData", "Platform", "JobType", "Tags",
                         "NumberOfProcessors", "MinNumberOfProcessors", "MaxNumberOfProcessors", "WholeNode")


def stored_description(attributes: dict[str, Any]) -> JobDescription:
    """A description validated at submission, rebuilt without validating again.

    pydantic's `model_construct` computes every missing field's default through its default factory and
    inspects the factory's signature each time (about 1 ms per model: 10,000 jobs cost seconds). Every field
    is therefore passed, with defaults computed once; list defaults become tuples, so a caller that tried to
    change a shared default would fail loudly instead of changing every job's."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = {name: (tuple(value) if isinstance(value, list) else value)
                     for name, info in JobDescription.model_fields.items() if not info.is_required()
                     for value in (info.get_default(call_default_factory=True),)}
    return JobDescription.model_construct(**{**_DEFAULTS, **attributes})


class Optimizer:
    """The optimizer chain as one agent; run `run_once()` in a loop (see `wms.agents`)."""

    def __init__(self, wms: WMS, resolver: ReplicaResolver | None = None, *, name: str | None = None) -> None:
        self.wms = wms
        self.resolver = resolver or NoCatalog()
        self.name = name or f"optimizer-{uuid.uuid4().hex[:8]}"

    # -- claiming --------------------------------------------------------------------------------------

    def claim(self, limit: int, at: datetime) -> list[Any]:
        j = db.jobs.c
        until = at + timedelta(seconds=self.wms.config.lease_seconds)
        due = and_(j.status.in_((S.RECEIVED, S.CHECKING, S.STAGING)),
                   or_(j.lease_until.is_(None), j.lease_until < at))
        engine = self.wms.engine
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                chosen = select(j.id).where(due).order_by(j.id).limit(limit).scalar_subquery()
                conn.execute(update(db.jobs).where(j.id.in_(chosen)).values(lease_owner=self.name, lease_until=until))
            else:
                ids = list(conn.execute(select(j.id).where(due).order_by(j.id).limit(limit)
                                        .with_for_update(skip_locked=True)).scalars())
                for start in range(0, len(ids), 1000):
                    conn.execute(update(db.jobs).where(j.id.in_(ids[start:start + 1000]))
                                 .values(lease_owner=self.name, lease_until=until))
            return conn.execute(select(db.jobs).where(j.lease_owner == self.name, j.lease_until == until)
                                .order_by(j.id)).all()

    # -- one pass --------------------------------------------------------------------------------------

    def run_once(self, limit: int = 5000, at: datetime | None = None) -> dict[str, int]:
        at = at or now()
        rows = self.claim(limit, at)
        if not rows:
            return {}
        with self.wms.engine.connect() as conn:
            texts = {}
            ids = [r.id for r in rows]
            for start in range(0, len(ids), 1000):
                texts.update(conn.execute(select(db.jdls.c.job_id, db.jdls.c.jdl)
                                          .where(db.jdls.c.job_id.in_(ids[start:start + 1000]))).all())
            digests = {r.input_sandbox for r in rows if r.input_sandbox}
            known = set(conn.execute(select(db.sandboxes.c.hash).where(db.sandboxes.c.hash.in_(digests))).scalars()) \
                if digests else set()
            banned = {r.site: r.reason for r in conn.execute(select(db.site_mask).where(
                db.site_mask.c.status == "Banned"))}
        parsed: dict[str, JobDescription] = {}
        descriptions = {}
        for row in rows:
            # only the scheduling attributes matter here: the jobs of a parametric bulk that differ in their
            # Arguments share one description object
            attributes = json.loads(texts[row.id])
            relevant = {k: attributes[k] for k in SCHEDULING_ATTRIBUTES if k in attributes}
            key = json.dumps(relevant, sort_keys=True)
            if key not in parsed:
                parsed[key] = stored_description(relevant)
            descriptions[row.id] = parsed[key]
        lfns = sorted({lfn for d in parsed.values() for lfn in d.InputData})
        replicas: dict[str, list[tuple[str, str]]] = {}
        resolver_error: str | None = None
        if lfns:
            try:
                replicas = self.resolver.replicas(lfns)
            except DCSError as exc:
                resolver_error = exc.detail
        outcomes: dict[int, Outcome] = {}
        cache: dict[tuple[Any, ...], Outcome] = {}
        for row in rows:
            job = descriptions[row.id]
            if row.input_sandbox and row.input_sandbox not in known:
                outcomes[row.id] = Outcome(S.FAILED, f"{Minor.SANDBOX_MISSING}: {row.input_sandbox[:16]}")
                continue
            if job.InputData and resolver_error:
                outcomes[row.id] = Outcome(S.CHECKING, f"On hold: {resolver_error}"[:255], lease_owner="hold",
                                           lease_seconds=self.wms.config.hold_recheck)
                continue
            key = (tuple(job.Site), tuple(job.BannedSites), tuple(job.GridCE), tuple(job.InputData), job.Platform,
                   tuple(job.requirement_tags()), job.JobType, row.max_ram, row.owner, row.grp, row.vo,
                   row.cpu_time, row.cores)
            if key not in cache:
                cache[key] = self.decide(job, row, replicas, banned)
            outcomes[row.id] = cache[key]
        return self.apply(rows, outcomes, at)

    # -- decisions -------------------------------------------------------------------------------------

    def decide(self, job: JobDescription, row: Any, replicas: dict[str, list[tuple[str, str]]],
               banned: dict[str, str]) -> Outcome:
        wms = self.wms
        hold = wms.config.hold_recheck
        requested = set(job.Site) or set(wms.sites)
        candidates = requested - set(job.BannedSites)
        if job.GridCE:
            candidates &= {wms.ces[ce][0] for ce in job.GridCE}
            if not candidates:
                return Outcome(S.CHECKING, "On hold: GridCE names no CE at the requested sites", lease_owner="hold",
                               lease_seconds=hold)
        staging = False
        if job.InputData:
            missing = [lfn for lfn in job.InputData if lfn not in replicas]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                return Outcome(S.FAILED, f"{Minor.INPUT_NOT_AVAILABLE}: {', '.join(missing[:3])}{more}"[:255])
            disk_sets, any_sets = [], []
            for lfn in job.InputData:
                disk, anywhere = set(), set()
                for se, status in replicas[lfn]:
                    if status not in USABLE_REPLICA_STATUSES or se not in wms.se_sites:
                        continue
                    site, kind = wms.se_sites[se]
                    anywhere.add(site)
                    if kind == "disk":
                        disk.add(site)
                disk_sets.append(disk)
                any_sets.append(anywhere)
            on_disk = set.intersection(*disk_sets)
            if on_disk & candidates:
                candidates &= on_disk
            else:
                anywhere_all = set.intersection(*any_sets)
                if anywhere_all & candidates:
                    candidates &= anywhere_all
                    staging = True
                else:
                    counts: dict[str, int] = defaultdict(int)
                    for disk in disk_sets:
                        for site in disk & candidates:
                            counts[site] += 1
                    if not counts:
                        holding = sorted(set.union(*any_sets))
                        return Outcome(S.CHECKING, (f"On hold: no requested site holds the input data (it is at "
                                                    f"{', '.join(holding) or 'no usable SE'})")[:255],
                                       lease_owner="hold", lease_seconds=hold)
                    best = max(counts.values())
                    candidates = {s for s, n in counts.items() if n == best}
        fitting, reasons = set(), []
        for site in sorted(candidates):
            ok, why = self.site_fits(site, job, row)
            if ok:
                fitting.add(site)
            else:
                reasons.append(why)
        if not fitting:
            reason = reasons[0] if len(set(reasons)) == 1 else "; ".join(sorted(set(reasons))[:3])
            return Outcome(S.CHECKING, f"On hold: {reason}"[:255], lease_owner="hold", lease_seconds=hold)
        if not fitting - set(banned):
            detail = ", ".join(f"{s} ({banned[s]})" for s in sorted(fitting))
            return Outcome(S.CHECKING, f"On hold: every candidate site is banned: {detail}"[:255],
                           lease_owner="hold", lease_seconds=hold)
        if staging:
            return Outcome(S.STAGING, f"{Minor.STAGING} at {', '.join(sorted(fitting))}"[:255],
                           lease_owner="staging", lease_seconds=wms.config.staging_recheck)
        platform = job.Platform if job.Platform and job.Platform.upper() != "ANY" else None
        key = (row.owner, row.grp, row.vo, job.JobType, cpu_bucket(row.cpu_time), platform,
               tuple(job.requirement_tags()), row.max_ram, row.cores, tuple(sorted(fitting)), tuple(sorted(job.GridCE)))
        return Outcome(S.WAITING, Minor.PILOT_SUBMISSION, tq_key=key)

    def site_fits(self, site: str, job: JobDescription, row: Any) -> tuple[bool, str]:
        ces = self.wms.sites[site].computing_elements
        if job.GridCE:
            ces = tuple(ce for ce in ces if ce.name in job.GridCE)
        if not ces:
            return False, f"{site} has no computing element"
        platform = job.Platform if job.Platform and job.Platform.upper() != "ANY" else None
        tags = set(job.requirement_tags())
        checks = [
            (lambda ce: platform is None or ce.platform == platform, f"no CE offers platform {platform}"),
            (lambda ce: row.max_ram is None or ce.memory_per_slot >= row.max_ram,
             f"no CE offers MaxRAM {row.max_ram} MB (largest slot: {self.wms.memory_cap} MB)"),
            (lambda ce: ce.cores >= row.cores, f"no CE offers {row.cores} processors"),
            (lambda ce: tags <= offered_tags(ce), f"no CE offers tags {', '.join(sorted(tags))}"),
            (lambda ce: ce.max_cpu_time >= min(row.cpu_time, ce.max_cpu_time) , "no CE offers the CPU time"),
        ]
        remaining = list(ces)
        for test, reason in checks:
            remaining = [ce for ce in remaining if test(ce)]
            if not remaining:
                return False, reason
        return True, ""

    # -- writing ---------------------------------------------------------------------------------------

    def _tq_id(self, conn: Any, key: tuple[Any, ...], at: datetime) -> int:
        owner, grp, vo, job_type, cpu, platform, tags, min_ram, cores, sites, ces = key
        key_hash = hashlib.sha1(json.dumps(key, default=str).encode()).hexdigest()
        tq = db.task_queues.c
        found = conn.execute(select(tq.id).where(tq.key_hash == key_hash)).scalar()
        if found is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.task_queues).values(
                        key_hash=key_hash, owner=owner, grp=grp, vo=vo, job_type=job_type, cpu_time=cpu,
                        platform=platform, tags=json.dumps(list(tags)), min_ram=min_ram, cores=cores,
                        sites=json.dumps(list(sites)), ces=json.dumps(list(ces)), created_at=at, updated_at=at))
            except IntegrityError:
                pass
            found = conn.execute(select(tq.id).where(tq.key_hash == key_hash)).scalar_one()
        else:
            conn.execute(update(db.task_queues).where(tq.id == found).values(updated_at=at))
        return int(found)

    def apply(self, rows: Sequence[Any], outcomes: dict[int, Outcome], at: datetime) -> dict[str, int]:
        """Write the decisions in one transaction, a few statements per group of jobs with the same outcome.

        A new (Received) job goes through Checking to its outcome in one UPDATE, with both steps logged; a
        job looked at again (held, staging) gets its new lease, and a logging row only when the reason
        changed. Jobs whose lease this optimizer lost meanwhile are left alone."""
        wms = self.wms
        counts: dict[str, int] = defaultdict(int)
        with wms.engine.begin() as conn:
            current = wms._rows(conn, [r.id for r in rows], lock=True)
            mine = [current[r.id] for r in rows if r.id in current and current[r.id].lease_owner == self.name]
            groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
            tq_ids: dict[tuple[Any, ...], int] = {}
            for row in mine:
                outcome = outcomes[row.id]
                tq_id = None
                if outcome.tq_key:
                    if outcome.tq_key not in tq_ids:
                        tq_ids[outcome.tq_key] = self._tq_id(conn, outcome.tq_key, at)
                    tq_id = tq_ids[outcome.tq_key]
                groups[(outcome.status, outcome.minor, tq_id, outcome.lease_owner, outcome.lease_seconds,
                        row.status)].append(row)
            for (status, minor, tq_id, lease_owner, seconds, old), group in groups.items():
                until = at + timedelta(seconds=seconds) if seconds else None
                values = {"tq_id": tq_id, "lease_owner": lease_owner, "lease_until": until}
                if old == S.RECEIVED:  # every job passes through Checking (history shows the optimizers looked)
                    path = [(S.CHECKING, Minor.OPTIMIZING)]
                    if (status, minor) != (S.CHECKING, Minor.OPTIMIZING):
                        path.append((status, minor))
                    wms._advance(conn, group, path, source="Optimizer", stamp=at, values=values)
                elif old != status:
                    wms._advance(conn, group, [(status, minor)], source="Optimizer", stamp=at, values=values)
                else:  # still held / still staging: new lease; logged only when the reason changed
                    changed = [r for r in group if r.minor_status != minor]
                    kept = [r.id for r in group if r.minor_status == minor]
                    for start in range(0, len(kept), 1000):
                        conn.execute(update(db.jobs).where(db.jobs.c.id.in_(kept[start:start + 1000]))
                                     .values(**values))
                    wms._advance(conn, changed, [(status, minor)], source="Optimizer", stamp=at, values=values)
                counts[status.value] += len(group)
        return dict(counts)


def offered_tags(ce: Any) -> set[str]:
    """Tags a CE's slots offer: its configured tags plus what its cores imply."""
    tags = set(ce.tags)
    if ce.cores > 1:
        tags.add("MultiProcessor")
        tags.update(f"{n}Processors" for n in range(2, ce.cores + 1))
    return tags
