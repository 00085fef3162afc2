"""Pilots end to end on a real central server: site directors with the local CE start real pilot processes,
which match jobs, run them under the watchdog and report; pilot records, pilot-to-job mapping, pilot output."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from wms_pilotutil import pilot_grid, run_directors


def _files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_director_pilots_run_jobs_with_sandboxes_records_and_logs(tmp_path: Path) -> None:
    from junodcs.wms.sandbox import pack

    script = tmp_path / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello from $DCS_JOB_ID at $DCS_SITE arg=$1"\necho result > out.txt\n')
    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        director = grid.director("ce.ihep.ac.cn")
        assert director.cycle()["submitted"] == [], "no waiting job: no pilot"
        ref = alice.upload_sandbox(pack([script]))["ref"]
        ids = alice.submit([{"Executable": "hello.sh", "Arguments": "%s", "Parameters": 3, "InputSandbox": [ref],
                             "OutputSandbox": ["out.txt"], "Site": "GRID.IHEP.cn", "CPUTime": 300}])
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            done = grid.wait_for(ids, {"Done", "Failed"}, timeout=60)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            director.drain(20)
            director.backend.close()
        assert {v["status"] for v in done.values()} == {"Done"}, done
        assert all(v["minor_status"] == "Execution Complete" for v in done.values())
        files = _files(alice.output_sandbox(ids[1]))
        assert files["std.out"].decode() == f"hello from {ids[1]} at GRID.IHEP.cn arg=1\n"
        assert files["out.txt"] == b"result\n"
        params = alice.parameters(ids[1])["parameters"]
        assert params["ExitCode"] == "0" and params["Site"] == "GRID.IHEP.cn" and params["CE"] == "ce.ihep.ac.cn"
        assert alice.peek(ids[1]) == f"hello from {ids[1]} at GRID.IHEP.cn arg=1\n"
        # pilots: no more than the slots, never more than the jobs, all ended with their logs stored
        pilots = alice.pilots(ce="ce.ihep.ac.cn")
        assert 1 <= len(pilots) <= 3 and director.submitted == len(pilots)
        assert {p["status"] for p in pilots} == {"Done"}, [(p["status"], p["reason"]) for p in pilots]
        assert all(p["reference"] and p["reference"].startswith("local://") for p in pilots)
        ran = {j["job_id"] for p in pilots for j in alice.pilot(p["pilot_id"])["jobs"]}
        assert ran == set(ids)
        mapping = alice.job_pilots(ids[0])
        assert len(mapping) == 1 and mapping[0]["attempt"] == 1
        log = alice.pilot_output(mapping[0]["pilot_id"])["output"]
        assert f"job {ids[0]} attempt 1 matched" in log and "Done" in log


def test_pilot_stops_payload_over_memory_then_job_reschedules_to_highmem_site(tmp_path: Path) -> None:
    """IHEP slots give 250 MB here, JINR 1200 MB: a 400 MB payload is stopped at IHEP with a clear minor status
    and comes back by itself with a larger MaxRAM that only JINR offers, where it finishes."""
    payload = "import time; b = b'x' * (400 << 20); time.sleep(1.0); print('allocated', len(b) >> 20)"
    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        (job_id,) = alice.submit([{"Executable": "python3", "Arguments": f'-c "{payload}"', "CPUTime": 300,
                                   "BannedSites": ["GRID.CNAF.it", "GRID.IN2P3.fr", "GRID.MSU.ru",
                                                   "CLOUD.IHEPCLOUD.cn", "CLUSTER.SDU.cn"]}])
        ihep, jinr = grid.director("ce.ihep.ac.cn"), grid.director("ce.jinr.ru")
        stop = threading.Event()
        # only IHEP first: the job must fail there
        threads = run_directors([ihep], stop)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                history = alice.logging_info(job_id)
                if any(h["status"] == "Failed" for h in history):
                    break
                time.sleep(0.2)
            threads += run_directors([jinr], stop)
            done = grid.wait_for([job_id], {"Done", "Failed"}, timeout=60)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            for d in (ihep, jinr):
                d.drain(20)
                d.backend.close()
        history = alice.logging_info(job_id)
        failed = [h for h in history if h["status"] == "Failed"]
        assert failed and failed[0]["minor_status"].startswith("Memory limit exceeded (")
        assert "MB > 250 MB)" in failed[0]["minor_status"]
        assert any("rescheduled with MaxRAM" in h["minor_status"] for h in history)
        job = alice.job(job_id)
        assert done[job_id]["status"] == "Done" and job["site"] == "GRID.JINR.ru" and job["attempt"] == 2
        assert job["max_ram"] > 250
        first = alice.parameters(job_id, attempt=1)["earlier_attempts"]["1"]
        assert first["Site"] == "GRID.IHEP.cn" and float(first["PeakRSSMB"]) > 250


def test_wall_clock_limit_and_kill_command(tmp_path: Path) -> None:
    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        slow, killed = alice.submit([
            {"Executable": "sleep", "Arguments": "60", "Site": "GRID.IHEP.cn", "CPUTime": 300, "JobName": "slow"},
            {"Executable": "/bin/sh", "Arguments": "-c 'echo started; sleep 60'", "Site": "GRID.CNAF.it",
             "CPUTime": 300}])
        ihep = grid.director("ce.ihep.ac.cn", pilot_args=["--max-wall", "2"])
        cnaf = grid.director("ce.cnaf.infn.it")
        stop = threading.Event()
        threads = run_directors([ihep, cnaf], stop)
        try:
            grid.wait_for([killed], {"Running"}, timeout=30)
            time.sleep(1.5)
            alice.kill([killed])
            done = grid.wait_for([slow], {"Failed", "Done"}, timeout=30)
            # the pilot of the killed job stops its payload (SIGTERM, then SIGKILL) and takes the next job: none
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(p["status"] != "Done" for p in alice.pilots(ce="ce.cnaf.infn.it")):
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            for d in (ihep, cnaf):
                d.drain(20)
                d.backend.close()
        assert done[slow]["minor_status"].startswith("Wall clock limit exceeded (")
        assert alice.job(killed)["status"] == "Killed"
        (cnaf_pilot,) = alice.pilots(ce="ce.cnaf.infn.it")
        assert cnaf_pilot["status"] == "Done"
        assert f"job {killed} -> Killed (Killed: " in alice.pilot_output(cnaf_pilot["pilot_id"])["output"]
        assert "started" in alice.peek(killed)


@pytest.mark.parametrize("mode", ["token-file", "client"])
def test_dcs_pilot_command_authenticates_and_stops_when_nothing_fits(tmp_path: Path, mode: str) -> None:
    import subprocess
    import sys

    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        (job_id,) = alice.submit([{"Executable": "echo", "Arguments": "hi", "Site": "GRID.MSU.ru", "CPUTime": 300}])
        grid.wait_for([job_id], {"Waiting"}, timeout=20)
        if mode == "token-file":
            token = tmp_path / "token"
            token.write_text(grid.pilot_token())
            creds = ["--token-file", str(token)]
        else:
            creds = ["--client-id", grid.pilot_client, "--client-secret-file", str(grid.pilot_secret)]
        run = subprocess.run([sys.executable, "-m", "junodcs", "pilot", "--server", grid.url, "--site", "GRID.MSU.ru",
                              "--ce", "ce.msu.ru", "--memory-mb", "2500", "--platform", "el9", "--pilot-id", "p-hand",
                              "--workdir", str(tmp_path / "w"), *creds], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "no waiting job fits: done after 1 jobs" in run.stdout
        assert alice.job(job_id)["status"] == "Done"
        pilot = alice.pilot("p-hand")
        assert pilot["status"] == "Done" and [j["job_id"] for j in pilot["jobs"]] == [job_id]
        # a user's token is no pilot token
        bad = subprocess.run([sys.executable, "-m", "junodcs.wms.pilot", "--server", grid.url, "--site", "GRID.MSU.ru",
                              "--ce", "ce.msu.ru", "--workdir", str(tmp_path / "w2"), "--token-file",
                              str(_write(tmp_path / "user-token", alice._token))], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 1 and "may not match jobs as a pilot" in bad.stdout + bad.stderr


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
