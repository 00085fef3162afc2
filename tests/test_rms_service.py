"""The RMS end to end: a real central server (auth, catalog, transfer, rms) with a transfer worker and three
real SEs on loopback, the rms-executor agent, requests through the REST client and `dcs request` /
`dcs dm replicate --async`. ReplicateAndRegister copies by the transfer service and registers only verified
copies; the job wrapper's failover record (replicate from the failover SE, then remove that copy); a
PutAndRegister from a failover SE; an executor killed mid-request (lease lapses, another resumes, nothing
duplicated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from dmutil import Grid, assert_consistent, dcs
from transferutil import adler, headers, put_file, token, transfer_grid, worker

from junodcs.rms.agents import RequestExecutor, executor_from_app_state
from junodcs.rms.client import RequestClient
from junodcs.rms.logic import Settings

FAST = Settings(lease=2.0, max_attempts=5, retry_delay=0.3, max_retry_delay=1.0, poll=0.2, transfer_retry=1)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with transfer_grid(tmp_path_factory.mktemp("rms")) as g, worker(g):
        g.app.state.rms_settings = FAST
        yield g


@pytest.fixture
def executor(grid: Grid) -> Iterator[RequestExecutor]:
    ex = executor_from_app_state(grid.app.state, poll=0.1, name="test-executor")
    grid.app.state.rms_executor = ex
    stop = threading.Event()
    thread = threading.Thread(target=ex.loop, args=(stop,), daemon=True)
    thread.start()
    yield ex
    stop.set()
    ex.wake.set()
    thread.join(10)
    grid.app.state.rms_executor = None


def rms(grid: Grid, user: str = "boris", group: str = "juno_data") -> RequestClient:
    return RequestClient(grid.url, token=token(grid, user, group))


def dm(grid: Grid) -> Any:
    from junodcs.dm import DataManager

    return DataManager(grid.url, token=token(grid))


def fts_jobs_for(grid: Grid, sid_prefix: str) -> int:
    """Transfer files whose metadata names this request (how many copies the RMS asked for)."""
    from junodcs.transfer import db as tdb

    with grid.app.state.engine.connect() as conn:
        rows = conn.execute(sa.select(tdb.files.c.file_metadata)).scalars().all()
    return sum(1 for r in rows if r and json.loads(r).get("request_id") == sid_prefix)


def put_registered(grid: Grid, se: str, lfn: str, tmp_path: Path, size: int = 300_000) -> bytes:
    data = os.urandom(size)
    local = tmp_path / Path(lfn).name
    local.write_bytes(data)
    with dm(grid) as manager:
        manager.put(local, lfn, se).raise_for()
    return data


def test_replicate_and_register_through_the_transfer_service(grid: Grid, executor: RequestExecutor,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = put_registered(grid, "IHEP-EOS", "/juno/test/rms/a.dat", tmp_path)
    with rms(grid) as client:
        rid = client.replicate(["/juno/test/rms/a.dat"], ["CNAF-STORM", "JINR-DCACHE"], name="rar-a")
        assert client.replicate(["/juno/test/rms/a.dat"], "CNAF-STORM", name="rar-a") == rid  # same name, same request
        found = client.wait(rid, timeout=60)
    assert found["status"] == "Done", found
    op, = found["operations"]
    assert op["status"] == "Done" and op["files"][0]["status"] == "Done" and op["transfer_round"] == 1
    assert grid.se_file("CNAF-STORM", "/juno/test/rms/a.dat").read_bytes() == data
    assert grid.se_file("JINR-DCACHE", "/juno/test/rms/a.dat").read_bytes() == data
    with dm(grid) as manager:
        assert {r["se"] for r in manager.catalog.replicas(["/juno/test/rms/a.dat"])["/juno/test/rms/a.dat"]} == {
            "IHEP-EOS", "CNAF-STORM", "JINR-DCACHE"}
    monkeypatch.setenv("DCS_SERVER_URL", grid.url)
    monkeypatch.setenv("BEARER_TOKEN", token(grid))
    assert_consistent(grid, "/juno/test/rms")
    assert fts_jobs_for(grid, rid) == 2
    # others cannot see it; an administrator can
    other = httpx.get(f"{grid.url}/api/v1/rms/requests/{rid}", headers=headers(grid, "alice", "juno_user"))
    assert other.status_code == 403


def test_failover_record_and_put_and_register(grid: Grid, executor: RequestExecutor, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # what the job wrapper leaves when the output SE failed: the file is on the failover SE (registered there)
    data = put_registered(grid, "JINR-DCACHE", "/juno/test/rmsfo/out.root", tmp_path)
    record = {"RequestName": "sim_job_41", "JobID": 41, "SourceComponent": "JobWrapper", "Operations": [
        {"Type": "ReplicateAndRegister", "LFN": "/juno/test/rmsfo/out.root", "SourceSE": "JINR-DCACHE",
         "TargetSE": ["CNAF-STORM"], "Checksum": adler(data), "ChecksumType": "ADLER32", "Size": len(data)},
        {"Type": "RemoveReplica", "LFN": "/juno/test/rmsfo/out.root", "TargetSE": ["JINR-DCACHE"],
         "After": "ReplicateAndRegister"}]}
    # PutAndRegister: a copy on a failover SE the catalog does not know yet
    src, raw = put_file(grid, "IHEP-EOS", "/juno/test/rmsput/raw.dat")
    with rms(grid) as client:
        fo = client.submit(record)
        put = client.submit({"name": "put-raw", "operations": [
            {"type": "PutAndRegister", "source_se": "IHEP-EOS", "target_se": ["CNAF-STORM"],
             "files": [{"lfn": "/juno/test/rmsput/raw.dat", "size": len(raw), "checksum": adler(raw)}]},
            {"type": "RemoveReplica", "target_se": ["IHEP-EOS"], "files": [{"lfn": "/juno/test/rmsput/raw.dat"}]}]})
        found, placed = client.wait(fo, timeout=60), client.wait(put, timeout=60)
        assert client.list(job_id=41)[0]["request_id"] == fo
    assert found["status"] == "Done" and found["job_id"] == 41, found
    assert placed["status"] == "Done", placed
    assert grid.se_file("CNAF-STORM", "/juno/test/rmsfo/out.root").read_bytes() == data
    assert not grid.se_file("JINR-DCACHE", "/juno/test/rmsfo/out.root").exists()
    assert grid.se_file("CNAF-STORM", "/juno/test/rmsput/raw.dat").read_bytes() == raw
    with dm(grid) as manager:
        reps = manager.catalog.replicas(["/juno/test/rmsfo/out.root", "/juno/test/rmsput/raw.dat"])
        entry = manager.catalog.stat("/juno/test/rmsput/raw.dat")
    assert [r["se"] for r in reps["/juno/test/rmsfo/out.root"]] == ["CNAF-STORM"]
    assert [r["se"] for r in reps["/juno/test/rmsput/raw.dat"]] == ["CNAF-STORM"]
    assert entry["checksum"] == adler(raw) and entry["size"] == len(raw)
    monkeypatch.setenv("DCS_SERVER_URL", grid.url)
    monkeypatch.setenv("BEARER_TOKEN", token(grid))
    assert_consistent(grid, "/juno/test/rmsfo")


def test_missing_source_fails_without_registering(grid: Grid, executor: RequestExecutor) -> None:
    with rms(grid) as client:
        rid = client.submit({"operations": [
            {"type": "PutAndRegister", "source_se": "IHEP-EOS", "target_se": ["CNAF-STORM"],
             "files": [{"lfn": "/juno/test/rmsbad/none.dat", "size": 1, "checksum": "00000001"}]}]})
        found = client.wait(rid, timeout=60)
    assert found["status"] == "Failed" and "does not exist" in found["error"], found
    assert found["operations"][0]["files"][0]["attempt"] == 1  # final: not retried
    with dm(grid) as manager, pytest.raises(Exception):
        manager.catalog.stat("/juno/test/rmsbad/none.dat")


class Killed(BaseException):
    """Stands for SIGKILL of the executor's process at a chosen point."""


