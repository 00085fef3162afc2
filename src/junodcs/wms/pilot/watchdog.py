"""The watchdog: measures a payload's process tree and enforces its limits (DIRAC's `Watchdog`).

The payload runs as the leader of its own process group (inside the pilot's session, so a batch system that
stops the pilot's session stops the payload too), so its whole process tree is "every process of that
group", even children that re-parented to init. Each poll reads `/proc/<pid>/stat`
of those processes: resident memory is the sum of their RSS; CPU is their user+system time plus what the
leader's already reaped children used (`cutime + cstime`), never decreasing.

Limits: CPU time (the job's CPUTime plus a margin, as DIRAC's `JobCPULimitMargin`), wall clock, and memory
(RSS of the tree above the slot's memory). A payload over a limit is stopped gracefully: SIGTERM to the
whole session, then SIGKILL after `grace` seconds. Only the standard library is used (the watchdog runs on
worker nodes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Usage:
    cpu: float = 0.0
    """CPU seconds of the tree (user + system), including reaped children."""
    rss_mb: float = 0.0
    wall: float = 0.0
    processes: int = 0
    peak_rss_mb: float = 0.0


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    # fields after the command name (which may hold spaces and parentheses)
    return raw[raw.rfind(")") + 2:].split()


def _members(ident: int, field_index: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields and len(fields) > 3 and int(fields[field_index]) == ident and fields[0] not in ("Z", "X"):
                found.append(int(name))
    return found


def signal_session(session: int, signum: int) -> int:
    """Send `signum` to every process of a session (what a batch system does to a job); returns how many."""
    count = 0
    for pid in _members(session, 3):
        try:
            os.kill(pid, signum)
            count += 1
        except (ProcessLookupError, PermissionError):
            pass
    return count


def session_usage(session: int) -> tuple[float, float, int]:
    """(cpu seconds, rss MB, process count) of every process in `session`."""
    return tree_usage(session, 3)


def group_usage(group: int) -> tuple[float, float, int]:
    """(cpu seconds, rss MB, process count) of every process in process group `group`."""
    return tree_usage(group, 2)


def tree_usage(ident: int, field_index: int) -> tuple[float, float, int]:
    cpu_ticks = 0
    rss_pages = 0
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        # after ")": state(0) ppid(1) pgrp(2) session(3) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
        if fields is None or len(fields) < 22 or int(fields[field_index]) != ident:
            continue
        if fields[0] in ("Z", "X"):  # zombies and dying processes hold nothing
            continue
        count += 1
        cpu_ticks += int(fields[11]) + int(fields[12])
        if int(name) == ident:
            cpu_ticks += int(fields[13]) + int(fields[14])
        rss_pages += int(fields[21])
    return cpu_ticks / _TICK, rss_pages * _PAGE / 1048576, count


@dataclass
class Limits:
    cpu: float | None = None
    """CPU seconds (already including the margin)."""
    wall: float | None = None
    memory_mb: float | None = None


@dataclass
class Verdict:
    kind: str
    """"memory", "cpu", "wall" or "command"."""
    minor: str
    measured: float = 0.0
    limit: float = 0.0


@dataclass
class Watchdog:
    process: subprocess.Popen  # type: ignore[type-arg]
    limits: Limits
    grace: float = 5.0
    started: float = field(default_factory=time.monotonic)
    usage: Usage = field(default_factory=Usage)

    def measure(self) -> Usage:
        cpu, rss, count = group_usage(self.process.pid)
        usage = self.usage
        usage.cpu = max(usage.cpu, cpu)
        usage.rss_mb = rss
        usage.peak_rss_mb = max(usage.peak_rss_mb, rss)
        usage.processes = count
        usage.wall = time.monotonic() - self.started
        return usage

    def check(self) -> Verdict | None:
        """Measure and compare with the limits; the first limit exceeded, or None."""
        usage = self.measure()
        limits = self.limits
        if limits.memory_mb is not None and usage.rss_mb > limits.memory_mb:
            return Verdict("memory", f"Memory limit exceeded ({usage.rss_mb:.0f} MB > {limits.memory_mb:.0f} MB)",
                           usage.rss_mb, limits.memory_mb)
        if limits.cpu is not None and usage.cpu > limits.cpu:
            return Verdict("cpu", f"CPU time limit exceeded ({usage.cpu:.0f} s > {limits.cpu:.0f} s)",
                           usage.cpu, limits.cpu)
        if limits.wall is not None and usage.wall > limits.wall:
            return Verdict("wall", f"Wall clock limit exceeded ({usage.wall:.0f} s > {limits.wall:.0f} s)",
                           usage.wall, limits.wall)
        return None

    def signal_tree(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        # processes that started their own session from the payload (daemonised helpers)
        signal_session(self.process.pid, signum)

    def stop(self) -> int | None:
        """SIGTERM to the tree, SIGKILL after `grace` seconds; returns the payload's exit code.

        Returns only once no process of the tree is left, so that a rescheduled job never overlaps with the
        remains of its previous attempt (children may outlive the leader by a few milliseconds after a signal).
        """
        self.signal_tree(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        try:
            code = self.process.wait(self.grace)
        except subprocess.TimeoutExpired:
            self.signal_tree(signal.SIGKILL)
            code = self.process.wait(10)
        if not self._tree_gone_by(deadline):  # stragglers that ignored SIGTERM
            self.signal_tree(signal.SIGKILL)
            self._tree_gone_by(time.monotonic() + 10)
        return code

    def _tree_gone_by(self, deadline: float) -> bool:
        while group_usage(self.process.pid)[2]:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True
