"""The data manager and `dcs dm put|get|replicate|rm`, `dcs se ls`, against a real central server and three
real SEs on loopback (tokens from a `dcs login` session; the SEs trust the central issuer)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmutil import DISK_SES, Grid, adler, assert_consistent, dcs, leftovers, login, running_grid

from junodcs.dm import DataManager


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with running_grid(tmp_path_factory.mktemp("dmgrid")) as g:
        yield g


@pytest.fixture
def session(grid: Grid, monkeypatch: pytest.MonkeyPatch) -> Grid:
    login(grid, monkeypatch)
    monkeypatch.delenv("DCS_SITE", raising=False)
    return grid


@pytest.fixture
def top(request: pytest.FixtureRequest) -> str:
    """A catalog directory of this test's own."""
    return f"/juno/test/{request.node.name.replace('[', '_').replace(']', '')}"


def local_file(tmp_path: Path, name: str, size: int = 300_000) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def dcs_json(*args: str) -> tuple[int, dict]:
    code, out, err = dcs(*args, "--json")
    return code, json.loads(out)


def test_se_ls_lists_urls_kinds_sites(session: Grid) -> None:
    code, rows = dcs_json("se", "ls")
    assert code == 0
    by_name = {r["name"]: r for r in rows}
    for name, site in DISK_SES.items():
        assert by_name[name]["url"] == session.ses[name].url
        assert by_name[name]["site"] == site and by_name[name]["kind"] == "disk"
    assert by_name["IHEP-TAPE"]["kind"] == "tape" and by_name["IHEP-TAPE"]["url"] == session.ses["IHEP-TAPE"].url
    assert by_name["CNAF-TAPE"]["kind"] == "tape" and by_name["CNAF-TAPE"]["url"] is None
    code, out, err = dcs("se", "ls")
    assert code == 0 and "CNAF-STORM" in out and session.ses["CNAF-STORM"].url in out


def test_put_registers_size_checksum_and_get_verifies(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "a.root")
    lfn = f"{top}/a.root"
    code, out, err = dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")
    assert code == 0, err
    assert "uploaded to IHEP-EOS" in out and adler(src.read_bytes()) in out
    code, stat = dcs_json("dm", "stat", lfn)
    assert stat["size"] == src.stat().st_size and stat["checksum"] == adler(src.read_bytes())
    assert session.se_file("IHEP-EOS", lfn).read_bytes() == src.read_bytes()
    code, reps = dcs_json("dm", "replicas", lfn)
    assert [r["se"] for r in reps[lfn]] == ["IHEP-EOS"]

    dest = tmp_path / "out"
    dest.mkdir()
    code, out, err = dcs("dm", "get", lfn, str(dest))
    assert code == 0, err
    assert (dest / "a.root").read_bytes() == src.read_bytes() and "from IHEP-EOS" in out
    code, out, err = dcs("dm", "get", lfn, str(dest))  # already there and identical: nothing to do
    assert code == 0 and "already present" in out
    (dest / "a.root").write_bytes(b"something else")
    code, out, err = dcs("dm", "get", lfn, str(dest))
    assert code == 1 and err.startswith("error[local-exists]:")
    assert (dest / "a.root").read_bytes() == b"something else", "a different local file is never clobbered"
    code, out, err = dcs("dm", "get", lfn, str(dest / "a.root"), "--overwrite")
    assert code == 0 and (dest / "a.root").read_bytes() == src.read_bytes()
    assert [p.name for p in dest.iterdir()] == ["a.root"]
    assert_consistent(session, top)


