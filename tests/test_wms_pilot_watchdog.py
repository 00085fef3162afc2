"""The watchdog on real processes: the whole process tree is measured (children included), CPU time and memory
limits are detected, and a payload that ignores SIGTERM is killed after the grace time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from junodcs.wms.pilot.watchdog import Limits, Watchdog


def _start(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], process_group=0)


def _until_verdict(dog: Watchdog, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        verdict = dog.check()
        if verdict is not None:
            return verdict
        time.sleep(0.05)
    raise AssertionError("no verdict")


def test_memory_of_children_counts_and_stop_kills_the_tree() -> None:
    # the parent stays small; its child holds 120 MB
    child = "import time; b = b'x' * (120 << 20); time.sleep(60)"
    process = _start(f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)")
    dog = Watchdog(process, Limits(memory_mb=100), grace=2)
    verdict = _until_verdict(dog)
    assert verdict.kind == "memory" and verdict.minor.startswith("Memory limit exceeded (")
    assert verdict.minor.endswith("MB > 100 MB)") and verdict.measured > 100
    assert dog.usage.processes == 2
    dog.stop()
    assert process.poll() is not None
    assert dog.measure().processes == 0, "the child died with the payload"


def test_cpu_limit_and_sigkill_after_grace_for_a_payload_ignoring_sigterm() -> None:
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass"
    process = _start(code)
    dog = Watchdog(process, Limits(cpu=0.5, wall=30), grace=1)
    verdict = _until_verdict(dog)
    assert verdict.kind == "cpu" and verdict.minor.startswith("CPU time limit exceeded (")
    started = time.monotonic()
    code = dog.stop()
    assert code == -signal.SIGKILL and 0.9 <= time.monotonic() - started < 10


def test_wall_clock_limit_and_graceful_stop() -> None:
    process = _start("import time; time.sleep(60)")
    dog = Watchdog(process, Limits(wall=0.5), grace=5)
    verdict = _until_verdict(dog)
    assert verdict.kind == "wall" and verdict.minor.startswith("Wall clock limit exceeded (")
    assert dog.stop() == -signal.SIGTERM, "SIGTERM was enough"
