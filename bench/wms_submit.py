"""Bulk submission of 10,000 jobs: through the REST API (one parametric JDL; 10,000 explicit JSON jobs) and
in-process, against a baseline of a plain executemany of the same job, JDL and logging rows.

Prints JSON lines (DESIGN.md §6). SQLite, one fresh database per measurement.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
PARAMETRIC = f'[ Executable = "sim.sh"; Arguments = "-seed %s -n 1000"; JobGroup = "bench"; Parameters = {N}; ]'


def emit(name: str, value: float, baseline: str, baseline_value: float, unit: str = "s") -> None:
    print(json.dumps({"bench": name, "value": round(value, 4), "unit": unit, "baseline": baseline,
                      "baseline_value": round(baseline_value, 4), "ratio": round(value / baseline_value, 3)}))


def engine_at(path: Path):
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine


def baseline(tmp: Path) -> float:
    """The rows a submission writes, prepared in advance, inserted with executemany in one transaction."""
    from junodcs.wms.logic import now

    engine = engine_at(tmp / "base.db")
    stamp = now()
    jobs, jdls, logs = [], [], []
    for i in range(1, N + 1):
        jobs.append((i, 1, "alice", "juno_user", "juno", "User", "bench", "", "Received", "Job accepted", "", 1,
                     86400, 1, 1, 0, stamp, stamp))
        jdls.append((i, json.dumps({"Executable": "sim.sh", "Arguments": f"-seed {i} -n 1000", "JobGroup": "bench",
                                    "Parameters": N, "ParameterNumber": i, "Parameter": i})))
        logs.append((i, 1, "Received", "Job accepted", "", stamp, "JobManager"))
    raw = engine.raw_connection()
    cur = raw.cursor()
    t0 = time.perf_counter()
    cur.executemany("insert into wms_jobs (id, bulk_id, owner, grp, vo, job_type, job_group, job_name, status, "
                    "minor_status, application_status, user_priority, cpu_time, cores, attempt, reschedule_counter, "
                    "submitted_at, updated_at) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", jobs)
    cur.executemany("insert into wms_jdls (job_id, jdl) values (?,?)", jdls)
    cur.executemany("insert into wms_logging (job_id, attempt, status, minor_status, application_status, time, "
                    "source) values (?,?,?,?,?,?,?)", logs)
    raw.commit()
    elapsed = time.perf_counter() - t0
    raw.close()
    return elapsed


def in_process(tmp: Path) -> float:
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.wms.logic import WMS, Caller

    wms = WMS(engine_at(tmp / "logic.db"), load_grid_config(example_grid_path()))
    t0 = time.perf_counter()
    ids = wms.submit([PARAMETRIC], Caller("alice", "juno_user"))
    elapsed = time.perf_counter() - t0
    assert len(ids) == N
    return elapsed


def rest(tmp: Path, body: dict) -> float:
    from fastapi.testclient import TestClient

    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.server.app import ServerOptions, create_app

    app = create_app(load_grid_config(example_grid_path()), engine_at(tmp / f"rest{time.monotonic_ns()}.db"),
                     ServerOptions(public_url="http://bench", systems=("auth", "wms")))
    registry = app.state.registry
    from junodcs.auth.scope_policy import policy_scopes

    token, _ = app.state.token_issuer.issue_access_token(
        username="alice", group="juno_user", scopes=policy_scopes("juno", "alice", registry.properties("juno_user")))
    with TestClient(app, base_url="http://bench") as client:
        headers = {"Authorization": f"Bearer {token}"}
        client.post("/api/v1/wms/jobs", json={"jdl": '[Executable = "warm-up"]'}, headers=headers)
        t0 = time.perf_counter()
        answer = client.post("/api/v1/wms/jobs", json=body, headers=headers)
        elapsed = time.perf_counter() - t0
        assert answer.status_code == 200 and answer.json()["count"] == N, answer.text[:300]
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = baseline(tmp)
        emit(f"wms_submit_rest_parametric_{N}", rest(tmp, {"jdl": PARAMETRIC}), "executemany_same_rows", base)
        explicit = [{"Executable": "sim.sh", "Arguments": f"-seed {i}", "JobGroup": "bench"} for i in range(N)]
        emit(f"wms_submit_rest_json_bulk_{N}", rest(tmp, {"jobs": explicit}), "executemany_same_rows", base)
        emit(f"wms_submit_in_process_parametric_{N}", in_process(tmp), "executemany_same_rows", base)


if __name__ == "__main__":
    main()
