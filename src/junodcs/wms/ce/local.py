"""The `local` CE: a process pool on this host with a number of slots and a memory limit per slot.

Each pilot is a child process (`python -m junodcs.wms.pilot ...`) in its own session, with its output in
`<workdir>/pilots/<pilot id>.log`. The memory limit per slot is enforced like a batch system's cgroup: a
watchdog thread sums the RSS of each pilot's whole session every `memory_poll` seconds and kills the pilot
(SIGKILL) when it exceeds the slot's memory plus `overhead_mb` (the pilot's own share; the job wrapper
stops a payload with a clear status at the slot's memory itself, before this limit is reached).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from junodcs.wms.ce.base import CEBackend, PilotLaunch, PilotState
from junodcs.wms.pilot.watchdog import session_usage, signal_session


def _new_session() -> None:
    # No PR_SET_PDEATHSIG: it fires when the *thread* that started the child ends, and directors submit from
    # threads. `close()` stops the pilots of a director that shuts down; a killed director's pilots finish
    # their job and stop on their own (nothing left to match, or their lifetime).
    os.setsid()


class LocalCE(CEBackend):
    kind = "local"

    def __init__(self, name: str, *, slots: int, memory_mb: int, workdir: Path | str,
                 python: str | None = None, overhead_mb: int = 300, memory_poll: float = 1.0,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(name, slots=slots, memory_mb=memory_mb, workdir=workdir)
        self.python = python or sys.executable
        self.overhead_mb = overhead_mb
        self.env = env or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: dict[str, str] = {}
        self.reaped: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._memory_watch, args=(memory_poll,), daemon=True,
                                       name=f"ce-{name}-memory")
        self._watch.start()

    def command(self, launch: PilotLaunch) -> list[str]:
        return [self.python, "-m", "junodcs.wms.pilot", *launch.args]

    def submit(self, launches: list[PilotLaunch]) -> list[str]:
        references = []
        for launch in launches:
            log_path = self.log_path(launch.pilot_id)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                if self._running() >= self.slots:
                    raise RuntimeError(f"{self.name}: all {self.slots} slots are busy")
                with open(log_path, "ab") as log:
                    process = subprocess.Popen(self.command(launch), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, cwd=self.workdir,
                                               env={**os.environ, **self.env, **launch.env},
                                               preexec_fn=_new_session)
                reference = f"local://{self.name}/{process.pid}/{uuid.uuid4().hex[:6]}"
                self.processes[reference] = process
            references.append(reference)
        return references

    def _running(self) -> int:
        return sum(1 for p in self.processes.values() if p.poll() is None)

    def active(self) -> int:
        with self._lock:
            return self._running()

    def status(self, references: list[str]) -> dict[str, PilotState]:
        out: dict[str, PilotState] = {}
        with self._lock:
            for reference in references:
                process = self.processes.get(reference)
                if process is None:
                    out[reference] = PilotState("Aborted", "unknown to this CE (restarted?)")
                    continue
                code = process.poll()
                if code is not None and reference not in self.reaped:
                    # what a batch system does when a job ends: nothing of it stays behind
                    self.reaped.add(reference)
                    signal_session(process.pid, signal.SIGKILL)
                if code is None:
                    out[reference] = PilotState("Running")
                elif reference in self.killed:
                    out[reference] = PilotState("Aborted", self.killed[reference])
                elif code == 0:
                    out[reference] = PilotState("Done", "exit code 0")
                elif code < 0:
                    out[reference] = PilotState("Aborted", f"killed by signal {-code}")
                else:
                    out[reference] = PilotState("Failed", f"exit code {code}")
        return out

    def forget(self, reference: str) -> None:
        with self._lock:
            self.processes.pop(reference, None)
            self.killed.pop(reference, None)

    def cancel(self, references: list[str]) -> None:
        for reference in references:
            process = self.processes.get(reference)
            if process is not None and process.poll() is None:
                self.killed[reference] = "cancelled"
                signal_session(process.pid, signal.SIGKILL)
                process.wait(10)

    def pid(self, reference: str) -> int | None:
        process = self.processes.get(reference)
        return process.pid if process else None

    def _memory_watch(self, poll: float) -> None:
        limit = self.memory_mb + self.overhead_mb
        while not self._stop.wait(poll):
            with self._lock:
                running = [(r, p) for r, p in self.processes.items() if p.poll() is None]
            for reference, process in running:
                _, rss, _ = session_usage(process.pid)
                if rss > limit:
                    self.killed[reference] = f"slot memory exceeded ({rss:.0f} MB > {limit} MB): killed by the CE"
                    signal_session(process.pid, signal.SIGKILL)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            signal_session(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_session(process.pid, signal.SIGKILL)
                process.wait(5)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "slots": self.slots, "memory_mb": self.memory_mb,
                "active": self.active()}
