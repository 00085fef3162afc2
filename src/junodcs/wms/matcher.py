"""The matcher: a pilot offers its resources and gets the best waiting job, atomically.

A pilot sends a `MatchRequest` (pilot id, site, CE, platform, tags, required tags, memory, cores, time left).
The matcher:

1. refuses unknown sites/CEs; a masked (banned) site gets only `JobType = Test` jobs;
2. applies the site's running limit (`WMSConfig.running_limits`), counted exactly;
3. keeps the task queues whose requirements the pilot satisfies: candidate sites contain the pilot's site,
   CE list empty or containing its CE, platform equal (or none asked), CPU time bucket <= time left, MaxRAM <=
   memory, cores <= cores, all tags offered, and the pilot's required tags all present in the queue;
4. orders them by **group fair share** (the group whose running jobs are furthest below its share first:
   `(running + 1) / share`), then by the owner's running jobs inside the group (users share their group's
   share equally), random among equals; inside a queue jobs go by user `Priority`, then submission order;
5. takes the first job of the first queue that still has one atomically: on SQLite
   `UPDATE ... WHERE id = (SELECT ... LIMIT 1) AND status = 'Waiting' RETURNING id`, on MariaDB
   `SELECT ... FOR UPDATE SKIP LOCKED` then `UPDATE` in the same transaction, on PostgreSQL the pick, the
   update, the logging row, the pilot-to-job row and the pilot record in one statement (data-modifying CTEs
   around `FOR UPDATE SKIP LOCKED`). No job goes to two pilots; concurrent pilots skip each other's rows
   instead of waiting.

Task queues and running counts are cached for `cache_seconds` (default 1 s) per process; the job pick itself
always reads the database, so the cache can only make a match miss a just-created queue for a moment.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from junodcs.db.retry import retry_transaction
from junodcs.wms import db
from junodcs.wms.logic import WMS, JobStatus, UnknownSite, check_transition, now
from junodcs.wms.models import ACTIVE, MatchRequest, Minor

S = JobStatus
ACTIVE_VALUES = [s.value for s in ACTIVE]


@dataclass(frozen=True)
class TaskQueue:
    id: int
    owner: str
    grp: str
    job_type: str
    cpu_time: int
    platform: str | None
    tags: frozenset[str]
    min_ram: int | None
    cores: int
    sites: frozenset[str]
    ces: frozenset[str]

    def fits(self, request: MatchRequest, offered: frozenset[str], site_banned: bool) -> bool:
        if self.sites and request.site not in self.sites:
            return False
        if self.ces and request.ce not in self.ces:
            return False
        if self.platform and self.platform != request.platform:
            return False
        if self.cpu_time > request.time_left or self.cores > request.cores:
            return False
        if self.min_ram is not None and self.min_ram > request.memory_mb:
            return False
        if not self.tags <= offered:
            return False
        if request.required_tags and not set(request.required_tags) <= self.tags:
            return False
        if request.job_types and self.job_type not in request.job_types:
            return False
        if site_banned and self.job_type != "Test":
            return False
        return True


def offered_by(request: MatchRequest) -> frozenset[str]:
    tags = set(request.tags)
    if request.cores > 1:
        tags.add("MultiProcessor")
        tags.update(f"{n}Processors" for n in range(2, request.cores + 1))
    return frozenset(tags)


class Matcher:
    def __init__(self, wms: WMS, *, cache_seconds: float = 1.0, source: str = "Matcher") -> None:
        self.wms = wms
        self.cache_seconds = cache_seconds
        self.source = source
        self._lock = threading.Lock()
        self._loaded = 0.0
        self._queues: list[TaskQueue] = []
        self._empty: set[int] = set()
        self._banned: set[str] = set()
        self._running_group: dict[str, int] = defaultdict(int)
        self._running_owner: dict[tuple[str, str], int] = defaultdict(int)
        self._compiled: dict[str, dict[str, Any]] = {}

    # -- cached state ----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded < self.cache_seconds:
                return
            with self.wms.engine.connect() as conn:
                queues = [TaskQueue(r.id, r.owner, r.grp, r.job_type, r.cpu_time, r.platform,
                                    frozenset(json.loads(r.tags)), r.min_ram, r.cores, frozenset(json.loads(r.sites)),
                                    frozenset(json.loads(r.ces)))
                          for r in conn.execute(select(db.task_queues))]
                running = conn.execute(select(db.jobs.c.grp, db.jobs.c.owner, func.count())
                                       .where(db.jobs.c.status.in_(ACTIVE_VALUES))
                                       .group_by(db.jobs.c.grp, db.jobs.c.owner)).all()
                banned = self.wms.banned_sites(conn)
            self._queues = queues
            self._empty = set()
            self._banned = banned
            self._running_group = defaultdict(int)
            self._running_owner = defaultdict(int)
            for grp, owner, count in running:
                self._running_group[grp] += count
                self._running_owner[(grp, owner)] += count
            self._loaded = time.monotonic()

    def invalidate(self) -> None:
        self._loaded = 0.0

    def _share(self, group: str) -> float:
        return float(self.wms.config.shares.get(group, self.wms.config.default_share)) or 1e-9

    def _ordered(self, queues: list[TaskQueue]) -> list[TaskQueue]:
        def key(tq: TaskQueue) -> tuple[float, int, float]:
            return ((self._running_group[tq.grp] + 1) / self._share(tq.grp),
                    self._running_owner[(tq.grp, tq.owner)], random.random())

        return sorted(queues, key=key)

    # -- matching --------------------------------------------------------------------------------------

    def match(self, request: MatchRequest) -> dict[str, Any]:
        wms = self.wms
        if request.site not in wms.sites:
            raise UnknownSite(f"unknown site {request.site!r}")
        if request.ce not in wms.ces or wms.ces[request.ce][0] != request.site:
            raise UnknownSite(f"{request.ce!r} is not a computing element of {request.site}", code="unknown-ce")
        limit = wms.config.running_limits.get(request.site)
        if limit is not None:
            with wms.engine.connect() as conn:
                running = conn.execute(select(func.count()).select_from(db.jobs).where(
                    db.jobs.c.site == request.site, db.jobs.c.status.in_(ACTIVE_VALUES))).scalar_one()
            if running >= limit:
                return {"job": None, "reason": f"{request.site} runs {running} jobs: its running limit is {limit}"}
        self._refresh()
        banned = request.site in self._banned
        offered = offered_by(request)
        eligible = [tq for tq in self._queues if tq.id not in self._empty and tq.fits(request, offered, banned)]
        reason = "no waiting job fits this pilot"
        if banned:
            reason += f" ({request.site} is banned: only Test jobs)"
        if not eligible:
            return {"job": None, "reason": reason}
        for tq in self._ordered(eligible):
            job = retry_transaction(lambda: self._take(tq, request))
            if job is not None:
                self._running_group[tq.grp] += 1
                self._running_owner[(tq.grp, tq.owner)] += 1
                return {"job": job, "reason": None}
            self._empty.add(tq.id)
        return {"job": None, "reason": reason}

    def _statements(self, dialect: str) -> dict[str, Any]:
        """Statements built once (per dialect) with bound parameters: a match then costs only the execution."""
        found = self._compiled.get(dialect)
        if found is not None:
            return found
        j = db.jobs.c
        values = {"status": S.MATCHED.value, "minor_status": Minor.ASSIGNED, "tq_id": None,
                  "site": bindparam("v_site"), "ce": bindparam("v_ce"), "pilot_id": bindparam("v_pilot"),
                  "matched_at": bindparam("v_now"), "updated_at": bindparam("v_now"),
                  "memory_limit": bindparam("v_memory"), "heartbeat_time": None}
        pick = (select(j.id).where(j.tq_id == bindparam("v_tq"), j.status == S.WAITING.value)
                .order_by(j.user_priority.desc(), j.id).limit(1))
        statements: dict[str, Any] = {}
        if dialect == "postgresql":
            statements["one"] = self._postgresql_match(values)
            self._compiled[dialect] = statements
            return statements
        if dialect == "mysql":
            statements["pick"] = pick.with_for_update(skip_locked=True)
            statements["assign"] = update(db.jobs).where(j.id == bindparam("v_id")).values(**values)
        else:
            if dialect == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            statements["take"] = (update(db.jobs).where(j.id == pick.scalar_subquery(), j.status == S.WAITING.value)
                                  .values(**values).returning(j.id, j.attempt, j.owner, j.grp, j.application_status,
                                                              j.max_ram, j.input_sandbox, j.cpu_time))
        statements["row"] = select(db.jobs).where(j.id == bindparam("v_id"))
        statements["log"] = insert(db.logging)
        statements["pilot_job"] = insert(db.pilot_jobs)
        statements["pilot_seen"] = update(db.pilots).where(db.pilots.c.id == bindparam("v_pilot")).values(
            last_seen=bindparam("v_now"), current_job=bindparam("v_id"),
            jobs_matched=db.pilots.c.jobs_matched + 1, status="Running")
        statements["pilot_new"] = insert(db.pilots)
        statements["jdl"] = select(db.jdls.c.jdl).where(db.jdls.c.job_id == bindparam("v_id"))
        self._compiled[dialect] = statements
        return statements

    def _postgresql_match(self, values: dict[str, Any]) -> Any:
        """The whole match as one PostgreSQL statement (data-modifying CTEs): pick the queue's best job
        (`FOR UPDATE SKIP LOCKED` on the `(tq_id, user_priority, id)` index), mark it Matched, log it, map it
        to the pilot, upsert the pilot record, and return the job with its description. One round trip
        instead of seven; under load each round trip costs a context switch on both sides.

        The pick relies on `tq_id` being set exactly while a job is Waiting (see `wms.db`): it then matches
        the index exactly and PostgreSQL walks it in order for any statistics, instead of intersecting the
        status index (all Waiting jobs) when its estimates are stale after a bulk submission. The UPDATE
        still requires `status = 'Waiting'`, so a violated invariant can only cost a miss, never a wrong
        match."""
        from sqlalchemy import literal
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        j = db.jobs.c
        pick = (select(j.id).where(j.tq_id == bindparam("v_tq")).order_by(j.user_priority.desc(), j.id)
                .limit(1).with_for_update(skip_locked=True).scalar_subquery())
        taken = (update(db.jobs).where(j.id == pick, j.status == S.WAITING.value).values(**values)
                 .returning(j.id, j.attempt, j.owner, j.grp, j.application_status, j.max_ram, j.input_sandbox,
                            j.cpu_time).cte("taken"))
        log = insert(db.logging).from_select(
            ["job_id", "attempt", "status", "minor_status", "application_status", "time", "source"],
            select(taken.c.id, taken.c.attempt, literal(S.MATCHED.value), literal(Minor.ASSIGNED),
                   taken.c.application_status, bindparam("v_now"), literal(self.source))).cte("logged")
        mapped = insert(db.pilot_jobs).from_select(
            ["job_id", "attempt", "pilot_id", "matched_at"],
            select(taken.c.id, taken.c.attempt, bindparam("v_pilot"), bindparam("v_now"))).cte("mapped")
        new_pilot = pg_insert(db.pilots).from_select(
            ["id", "site", "ce", "status", "first_seen", "last_seen", "jobs_matched", "current_job"],
            select(bindparam("v_pilot"), bindparam("v_site"), bindparam("v_ce"), literal("Running"),
                   bindparam("v_now"), bindparam("v_now"), literal(1), taken.c.id))
        pilot = new_pilot.on_conflict_do_update(index_elements=[db.pilots.c.id], set_={
            "last_seen": new_pilot.excluded.last_seen, "current_job": new_pilot.excluded.current_job,
            "jobs_matched": db.pilots.c.jobs_matched + 1, "status": "Running"}).cte("pilot")
        return (select(taken, db.jdls.c.jdl).select_from(taken.join(db.jdls, db.jdls.c.job_id == taken.c.id))
                .add_cte(log, mapped, pilot))

    def _take(self, tq: TaskQueue, request: MatchRequest) -> dict[str, Any] | None:
        wms = self.wms
        stamp = now()
        params = {"v_site": request.site, "v_ce": request.ce, "v_pilot": request.pilot_id, "v_now": stamp,
                  "v_memory": request.memory_mb, "v_tq": tq.id}
        check_transition(0, S.WAITING.value, S.MATCHED)  # the move this applies, stated against the table
        if wms.engine.dialect.name == "postgresql":
            # one statement is its own transaction: autocommit saves the BEGIN and COMMIT round trips
            with wms.engine.connect() as plain:
                conn = plain.execution_options(isolation_level="AUTOCOMMIT")
                found = conn.execute(self._statements("postgresql")["one"], params).first()
            return None if found is None else self._answer(found, json.loads(found.jdl), tq, request)
        with wms.engine.begin() as conn:
            st = self._statements(conn.dialect.name)
            if "take" in st:  # the UPDATE returns what the answer needs: no second read
                row = conn.execute(st["take"], params).first()
                if row is None:
                    return None
                job_id = params["v_id"] = row.id
            else:
                job_id = conn.execute(st["pick"], params).scalar()
                if job_id is None:
                    return None
                conn.execute(st["assign"], {**params, "v_id": job_id})
                params["v_id"] = job_id
                row = conn.execute(st["row"], params).one()
            conn.execute(st["log"], {"job_id": job_id, "attempt": row.attempt, "status": S.MATCHED.value,
                                     "minor_status": Minor.ASSIGNED, "application_status": row.application_status,
                                     "time": stamp, "source": self.source})
            conn.execute(st["pilot_job"], {"job_id": job_id, "attempt": row.attempt, "pilot_id": request.pilot_id,
                                           "matched_at": stamp})
            if conn.execute(st["pilot_seen"], params).rowcount == 0:
                conn.execute(st["pilot_new"], {"id": request.pilot_id, "site": request.site, "ce": request.ce,
                                               "status": "Running", "first_seen": stamp, "last_seen": stamp,
                                               "jobs_matched": 1, "current_job": job_id})
            description = json.loads(conn.execute(st["jdl"], params).scalar_one())
        return self._answer(row, description, tq, request)

    def _answer(self, row: Any, description: dict[str, Any], tq: TaskQueue, request: MatchRequest) -> dict[str, Any]:
        if row.max_ram is not None:
            description["MaxRAM"] = row.max_ram
        return {
            "job_id": row.id, "attempt": row.attempt, "owner": row.owner, "group": row.grp,
            "description": description, "input_sandbox": row.input_sandbox, "cpu_time": row.cpu_time,
            "max_ram": row.max_ram, "memory_limit": request.memory_mb, "task_queue": tq.id,
            "heartbeat_period": self.wms.config.heartbeat_period,
        }


__all__ = ["Matcher", "MatchRequest", "TaskQueue"]
