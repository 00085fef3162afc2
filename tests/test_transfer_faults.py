"""Faults: the destination SE killed (SIGKILL) during a transfer and restarted; a corrupted source replica; a
transfer worker killed mid-transfer. Links are shaped (token buckets on the pulling SE) so that a copy takes
long enough to be interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmutil import Grid
from transferutil import adler, put_file, service, transfer_grid, url, wait_job, worker

from junodcs.storage.server.run import free_port
from junodcs.transfer.logic import Submitter
from junodcs.transfer.shaping import LinkShaper

RATE = 2_000_000  # bytes/s from IHEP-EOS into CNAF-STORM
ME = Submitter("boris", "juno_data", "juno", "/C=RU/O=JUNO/OU=JINR/CN=Boris Ivanov")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    shaped: dict[str, LinkShaper | None] = {}

    def shaper(name: str) -> LinkShaper | None:
        shaped[name] = LinkShaper({"*": RATE}) if name == "CNAF-STORM" else None
        return shaped[name]

    with transfer_grid(tmp_path_factory.mktemp("faults"), shaper) as g:
        yield g


SE_SCRIPT = """
import sys, secrets
from pathlib import Path
from junodcs.auth.tokens import TokenVerifier
from junodcs.storage.server.config import SEConfig
from junodcs.storage.server.run import serve
from junodcs.transfer.shaping import LinkShaper
port, root, central, rate = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
verifier = TokenVerifier(audiences=(f"http://127.0.0.1:{port}",), local_issuer=None, trusted_issuers=(central,))
serve(SEConfig(name="KILLME", root=root, vo_prefix="/juno", verify_token=verifier.verify,
               macaroon_secret=secrets.token_bytes(32), marker_interval=0.2, io_block=256 << 10,
               shaper=LinkShaper({"*": rate})), host="127.0.0.1", port=port)
