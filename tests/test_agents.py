"""The agent registry and runner: what `dcs server` starts with its systems and `dcs agent run` alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from junodcs.core.errors import InvalidInput
from junodcs.core.gridconfig import GridConfig, example_grid_path
from junodcs.server.agents import AGENTS, agents_of, resolve_agent_names
from junodcs.server.app import ServerOptions, create_app
from junodcs.wms.logic import Caller, wms_for_state

ALICE = Caller("alice", "juno_user")


def test_names_follow_the_mounted_systems() -> None:
    assert set(agents_of(["wms"])) == {n for n, s in AGENTS.items() if s.system == "wms"}
    assert agents_of(["auth", "config"]) == ()
    assert resolve_agent_names(None, ["wms"]) == agents_of(["wms"])
    assert resolve_agent_names("none", ["wms"]) == ()
    assert resolve_agent_names("wms-optimizer", ["auth"]) == ("wms-optimizer",)
    with pytest.raises(InvalidInput, match="unknown agents nope"):
        resolve_agent_names("wms-optimizer,nope", ["wms"])


def wait_for(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_server_runs_its_agents_in_its_lifespan(grid: GridConfig, sqlite_engine: Engine) -> None:
    options = ServerOptions(public_url="http://testserver", agents=("wms-optimizer",))
    app = create_app(grid, sqlite_engine, options)
    wms = wms_for_state(app.state)
    (job_id,) = wms.submit({"Executable": "echo", "Site": ["GRID.IHEP.cn"]}, ALICE)
    assert wms.status([job_id], ALICE)[job_id]["status"] == "Received"
    with TestClient(app):
        assert wait_for(lambda: wms.status([job_id], ALICE)[job_id]["status"] == "Waiting")
    idle = create_app(grid, sqlite_engine, ServerOptions(public_url="http://testserver"))
    idle_wms = wms_for_state(idle.state)
    (other,) = idle_wms.submit({"Executable": "echo"}, ALICE)
    with TestClient(idle):
        time.sleep(1.0)
    assert idle_wms.status([other], ALICE)[other]["status"] == "Received"  # no agents by default in tests


def test_dcs_agent_run_works_alone_and_stops_on_sigterm(grid: GridConfig, tmp_path: Path) -> None:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'agents.db'}"
    engine = create_engine(url)
    upgrade(engine)
    app = create_app(grid, engine, ServerOptions(public_url="http://central", migrate=False))
    wms = wms_for_state(app.state)
    (job_id,) = wms.submit({"Executable": "echo"}, ALICE)
    agent = subprocess.Popen(
        [sys.executable, "-m", "junodcs", "agent", "run", "wms-optimizer", "--grid", str(example_grid_path()),
         "--public-url", "http://central", "--database-url", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ,
    )
    try:
        assert wait_for(lambda: wms.status([job_id], ALICE)[job_id]["status"] == "Waiting", 60)
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0, output
    assert "agent wms-optimizer (wms) stopped" in output
