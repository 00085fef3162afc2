"""Matcher atomicity: pilots in parallel threads (each with its own matcher, like separate server processes)
never get the same job, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import Engine, func, select

from junodcs.core.gridconfig import GridConfig
from junodcs.wms import db
from junodcs.wms.logic import WMS, Caller
from junodcs.wms.matcher import Matcher
from junodcs.wms.models import MatchRequest
from junodcs.wms.optimizers import Optimizer

JOBS = 120
THREADS = 6


def test_no_job_goes_to_two_pilots(engine: Engine, grid: GridConfig) -> None:
    wms = WMS(engine, grid)
    ids = wms.submit([{"Executable": "a", "Parameters": JOBS // 2},
                      {"Executable": "b", "Parameters": JOBS // 2, "Priority": 5}], Caller("alice", "juno_user"))
    Optimizer(wms).run_once()
    taken: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def pilot(n: int) -> None:
        matcher = Matcher(wms, cache_seconds=0.05)
        start.wait()
        try:
            for k in range(JOBS):
                answer = matcher.match(MatchRequest(pilot_id=f"p{n}-{k}", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn",
                                                    platform="el9", memory_mb=3000, time_left=100000))
                if answer["job"] is None:
                    return
                with lock:
                    taken.append(answer["job"]["job_id"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pilot, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]
    duplicates = [job for job, count in Counter(taken).items() if count > 1]
    assert not duplicates
    assert sorted(taken) == ids
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.pilot_jobs)).scalar() == JOBS
        statuses = dict(conn.execute(select(db.jobs.c.status, func.count()).group_by(db.jobs.c.status)).all())
        matched_logs = conn.execute(select(func.count()).select_from(db.logging)
                                    .where(db.logging.c.status == "Matched")).scalar()
        pilots = conn.execute(select(db.pilots.c.id, db.pilots.c.jobs_matched, db.pilots.c.current_job,
                                     db.pilots.c.status)).all()
        mapping = dict(conn.execute(select(db.pilot_jobs.c.job_id, db.pilot_jobs.c.pilot_id)).all())
        owners = dict(conn.execute(select(db.jobs.c.id, db.jobs.c.pilot_id)).all())
    assert statuses == {"Matched": JOBS}
    assert matched_logs == JOBS, "every match is in the job's logging history"
    assert len(pilots) == JOBS and {(p.jobs_matched, p.status) for p in pilots} == {(1, "Running")}
    assert {p.current_job: p.id for p in pilots} == mapping == owners, "pilot records, mapping and jobs agree"


def test_a_pilot_record_counts_its_matches_and_keeps_its_director_fields(engine: Engine, grid: GridConfig) -> None:
    from datetime import datetime

    wms = WMS(engine, grid)
    wms.submit([{"Executable": "a", "Parameters": 3}], Caller("alice", "juno_user"))
    Optimizer(wms).run_once()
    with engine.begin() as conn:
        conn.execute(db.pilots.insert().values(id="p1", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn", status="Submitted",
                                               first_seen=datetime(2026, 1, 1), last_seen=datetime(2026, 1, 1),
                                               jobs_matched=0, reference="local://42"))
    matcher = Matcher(wms, cache_seconds=0)
    request = MatchRequest(pilot_id="p1", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn", platform="el9", memory_mb=3000,
                           time_left=100000)
    got = [matcher.match(request)["job"]["job_id"] for _ in range(2)]
    with engine.connect() as conn:
        row = conn.execute(select(db.pilots).where(db.pilots.c.id == "p1")).one()
    assert (row.jobs_matched, row.current_job, row.status, row.reference) == (2, got[1], "Running", "local://42")
    assert row.first_seen == datetime(2026, 1, 1) and row.last_seen > row.first_seen
