"""Problematic replicas against real SEs: a replica missing on its SE (404) or with other bytes than the
catalog says is marked Problematic as soon as a get or replicate meets it, the operation goes on with
the next replica, later reads try it last, and a read or a replicate that finds it good again (or
repairs it) marks it AprioriGood again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmutil import Grid, assert_consistent, dcs, login, running_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with running_grid(tmp_path_factory.mktemp("dmprob")) as g:
        yield g


@pytest.fixture
def session(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> Grid:
    login(grid, monkeypatch)
    monkeypatch.delenv("DCS_SITE", raising=False)
    return grid


def dcs_json(*args: str) -> tuple[int, dict]:
    code, out, _err = dcs(*args, "--json")
    return code, json.loads(out)


def statuses(lfn: str) -> dict[str, str]:
    code, reps = dcs_json("dm", "replicas", lfn)
    assert code == 0
    return {r["se"]: r["status"] for r in reps[lfn]}


def spread(session: Grid, tmp_path: Path, lfn: str, size: int = 200_000) -> bytes:
    """A file at IHEP-EOS, CNAF-STORM and JINR-DCACHE."""
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    for se in ("CNAF-STORM", "JINR-DCACHE"):
        assert dcs("dm", "replicate", lfn, se)[0] == 0
    return data


def test_get_marks_missing_and_corrupt_replicas_and_tries_them_last(session: Grid, tmp_path: Path) -> None:
    lfn = "/juno/test/problematic/get.bin"
    data = spread(session, tmp_path, lfn)
    assert set(statuses(lfn).values()) == {"AprioriGood"}

    # the same-site replica is gone: marked, said so, and the next best one is used
    session.se_file("JINR-DCACHE", lfn).unlink()
    code, out, err = dcs("dm", "get", lfn, str(tmp_path / "a.bin"), "--site", "GRID.JINR.ru")
    assert code == 0, err
    assert "replica of /juno/test/problematic/get.bin at JINR-DCACHE marked Problematic" in err
    assert "from IHEP-EOS" in out and "replica at JINR-DCACHE marked Problematic" in out
    assert (tmp_path / "a.bin").read_bytes() == data
    assert statuses(lfn) == {"IHEP-EOS": "AprioriGood", "CNAF-STORM": "AprioriGood", "JINR-DCACHE": "Problematic"}
    code, out, err = dcs("dm", "replicas", lfn)  # the table shows it too
    assert code == 0 and "Problematic" in out

    # next reader at JINR: the Problematic replica is ranked last, so nothing is even tried there
    code, summary = dcs_json("dm", "get", lfn, str(tmp_path / "b.bin"), "--site", "GRID.JINR.ru")
    result = summary["results"][0]
    assert code == 0 and result["se"] == "IHEP-EOS" and "attempts" not in result and "problematic" not in result

    # other bytes than the catalog says (a different size: the SE recomputes its digest): marked as well
    session.se_file("IHEP-EOS", lfn).write_bytes(os.urandom(1000))
    code, summary = dcs_json("dm", "get", lfn, str(tmp_path / "c.bin"), "--site", "GRID.IHEP.cn")
    result = summary["results"][0]
    assert code == 0 and result["se"] == "CNAF-STORM" and result["problematic"] == ["IHEP-EOS"]
    assert [(a["se"], a["code"], a.get("marked")) for a in result["attempts"]] == [
        ("IHEP-EOS", "size-mismatch", "Problematic")]
    assert statuses(lfn)["IHEP-EOS"] == "Problematic"

    # a transient failure (the SE down) marks nothing
    session.ses["CNAF-STORM"].stop()
    try:
        code, summary = dcs_json("dm", "get", lfn, str(tmp_path / "d.bin"), "--se", "CNAF-STORM")
        assert code == 1 and summary["results"][0]["attempts"][0]["code"] == "connection-failed"
        assert summary["results"][0]["attempts"][0]["marked"] is None
    finally:
        from junodcs.storage.server.run import BackgroundSE

        old = session.ses["CNAF-STORM"]
        session.ses["CNAF-STORM"] = BackgroundSE(old.config, port=old.port)
    assert statuses(lfn)["CNAF-STORM"] == "AprioriGood"

    # the bytes come back (an operator restored them): the next read of that replica marks it good again
    session.se_file("IHEP-EOS", lfn).write_bytes(data)
    code, summary = dcs_json("dm", "get", lfn, str(tmp_path / "e.bin"), "--se", "IHEP-EOS")
    assert code == 0 and summary["results"][0]["recovered"] == ["IHEP-EOS"]
    assert statuses(lfn)["IHEP-EOS"] == "AprioriGood"

    # replicate onto the Problematic replica repairs it (copied again from a good one, marked good)
    code, out, err = dcs("dm", "replicate", lfn, "JINR-DCACHE")
    assert code == 0, err
    assert "repaired" in out
    assert session.se_file("JINR-DCACHE", lfn).read_bytes() == data
    assert set(statuses(lfn).values()) == {"AprioriGood"}
    assert_consistent(session, "/juno/test/problematic")


def test_replicate_marks_a_bad_source_and_uses_the_next(session: Grid, tmp_path: Path) -> None:
    lfn = "/juno/test/problematic/rep.bin"
    data = tmp_path / "r.bin"
    data.write_bytes(os.urandom(300_000))
    assert dcs("dm", "put", str(data), lfn, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn, "CNAF-STORM")[0] == 0
    session.se_file("CNAF-STORM", lfn).unlink()  # the best source for JINR (same link class, name order)
    session.se_file("IHEP-EOS", lfn).write_bytes(os.urandom(10))
    code, summary = dcs_json("dm", "replicate", lfn, "JINR-DCACHE")
    result = summary["results"][0]
    assert code == 1 and result["code"] == "replication-failed"
    assert sorted(result["problematic"]) == ["CNAF-STORM", "IHEP-EOS"]
    assert {(a["se"], a["code"]) for a in result["attempts"]} == {("IHEP-EOS", "checksum-mismatch"),
                                                                 ("CNAF-STORM", "not-found")}
    assert "(marked Problematic)" in result["detail"]
    assert statuses(lfn) == {"IHEP-EOS": "Problematic", "CNAF-STORM": "Problematic"}
    assert not session.se_file("JINR-DCACHE", lfn).exists(), "a failed replication leaves nothing"

    # the source is repaired behind the catalog's back: replicate uses it (tried last, but tried) and says
    # it is good again
    session.se_file("IHEP-EOS", lfn).write_bytes(data.read_bytes())
    code, summary = dcs_json("dm", "replicate", lfn, "JINR-DCACHE", "--source", "IHEP-EOS")
    result = summary["results"][0]
    assert code == 0 and result["status"] == "replicated" and result["recovered"] == ["IHEP-EOS"]
    assert statuses(lfn) == {"IHEP-EOS": "AprioriGood", "CNAF-STORM": "Problematic", "JINR-DCACHE": "AprioriGood"}
    assert session.se_file("JINR-DCACHE", lfn).read_bytes() == data.read_bytes()