"""


def start_se_process(port: int, root: Path, central: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", SE_SCRIPT, str(port), str(root), central, str(RATE)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.request("OPTIONS", f"http://127.0.0.1:{port}/juno", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("SE process did not start")


def wait_active(svc, job_id: str, timeout: float = 20) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = svc.files(job_id)[0]
        if f["file_state"] == "ACTIVE":
            return f
        time.sleep(0.05)
    raise AssertionError(f"never ACTIVE: {svc.files(job_id)}")


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".dcs-")]


def test_destination_se_killed_and_restarted(grid: Grid, tmp_path: Path) -> None:
    svc = service(grid)
    port, root = free_port(), tmp_path / "killme"
    proc = start_se_process(port, root, grid.url)
    try:
        src, data = put_file(grid, "IHEP-EOS", "/juno/test/faults/kill-se.dat", size=3_000_000)
        dst = f"http://127.0.0.1:{port}/juno/test/faults/kill-se.dat"
        with worker(grid):
            job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst],
                                            "checksum": f"ADLER32:{adler(data)}"}],
                                 "params": {"verify_checksum": "both", "retry": 3, "retry_delay": 2}}, ME)
            wait_active(svc, job_id)
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 20
            while svc.files(job_id)[0]["retry"] == 0:  # the broken copy is classified recoverable and requeued
                assert time.monotonic() < deadline, svc.files(job_id)
                time.sleep(0.05)
            proc = start_se_process(port, root, grid.url)
            job = wait_job(svc, job_id, 60)
        f, = svc.files(job_id)
        assert job["job_state"] == "FINISHED", f
        assert f["retry"] >= 1 and f["checksum"] == f"ADLER32:{adler(data)}"
        assert any("connection" in r["reason"].lower() or "transfer" in r["reason"].lower()
                   for r in svc.retries(job_id, f["file_id"]))
        assert (root / "juno/test/faults/kill-se.dat").read_bytes() == data
        assert leftovers(root) == []
    finally:
        proc.kill()
        proc.wait(10)


def test_corrupted_source_fails_with_checksum_mismatch_and_is_not_retried(grid: Grid) -> None:
    svc = service(grid)
    lfn = "/juno/test/faults/corrupt.dat"
    src, data = put_file(grid, "IHEP-EOS", lfn, size=300_000)
    local = grid.se_file("IHEP-EOS", lfn)
    corrupted = bytearray(data)
    corrupted[1000] ^= 0xFF
    local.write_bytes(bytes(corrupted))  # bit rot on the source disk
    dst = url(grid, "JINR-DCACHE", lfn)
    with worker(grid):
        job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst], "checksum": f"ADLER32:{adler(data)}"}],
                             "params": {"verify_checksum": True, "retry": 3, "retry_delay": 1}}, ME)
        job = wait_job(svc, job_id)
    f, = svc.files(job_id)
    assert job["job_state"] == "FAILED"
    assert "checksum mismatch" in f["reason"] and not f["recoverable"]
    assert f["retry"] == 0 and svc.retries(job_id, f["file_id"]) == []
    assert not grid.se_file("JINR-DCACHE", lfn).exists()


def test_worker_killed_mid_transfer_lease_expires_and_runs_again(grid: Grid, tmp_path: Path) -> None:
    svc = service(grid)
    lfn = "/juno/test/faults/kill-worker.dat"
    src, data = put_file(grid, "IHEP-EOS", lfn, size=4_000_000)
    dst = url(grid, "CNAF-STORM", lfn)  # shaped: ~2 s
    job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst], "checksum": f"ADLER32:{adler(data)}"}],
                         "params": {"verify_checksum": "both", "retry": 0}}, ME)
    env = {**os.environ, "DCS_TRANSFER_LEASE": "3", "DCS_HOME": str(tmp_path / "home")}
    agent = subprocess.Popen([sys.executable, "-m", "junodcs", "agent", "run", "transfer-worker", "--public-url",
                              grid.url, "--database-url", grid.database_url, "--grid", str(grid.grid_yaml),
                              "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = wait_active(svc, job_id, 30)
        time.sleep(0.5)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert svc.files(job_id)[0]["file_state"] == "ACTIVE"  # still held by the dead worker's lease
    with worker(grid):
        job = wait_job(svc, job_id, 60)
    files = svc.files(job_id)
    assert len(files) == 1 and job["job_state"] == "FINISHED", files
    f = files[0]
    assert f["transfer_host"] is None and first["transfer_host"] and f["retry"] == 0
    history = svc.retries(job_id, f["file_id"])
    assert len(history) == 1 and "lost its lease" in history[0]["reason"]
    assert grid.se_file("CNAF-STORM", lfn).read_bytes() == data
    assert leftovers(grid.ses["CNAF-STORM"].config.root) == []


def test_destination_checksum_is_read_from_the_final_line_and_a_wrong_one_fails(
        grid: Grid, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a pull, a junodcs destination names the stored file's adler32 in its success line: the worker
    compares that with the expected checksum instead of asking with a HEAD, and a value that differs fails
    the transfer (not retried) and removes the copy, exactly as a differing HEAD answer does."""
    from junodcs.storage.client import StorageClient
    from junodcs.storage.server import tpc

    svc = service(grid)
    asked: list[str] = []
    real_checksum = StorageClient.checksum

    def counted(self: StorageClient, surl: str, *args: object, **kwargs: object) -> str:
        asked.append(surl)
        return real_checksum(self, surl, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StorageClient, "checksum", counted)
    src, data = put_file(grid, "IHEP-EOS", "/juno/test/faults/final-line-ok.dat", size=100_000)
    dst = url(grid, "JINR-DCACHE", "/juno/test/faults/final-line-ok.dat")
    with worker(grid):
        job_id = svc.submit({"files": [{"sources": [src], "destinations": [dst], "checksum": f"ADLER32:{adler(data)}"}],
                             "params": {"verify_checksum": "both", "retry": 2}}, ME)
        assert wait_job(svc, job_id)["job_state"] == "FINISHED"
    assert dst not in asked, "the destination's checksum came with the copy"

    real_final = tpc.format_final

    def lying(ok: bool, reason: str = "Created", *, digests: dict[str, str] | None = None) -> bytes:
        return real_final(ok, reason, digests={"adler32": "0badf00d"} if digests else None)

    monkeypatch.setattr(tpc, "format_final", lying)
    lfn = "/juno/test/faults/final-line-bad.dat"
    src, data = put_file(grid, "IHEP-EOS", lfn, size=100_000)
    with worker(grid):
        job_id = svc.submit({"files": [{"sources": [src], "destinations": [url(grid, "JINR-DCACHE", lfn)],
                                        "checksum": f"ADLER32:{adler(data)}"}],
                             "params": {"verify_checksum": "both", "retry": 2, "retry_delay": 1}}, ME)
        job = wait_job(svc, job_id)
    f, = svc.files(job_id)
    assert job["job_state"] == "FAILED" and "checksum mismatch" in f["reason"] and "0badf00d" in f["reason"]
    assert f["retry"] == 0 and not f["recoverable"]
    assert not grid.se_file("JINR-DCACHE", lfn).exists(), "an unverified copy is not left behind"
