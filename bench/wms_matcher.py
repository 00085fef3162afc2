"""Matcher throughput with 100,000 waiting jobs in 50 task queues (10 users in 3 groups), SQLite and, when
`DCS_BENCH_POSTGRES_URL` (or `DCS_TEST_POSTGRES_URL`) names a server, PostgreSQL.

Value: matches per second of `Matcher.match` (fair shares, task-queue filtering, atomic pick, logging, pilot
records). Baseline, same database in the same run: the bare minimum a match needs, a prepared
`SELECT id ... LIMIT 1` + `UPDATE` + commit per job on the driver connection. Prints JSON lines.
"""

from __future__ import annotations

import json
import sys
import time

from benchdb import on_each_database  # bench/ is on sys.path when a script runs
from sqlalchemy import text

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
QUEUES = 50
MATCHES = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
GROUPS = ("juno_user", "juno_production", "juno_data")
CPU = (300, 1800, 3600, 21600, 43200)


def emit(name: str, value: float, baseline: str, baseline_value: float) -> None:
    print(json.dumps({"bench": name, "value": round(value, 1), "unit": "matches/s", "baseline": baseline,
                      "baseline_value": round(baseline_value, 1), "ratio": round(value / baseline_value, 3)}),
          flush=True)


def fill(engine) -> object:
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.wms.logic import WMS, Caller, WMSConfig
    from junodcs.wms.optimizers import Optimizer

    wms = WMS(engine, load_grid_config(example_grid_path()),
              config=WMSConfig(shares={"juno_user": 1000, "juno_production": 3000, "juno_data": 500}))
    per_queue = JOBS // QUEUES
    for q in range(QUEUES):
        # 50 queues: 10 owners (in 3 groups) x 5 CPU-time classes
        caller = Caller(f"user{q % 10}", GROUPS[q % 10 % 3], group_manager=True)
        wms.submit([{"Executable": "x", "Arguments": "%s", "CPUTime": CPU[q // 10], "Priority": q % 7,
                     "Parameters": per_queue}], caller)
    optimizer = Optimizer(wms)
    while optimizer.run_once(limit=20_000):
        pass
    queues = wms.task_queues()
    assert len(queues) == QUEUES and sum(q["waiting"] for q in queues) == JOBS, len(queues)
    return wms


def ours(wms) -> float:
    from junodcs.wms.matcher import Matcher
    from junodcs.wms.models import MatchRequest

    matcher = Matcher(wms)
    requests = [MatchRequest(pilot_id=f"pilot-{i // 5}", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn", platform="el9",
                             tags=["juno"], memory_mb=3000, time_left=200_000) for i in range(MATCHES)]
    matcher.match(requests[0])
    t0 = time.perf_counter()
    for request in requests[1:]:
        assert matcher.match(request)["job"] is not None
    return (MATCHES - 1) / (time.perf_counter() - t0)


def baseline(engine) -> float:
    with engine.connect() as conn:
        queues = [r[0] for r in conn.execute(text("select id from wms_task_queues order by id"))]
    raw = engine.raw_connection()
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    cur = raw.cursor()
    t0 = time.perf_counter()
    for i in range(MATCHES):
        cur.execute(f"select id from wms_jobs where tq_id = {mark} order by user_priority desc, id limit 1",
                    (queues[i % len(queues)],))
        job_id = cur.fetchone()[0]
        cur.execute(f"update wms_jobs set status = 'Matched', tq_id = null, pilot_id = {mark} where id = {mark}",
                    (f"b{i}", job_id))
        raw.commit()
    elapsed = time.perf_counter() - t0
    raw.close()
    return MATCHES / elapsed


def run(label: str, url: str) -> None:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    engine = create_engine(url)
    upgrade(engine)
    wms = fill(engine)
    value = ours(wms)
    emit(f"wms_matcher_{label}_{JOBS}_jobs_{QUEUES}_queues", value, "select_update_commit_per_match", baseline(engine))
    engine.dispose()


def main() -> None:
    on_each_database(run, "matcher")


if __name__ == "__main__":
    main()
