"""`dcs grid up` starts a site director (local CE) per site with a pilot robot client made at start; a job
submitted with `dcs job submit` runs through a pilot, and `dcs pilot ls|show|logs` show it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


def dcs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "junodcs", *args], capture_output=True, text=True, timeout=timeout,
                            env=os.environ)
    if check and result.returncode != 0:
        raise AssertionError(f"dcs {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def ihep_grid(tmp_path: Path) -> Path:
    from junodcs.core.gridconfig import example_grid_path

    data = yaml.safe_load(example_grid_path().read_text())
    data["sites"] = [site for site in data["sites"] if site["name"] == "GRID.IHEP.cn"]
    data["sites"][0]["storage_elements"] = [{"name": "IHEP-EOS", "kind": "disk"}]
    data["links"] = []
    for group in data["registry"]["groups"].values():
        group["pool_accounts"] = {k: v for k, v in group.get("pool_accounts", {}).items() if k == "GRID.IHEP.cn"}
    for user in data["registry"]["users"].values():
        user["local_accounts"] = {k: v for k, v in user.get("local_accounts", {}).items() if k == "GRID.IHEP.cn"}
    path = tmp_path / "ihep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _login_alice(home: Path) -> None:
    from junodcs.auth.logic import TokenService
    from junodcs.auth.registry import Registry
    from junodcs.core.gridconfig import load_grid_config
    from junodcs.db.engine import create_engine

    engine = create_engine(f"sqlite:///{home / 'junodcs.db'}")
    grid = load_grid_config(home / "grid" / "grid.yaml")
    import types

    clock = types.SimpleNamespace(clock=time.time)
    row, secret = TokenService(engine, clock, None, Registry(grid)).create_client(  # type: ignore[arg-type]
        owner="alice", group="juno_user", scopes=None)
    engine.dispose()
    (home / "alice.secret").write_text(secret)
    dcs("login", "--client-id", row.client_id, "--client-secret-file", str(home / "alice.secret"))


def test_grid_up_runs_site_directors_and_pilots(dcs_home: Path, ihep_grid: Path, tmp_path: Path) -> None:
    dcs("grid", "up", "--detach", str(ihep_grid))
    try:
        rows = json.loads(dcs("grid", "status", "--json").stdout)
        directors = [r for r in rows if r["kind"] == "director"]
        assert [d["site"] for d in directors] == ["GRID.IHEP.cn"] and directors[0]["state"] == "running"
        secret = dcs_home / "grid" / "pilot-client.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        _login_alice(dcs_home)
        jdl = tmp_path / "hello.jdl"
        jdl.write_text('[ Executable = "/bin/echo"; Arguments = "hello grid"; CPUTime = 600; ]\n')
        out = dcs("job", "submit", str(jdl)).stdout
        job_id = out.split("=")[-1].strip()
        deadline = time.monotonic() + 90
        status = {}
        while time.monotonic() < deadline:
            status = json.loads(dcs("job", "status", job_id, "--json").stdout)
            if status[job_id]["status"] in ("Done", "Failed"):
                break
            time.sleep(1)
        assert status[job_id]["status"] == "Done", status
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pilots = json.loads(dcs("pilot", "ls", "--json").stdout)
            if pilots and all(p["status"] == "Done" for p in pilots):
                break
            time.sleep(1)
        assert len(pilots) == 1 and pilots[0]["status"] == "Done" and pilots[0]["ce"] == "ce.ihep.ac.cn", pilots
        shown = json.loads(dcs("pilot", "show", pilots[0]["pilot_id"], "--json").stdout)
        assert [j["job_id"] for j in shown["jobs"]] == [int(job_id)]
        # the pilot reports Done itself as it exits; its output is stored by the director's next cycle
        deadline = time.monotonic() + 30
        while (logs := dcs("pilot", "logs", pilots[0]["pilot_id"], check=False)).returncode != 0:
            assert "no-pilot-output" in logs.stderr + logs.stdout and time.monotonic() < deadline, logs
            time.sleep(1)
        assert f"job {job_id} -> Done" in logs.stdout
        (ce,) = json.loads(dcs("ce", "ls", "--json").stdout)
        assert ce["ce"] == "ce.ihep.ac.cn" and ce["slots"] == 4 and ce["waiting_jobs"] == 0
        assert ce["pilots"]["Done"] == 1
        listing = dcs("pilot", "ls").stdout
        assert "1 pilots" in listing and "Done" in listing
    finally:
        dcs("grid", "down", check=False)
    rows = json.loads(dcs("grid", "status", "--json", check=False).stdout or "[]")
    assert not rows
