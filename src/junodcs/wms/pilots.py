"""Pilot records: states, pilot-to-job mapping, pilot output, and what a site director needs to decide.

A pilot record is created by its site director when it submits the pilot (`Submitted`, with the batch
system's reference), becomes `Running` when the pilot first reports or matches, and ends `Done`, `Failed`
or `Aborted` (a pilot the batch system lost or killed before it ran). The matcher keeps the mapping
`wms_pilot_jobs` (job, attempt) -> pilot. A pilot the matcher sees without a record (started by hand) gets
one at its first match.

`waiting_for_ce` answers the director's question "how many waiting jobs could a pilot of this CE run?"
from the task queues, with exactly the matcher's fit rule (`TaskQueue.fits`), so no pilot is sent where no
job can run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from junodcs.core.errors import Conflict, InvalidInput, NotFound
from junodcs.wms import db
from junodcs.wms.logic import WMS, UnknownSite, now
from junodcs.wms.models import MatchRequest

PILOT_STATES = ("Submitted", "Running", "Done", "Failed", "Aborted")
WAITING_STATES = ("Submitted",)
TRANSIENT_STATES = ("Submitted", "Running")
FINAL_STATES = ("Done", "Failed", "Aborted")
#: pilot state machine: from -> allowed targets (a final state never changes)
PILOT_TRANSITIONS: dict[str, frozenset[str]] = {
    "Submitted": frozenset({"Running", "Done", "Failed", "Aborted"}),
    "Running": frozenset({"Done", "Failed", "Aborted"}),
    "Done": frozenset(),
    "Failed": frozenset(),
    "Aborted": frozenset(),
}
MAX_OUTPUT = 1_000_000


def _row(row: Any) -> dict[str, Any]:
    return {"pilot_id": row.id, "site": row.site, "ce": row.ce, "status": row.status, "reference": row.reference,
            "submitted_at": row.submitted_at, "first_seen": row.first_seen, "last_seen": row.last_seen,
            "jobs_matched": row.jobs_matched, "current_job": row.current_job, "reason": row.reason}


class Pilots:
    """Pilot records on the WMS database."""

    def __init__(self, wms: WMS) -> None:
        self.wms = wms

    def _ce(self, site: str, ce: str) -> None:
        if ce not in self.wms.ces or self.wms.ces[ce][0] != site:
            raise UnknownSite(f"{ce!r} is not a computing element of {site}", code="unknown-ce")

    def register(self, pilots: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records for pilots a director just submitted: `[{pilot_id, site, ce, reference}]`, all or nothing."""
        stamp = now()
        rows = []
        for item in pilots:
            pilot_id = str(item.get("pilot_id") or "")
            if not pilot_id or len(pilot_id) > 128:
                raise InvalidInput("pilot_id: 1 to 128 characters")
            self._ce(str(item.get("site")), str(item.get("ce")))
            rows.append({"id": pilot_id, "site": item["site"], "ce": item["ce"], "status": "Submitted",
                         "first_seen": stamp, "last_seen": stamp, "jobs_matched": 0, "current_job": None,
                         "reference": (str(item["reference"])[:255] if item.get("reference") else None),
                         "submitted_at": stamp, "reason": None})
        with self.wms.engine.begin() as conn:
            existing = set(conn.execute(select(db.pilots.c.id).where(
                db.pilots.c.id.in_([r["id"] for r in rows]))).scalars()) if rows else set()
            if existing:
                raise Conflict(f"pilots already registered: {', '.join(sorted(existing))}", code="pilot-exists")
            if rows:
                conn.execute(insert(db.pilots), rows)
        return [{"pilot_id": r["id"], "status": "Submitted"} for r in rows]

    def set_reference(self, pilot_id: str, reference: str) -> None:
        with self.wms.engine.begin() as conn:
            conn.execute(update(db.pilots).where(db.pilots.c.id == pilot_id).values(reference=reference[:255]))

    def update(self, pilot_id: str, status: str, reason: str | None = None, *,
               source: str = "Pilot") -> dict[str, Any]:
        """Move a pilot along its state machine; a final state stays (late reports are ignored, said so)."""
        if status not in PILOT_STATES:
            raise InvalidInput(f"pilot status is one of {', '.join(PILOT_STATES)}", code="invalid-status")
        stamp = now()
        with self.wms.engine.begin() as conn:
            row = conn.execute(select(db.pilots).where(db.pilots.c.id == pilot_id)).first()
            if row is None:
                raise NotFound(f"no pilot {pilot_id!r}", code="no-such-pilot")
            if row.status == status:
                changed = False
            elif status not in PILOT_TRANSITIONS[row.status]:
                return {"pilot_id": pilot_id, "status": row.status, "changed": False,
                        "detail": f"{row.status} is final" if row.status in FINAL_STATES
                        else f"{row.status} -> {status} is not allowed"}
            else:
                changed = True
            values: dict[str, Any] = {"status": status, "last_seen": stamp}
            if reason:
                values["reason"] = reason[:255]
            if status in FINAL_STATES:
                values["current_job"] = None
            conn.execute(update(db.pilots).where(db.pilots.c.id == pilot_id, db.pilots.c.status == row.status)
                         .values(**values))
        answer: dict[str, Any] = {"pilot_id": pilot_id, "status": status, "changed": changed}
        if changed and status in FINAL_STATES:
            answer["jobs"] = self.wms.check_stalled(pilot_dead=[pilot_id], source=f"{source}Status")
        return answer

    def list(self, *, site: str | None = None, ce: str | None = None, status: Sequence[str] | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        p = db.pilots.c
        stmt = select(db.pilots)
        if site:
            stmt = stmt.where(p.site == site)
        if ce:
            stmt = stmt.where(p.ce == ce)
        if status:
            stmt = stmt.where(p.status.in_(list(status)))
        stmt = stmt.order_by(p.first_seen.desc(), p.id).limit(limit)
        with self.wms.engine.connect() as conn:
            return [_row(r) for r in conn.execute(stmt)]

    def info(self, pilot_id: str) -> dict[str, Any]:
        with self.wms.engine.connect() as conn:
            row = conn.execute(select(db.pilots).where(db.pilots.c.id == pilot_id)).first()
            if row is None:
                raise NotFound(f"no pilot {pilot_id!r}", code="no-such-pilot")
            jobs = conn.execute(select(db.pilot_jobs).where(db.pilot_jobs.c.pilot_id == pilot_id)
                                .order_by(db.pilot_jobs.c.matched_at, db.pilot_jobs.c.job_id)).all()
        return {**_row(row), "jobs": [{"job_id": j.job_id, "attempt": j.attempt, "matched_at": j.matched_at}
                                      for j in jobs]}

    def jobs_pilots(self, job_id: int) -> list[dict[str, Any]]:
        """Every pilot that ran an attempt of a job (DIRAC's dirac-admin-get-job-pilots)."""
        with self.wms.engine.connect() as conn:
            rows = conn.execute(select(db.pilot_jobs).where(db.pilot_jobs.c.job_id == job_id)
                                .order_by(db.pilot_jobs.c.attempt)).all()
        return [{"job_id": r.job_id, "attempt": r.attempt, "pilot_id": r.pilot_id, "matched_at": r.matched_at}
                for r in rows]

    def store_output(self, pilot_id: str, output: str) -> dict[str, Any]:
        stamp = now()
        text = output[-MAX_OUTPUT:]
        with self.wms.engine.begin() as conn:
            if conn.execute(select(db.pilots.c.id).where(db.pilots.c.id == pilot_id)).first() is None:
                raise NotFound(f"no pilot {pilot_id!r}", code="no-such-pilot")
            conn.execute(delete(db.pilot_output).where(db.pilot_output.c.pilot_id == pilot_id))
            conn.execute(insert(db.pilot_output).values(pilot_id=pilot_id, output=text, updated_at=stamp))
        return {"pilot_id": pilot_id, "size": len(text)}

    def output(self, pilot_id: str) -> dict[str, Any]:
        with self.wms.engine.connect() as conn:
            row = conn.execute(select(db.pilots).where(db.pilots.c.id == pilot_id)).first()
            if row is None:
                raise NotFound(f"no pilot {pilot_id!r}", code="no-such-pilot")
            out = conn.execute(select(db.pilot_output).where(db.pilot_output.c.pilot_id == pilot_id)).first()
        if out is None:
            raise NotFound(f"pilot {pilot_id} ({row.status}) has no output yet: its site director stores it "
                           "when the pilot ends", code="no-pilot-output")
        return {"pilot_id": pilot_id, "status": row.status, "output": out.output, "updated_at": out.updated_at}

    # -- what a site director asks ---------------------------------------------------------------------

    def waiting_for_ce(self, site: str, ce: str, *, time_left: int | None = None) -> dict[str, Any]:
        """Waiting jobs a pilot of `ce` could match now, and this CE's pilots by state."""
        from junodcs.wms.matcher import TaskQueue, offered_by

        self._ce(site, ce)
        _, element = self.wms.ces[ce]
        request = MatchRequest(pilot_id="director", site=site, ce=ce, platform=element.platform,
                               tags=list(element.tags), memory_mb=int(element.memory_per_slot), cores=element.cores,
                               time_left=time_left or element.max_cpu_time)
        offered = offered_by(request)
        with self.wms.engine.connect() as conn:
            banned = site in self.wms.banned_sites(conn)
            queues = [TaskQueue(r.id, r.owner, r.grp, r.job_type, r.cpu_time, r.platform,
                                frozenset(json.loads(r.tags)), r.min_ram, r.cores, frozenset(json.loads(r.sites)),
                                frozenset(json.loads(r.ces))) for r in conn.execute(select(db.task_queues))]
            fitting = [tq.id for tq in queues if tq.fits(request, offered, banned)]
            waiting = 0
            if fitting:
                waiting = conn.execute(select(func.count()).select_from(db.jobs).where(
                    db.jobs.c.tq_id.in_(fitting), db.jobs.c.status == "Waiting")).scalar_one()
            states = dict(conn.execute(select(db.pilots.c.status, func.count()).where(db.pilots.c.ce == ce)
                                       .group_by(db.pilots.c.status)).all())
            p = db.pilots.c
            idle = conn.execute(select(func.count()).select_from(db.pilots).where(
                p.ce == ce, or_(p.status == "Submitted", and_(p.status == "Running", p.jobs_matched == 0)))
            ).scalar_one()
        return {"site": site, "ce": ce, "waiting_jobs": int(waiting), "task_queues": fitting,
                "idle_pilots": int(idle), "pilots": {s: int(states.get(s, 0)) for s in PILOT_STATES}}


def pilots_for_state(state: Any) -> Pilots:
    from junodcs.wms.logic import wms_for_state

    found = getattr(state, "wms_pilots", None)
    if found is None:
        found = state.wms_pilots = Pilots(wms_for_state(state))
    return found
