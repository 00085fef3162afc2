"""The local grid: up (detached), status, refusal of a second grid, down, nothing left running."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from junodcs.grid.processes import free_port, pid_alive


def dcs(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "junodcs", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dcs {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def small_grid(tmp_path: Path) -> Path:
    """The JUNO example cut down to IHEP (central server, one disk and one tape SE): quick to start."""
    import yaml

    from junodcs.core.gridconfig import example_grid_path

    data = yaml.safe_load(example_grid_path().read_text())
    data["sites"] = [site for site in data["sites"] if site["name"] == "GRID.IHEP.cn"]
    data["links"] = []
    for group in data["registry"]["groups"].values():
        group["pool_accounts"] = {k: v for k, v in group.get("pool_accounts", {}).items() if k == "GRID.IHEP.cn"}
    for user in data["registry"]["users"].values():
        user["local_accounts"] = {k: v for k, v in user.get("local_accounts", {}).items() if k == "GRID.IHEP.cn"}
    path = tmp_path / "small-grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 15 and all(1024 < p < 65536 for p in ports)


def test_grid_lifecycle(dcs_home: Path, small_grid: Path) -> None:
    dcs("grid", "up", "--detach", str(small_grid))
    try:
        rows = json.loads(dcs("grid", "status", "--json").stdout)
        central = next(row for row in rows if row["name"] == "central")
        assert central["state"] == "running" and central["url"].startswith("https://127.0.0.1:")
        assert {(row["name"], row["kind"]) for row in rows} >= {
            ("central", "server"), ("frontier", "frontier"), ("IHEP-EOS", "se-disk"), ("IHEP-TAPE", "se-tape")}
        assert {row["kind"] for row in rows} >= {"director"}  # IHEP has a computing element
        assert {row["state"] for row in rows} == {"running"}
        effective = yaml.safe_load((dcs_home / "grid" / "grid.yaml").read_text())
        se_urls = {se["name"]: se["url"] for se in effective["sites"][0]["storage_elements"]}
        assert se_urls == {row["name"]: row["url"] for row in rows if row["kind"].startswith("se-")}
        tape = httpx.get(se_urls["IHEP-TAPE"] + "/.well-known/wlcg-tape-rest-api",
                         verify=ssl.create_default_context(cafile=str(dcs_home / "ca" / "ca.pem")))
        assert tape.status_code == 200
        client_config = json.loads((dcs_home / "client" / "client.json").read_text())
        assert client_config["server_url"] == central["url"]
        health = httpx.get(
            central["url"] + "/healthz", verify=ssl.create_default_context(cafile=client_config["ca_file"])
        ).json()
        assert health["status"] == "ok" and health["database"] == "sqlite"

        second = dcs("grid", "up", "--detach", str(small_grid), check=False)
        assert second.returncode == 1 and "error[grid-running]" in second.stderr
        pid = central["pid"]
    finally:
        down = dcs("grid", "down")
    assert "stopped the grid" in down.stdout
    assert wait_gone(pid)
    status = dcs("grid", "status", check=False)
    assert status.returncode == 1 and "no grid is running" in status.stdout


def test_children_die_with_a_killed_supervisor(dcs_home: Path, small_grid: Path) -> None:
    dcs("grid", "up", "--detach", str(small_grid))
    state = json.loads((dcs_home / "grid" / "state.json").read_text())
    children = [record["pid"] for record in state["processes"]]
    os.kill(state["supervisor_pid"], signal.SIGKILL)
    try:
        assert all(wait_gone(pid) for pid in children), "a child outlived its supervisor"
        status = json.loads(dcs("grid", "status", "--json", check=False).stdout)
        assert {row["state"] for row in status} == {"stopped"}
    finally:
        dcs("grid", "down", check=False)


def test_bad_grid_file_is_refused_before_anything_starts(dcs_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "grid.yaml"
    bad.write_text("vo: juno\nsites: []\nregistry: {groups: {juno_user: {}}}\n")
    result = dcs("grid", "up", "--detach", str(bad), check=False)
    assert result.returncode == 1
    assert "grid.yaml: sites: Tuple should have at least 1 item" in result.stderr
    assert not (dcs_home / "grid" / "state.json").exists()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    result = dcs("demo", "--home", str(home), timeout=300)
    output = result.stdout
    assert "demo finished" in output
    assert "juno_production" in output  # whoami after a proxy login with /juno/Role=production
    assert "GRID.JINR.ru" in output  # the site listing
    assert "uploaded to IHEP-EOS" in output and "3 succeeded, 0 failed" in output
    assert "dataset demo-detsim: Frozen, 3 files" in output
    assert not (home / "grid" / "state.json").exists()


def test_ctrl_c_stops_a_foreground_grid(dcs_home: Path, small_grid: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "junodcs", "grid", "up", str(small_grid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    state_file = dcs_home / "grid" / "state.json"
    try:
        deadline = time.monotonic() + 90
        while not state_file.exists() and time.monotonic() < deadline and supervisor.poll() is None:
            time.sleep(0.1)
        assert state_file.exists(), "the grid never came up"
        children = [record["pid"] for record in json.loads(state_file.read_text())["processes"]]
        supervisor.send_signal(signal.SIGINT)
        output, _ = supervisor.communicate(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, output
    assert "grid up" in output and "grid stopped" in output
    assert all(wait_gone(pid) for pid in children)
    assert not state_file.exists()
