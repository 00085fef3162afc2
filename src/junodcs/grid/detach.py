"""Run the grid supervisor in the background (`dcs grid up --detach`, and the demo)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError
from junodcs.grid.local import grid_dir, grid_status, running_state


def start_detached(config_path: Path, *, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Start `dcs grid up` as a session leader and return once its state file says it is up."""
    if running_state() is not None:
        raise DCSError("a grid is already running here; `dcs grid down` first", code="grid-running")
    grid_dir().mkdir(parents=True, exist_ok=True)
    log_path = grid_dir() / "supervisor.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "junodcs", "grid", "up", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = running_state()
        if state is not None and state.get("supervisor_pid") == child.pid:
            return grid_status()
        if child.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise DCSError(f"the grid did not start (log {log_path}):\n{tail}", code="grid-start-failed")
        time.sleep(0.1)
    child.terminate()
    raise DCSError(f"the grid was not up after {timeout:.0f} s (log {log_path})", code="grid-start-failed")