def test_executor_killed_mid_request_resumes_without_duplicates(grid: Grid, tmp_path: Path) -> None:
    """Executor A submits the copy to the transfer service and dies before recording anything; its lease
    lapses, executor B takes the request, finds the same transfer job (deterministic id) and registers once."""
    data = put_registered(grid, "IHEP-EOS", "/juno/test/rmskill/k.dat", tmp_path)
    state = grid.app.state
    a = executor_from_app_state(state, name="A")

    def die(stage: str, claim: Any) -> None:
        if stage == "handled":
            raise Killed

    a.hook = die
    with rms(grid) as client:
        rid = client.replicate(["/juno/test/rmskill/k.dat"], "CNAF-STORM", name="kill-me")
        with pytest.raises(Killed):
            a.run_once()
        assert client.show(rid)["status"] == "Assigned"
        b = executor_from_app_state(state, name="B")
        assert b.run_once() == 0  # A's lease still holds
        time.sleep(FAST.lease + 0.2)
        deadline = time.monotonic() + 60
        while client.show(rid)["status"] not in ("Done", "Failed") and time.monotonic() < deadline:
            b.run_once()
            time.sleep(0.1)
        found = client.show(rid)
    assert found["status"] == "Done" and found["claims"] >= 2, found
    assert found["operations"][0]["transfer_round"] == 1
    assert fts_jobs_for(grid, rid) == 1  # one copy, not two
    assert grid.se_file("CNAF-STORM", "/juno/test/rmskill/k.dat").read_bytes() == data
    with dm(grid) as manager:
        reps = manager.catalog.replicas(["/juno/test/rmskill/k.dat"])["/juno/test/rmskill/k.dat"]
    assert sorted(r["se"] for r in reps) == ["CNAF-STORM", "IHEP-EOS"]


