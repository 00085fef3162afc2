"""Staging before get, against a real tape SE (the SE's tape flavour, WLCG Tape REST API, delays of a few
tenths of a second): a file whose only replica is on tape with its disk copy evicted is staged (POST
/stage, GET /stage/{id} polled with progress messages), read, and its pin released; a disk replica is
preferred over staging; a stage that does not finish in time is a clear error and is cancelled."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmutil import Grid, assert_consistent, dcs, login, running_grid

from junodcs.dm import DataManager

TOP = "/juno/test/staging"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with running_grid(tmp_path_factory.mktemp("dmstage")) as g:
        yield g


@pytest.fixture
def session(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> Iterator[DataManager]:
    login(grid, monkeypatch)
    monkeypatch.delenv("DCS_SITE", raising=False)
    with DataManager() as dm:
        yield dm


def dcs_json(*args: str) -> tuple[int, dict]:
    code, out, _err = dcs(*args, "--json")
    return code, json.loads(out)


def tape_url(grid: Grid, lfn: str) -> str:
    return f"{grid.ses['IHEP-TAPE'].url}{lfn}"


def locality(dm: DataManager, grid: Grid, lfn: str) -> str:
    return str(dm._tape().locality(tape_url(grid, lfn)))


def only_on_tape(dm: DataManager, grid: Grid, tmp_path: Path, name: str) -> tuple[str, bytes]:
    """A file whose one replica is at IHEP-TAPE, evicted from the tape SE's disk (locality TAPE)."""
    data = os.urandom(400_000)
    src = tmp_path / name
    src.write_bytes(data)
    lfn = f"{TOP}/{name}"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn, "IHEP-TAPE")[0] == 0
    deadline = time.monotonic() + 10
    while locality(dm, grid, lfn) != "TAPE":
        assert time.monotonic() < deadline, "the tape SE never evicted its disk copy"
        time.sleep(0.1)
    assert dcs("dm", "rm", lfn, "--se", "IHEP-EOS")[0] == 0
    return lfn, data


def test_get_stages_a_tape_only_file_then_releases_it(grid: Grid, session: DataManager, tmp_path: Path) -> None:
    lfn, data = only_on_tape(session, grid, tmp_path, "t1.bin")
    # without staging the tape SE refuses the bytes
    from junodcs.storage.client import StorageError

    with pytest.raises(StorageError, match="503"):
        session._storage().get(tape_url(grid, lfn), tmp_path / "direct.bin")

    code, out, err = dcs("dm", "get", lfn, str(tmp_path / "got.bin"))
    assert code == 0, err
    assert (tmp_path / "got.bin").read_bytes() == data
    assert "from IHEP-TAPE" in out and "staged from tape at IHEP-TAPE in" in out
    assert re.search(r"IHEP-TAPE: staging /juno/test/staging/t1.bin: request [0-9a-f-]{36} submitted", err), err
    assert re.search(r"staging /juno/test/staging/t1.bin: (SUBMITTED|STARTED) \(\d+\.\d s of at most 3600 s\)",
                     err), err
    assert "COMPLETED, on disk after" in err
    # read, so the pin is released: the disk copy may go at once (it is on tape)
    assert locality(session, grid, lfn) == "TAPE"

    # the Python API says what happened
    result = session.get(lfn, tmp_path / "api.bin")
    assert result.ok and result.staged_from == "IHEP-TAPE" and result.stage_request
    assert result.stage_seconds is not None and result.stage_seconds >= 0.3  # mount + one recall at least
    assert (tmp_path / "api.bin").read_bytes() == data


def test_disk_replica_preferred_and_replicate_stages_a_tape_source(grid: Grid, session: DataManager,
                                                                   tmp_path: Path) -> None:
    lfn, data = only_on_tape(session, grid, tmp_path, "t2.bin")
    code, summary = dcs_json("dm", "replicate", lfn, "CNAF-STORM", "--stage-timeout", "0.1")
    result = summary["results"][0]
    assert code == 1 and [(a["se"], a["code"]) for a in result["attempts"]] == [("IHEP-TAPE", "stage-timeout")]
    assert not grid.se_file("CNAF-STORM", lfn).exists(), "nothing copied from a file that was not staged"
    code, summary = dcs_json("dm", "replicate", lfn, "CNAF-STORM")
    result = summary["results"][0]
    assert code == 0 and result["source_se"] == "IHEP-TAPE" and result["staged_from"] == "IHEP-TAPE", result
    assert grid.se_file("CNAF-STORM", lfn).read_bytes() == data
    # a reader at IHEP (where the tape is) still takes the remote disk replica rather than stage
    code, summary = dcs_json("dm", "get", lfn, str(tmp_path / "d.bin"), "--site", "GRID.IHEP.cn")
    result = summary["results"][0]
    assert code == 0 and result["se"] == "CNAF-STORM" and "stage_request" not in result
    assert_consistent(grid, TOP)


def test_stage_timeout_is_a_clear_error_and_cancels(grid: Grid, session: DataManager, tmp_path: Path) -> None:
    lfn, data = only_on_tape(session, grid, tmp_path, "t3.bin")
    dest = tmp_path / "out"
    dest.mkdir()
    code, summary = dcs_json("dm", "get", lfn, str(dest), "--stage-timeout", "0.1")
    result = summary["results"][0]
    assert code == 1 and result["code"] == "all-replicas-failed"
    (attempt,) = result["attempts"]
    assert attempt["se"] == "IHEP-TAPE" and attempt["code"] == "stage-timeout" and attempt["marked"] is None
    assert "not on disk 0.1 s after the stage request" in attempt["error"]
    assert list(dest.iterdir()) == [], "nothing half-written"
    request_id = re.search(r"stage request ([0-9a-f-]{36})", attempt["error"]).group(1)  # type: ignore[union-attr]
    assert session._tape().status(tape_url(grid, lfn), request_id)["state"] == "CANCELED"
    code, out, err = dcs("dm", "get", lfn, str(dest), "--stage-timeout", "0.1")
    assert code == 1 and "error[all-replicas-failed]" in err and "IHEP-TAPE: stage-timeout" in err
    assert "request cancelled" in err

    # patience is rewarded
    code, out, err = dcs("dm", "get", lfn, str(dest), "--stage-timeout", "30")
    assert code == 0, err
    assert (dest / "t3.bin").read_bytes() == data


def test_tape_replica_missing_on_the_tape_se_is_problematic(grid: Grid, session: DataManager,
                                                           tmp_path: Path) -> None:
    lfn, _ = only_on_tape(session, grid, tmp_path, "t4.bin")
    grid.se_file("IHEP-TAPE", lfn).unlink()
    dest = tmp_path / "out"
    dest.mkdir()
    code, summary = dcs_json("dm", "get", lfn, str(dest))
    result = summary["results"][0]
    assert code == 1 and result["problematic"] == ["IHEP-TAPE"]
    assert [(a["se"], a["code"]) for a in result["attempts"]] == [("IHEP-TAPE", "not-found")]
    code, reps = dcs_json("dm", "replicas", lfn)
    assert reps[lfn] == [{"se": "IHEP-TAPE", "url": tape_url(grid, lfn), "status": "Problematic"}]
    assert list(dest.iterdir()) == []
