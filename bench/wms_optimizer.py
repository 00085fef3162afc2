"""Optimizer chain throughput: 10,000 newly submitted jobs (one parametric bulk) from Received to Waiting in a
task queue, on SQLite and, when `DCS_BENCH_POSTGRES_URL` (or `DCS_TEST_POSTGRES_URL`) names a server, PostgreSQL.

Value: seconds for `Optimizer.run_once` passes until nothing is left (claim with leases, description parsing,
candidate sites, task queue, status moves Received -> Checking -> Waiting with both steps logged). Baseline,
same database in the same run: the writes any implementation needs for those jobs, done raw on the driver
connection: one `UPDATE ... WHERE id IN (...)` per 1,000 jobs and an executemany of two logging rows per job,
one commit. Median of `ROUNDS` rounds (a fresh bulk each). Prints JSON lines.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from benchdb import on_each_database  # bench/ is on sys.path when a script runs
from sqlalchemy import text

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def emit(name: str, value: float, baseline: str, baseline_value: float) -> None:
    print(json.dumps({"bench": name, "value": round(value, 3), "unit": "s", "baseline": baseline,
                      "baseline_value": round(baseline_value, 3), "ratio": round(value / baseline_value, 2)}),
          flush=True)


def submit(wms) -> list[int]:
    from junodcs.wms.logic import Caller

    return wms.submit([{"Executable": "x", "Arguments": "%s", "Parameters": JOBS, "CPUTime": 3600}],
                      Caller("alice", "juno_user"))


def ours(wms) -> float:
    from junodcs.wms.optimizers import Optimizer

    submit(wms)
    optimizer = Optimizer(wms)
    t0 = time.perf_counter()
    while optimizer.run_once(limit=JOBS):
        pass
    elapsed = time.perf_counter() - t0
    with wms.engine.connect() as conn:
        left = conn.execute(text("select count(*) from wms_jobs where status in ('Received', 'Checking')")).scalar()
    assert left == 0, f"{left} jobs not Waiting"
    return elapsed


def floor(wms) -> float:
    ids = submit(wms)
    raw = wms.engine.raw_connection()
    mark = "?" if wms.engine.dialect.paramstyle == "qmark" else "%s"
    cur = raw.cursor()
    t0 = time.perf_counter()
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        cur.execute(f"update wms_jobs set status = 'Waiting', minor_status = 'x', tq_id = 1 "
                    f"where id in ({', '.join([mark] * len(chunk))})", chunk)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    cur.executemany(f"insert into wms_logging (job_id, attempt, status, minor_status, application_status, time, "
                    f"source) values ({', '.join([mark] * 7)})",
                    [(i, 1, s, "x", "", stamp, "bench") for i in ids for s in ("Checking", "Waiting")])
    raw.commit()
    elapsed = time.perf_counter() - t0
    cur.close()
    raw.close()
    with wms.engine.begin() as conn:  # leave the table as `ours` expects it: no other job not Waiting
        conn.execute(text("update wms_jobs set tq_id = null, status = 'Deleted' where tq_id = 1"))
    return elapsed


def run(label: str, url: str) -> None:
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade
    from junodcs.wms.logic import WMS

    engine = create_engine(url)
    upgrade(engine)
    wms = WMS(engine, load_grid_config(example_grid_path()))
    values, floors = [], []
    for _ in range(ROUNDS):
        floors.append(floor(wms))
        values.append(ours(wms))
        with engine.begin() as conn:  # matched away between rounds: every round starts from the same state
            conn.execute(text("update wms_jobs set tq_id = null, status = 'Deleted' where status = 'Waiting'"))
    emit(f"wms_optimizer_{label}_{JOBS}_new_jobs", statistics.median(values), "raw_update_and_log_writes",
         statistics.median(floors))
    engine.dispose()


def main() -> None:
    on_each_database(run, "optimizer")


if __name__ == "__main__":
    main()