@pytest.mark.parametrize("mode", ["pull", "push", "stream"])
def test_replicate_each_mode_verifies_and_registers(session: Grid, tmp_path: Path, top: str,
                                                     mode: str) -> None:
    src = local_file(tmp_path, "r.bin", 2_500_000)
    lfn = f"{top}/r.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    code, summary = dcs_json("dm", "replicate", lfn, "CNAF-STORM", "--mode", mode)
    assert code == 0, summary
    result = summary["results"][0]
    assert result["mode"] == mode and result["source_se"] == "IHEP-EOS" and result["status"] == "replicated"
    assert session.se_file("CNAF-STORM", lfn).read_bytes() == src.read_bytes()
    code, reps = dcs_json("dm", "replicas", lfn)
    assert sorted(r["se"] for r in reps[lfn]) == ["CNAF-STORM", "IHEP-EOS"]
    code, summary = dcs_json("dm", "replicate", lfn, "CNAF-STORM")  # already there
    assert code == 0 and summary["results"][0]["status"] == "exists"
    assert_consistent(session, top)


def test_replicate_default_is_pull_then_falls_back(session: Grid, tmp_path: Path, top: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = local_file(tmp_path, "f.bin")
    lfn = f"{top}/f.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    code, out, err = dcs("dm", "replicate", lfn, "JINR-DCACHE")
    assert code == 0, err
    assert "IHEP-EOS -> JINR-DCACHE by pull" in out

    # pull refused by the destination and push broken: the streamed copy saves the day, and says so
    from junodcs.storage import client as storage_client

    real_tpc = storage_client.StorageClient.tpc

    def flaky_tpc(self, source, destination, *, mode="pull", **kwargs):
        if str(mode) in ("pull", "CopyMode.PULL"):
            raise storage_client.TransferFailed("pull copy: failure: Connection refused by the source")
        if str(mode) in ("push", "CopyMode.PUSH"):
            # a real partial push: half the bytes arrive at the destination before the failure
            self.put(src, destination, overwrite=True)
            raise storage_client.TransferFailed("push copy: connection ended without a final line")
        return real_tpc(self, source, destination, mode=mode, **kwargs)

    monkeypatch.setattr(storage_client.StorageClient, "tpc", flaky_tpc)
    code, summary = dcs_json("dm", "replicate", lfn, "CNAF-STORM")
    assert code == 0, summary
    result = summary["results"][0]
    assert result["mode"] == "stream"
    assert [(a["mode"], a["code"]) for a in result["attempts"]] == [("pull", "transfer-failed"),
                                                                      ("push", "transfer-failed")]

    # every mode fails: nothing registered, nothing left at the destination
    def broken_stream(self, *args, **kwargs):
        raise storage_client.StorageError("stream broke")

    monkeypatch.setattr(storage_client.StorageClient, "_stream_copy", broken_stream)
    lfn2 = f"{top}/g.bin"
    assert dcs("dm", "put", str(local_file(tmp_path, "g.bin")), lfn2, "--se", "IHEP-EOS")[0] == 0
    code, out, err = dcs("dm", "replicate", lfn2, "CNAF-STORM")
    assert code == 1 and "error[replication-failed]" in err and "stream broke" in err
    assert not session.se_file("CNAF-STORM", lfn2).exists()
    code, reps = dcs_json("dm", "replicas", lfn2)
    assert [r["se"] for r in reps[lfn2]] == ["IHEP-EOS"]
    assert_consistent(session, top)


def test_replicate_from_a_corrupt_source_uses_another(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "c.bin")
    lfn = f"{top}/c.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn, "CNAF-STORM")[0] == 0
    # bit rot at IHEP (the SE notices: the size changed, so it recomputes its stored checksum)
    session.se_file("IHEP-EOS", lfn).write_bytes(os.urandom(1000))
    code, summary = dcs_json("dm", "replicate", lfn, "JINR-DCACHE", "--source", "IHEP-EOS")
    assert code == 1 and summary["results"][0]["code"] == "replication-failed"
    assert not session.se_file("JINR-DCACHE", lfn).exists()
    code, summary = dcs_json("dm", "replicate", lfn, "JINR-DCACHE")
    assert code == 0 and summary["results"][0]["source_se"] == "CNAF-STORM"
    assert session.se_file("JINR-DCACHE", lfn).read_bytes() == src.read_bytes()
    session.se_file("IHEP-EOS", lfn).write_bytes(src.read_bytes())  # repaired for the consistency check
    assert_consistent(session, top)


def test_best_replica_same_site_then_link_bandwidth(session: Grid, tmp_path: Path, top: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = local_file(tmp_path, "b.bin")
    lfn = f"{top}/b.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    for se in ("CNAF-STORM", "JINR-DCACHE"):
        assert dcs("dm", "replicate", lfn, se)[0] == 0
    expected = {"GRID.JINR.ru": "JINR-DCACHE",  # same site
                "GRID.CNAF.it": "CNAF-STORM",
                "GRID.MSU.ru": "IHEP-EOS",  # only link: IHEP <-> MSU
                "GRID.IN2P3.fr": "CNAF-STORM"}  # 10 Gb/s to CNAF and IHEP, 5 to JINR; ties by name
    for site, se in expected.items():
        dest = tmp_path / site
        dest.mkdir()
        code, summary = dcs_json("dm", "get", lfn, str(dest), "--site", site)
        assert code == 0 and summary["results"][0]["se"] == se, (site, summary)
    monkeypatch.setenv("DCS_SITE", "GRID.JINR.ru")
    dest = tmp_path / "env"
    dest.mkdir()
    code, summary = dcs_json("dm", "get", lfn, str(dest))
    assert summary["results"][0]["se"] == "JINR-DCACHE"

    # the best replica is corrupt, the next one is gone: the third one is used, the local file is good
    session.se_file("JINR-DCACHE", lfn).write_bytes(b"\0" * src.stat().st_size)  # same size: stale SE digest
    session.se_file("IHEP-EOS", lfn).unlink()
    dest = tmp_path / "fallback"
    dest.mkdir()
    code, summary = dcs_json("dm", "get", lfn, str(dest), "--site", "GRID.JINR.ru")
    assert code == 0, summary
    result = summary["results"][0]
    assert result["se"] == "CNAF-STORM"  # JINR <-> IHEP is 10 Gb/s, JINR <-> CNAF 5 Gb/s
    assert [(a["se"], a["code"]) for a in result["attempts"]] == [("JINR-DCACHE", "checksum-mismatch"),
                                                                   ("IHEP-EOS", "not-found")]
    assert [p.name for p in dest.iterdir()] == ["b.bin"] and (dest / "b.bin").read_bytes() == src.read_bytes()

    # every replica bad: a clear error and no partial file
    session.se_file("CNAF-STORM", lfn).write_bytes(b"\1" * src.stat().st_size)
    dest = tmp_path / "none"
    dest.mkdir()
    code, out, err = dcs("dm", "get", lfn, str(dest))
    assert code == 1 and "error[all-replicas-failed]:" in err and list(dest.iterdir()) == []
    assert "tried CNAF-STORM:" in err and "CNAF-STORM: checksum-mismatch" in err.splitlines()[-1]


def test_tape_replica_without_url_cannot_be_staged(session: Grid, tmp_path: Path, top: str) -> None:
    from junodcs.catalog.client import CatalogClient

    lfn = f"{top}/t.bin"
    with CatalogClient() as catalog:  # CNAF-TAPE is not running here: the grid description has no URL for it
        entry = {"lfn": lfn, "size": 3, "checksum": adler(b"abc"), "se": "CNAF-TAPE"}
        assert catalog.register([entry])[0]["ok"]
    code, out, err = dcs("dm", "get", lfn, str(tmp_path))
    assert code == 1 and err.startswith("error[tape-only]:") and "cannot be staged" in err
    session.se_file("CNAF-STORM", lfn).parent.mkdir(parents=True, exist_ok=True)
    with CatalogClient() as catalog:
        catalog.add_replicas([{"lfn": lfn, "se": "CNAF-STORM"}])
    session.se_file("CNAF-STORM", lfn).write_bytes(b"abc")
    code, summary = dcs_json("dm", "get", lfn, str(tmp_path), "--site", "GRID.IHEP.cn")
    assert code == 0 and summary["results"][0]["se"] == "CNAF-STORM"


def test_rm_replica_last_replica_and_file(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "x.bin")
    lfn = f"{top}/x.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn, "CNAF-STORM")[0] == 0

    code, out, err = dcs("dm", "rm", lfn, "--se", "CNAF-STORM")
    assert code == 0, err
    assert not session.se_file("CNAF-STORM", lfn).exists()
    assert [r["se"] for r in dcs_json("dm", "replicas", lfn)[1][lfn]] == ["IHEP-EOS"]

    code, out, err = dcs("dm", "rm", lfn, "--se", "IHEP-EOS")
    assert code == 1 and err.startswith("error[last-replica]:")
    assert session.se_file("IHEP-EOS", lfn).read_bytes() == src.read_bytes(), "refused: nothing touched"
    assert dcs("dm", "stat", lfn)[0] == 0
    code, out, err = dcs("dm", "rm", lfn, "--se", "JINR-DCACHE")
    assert code == 1 and err.startswith("error[no-such-replica]:")

    code, out, err = dcs("dm", "rm", lfn, "--se", "IHEP-EOS", "--force")
    assert code == 0, err
    assert not session.se_file("IHEP-EOS", lfn).exists()
    code, out, err = dcs("dm", "stat", lfn)
    assert code == 1 and "no-such-path" in err

    # whole-file removal tolerates a physical file that is already gone
    lfn2 = f"{top}/y.bin"
    assert dcs("dm", "put", str(src), lfn2, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn2, "JINR-DCACHE", "--mode", "push")[0] == 0
    session.se_file("JINR-DCACHE", lfn2).unlink()
    code, summary = dcs_json("dm", "rm", lfn2)
    assert code == 0 and sorted(summary["results"][0]["removed"]) == ["IHEP-EOS", "JINR-DCACHE"]
    assert not session.se_file("IHEP-EOS", lfn2).exists() and dcs("dm", "stat", lfn2)[0] == 1
    code, out, err = dcs("dm", "rm", lfn2)
    assert code == 1 and err.startswith("error[no-such-path]:")
    assert_consistent(session, top)


def test_bulk_put_get_replicate_rm_with_query_and_list(session: Grid, tmp_path: Path, top: str) -> None:
    from junodcs.catalog.client import CatalogClient

    with CatalogClient() as catalog:
        catalog.define_field("dmrun", "int")
    files = [local_file(tmp_path, f"run{i}.root", 50_000 + i) for i in range(6)]
    code, summary = dcs_json("dm", "put", *map(str, files[:3]), f"{top}/", "--se", "IHEP-EOS",
                             "-m", "dmrun=100")
    assert code == 0 and summary["ok"] == 3, summary
    listing = tmp_path / "list.txt"
    listing.write_text("# local lfn [se]\n" + "".join(f"{f} {top}/{f.name} CNAF-STORM\n" for f in files[3:]))
    code, summary = dcs_json("dm", "put", "--from-file", str(listing), "-m", "dmrun=200")
    assert code == 0 and summary["ok"] == 3

    code, summary = dcs_json("dm", "replicate", "JINR-DCACHE", "--from-query", "dmrun>=100", "--path", top)
    assert code == 0 and summary["ok"] == 6 and {r["mode"] for r in summary["results"]} == {"pull"}
    out_dir = tmp_path / "bulk"
    code, summary = dcs_json("dm", "get", "--from-query", "dmrun=200", "--path", top, str(out_dir),
                             "--site", "GRID.JINR.ru")
    assert code == 0 and summary["ok"] == 3 and {r["se"] for r in summary["results"]} == {"JINR-DCACHE"}
    assert sorted(p.name for p in out_dir.iterdir()) == [f.name for f in files[3:]]

    lfns = tmp_path / "lfns.txt"
    lfns.write_text("".join(f"{top}/{f.name}\n" for f in files[:3]))
    code, summary = dcs_json("dm", "rm", "--from-file", str(lfns), "--se", "JINR-DCACHE")
    assert code == 0 and summary["ok"] == 3
    # mixed outcome: per-item results, exit code 1, the good ones done
    code, summary = dcs_json("dm", "rm", f"{top}/{files[0].name}", f"{top}/missing", "--se", "IHEP-EOS")
    assert code == 1 and summary["ok"] == 0 and summary["failed"] == 2
    assert {r["code"] for r in summary["results"]} == {"last-replica", "no-such-path"}
    code, out, err = dcs("dm", "rm", "--from-query", "dmrun>=100", "--path", top)
    assert code == 0 and "6 succeeded, 0 failed" in out
    assert_consistent(session, top)


# -- bad input --------------------------------------------------------------------------------------------


def test_put_duplicate_registration_touches_nothing(session: Grid, tmp_path: Path, top: str) -> None:
    first, second = local_file(tmp_path, "d1"), local_file(tmp_path, "d2")
    lfn = f"{top}/d"
    assert dcs("dm", "put", str(first), lfn, "--se", "IHEP-EOS")[0] == 0
    for se in ("IHEP-EOS", "CNAF-STORM"):
        code, out, err = dcs("dm", "put", str(second), lfn, "--se", se)
        assert code == 1 and err.startswith("error[already-exists]:")
    assert session.se_file("IHEP-EOS", lfn).read_bytes() == first.read_bytes()
    assert not session.se_file("CNAF-STORM", lfn).exists()
    assert dcs_json("dm", "stat", lfn)[1]["checksum"] == adler(first.read_bytes())
    code, out, err = dcs("dm", "put", str(tmp_path / "absent"), f"{top}/e", "--se", "IHEP-EOS")
    assert code == 1 and err.startswith("error[no-such-file]:")
    code, out, err = dcs("dm", "put", str(first), "relative/lfn", "--se", "IHEP-EOS")
    assert code == 1 and err.startswith("error[invalid-lfn]:")
    code, out, err = dcs("dm", "put", str(first), f"{top}/e", "--se", "NOWHERE")
    assert code == 1 and err.startswith("error[unknown-se]:")
    assert_consistent(session, top)


def test_put_with_wrong_checksum_leaves_nothing(session: Grid, tmp_path: Path, top: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = local_file(tmp_path, "w.bin", 1_500_000)
    import junodcs.core.checksums as checksums

    # the bytes the SE receives differ from the digest sent with them
    monkeypatch.setattr(checksums, "file_adler32", lambda path: "00000001")
    code, out, err = dcs("dm", "put", str(src), f"{top}/w.bin", "--se", "IHEP-EOS")
    assert code == 1 and err.startswith("error[checksum-mismatch]:"), err
    assert dcs("dm", "stat", f"{top}/w.bin")[0] == 1
    assert not session.se_file("IHEP-EOS", f"{top}/w.bin").exists()
    assert_consistent(session, top)


@pytest.mark.parametrize("failure", ["truncated", "dropped"])
def test_put_truncated_or_dropped_upload_leaves_nothing(session: Grid, tmp_path: Path, top: str, failure: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from junodcs.storage import client as storage_client

    src = local_file(tmp_path, "u.bin", 3_000_000)

    def broken_chunks(path):
        with open(path, "rb") as handle:
            yield handle.read(1_000_000)
        if failure == "dropped":
            raise ConnectionResetError("connection dropped mid-transfer")

    monkeypatch.setattr(storage_client, "_file_chunks", broken_chunks)
    lfn = f"{top}/u.bin"
    code, out, err = dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")
    assert code == 1 and err.startswith("error["), err
    assert dcs("dm", "stat", lfn)[0] == 1
    deadline = time.time() + 5  # the SE drops the temporary once it notices the broken connection
    while time.time() < deadline and leftovers(session):
        time.sleep(0.05)
    assert not session.se_file("IHEP-EOS", lfn).exists()
    assert_consistent(session, top)


def test_registration_refused_after_upload_removes_the_file(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "m.bin")
    code, out, err = dcs("dm", "put", str(src), f"{top}/m.bin", "--se", "CNAF-STORM", "-m", "no_such_field=1")
    assert code == 1 and err.startswith("error[unknown-metadata-field]:") and "removed" in err
    assert not session.se_file("CNAF-STORM", f"{top}/m.bin").exists()
    assert_consistent(session, top)


def test_put_replaces_unregistered_leftover(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "l.bin")
    lfn = f"{top}/l.bin"
    leftover = session.se_file("JINR-DCACHE", lfn)
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"dark data from a crashed client")
    assert dcs("dm", "put", str(src), lfn, "--se", "JINR-DCACHE")[0] == 0
    assert leftover.read_bytes() == src.read_bytes()
    assert_consistent(session, top)


def test_python_api_results(session: Grid, tmp_path: Path, top: str) -> None:
    src = local_file(tmp_path, "p.bin")
    with DataManager(site="GRID.CNAF.it") as dm:
        put = dm.put(src, f"{top}/p.bin", "IHEP-EOS", metadata=None)
        assert put.ok and put.checksum == adler(src.read_bytes()) and put.size == src.stat().st_size
        rep = dm.replicate(f"{top}/p.bin", "CNAF-STORM", mode="push")
        assert rep.ok and rep.mode == "push"
        got = dm.get(f"{top}/p.bin", tmp_path / "copy.bin")
        assert got.ok and got.se == "CNAF-STORM" and (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
        bad = dm.get(f"{top}/nothing")
        assert not bad.ok and bad.code == "no-such-path"
        with pytest.raises(Exception) as info:
            bad.raise_for()
        assert getattr(info.value, "code", None) == "no-such-path"
        assert dm.remove(f"{top}/p.bin").ok
    assert_consistent(session, top)


def test_get_connection_dropped_mid_transfer(session: Grid, tmp_path: Path, top: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A download cut mid-body (what httpx raises when the SE's connection closes before Content-Length
    bytes) falls back to the next replica, marks nothing Problematic (the replica is fine) and leaves no
    partial file; with no other replica it is a clear error and nothing is left locally."""
    import httpx

    src = local_file(tmp_path, "dropped.bin", 3_000_000)
    lfn = f"{top}/dropped.bin"
    assert dcs("dm", "put", str(src), lfn, "--se", "IHEP-EOS")[0] == 0
    assert dcs("dm", "replicate", lfn, "CNAF-STORM")[0] == 0
    cut_at = session.ses["IHEP-EOS"].url
    real_iter_raw = httpx.Response.iter_raw

    def dropping_iter_raw(self: httpx.Response, chunk_size: int | None = None):
        for chunk in real_iter_raw(self, chunk_size):
            if str(self.request.url).startswith(cut_at):
                yield chunk[: len(chunk) // 2]
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            yield chunk

    monkeypatch.setattr(httpx.Response, "iter_raw", dropping_iter_raw)
    dest = tmp_path / "out"
    dest.mkdir()
    code, summary = dcs_json("dm", "get", lfn, str(dest), "--site", "GRID.IHEP.cn")
    result = summary["results"][0]
    assert code == 0 and result["se"] == "CNAF-STORM", result
    assert [(a["se"], a["code"], a["marked"]) for a in result["attempts"]] == [
        ("IHEP-EOS", "connection-failed", None)]
    assert "problematic" not in result
    assert [p.name for p in dest.iterdir()] == ["dropped.bin"]
    assert (dest / "dropped.bin").read_bytes() == src.read_bytes()
    code, reps = dcs_json("dm", "replicas", lfn)
    assert {r["status"] for r in reps[lfn]} == {"AprioriGood"}

    only = tmp_path / "only"
    only.mkdir()
    code, out, err = dcs("dm", "get", lfn, str(only), "--se", "IHEP-EOS")
    assert code == 1 and "error[all-replicas-failed]" in err and "IHEP-EOS: connection-failed" in err
    assert list(only.iterdir()) == [], "no partial or temporary file"
    assert_consistent(session, top)
