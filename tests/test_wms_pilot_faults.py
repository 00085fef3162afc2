"""Faults: a pilot killed with SIGKILL mid-job, and the central server stopped and restarted mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from wms_pilotutil import pilot_grid, run_directors


def _stop(threads: list[threading.Thread], stop: threading.Event, directors: list) -> None:
    stop.set()
    for t in threads:
        t.join(10)
    for d in directors:
        d.drain(20)
        d.backend.close()


def test_kill_9_pilot_mid_job_stalls_reschedules_and_finishes(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        (job_id,) = alice.submit([{"Executable": "/bin/sh", "Site": "GRID.IHEP.cn", "CPUTime": 300,
                                   "Arguments": f"-c 'echo $DCS_JOB_ATTEMPT >> {runs}; sleep 3; echo finished'"}])
        director = grid.director("ce.ihep.ac.cn", slots=1)
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            grid.wait_for([job_id], {"Running"}, timeout=30)
            time.sleep(0.5)
            ((reference, pilot_id),) = director.tracked.items()
            os.kill(director.backend.pid(reference), signal.SIGKILL)
            done = grid.wait_for([job_id], {"Done", "Failed"}, timeout=60)
        finally:
            _stop(threads, stop, [director])
        assert done[job_id]["status"] == "Done", done
        history = [(h["status"], h["minor_status"]) for h in alice.logging_info(job_id)]
        statuses = [s for s, _ in history]
        assert statuses.index("Stalled") < statuses.index("Failed") < statuses.index("Rescheduled") < statuses.index(
            "Done"), history
        assert ("Failed", "Job stalled: pilot not running") in history
        killed = alice.pilot(pilot_id)
        assert killed["status"] == "Aborted" and "signal 9" in killed["reason"]
        assert alice.job(job_id)["attempt"] == 2
        assert [p["attempt"] for p in alice.job_pilots(job_id)] == [1, 2]
        # the killed pilot's payload did not survive it (the CE cleans up the whole session)
        assert runs.read_text().split() == ["1", "2"]


def test_server_restart_mid_run_loses_no_job_and_runs_none_twice(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        ids = alice.submit([{"Executable": "/bin/sh", "Site": "GRID.IHEP.cn", "CPUTime": 300, "Parameters": 6,
                             "Arguments": f"-c 'echo $DCS_JOB_ID.$DCS_JOB_ATTEMPT >> {runs}; sleep 0.7'"}])
        director = grid.director("ce.ihep.ac.cn", slots=2)
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(v["status"] == "Done" for v in alice.status(ids).values()) >= 2:
                    break
                time.sleep(0.1)
            grid.stop_server()
            time.sleep(3)  # pilots and directors see connection refused meanwhile
            grid.start_server()
            done = grid.wait_for(ids, {"Done", "Failed"}, timeout=90, client=grid.user_client("alice"))
        finally:
            _stop(threads, stop, [director])
        assert {v["status"] for v in done.values()} == {"Done"}, done
        counts = Counter(runs.read_text().split())
        assert sorted(counts) == sorted(f"{i}.1" for i in ids), counts
        assert set(counts.values()) == {1}, counts