def test_agent_process_sigkilled_then_another_finishes(grid: Grid, tmp_path: Path) -> None:
    """A real `dcs agent run rms-executor` process is SIGKILLed while it holds requests; an executor started
    afterwards finishes them, each copied once."""
    lfns = [f"/juno/test/rmssig/{i}.dat" for i in range(3)]
    for lfn in lfns:
        put_registered(grid, "IHEP-EOS", lfn, tmp_path, size=100_000)
    env = {**os.environ, "DCS_RMS_LEASE": "2", "DCS_RMS_POLL": "0.2", "DCS_RMS_EXECUTOR_POLL": "0.1",
           "DCS_HOME": str(tmp_path / "home")}
    agent = subprocess.Popen([sys.executable, "-m", "junodcs", "agent", "run", "rms-executor", "--public-url",
                              grid.url, "--grid", str(grid.grid_yaml), "--database-url",
                              grid.database_url, "--log-level", "warning"],  # type: ignore[attr-defined]
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with rms(grid) as client:
            ids = [client.replicate([lfn], "JINR-DCACHE", name=f"sig-{i}") for i, lfn in enumerate(lfns)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the agent process has taken them
                if all(client.show(i)["claims"] >= 1 for i in ids):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(agent.stderr.read().decode() if agent.poll() is not None else "not claimed")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    time.sleep(FAST.lease + 0.2)
    b = executor_from_app_state(grid.app.state, name="after-kill")
    with rms(grid) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(client.show(i)["status"] not in ("Done", "Failed") for i in ids):
            b.run_once()
            time.sleep(0.1)
        found = [client.show(i) for i in ids]
    assert [f["status"] for f in found] == ["Done"] * 3, found
    assert [fts_jobs_for(grid, i) for i in ids] == [1, 1, 1]


def test_dcs_request_commands_and_async_replicate(grid: Grid, executor: RequestExecutor, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCS_SERVER_URL", grid.url)
    monkeypatch.setenv("BEARER_TOKEN", token(grid))
    put_registered(grid, "IHEP-EOS", "/juno/test/rmscli/c.dat", tmp_path)
    code, out, err = dcs("dm", "replicate", "/juno/test/rmscli/c.dat", "CNAF-STORM", "--async", "--json")
    assert code == 0, err
    rid = json.loads(out)["request_id"]
    with rms(grid) as client:
        assert client.wait(rid, timeout=60)["status"] == "Done"
    code, out, err = dcs("request", "ls", "--json")
    assert code == 0, err
    assert rid in [r["request_id"] for r in json.loads(out)]
    code, out, err = dcs("request", "ls")
    assert code == 0 and "Done" in out
    code, out, err = dcs("request", "show", str(rid), "--json")
    assert code == 0 and json.loads(out)["operations"][0]["type"] == "ReplicateAndRegister"
    code, out, err = dcs("request", "show", str(rid))
    assert code == 0 and "ReplicateAndRegister" in out and "/juno/test/rmscli/c.dat" in out
    code, out, err = dcs("request", "reset", str(rid))
    assert code == 1 and "illegal-transition" in err and len(err.strip().splitlines()) == 1
    with rms(grid) as client:  # a failed request: reset puts it back in the queue
        bad = client.submit({"operations": [{"type": "RemoveReplica", "target_se": ["IHEP-EOS"],
                                             "files": [{"lfn": "/juno/test/rmscli/c.dat"}, ]},
                                            {"type": "SetFileStatus", "files": [{"lfn": "/juno/test/rmscli/c.dat"}]}]})
        assert client.wait(bad, timeout=60)["status"] == "Failed"
    code, out, err = dcs("request", "reset", str(bad), "--json")
    assert code == 0, err
    assert json.loads(out)["operations"][1]["files"][0]["attempt"] == 0
    code, out, err = dcs("request", "show", "999999")
    assert code == 1 and "no request 999999" in err


def test_job_wrapper_failover_record_becomes_a_request(grid: Grid, executor: RequestExecutor, tmp_path: Path) -> None:
    """The wrapper's hook submits its failover record as the job's owner; the executor finishes it."""
    from junodcs.wms.pilot.wrapper import JobWrapper, WrapperOptions

    data = put_registered(grid, "JINR-DCACHE", "/juno/test/rmswrap/o.root", tmp_path)
    owner_token = token(grid)

    class FakeWMS:
        server_url = grid.url

        def payload_token(self, job_id: int, attempt: int, pilot_id: str) -> dict[str, str]:
            return {"access_token": owner_token}

    wrapper = JobWrapper(FakeWMS(), {"job_id": 77, "attempt": 2, "description": {}},
                         WrapperOptions(site="GRID.JINR.ru", ce="ce", pilot_id="p1", workdir=tmp_path))
    record = {"RequestName": "job_77", "JobID": 77, "Attempt": 2, "Owner": "boris", "SourceComponent": "JobWrapper",
              "Operations": [
                  {"Type": "ReplicateAndRegister", "LFN": "/juno/test/rmswrap/o.root", "SourceSE": "JINR-DCACHE",
                   "TargetSE": ["CNAF-STORM"], "Checksum": adler(data), "ChecksumType": "ADLER32",
                   "Size": len(data)},
                  {"Type": "RemoveReplica", "LFN": "/juno/test/rmswrap/o.root", "TargetSE": ["JINR-DCACHE"],
                   "After": "ReplicateAndRegister"}]}
    wrapper._submit_failover_request(record)
    rid = wrapper.parameters["FailoverRequestID"]
    with rms(grid) as client:
        found = client.wait(rid, timeout=60)
    assert found["status"] == "Done" and found["job_id"] == 77 and found["name"] == "job_77.2", found
    assert not grid.se_file("JINR-DCACHE", "/juno/test/rmswrap/o.root").exists()
    assert grid.se_file("CNAF-STORM", "/juno/test/rmswrap/o.root").read_bytes() == data
    # the server unreachable: the record stays, the reason is noted, the job is not harmed
    FakeWMS.server_url = "http://127.0.0.1:9"
    wrapper._submit_failover_request(record)
    assert "FailoverRequestError" in wrapper.parameters
