"""Pilots on a real Slurm cluster (slurm-wlm + munge, `.ci/setup-slurm.sh`): `sbatch --parsable --wrap`, states
from scontrol, pilots that match and run jobs, their logs stored; a cancelled pilot is Aborted."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from wms_pilotutil import pilot_grid, run_directors

pytestmark = [pytest.mark.interop]


def _cluster() -> None:
    if not shutil.which("sbatch"):
        pytest.skip("Slurm is not installed (.ci/setup-slurm.sh installs and starts it)")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    if state.returncode != 0 or not state.stdout.strip().startswith(("idle", "mixed", "alloc")):
        pytest.skip(f"no usable Slurm node ({(state.stdout + state.stderr).strip()}); run .ci/setup-slurm.sh")


def test_pilots_on_slurm_run_jobs(tmp_path: Path) -> None:
    _cluster()
    from junodcs.wms.ce.slurm import SlurmCE
    from junodcs.wms.director import DirectorOptions, SiteDirector

    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        ids = alice.submit([{"Executable": "/bin/sh", "Site": "GRID.MSU.ru", "CPUTime": 300, "Parameters": 3,
                             "Arguments": "-c 'echo slurm job $SLURM_JOB_ID runs $DCS_JOB_ID'"}])
        backend = SlurmCE("ce.msu.ru", slots=2, memory_mb=500, workdir=tmp_path / "ce")
        options = DirectorOptions(server_url=grid.url, site="GRID.MSU.ru", ce="ce.msu.ru", memory_mb=2500,
                                  platform="el9", lifetime=3600, interval=0.5,
                                  pilot_args=["--poll", "0.1", "--grace", "1"])
        director = SiteDirector(grid.pilot_wms(), backend, options, tokens=grid.tokens())
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            done = grid.wait_for(ids, {"Done", "Failed"}, timeout=120)
            stop.set()
            for t in threads:
                t.join(10)
            director.drain(60)
        finally:
            stop.set()
            backend.cancel(list(director.tracked))
        assert {v["status"] for v in done.values()} == {"Done"}, done
        assert 1 <= director.submitted <= 2
        pilots = alice.pilots(ce="ce.msu.ru")
        assert {p["status"] for p in pilots} == {"Done"}, [(p["status"], p["reason"]) for p in pilots]
        assert all(p["reference"].startswith("slurm://") for p in pilots)
        assert {j["job_id"] for p in pilots for j in alice.pilot(p["pilot_id"])["jobs"]} == set(ids)
        import io
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(alice.output_sandbox(ids[0])), mode="r:*") as tar:
            out = tar.extractfile("std.out").read().decode()  # type: ignore[union-attr]
        assert out.startswith("slurm job ") and out.endswith(f"runs {ids[0]}\n"), out


def test_cancelled_slurm_pilot_is_aborted(tmp_path: Path) -> None:
    _cluster()
    from junodcs.wms.ce.base import PilotLaunch
    from junodcs.wms.ce.slurm import SlurmCE

    backend = SlurmCE("ce.msu.ru", slots=1, memory_mb=100, workdir=tmp_path / "ce")
    token = tmp_path / "token"
    token.write_text("not-a-token")
    # a pilot whose server does not answer keeps retrying for a minute: it is running when cancelled
    (reference,) = backend.submit([PilotLaunch("p-waiting", [
        "--server", "http://127.0.0.1:9", "--site", "GRID.MSU.ru", "--ce", "ce.msu.ru", "--token-file", str(token),
        "--retry-seconds", "60", "--workdir", str(tmp_path / "w")])])
    time.sleep(1.0)
    backend.cancel([reference])
    deadline = time.monotonic() + 20
    state = backend.status([reference])[reference]
    while state.status not in ("Aborted", "Done", "Failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        state = backend.status([reference])[reference]
    assert state.status == "Aborted" and "CANCELLED" in state.reason, state
