"""The transfer service end to end: the real `fts3` client (CLI and easy API) against `<server>/fts`, `dcs transfer`
commands, the three copy modes, non-recoverable errors, the HTTP-TPC test matrix and link monitoring, on a
central server with three real SEs on loopback and a transfer worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dmutil import Grid, dcs
from transferutil import adler, headers, put_file, service, token, transfer_grid, url, wait_job, worker


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with transfer_grid(tmp_path_factory.mktemp("xfer")) as g, worker(g):
        yield g


@pytest.fixture
def cli(grid: Grid, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Grid:
    monkeypatch.setenv("DCS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DCS_SERVER_URL", grid.url)
    monkeypatch.setenv("BEARER_TOKEN", token(grid))
    return grid


def fts_tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} not installed (pip install fts3, in the test extra)")
    return found


def test_endpoint_info_and_whoami(grid: Grid) -> None:
    info = httpx.get(f"{grid.url}/fts//").json()  # the fts3 client's own path: endpoint + "/" + "/"
    assert info["api"]["major"] == 3
    who = httpx.get(f"{grid.url}/fts/whoami", headers=headers(grid)).json()
    assert who["user_dn"] == "/C=RU/O=JUNO/OU=JINR/CN=Boris Ivanov" or who["user"] == "boris"
    assert who["delegation_id"]
    assert httpx.get(f"{grid.url}/fts/whoami").status_code == 401


def test_fts3_cli_submit_status_to_finished(grid: Grid) -> None:
    submit, status = fts_tool("fts-rest-transfer-submit"), fts_tool("fts-rest-transfer-status")
    src, data = put_file(grid, "IHEP-EOS", "/juno/test/fts3cli/a.dat")
    dst = url(grid, "CNAF-STORM", "/juno/test/fts3cli/a.dat")
    tok = token(grid)
    r = subprocess.run([submit, "-s", f"{grid.url}/fts", "--fts-access-token", tok, "--src-access-token", tok,
                        "--dst-access-token", tok, "-K", src, dst, f"ADLER32:{adler(data)}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().split()[-1]
    svc = service(grid)
    assert svc.job(job_id)["verify_checksum"] == "b"
    assert wait_job(svc, job_id)["job_state"] == "FINISHED"
    f, = svc.files(job_id)
    assert f["file_state"] == "FINISHED" and f["transfer_mode"] == "pull" and f["checksum"] == f"ADLER32:{adler(data)}"
    assert grid.se_file("CNAF-STORM", "/juno/test/fts3cli/a.dat").read_bytes() == data
    r = subprocess.run([status, "-s", f"{grid.url}/fts", "--fts-access-token", tok, job_id],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Status: FINISHED" in r.stdout + r.stderr, r.stderr
    r = subprocess.run([status, "-s", f"{grid.url}/fts", "--fts-access-token", tok, "--json", job_id],
                       capture_output=True, text=True, timeout=60)
    out = json.loads(r.stdout or r.stderr)
    assert out["job_state"] == "FINISHED" and out["files"][0]["dest_surl"] == dst and out["dm"] == []


def test_fts3_easy_api_submit_follow_cancel(grid: Grid) -> None:
    easy = pytest.importorskip("fts3.rest.client.easy")
    src, data = put_file(grid, "IHEP-EOS", "/juno/test/fts3easy/b.dat")
    dst = url(grid, "JINR-DCACHE", "/juno/test/fts3easy/b.dat")
    tok = token(grid)
    context = easy.Context(f"{grid.url}/fts", fts_access_token=tok)
    assert easy.whoami(context)["delegation_id"]
    transfer = easy.new_transfer(src, dst, checksum=f"ADLER32:{adler(data)}", filesize=len(data),
                                 metadata={"lfn": "/juno/test/fts3easy/b.dat"}, activity="Data Consolidation",
                                 source_token=tok, destination_token=tok)
    job = easy.new_job([transfer], verify_checksum="both", retry=2, retry_delay=1, priority=4,
                       metadata={"issuer": "test"}, id_generator=easy.JobIdGenerator.deterministic, sid="easy-1")
    job_id = easy.submit(context, job)
    assert easy.submit(context, job) == job_id  # deterministic: the same job, not a second copy
    wait_job(service(grid), job_id)
    status = easy.get_job_status(context, job_id, list_files=True)
    assert status["job_state"] == "FINISHED" and status["priority"] == 4
    assert status["job_metadata"] == {"issuer": "test"}
    assert status["files"][0]["activity"] == "Data Consolidation"
    assert status["files"][0]["file_metadata"] == {"lfn": "/juno/test/fts3easy/b.dat"}
    # cancel: a finished job stays FINISHED; a queued one becomes CANCELED
    assert easy.cancel(context, job_id)["job_state"] == "FINISHED"
    queued = easy.new_job([easy.new_transfer(src, url(grid, "JINR-DCACHE", "/juno/test/fts3easy/c.dat"),
                                             source_token=tok, destination_token=tok)], bring_online=3600)
    queued_id = easy.submit(context, queued)
    assert easy.cancel(context, queued_id)["job_state"] == "CANCELED"


@pytest.mark.parametrize("mode", ["push", "stream"])
def test_push_and_stream_modes(grid: Grid, mode: str) -> None:
    svc = service(grid)
    src, data = put_file(grid, "CNAF-STORM", f"/juno/test/modes/{mode}.dat", size=1_500_000)
    dst = url(grid, "JINR-DCACHE", f"/juno/test/modes/{mode}.dat")
    job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst]}],
                         "params": {"verify_checksum": True, "transfer_mode": mode}},
                        _submitter())
    assert wait_job(svc, job_id)["job_state"] == "FINISHED", svc.files(job_id)
    f, = svc.files(job_id)
    assert f["transfer_mode"] == mode and f["filesize"] == len(data)
    assert grid.se_file("JINR-DCACHE", f"/juno/test/modes/{mode}.dat").read_bytes() == data


def _submitter():  # type: ignore[no-untyped-def]
    from junodcs.transfer.logic import Submitter

    return Submitter("boris", "juno_data", "juno", "/C=RU/O=JUNO/OU=JINR/CN=Boris Ivanov")


def test_link_mode_configuration_and_final_errors(grid: Grid) -> None:
    svc = service(grid)
    admin = headers(grid)
    r = httpx.post(f"{grid.url}/fts/config/links", headers=admin,
                   json={"source": "IHEP-EOS", "destination": "JINR-DCACHE", "min_active": 2, "max_active": 8,
                         "tpc_mode": "push"})
    assert r.status_code == 200, r.text
    user = headers(grid, "alice", "juno_user")
    assert httpx.post(f"{grid.url}/fts/config/links", headers=user, json={"source": "*"}).status_code == 403
    src, data = put_file(grid, "IHEP-EOS", "/juno/test/errors/a.dat")
    dst = url(grid, "JINR-DCACHE", "/juno/test/errors/a.dat")
    missing = url(grid, "IHEP-EOS", "/juno/test/errors/missing.dat")
    job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst]},
                                   {"sources": [missing], "destinations": [dst + ".2"]}],
                         "params": {"retry": 3, "retry_delay": 1}}, _submitter())
    job = wait_job(svc, job_id)
    assert job["job_state"] == "FINISHEDDIRTY"
    ok, bad = svc.files(job_id)
    assert ok["transfer_mode"] == "push"
    assert bad["file_state"] == "FAILED" and "source file does not exist" in bad["reason"] and bad["retry"] == 0
    # the destination exists now: without overwrite the copy fails at once, with a readable reason
    job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst]}], "params": {"retry": 3}}, _submitter())
    assert wait_job(svc, job_id)["job_state"] == "FAILED"
    f, = svc.files(job_id)
    assert "exists and overwrite is not enabled" in f["reason"] and f["retry"] == 0 and not f["recoverable"]
    job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst]}], "params": {"overwrite": True}},
                        _submitter())
    assert wait_job(svc, job_id)["job_state"] == "FINISHED"


def test_dcs_transfer_commands(cli: Grid) -> None:
    src, data = put_file(cli, "IHEP-EOS", "/juno/test/cli/a.dat")
    dst = url(cli, "CNAF-STORM", "/juno/test/cli/a.dat")
    code, out, err = dcs("transfer", "submit", src, dst, "-K", f"ADLER32:{adler(data)}", "--wait", "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["job_state"] == "FINISHED" and job["files"][0]["file_state"] == "FINISHED"
    code, out, err = dcs("transfer", "status", job["job_id"])
    assert code == 0 and "FINISHED" in out and "CNAF-STORM" in out
    code, out, err = dcs("transfer", "ls", "--json")
    assert code == 0 and job["job_id"] in [j["job_id"] for j in json.loads(out)]
    code, out, err = dcs("transfer", "links", "--json")
    rows = json.loads(out)
    link = next(r for r in rows if (r["source"], r["destination"]) == ("IHEP-EOS", "CNAF-STORM"))
    assert link["finished"] >= 1 and link["success_rate"] == 100.0 and link["throughput"] > 0
    code, out, err = dcs("transfer", "links")
    assert code == 0 and "IHEP-EOS" in out
    code, out, err = dcs("transfer", "status", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and err.startswith("error[") and "no transfer job" in err and len(err.strip().splitlines()) == 1
    code, out, err = dcs("transfer", "submit", src, dst, "-K", "SHA9:1")
    assert code == 1 and "not supported" in err


def test_test_matrix_all_pairs_all_modes(cli: Grid) -> None:
    code, out, err = dcs("transfer", "test-matrix", "--size", "100000", "--json")
    assert code == 0, err
    matrix = json.loads(out)
    assert len(matrix) == 3 * 2 * 3
    assert all(r["ok"] for r in matrix), [r for r in matrix if not r["ok"]]
    assert {r["mode"] for r in matrix} == {"stream", "pull", "push"}
    assert all(r["rate"] and r["rate"] > 0 for r in matrix)
    code, out, err = dcs("transfer", "test-matrix", "--show")
    assert code == 0 and "HTTP-TPC test matrix" in out and "push" in out
    # results are kept over time
    code, out, err = dcs("transfer", "test-matrix", "--size", "1000", "--mode", "pull", "--se", "IHEP-EOS",
                         "--se", "CNAF-STORM", "--json")
    pull = [r for r in json.loads(out) if r["mode"] == "pull" and r["source"] == "IHEP-EOS"
            and r["destination"] == "CNAF-STORM"]
    assert pull[0]["runs"] == 2 and pull[0]["successes"] == 2


def test_prometheus_and_optimizer(grid: Grid) -> None:
    svc = service(grid)
    decisions = svc.run_optimizer()
    assert decisions
    evolution = httpx.get(f"{grid.url}/fts/optimizer/evolution", headers=headers(grid)).json()
    assert evolution and "rationale" in evolution[0]
    text = httpx.get(f"{grid.url}/metrics").text
    assert "dcs_transfer_link_throughput_mbps" in text and "dcs_transfer_link_success_rate" in text
