"""Failed output uploads end in Completing and are finished by the RMS: a real central server (auth, catalog,
wms, rms, transfer) with a transfer worker, the RMS executor and real SEs on loopback, real pilots.

The requested output SE is down while the jobs run: the wrapper puts the output on the site's disk SE,
submits a PutAndRegister (+ RemoveReplica) request carrying the job ID, and the job ends Completing with a
clear minor status. When the SE comes back, the request finishes and the job becomes Done with the file at
its requested SE only; a job whose request is given up (canceled, or failed) becomes Failed saying so."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from wms_pilotutil import pilot_grid, run_directors

SYSTEMS = ("auth", "config", "catalog", "wms", "rms", "transfer")


def test_failover_output_keeps_the_job_completing_until_its_request_ends(tmp_path: Path) -> None:
    from authutil import full_token
    from junodcs.dm.manager import DataManager
    from junodcs.rms.agents import executor_from_app_state
    from junodcs.rms.client import RequestClient
    from junodcs.rms.logic import Settings
    from junodcs.storage.server.run import BackgroundSE
    from junodcs.wms.completing import RMSTracker, settle_completing
    from transferutil import worker

    with pilot_grid(tmp_path, ses=("IHEP-EOS", "MSU-EOS"), dead_ses=("CNAF-STORM",), systems=SYSTEMS) as grid:
        msu = grid.ses["MSU-EOS"]
        msu.stop()  # down while the jobs run
        alice = grid.user_client("alice")
        comes_back, never = alice.submit([
            {"Executable": "/bin/sh", "Arguments": "-c 'echo kept > result.txt'", "Site": "GRID.IHEP.cn",
             "OutputData": ["result.txt"], "OutputSE": ["MSU-EOS"], "OutputPath": "out/back", "CPUTime": 300},
            {"Executable": "/bin/sh", "Arguments": "-c 'echo lost > result.txt'", "Site": "GRID.IHEP.cn",
             "OutputData": ["result.txt"], "OutputSE": ["CNAF-STORM"], "OutputPath": "out/never",
             "CPUTime": 300}])
        director = grid.director("ce.ihep.ac.cn")
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            ended = grid.wait_for([comes_back, never], {"Done", "Failed", "Completing"}, timeout=90)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            director.drain(20)
            director.backend.close()
        for job_id in (comes_back, never):
            assert ended[job_id]["status"] == "Completing", ended
            minor = ended[job_id]["minor_status"]
            assert minor.startswith("Pending Requests: 1 output file(s) on failover SE IHEP-EOS (request "), minor
        # released by the wrapper: the stalled-job pass leaves Completing jobs alone (their pilot has ended)
        grid.wms.check_stalled()
        time.sleep(grid.wms.config.heartbeat_period * (grid.wms.config.stalled_periods + 1))
        assert grid.wms.check_stalled()["stalled"] == []
        owner = RequestClient(grid.url, token=full_token(grid.app, "alice"))
        (request,) = owner.list(job_id=comes_back)
        shown = owner.show(request["request_id"])
        assert [op["type"] for op in shown["operations"]] == ["PutAndRegister", "RemoveReplica"]
        assert shown["operations"][0]["source_se"] == "IHEP-EOS"
        assert shown["operations"][0]["target_se"] == ["MSU-EOS"]
        tracker = RMSTracker(grid.wms.engine)
        assert settle_completing(grid.wms, tracker) == {"done": [], "failed": []}, "requests still waiting"

        # CNAF-STORM never comes back: the operator gives up on that request (the RMS's own retries against a
        # dead SE take minutes; a request that fails after its attempts ends the job the same way)
        (hopeless,) = owner.list(job_id=never)
        owner.cancel(hopeless["request_id"])
        grid.ses["MSU-EOS"] = BackgroundSE(msu.config, port=msu.port)  # the SE is back
        grid.app.state.rms_settings = Settings(lease=2.0, max_attempts=4, retry_delay=0.3, max_retry_delay=1.0,
                                               poll=0.2, transfer_retry=1)
        executor = executor_from_app_state(grid.app.state, poll=0.1, name="test-executor")
        run = threading.Event()
        thread = threading.Thread(target=executor.loop, args=(run,), daemon=True)
        with worker(grid):
            thread.start()
            try:
                deadline = time.monotonic() + 120
                moved: dict[str, list[int]] = {"done": [], "failed": []}
                while time.monotonic() < deadline and len(moved["done"]) + len(moved["failed"]) < 2:
                    step = settle_completing(grid.wms, tracker)
                    moved = {k: moved[k] + step[k] for k in moved}
                    time.sleep(0.3)
            finally:
                run.set()
                executor.wake.set()
                thread.join(15)
        assert moved == {"done": [comes_back], "failed": [never]}, moved
        final = alice.status([comes_back, never])
        assert final[str(comes_back)]["status"] == "Done"
        assert final[str(comes_back)]["minor_status"].startswith("Execution Complete: pending requests done")
        assert final[str(never)]["status"] == "Failed"
        assert final[str(never)]["minor_status"].startswith(f"Failover request {hopeless['request_id']} canceled")
        history = [(h["status"], h["source"]) for h in alice.logging_info(comes_back)]
        assert ("Completing", "JobWrapper") in history and history[-1] == ("Done", "RequestTracking")
        lfn = "/juno/user/a/alice/out/back/result.txt"
        with DataManager(grid.url, token=full_token(grid.app, "alice")) as dm:
            replicas = {r["se"] for r in dm.catalog.replicas([lfn])[lfn]}
            assert replicas == {"MSU-EOS"}, "moved to the requested SE, failover copy removed"
            got = dm.get(lfn, tmp_path / "result.txt")
            assert got.ok and (tmp_path / "result.txt").read_bytes() == b"kept\n"
