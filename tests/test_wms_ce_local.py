"""The local CE: slots are a hard bound, the memory limit per slot kills a pilot whose process tree grows past
it (as a batch system's cgroup would), and a pilot's whole session goes when the pilot ends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from junodcs.wms.ce.base import PilotLaunch
from junodcs.wms.ce.local import LocalCE


def _waiting_pilot(tmp_path: Path, pilot_id: str) -> PilotLaunch:
    token = tmp_path / "token"
    token.write_text("x")
    # its server never answers: the pilot keeps retrying for a minute
    return PilotLaunch(pilot_id, ["--server", "http://127.0.0.1:9", "--site", "S", "--ce", "C", "--token-file",
                                  str(token), "--retry-seconds", "60", "--workdir", str(tmp_path / pilot_id)])


def _final(ce: LocalCE, reference: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = ce.status([reference])[reference]
        if state.status in ("Done", "Failed", "Aborted"):
            return state
        time.sleep(0.1)
    raise AssertionError("pilot still running")


def test_slots_bound_and_cancel(tmp_path: Path) -> None:
    ce = LocalCE("ce.test", slots=1, memory_mb=2000, workdir=tmp_path / "ce")
    try:
        (first,) = ce.submit([_waiting_pilot(tmp_path, "p1")])
        assert ce.active() == 1 and ce.status([first])[first].status == "Running"
        with pytest.raises(RuntimeError, match="all 1 slots are busy"):
            ce.submit([_waiting_pilot(tmp_path, "p2")])
        ce.cancel([first])
        state = _final(ce, first)
        assert state.status == "Aborted" and state.reason == "cancelled"
        assert ce.active() == 0
        assert "p1" not in ce.output(first, "p2") and ce.log_path("p1").exists()
    finally:
        ce.close()


def test_memory_limit_per_slot_kills_the_pilot(tmp_path: Path) -> None:
    # a Python pilot alone holds more than 5 MB: over the slot's memory, the CE kills it
    ce = LocalCE("ce.tiny", slots=1, memory_mb=5, workdir=tmp_path / "ce", overhead_mb=0, memory_poll=0.2)
    try:
        (reference,) = ce.submit([_waiting_pilot(tmp_path, "fat")])
        state = _final(ce, reference)
        assert state.status == "Aborted" and state.reason.startswith("slot memory exceeded (")
        assert state.reason.endswith("MB > 5 MB): killed by the CE")
    finally:
        ce.close()
