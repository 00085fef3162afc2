"""Completing jobs: a job whose output data wait on a failover SE ends when its RMS requests end.

The job wrapper reports Completing ("Pending Requests: ...") after it put outputs on a failover SE and
submitted a request (PutAndRegister to the requested SEs, RemoveReplica of the failover copy) carrying the
job ID. This pass looks at the requests of each Completing job the wrapper has released: all of them Done
-> the job is Done; any Failed or Canceled -> the job is Failed with that request's error in the minor
status; still running, or none submitted yet (an operator may submit `failover_request.json` by hand) ->
the job stays Completing. It reads the request management system through its own logic on the shared
database (the `rms` tables are never queried here), so it runs in any server process.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select

from junodcs.wms import db
from junodcs.wms.logic import WMS, now
from junodcs.wms.models import JobStatus, Minor

S = JobStatus
ENDED_OK = frozenset({"Done"})
ENDED_BAD = frozenset({"Failed", "Canceled"})


class RequestTracker(Protocol):
    def requests_of(self, job_id: int) -> Sequence[dict[str, Any]]:
        """The RMS requests carrying `job_id` (each with `request_id`, `status`, `error`)."""


class RMSTracker:
    """The RMS through its logic on the same database."""

    def __init__(self, engine: Any) -> None:
        from junodcs.rms.logic import RequestService

        self.service = RequestService(engine)

    def requests_of(self, job_id: int) -> Sequence[dict[str, Any]]:
        return self.service.list(job_id=job_id, limit=100)


def settle_completing(wms: WMS, tracker: RequestTracker, *, at: datetime | None = None,
                      source: str = "RequestTracking") -> dict[str, list[int]]:
    """One pass: Completing jobs whose requests all ended become Done or Failed. Returns the job IDs moved."""
    j = db.jobs.c
    with wms.engine.connect() as conn:
        waiting = list(conn.execute(select(j.id).where(j.status == S.COMPLETING, j.end_exec_time.is_not(None))
                                    .order_by(j.id).limit(10_000)).scalars())
    outcome: dict[str, list[int]] = {"done": [], "failed": []}
    for job_id in waiting:
        requests = list(tracker.requests_of(job_id))
        if not requests or any(r["status"] not in ENDED_OK | ENDED_BAD for r in requests):
            continue
        bad = [r for r in requests if r["status"] in ENDED_BAD]
        if bad:
            first = min(bad, key=lambda r: r["request_id"])
            target, minor = S.FAILED, (f"Failover request {first['request_id']} {first['status'].lower()}: "
                                       f"{first.get('error') or 'no detail'}")
        else:
            ids = ", ".join(str(r["request_id"]) for r in sorted(requests, key=lambda r: r["request_id"]))
            target, minor = S.DONE, f"{Minor.REQUESTS_DONE} ({ids})"
        if _move(wms, job_id, target, minor, source, at or now()):
            outcome["done" if target == S.DONE else "failed"].append(job_id)
    return outcome


def _move(wms: WMS, job_id: int, target: JobStatus, minor: str, source: str, stamp: datetime) -> bool:
    """Guarded: a job that left Completing meanwhile (killed, stalled) is left alone."""

    def work(conn: Any) -> bool:
        row = wms._rows(conn, [job_id], lock=True).get(job_id)
        if row is None or row.status != S.COMPLETING:
            return False
        wms._transition(conn, [row], target, minor=minor, source=source, stamp=stamp)
        return True

    return bool(wms._transaction(work))
