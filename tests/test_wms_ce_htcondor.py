"""Pilots on a real HTCondor pool (Debian trixie's condor in a chroot, `.ci/setup-htcondor.sh`): the site
director submits pilot jobs through the htcondor2 bindings, the pilots run inside the pool with its Python
3.13, match and run the jobs, and end Done; their output is stored and shown by `dcs pilot logs`."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from wms_pilotutil import pilot_grid, run_directors

pytestmark = [pytest.mark.interop]


def _pool() -> None:
    try:
        from junodcs.wms.ce.htcondor import htcondor_module, pool_settings

        h = htcondor_module()
        h.Collector("127.0.0.1:9618").locate(h.DaemonType.Schedd)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no HTCondor pool on 127.0.0.1:9618 ({type(exc).__name__}: {exc}); .ci/setup-htcondor.sh starts one")
    if not Path(pool_settings().get("HTCONDOR_SHARED", "/srv/junodcs-htcondor")).is_dir():
        pytest.skip("HTCondor shared area missing; .ci/setup-htcondor.sh creates it")


def test_pilots_on_htcondor_run_jobs_inside_the_pool(tmp_path: Path) -> None:
    _pool()
    from junodcs.wms.ce.htcondor import HTCondorCE
    from junodcs.wms.director import DirectorOptions, SiteDirector

    with pilot_grid(tmp_path) as grid:
        alice = grid.user_client("alice")
        ids = alice.submit([{"Executable": "/bin/sh", "Site": "GRID.CNAF.it", "CPUTime": 300, "Parameters": 3,
                             "Arguments": "-c 'echo debian $(cat /etc/debian_version) job $DCS_JOB_ID'"}])
        backend = HTCondorCE("ce.cnaf.infn.it", slots=2, memory_mb=250, workdir=tmp_path / "ce")
        options = DirectorOptions(server_url=grid.url, site="GRID.CNAF.it", ce="ce.cnaf.infn.it", memory_mb=250,
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
        assert director.submitted <= 2, "never more pilots than slots or waiting jobs"
        pilots = alice.pilots(ce="ce.cnaf.infn.it")
        assert {p["status"] for p in pilots} == {"Done"}, [(p["status"], p["reason"]) for p in pilots]
        assert all(p["reference"].startswith("htcondor://") for p in pilots)
        ran = {j["job_id"] for p in pilots for j in alice.pilot(p["pilot_id"])["jobs"]}
        assert ran == set(ids)
        log = alice.pilot_output(pilots[0]["pilot_id"])["output"]
        assert "Python 3.13" in log, log
        import io
        import tarfile

        data = alice.output_sandbox(ids[0])
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            out = tar.extractfile("std.out").read().decode()  # type: ignore[union-attr]
        assert out.startswith("debian 13") and out.endswith(f"job {ids[0]}\n"), out
