"""Child processes of a local grid: start, wait until healthy, stop, and never leave one behind.

Each child gets `PR_SET_PDEATHSIG`, so if the supervisor dies (even by SIGKILL) the kernel stops its
children too: a crashed `dcs grid up` leaves nothing running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class ProcessSpec:
    name: str
    kind: str
    argv: list[str]
    log: Path
    url: str | None = None
    health_url: str | None = None
    site: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class ProcessRecord:
    """What the state file keeps of a running child (enough for `grid status` and `grid down`)."""

    name: str
    kind: str
    pid: int
    url: str | None
    health_url: str | None
    log: str
    site: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ManagedProcess:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.spec.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.popen = subprocess.Popen(
                self.spec.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.spec.env},
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def record(self) -> ProcessRecord:
        assert self.popen is not None
        spec = self.spec
        return ProcessRecord(spec.name, spec.kind, self.popen.pid, spec.url, spec.health_url, str(spec.log), spec.site)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.spec.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, verify: Any, timeout: float = 60.0) -> None:
        """Poll the health URL until it answers 200; fail at once, with the log, if the child exits."""
        import httpx

        if self.spec.health_url is None:
            return
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        with httpx.Client(verify=verify, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.popen is not None and self.popen.poll() is not None:
                    raise DCSError(
                        f"{self.spec.name} exited with code {self.popen.returncode} while starting; "
                        f"log {self.spec.log}:\n{self.log_tail()}",
                        code="grid-start-failed",
                    )
                try:
                    response = client.get(self.spec.health_url)
                    if response.status_code == 200:
                        return
                    last_error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last_error = str(exc) or exc.__class__.__name__
                time.sleep(0.1)
        raise DCSError(
            f"{self.spec.name} not healthy after {timeout:.0f} s ({last_error}); log {self.spec.log}:\n{self.log_tail()}",
            code="grid-start-failed",
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a process we did not start in this interpreter (from a state file): TERM, then KILL."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
