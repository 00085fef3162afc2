"""RMS rules on SQLite, PostgreSQL and MariaDB: transition tables, derived statuses, claims with leases and
fencing, idempotent handlers, retry classification with NotBefore backoff, attempts against a maximum,
reset and cancel. The catalog and the transfer service are in-memory fakes here (the real ones in
test_rms_service.py)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import sqlalchemy as sa

from junodcs.core.errors import RemoteError, ServiceUnavailable
from junodcs.rms import db
from junodcs.rms.agents import RequestExecutor
from junodcs.rms.logic import (
    IllegalTransition,
    RequestService,
    Settings,
    StaleClaim,
    check_file_transition,
    check_request_transition,
    derive_request,
    now,
)
from junodcs.rms.models import RequestIn, from_dirac


# -- fakes --------------------------------------------------------------------------------------------


@dataclass
class FakeCatalog:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    replicas_: dict[str, set[str]] = field(default_factory=dict)
    down: int = 0
    calls: list[str] = field(default_factory=list)

    def _gate(self) -> None:
        if self.down > 0:
            self.down -= 1
            raise ServiceUnavailable("catalog unreachable")

    def stat(self, lfn: str) -> dict[str, Any]:
        self._gate()
        if lfn not in self.files:
            raise RemoteError(404, "no-such-path", f"no such file {lfn}")
        return {"type": "file", **self.files[lfn]}

    def set_file_status(self, lfn: str, status: str) -> dict[str, Any]:
        self._gate()
        if lfn not in self.files:
            raise RemoteError(404, "no-such-path", f"no such file {lfn}")
        self.calls.append(f"set_file_status {lfn} {status}")
        self.files[lfn]["status"] = status
        return {"lfn": lfn, "status": status}

    def replicas(self, lfns: list[str]) -> dict[str, list[dict[str, Any]]]:
        return {lfn: [{"se": se, "url": f"http://{se}{lfn}"} for se in sorted(self.replicas_.get(lfn, ()))]
                for lfn in lfns}

    def register(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for e in entries:
            self.calls.append(f"register {e['lfn']} {e['se']}")
            if e["lfn"] in self.files:
                out.append({"ok": False, "code": "file-exists", "detail": "exists"})
                continue
            self.files[e["lfn"]] = {"size": e["size"], "checksum": e["checksum"]}
            self.replicas_[e["lfn"]] = {e["se"]}
            out.append({"ok": True})
        return out

    def add_replicas(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for e in entries:
            self.calls.append(f"add_replica {e['lfn']} {e['se']}")
            if e["se"] in self.replicas_.setdefault(e["lfn"], set()):
                out.append({"ok": False, "code": "replica-exists"})
            else:
                self.replicas_[e["lfn"]].add(e["se"])
                out.append({"ok": True})
        return out


@dataclass
class FakeResult:
    ok: bool
    code: str | None = None
    detail: str | None = None

    def raise_for(self) -> FakeResult:
        if not self.ok:
            from junodcs.dm.manager import DataManagerError

            raise DataManagerError(self.detail or "failed", code=self.code or "dm-error")
        return self


@dataclass
class FakeDM:
    catalog: FakeCatalog

    def se_url(self, se: str, lfn: str) -> str:
        return f"http://{se}{lfn}"

    def se(self, name: str) -> Any:
        return type("SE", (), {"site": f"site-of-{name}"})()

    def rank(self, lfn: str, replicas: list[dict[str, Any]], site: str, *, exclude: Any = ()) -> Any:
        return [type("C", (), {"url": r["url"]})() for r in replicas if r["se"] not in exclude], []

    def remove(self, lfn: str, *, se: str | None = None, force: bool = False) -> FakeResult:
        self.catalog.calls.append(f"remove {lfn} {se}")
        reps = self.catalog.replicas_.get(lfn, set())
        if se is not None:
            if len(reps) == 1 and not force:
                return FakeResult(False, "last-replica", f"{se} holds the last replica")
            reps.discard(se)
            return FakeResult(True)
        self.catalog.files.pop(lfn, None)
        self.catalog.replicas_.pop(lfn, None)
        return FakeResult(True)

    def close(self) -> None:
        pass


@dataclass
class FakeTransfer:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    submissions: list[str] = field(default_factory=list)
    outcome: str = "FINISHED"
    reason: str = ""
    recoverable: bool = False
    finish: bool = True

    def submit(self, transfers: list[Any], *, sid: str, **_: Any) -> str:
        job_id = f"job-{sid}"
        self.submissions.append(sid)
        if job_id not in self.jobs:  # deterministic: the same sid is the same job
            self.jobs[job_id] = {"transfers": transfers, "state": "SUBMITTED"}
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        if self.finish:
            job["state"] = self.outcome
        files = [{"file_state": job["state"] if job["state"] in ("FINISHED", "FAILED") else "SUBMITTED",
                  "reason": self.reason, "recoverable": self.recoverable, "file_metadata": t.metadata}
                 for t in job["transfers"]]
        return {"job_state": job["state"], "files": files}

    def close(self) -> None:
        pass


FAST = Settings(lease=0.5, max_attempts=3, retry_delay=0.05, max_retry_delay=0.2, poll=0.0)


@pytest.fixture
def rms(engine: sa.Engine) -> RequestService:
    return RequestService(engine, FAST)


def make_executor(rms: RequestService, catalog: FakeCatalog, transfer: FakeTransfer, name: str = "ex-1"
                  ) -> RequestExecutor:
    return RequestExecutor(rms, lambda owner, group: (FakeDM(catalog), transfer), name=name, concurrency=1)


def replicate_request(name: str = "r1", lfns: tuple[str, ...] = ("/juno/a",), targets: tuple[str, ...] = ("CNAF",),
                      remove_source: bool = False) -> RequestIn:
    ops: list[dict[str, Any]] = [{"type": "ReplicateAndRegister", "target_se": list(targets),
                                  "files": [{"lfn": lfn} for lfn in lfns]}]
    if remove_source:
        ops.append({"type": "RemoveReplica", "target_se": ["IHEP"], "files": [{"lfn": lfn} for lfn in lfns]})
    return RequestIn.model_validate({"name": name, "operations": ops})


def catalog_with(*lfns: str) -> FakeCatalog:
    c = FakeCatalog()
    for lfn in lfns:
        c.files[lfn] = {"size": 10, "checksum": "0000abcd"}
        c.replicas_[lfn] = {"IHEP"}
    return c


def drive(executor: RequestExecutor, rms: RequestService, rid: int, cycles: int = 50) -> dict[str, Any]:
    for _ in range(cycles):
        executor.run_once()
        found = rms.get(rid)
        if found["status"] in ("Done", "Failed", "Canceled"):
            return found
        time.sleep(0.03)
    return rms.get(rid)


# -- pure rules ---------------------------------------------------------------------------------------


def test_transition_tables_refuse_illegal_changes() -> None:
    check_request_transition("Waiting", "Assigned")
    check_request_transition("Failed", "Waiting")
    with pytest.raises(IllegalTransition):
        check_request_transition("Done", "Waiting")
    with pytest.raises(IllegalTransition):
        check_file_transition("Done", "Waiting")
    check_file_transition("Scheduled", "Done")


def test_derived_request_status_in_order() -> None:
    assert derive_request([("Done", ["Done"]), ("Queued", ["Waiting"])])[0] == "Waiting"
    status, ops = derive_request([("Done", ["Done"]), ("Waiting", ["Scheduled", "Done"]), ("Queued", ["Waiting"])])
    assert status == "Scheduled" and ops == ["Done", "Scheduled", "Queued"]
    status, ops = derive_request([("Waiting", ["Failed", "Done"]), ("Queued", ["Waiting"])])
    assert status == "Failed" and ops == ["Failed", "Queued"]
    assert derive_request([("Waiting", ["Done"]), ("Queued", ["Done"])])[0] == "Done"
    assert derive_request([("Waiting", ["Failed", "Waiting"])])[0] == "Waiting"  # the rest is still tried


def test_dirac_failover_record_is_accepted() -> None:
    record = {"RequestName": "job_7", "JobID": 7, "SourceComponent": "JobWrapper", "Operations": [
        {"Type": "ReplicateAndRegister", "LFN": "/juno/o", "SourceSE": "F", "TargetSE": ["T"],
         "Checksum": "abc", "ChecksumType": "ADLER32", "Size": 3},
        {"Type": "RemoveReplica", "LFN": "/juno/o", "TargetSE": ["F"], "After": "ReplicateAndRegister"}]}
    parsed = RequestIn.model_validate(from_dirac(record))
    assert parsed.job_id == 7 and [o.type for o in parsed.operations] == ["ReplicateAndRegister", "RemoveReplica"]
    assert parsed.operations[0].files[0].checksum == "00000abc"


# -- execution ----------------------------------------------------------------------------------------


def test_replicate_and_register_then_remove_source(rms: RequestService) -> None:
    catalog, fts = catalog_with("/juno/a", "/juno/b"), FakeTransfer()
    rid = rms.create(replicate_request(lfns=("/juno/a", "/juno/b"), remove_source=True), "boris", "juno_data")
    assert rms.create(replicate_request(lfns=("/juno/a", "/juno/b"), remove_source=True), "boris", "x") == rid
    found = rms.get(rid)
    assert found["status"] == "Waiting" and [o["status"] for o in found["operations"]] == ["Waiting", "Queued"]
    ex = make_executor(rms, catalog, fts)
    assert ex.run_once() == 1
    found = rms.get(rid)  # copies handed to the transfer service
    assert found["status"] == "Scheduled" and found["operations"][0]["transfer_job"] == f"job-rms-{rid}-" \
        f"{found['operations'][0]['operation_id']}-1"
    assert {f["status"] for f in found["operations"][0]["files"]} == {"Scheduled"}
    assert catalog.replicas_["/juno/a"] == {"IHEP"}  # nothing registered before the copy is verified
    found = drive(ex, rms, rid)
    assert found["status"] == "Done", found
    assert catalog.replicas_ == {"/juno/a": {"CNAF"}, "/juno/b": {"CNAF"}}
    assert [o["status"] for o in found["operations"]] == ["Done", "Done"]
    assert len(fts.submissions) == 1
    # a Done request is not claimed again, and running a finished operation changes nothing
    calls = list(catalog.calls)
    assert ex.run_once() == 0
    with rms.engine.begin() as conn:
        conn.execute(db.requests.update().where(db.requests.c.request_id == rid).values(status="Waiting"))
        conn.execute(db.operations.update().where(db.operations.c.request_id == rid).values(status="Waiting"))
        conn.execute(db.files.update().values(status="Waiting"))
    assert drive(ex, rms, rid)["status"] == "Done"
    assert [c for c in catalog.calls[len(calls):] if not c.startswith("stat")] == []
    assert len(fts.submissions) == 1


def test_failed_transfer_recoverable_retries_with_backoff_then_gives_up(engine: sa.Engine, rms: RequestService
                                                                       ) -> None:
    catalog = catalog_with("/juno/a")
    fts = FakeTransfer(outcome="FAILED", reason="connection reset by peer", recoverable=True)
    # The first failure under a delay no loaded machine can outlast, so "not due yet" is a rule, not a race.
    patient = RequestService(engine, replace(FAST, retry_delay=300, max_retry_delay=600))
    rid = patient.create(replicate_request(), "boris", "juno_data")
    slow = make_executor(patient, catalog, fts)
    slow.run_once()
    slow.run_once()  # the job failed recoverably: back to Waiting with NotBefore in the future
    found = rms.get(rid)
    f = found["operations"][0]["files"][0]
    assert found["status"] == "Waiting" and f["status"] == "Waiting" and f["attempt"] == 1
    assert "connection reset" in f["error"]
    assert found["not_before"] is not None
    assert slow.run_once() == 0  # not due yet
    with engine.begin() as conn:  # the delay passes
        conn.execute(db.requests.update().where(db.requests.c.request_id == rid)
                     .values(not_before=now() - timedelta(seconds=1)))
    ex = make_executor(rms, catalog, fts)
    found = drive(ex, rms, rid)
    f = found["operations"][0]["files"][0]
    assert found["status"] == "Failed" and f["status"] == "Failed" and f["attempt"] == FAST.max_attempts
    assert "gave up after 3 attempts" in f["error"] and found["error"]
    assert fts.submissions == [f"rms-{rid}-{found['operations'][0]['operation_id']}-{n}" for n in (1, 2, 3)]
    assert catalog.replicas_["/juno/a"] == {"IHEP"}


def test_final_transfer_failure_is_not_retried(rms: RequestService) -> None:
    catalog = catalog_with("/juno/a")
    fts = FakeTransfer(outcome="FAILED", reason="checksum mismatch: source 1 destination 2", recoverable=False)
    rid = rms.create(replicate_request(remove_source=True), "boris", "juno_data")
    found = drive(make_executor(rms, catalog, fts), rms, rid)
    assert found["status"] == "Failed" and len(fts.submissions) == 1
    assert found["operations"][1]["status"] == "Queued"  # the chain stops: the source is kept
    assert catalog.replicas_["/juno/a"] == {"IHEP"}
    assert "checksum mismatch" in found["error"]


def test_catalog_outage_is_retried_missing_file_is_final(rms: RequestService) -> None:
    catalog = catalog_with("/juno/a")
    catalog.down = 1
    rid = rms.create(replicate_request(lfns=("/juno/a", "/juno/missing")), "boris", "juno_data")
    found = drive(make_executor(rms, catalog, FakeTransfer()), rms, rid)
    a, missing = found["operations"][0]["files"]
    assert a["status"] == "Done" and a["attempt"] >= 1
    assert missing["status"] == "Failed" and "no such file" in missing["error"]
    assert found["status"] == "Failed" and catalog.replicas_["/juno/a"] == {"IHEP", "CNAF"}


def test_register_remove_and_last_replica(rms: RequestService) -> None:
    catalog = catalog_with("/juno/keep")
    body = RequestIn.model_validate({"operations": [
        {"type": "RegisterFile", "target_se": ["IHEP"], "files": [{"lfn": "/juno/new", "size": 5,
                                                                    "checksum": "ADLER32:1234abcd"}]},
        {"type": "RegisterReplica", "target_se": ["CNAF"], "files": [{"lfn": "/juno/new"}]},
        {"type": "RemoveReplica", "target_se": ["IHEP"], "files": [{"lfn": "/juno/new"}]},
        {"type": "RemoveFile", "files": [{"lfn": "/juno/new"}, {"lfn": "/juno/never"}]},
        {"type": "RemoveReplica", "target_se": ["IHEP"], "files": [{"lfn": "/juno/keep"}]},
    ]})
    rid = rms.create(body, "boris", "juno_data")
    found = drive(make_executor(rms, catalog, FakeTransfer()), rms, rid)
    assert [o["status"] for o in found["operations"]] == ["Done", "Done", "Done", "Done", "Failed"]
    assert "/juno/new" not in catalog.files and catalog.replicas_["/juno/keep"] == {"IHEP"}
    assert "last replica" in found["error"] and found["status"] == "Failed"
    # reset: the failed file is tried again (still the last replica: fails again, attempts counted anew)
    reset = rms.reset(rid)
    assert reset["status"] == "Waiting" and reset["operations"][4]["files"][0]["attempt"] == 0
    found = drive(make_executor(rms, catalog, FakeTransfer()), rms, rid)
    assert found["status"] == "Failed" and found["operations"][4]["files"][0]["attempt"] == 1
    with pytest.raises(IllegalTransition):
        done = rms.create(RequestIn.model_validate({"operations": [
            {"type": "RemoveFile", "files": [{"lfn": "/juno/gone"}]}]}), "boris", None)
        drive(make_executor(rms, catalog, FakeTransfer()), rms, done)
        rms.reset(done)


def test_set_file_status_fails_clearly_and_cancel(rms: RequestService) -> None:
    rid = rms.create(RequestIn.model_validate({"operations": [
        {"type": "SetFileStatus", "arguments": {"transformation": 1, "status": "Processed"},
         "files": [{"lfn": "/juno/a"}]}]}), "boris", None)
    found = drive(make_executor(rms, FakeCatalog(), FakeTransfer()), rms, rid)
    assert found["status"] == "Failed" and "no transformation system" in found["error"]
    other = rms.create(replicate_request("c"), "boris", None)
    assert rms.cancel(other)["status"] == "Canceled"
    for again in (rms.cancel, rms.reset):  # final: neither cancelled again nor reset
        with pytest.raises(IllegalTransition):
            again(other)


def test_set_file_status_in_the_catalog_retried_and_idempotent(rms: RequestService) -> None:
    catalog = catalog_with("/juno/a")
    catalog.down = 1  # the first attempt meets an unreachable catalog
    rid = rms.create(RequestIn.model_validate({"operations": [
        {"type": "SetFileStatus", "arguments": {"status": "Trash"}, "files": [{"lfn": "/juno/a"}, {"lfn": "/juno/b"}]}]}),
        "boris", None)
    found = drive(make_executor(rms, catalog, FakeTransfer()), rms, rid)
    a, b = found["operations"][0]["files"]
    assert a["status"] == "Done" and a["attempt"] >= 1 and catalog.files["/juno/a"]["status"] == "Trash"
    assert b["status"] == "Failed" and "no such file" in b["error"] and found["status"] == "Failed"
    again = rms.create(RequestIn.model_validate({"operations": [
        {"type": "SetFileStatus", "arguments": {"status": "Trash"}, "files": [{"lfn": "/juno/a"}]}]}), "boris", None)
    assert drive(make_executor(rms, catalog, FakeTransfer()), rms, again)["status"] == "Done"
    assert catalog.calls.count("set_file_status /juno/a Trash") == 2  # a repeat changes nothing but succeeds


def test_lease_expiry_fencing_and_resume_without_duplicates(rms: RequestService) -> None:
    """Executor A claims and submits the transfer, then dies before putting the request back; its lease lapses,
    B takes the request, gets the same (deterministic) transfer job, registers once. A's late writes are
    refused."""
    catalog, fts = catalog_with("/juno/a"), FakeTransfer(finish=False)
    rid = rms.create(replicate_request(), "boris", "juno_data")
    a = make_executor(rms, catalog, fts, "A")
    claim_a, = rms.claim("A")
    current = rms.current_operation(claim_a)
    assert current is not None
    from junodcs.rms.handlers import HANDLERS, Context

    request, op, files = current
    outcome = HANDLERS[op["type"]](op, files, Context(FakeDM(catalog), fts, FAST, request))  # A is killed here
    assert rms.get(rid)["status"] == "Assigned" and rms.claim("B") == []  # lease still held
    time.sleep(FAST.lease + 0.1)
    b = make_executor(rms, catalog, fts, "B")
    assert b.run_once() == 1
    with pytest.raises(StaleClaim):
        rms.apply(claim_a, op["operation_id"], outcome)
    assert a.execute(claim_a) is None  # a zombie A changes nothing
    fts.finish = True
    found = drive(b, rms, rid)
    assert found["status"] == "Done" and found["claims"] >= 2
    assert set(fts.submissions) == {f"rms-{rid}-{op['operation_id']}-1"} and len(fts.jobs) == 1
    assert [c for c in catalog.calls if c.startswith("add_replica")] == ["add_replica /juno/a CNAF"]


def test_concurrent_executors_claim_each_request_once(engine: sa.Engine) -> None:
    # A lease far longer than the test: every second claim of a request would be a race, never an expiry.
    rms = RequestService(engine, replace(FAST, lease=300))
    ids = [rms.create(replicate_request(f"c{i}"), "boris", None) for i in range(12)]
    claimed: list[int] = []
    lock = threading.Lock()

    def grab(name: str) -> None:
        for _ in range(3):
            got = rms.claim(name, limit=3)
            with lock:
                claimed.extend(c.request_id for c in got)

    threads = [threading.Thread(target=grab, args=(f"ex{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
