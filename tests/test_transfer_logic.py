"""Transfer rules without servers: state machines, job state derivation, checksums, error classes, the optimizer,
scheduling limits and leases on a real (SQLite) database."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from junodcs.transfer.logic import (
    FILE_TRANSITIONS,
    IllegalTransition,
    Outcome,
    Settings,
    Submitter,
    TransferService,
    check_file_transition,
    check_job_transition,
    classify,
    derive_job_state,
    parse_checksum,
    transfer_timeout,
    verify_mode,
)
from junodcs.transfer.models import FileState, LinkConfig, SELimits
from junodcs.transfer.optimizer import LinkSample, Previous, Range, optimize

F = FileState
ME = Submitter("boris", "juno_data", "juno", "/C=RU/O=JUNO/OU=JINR/CN=Boris Ivanov")


def test_file_transitions_are_one_table_and_illegal_ones_raise() -> None:
    check_file_transition(F.SUBMITTED, F.READY)
    check_file_transition(F.ACTIVE, F.SUBMITTED)  # recoverable failure, retried
    check_file_transition(F.STAGING, F.STARTED)
    check_file_transition(F.NOT_USED, F.SUBMITTED)
    for terminal in (F.FINISHED, F.FAILED, F.CANCELED):
        assert FILE_TRANSITIONS[terminal] == frozenset()
        with pytest.raises(IllegalTransition):
            check_file_transition(terminal, F.SUBMITTED)
    with pytest.raises(IllegalTransition):
        check_file_transition(F.SUBMITTED, F.FINISHED)
    with pytest.raises(IllegalTransition):
        check_job_transition("FINISHED", "ACTIVE")


@pytest.mark.parametrize(("files", "expected"), [
    ([(0, "FINISHED"), (1, "FINISHED")], "FINISHED"),
    ([(0, "FINISHED"), (1, "FAILED")], "FINISHEDDIRTY"),
    ([(0, "FAILED"), (1, "FAILED")], "FAILED"),
    ([(0, "CANCELED"), (1, "CANCELED")], "CANCELED"),
    ([(0, "FINISHED"), (1, "ACTIVE")], "ACTIVE"),
    ([(0, "SUBMITTED"), (1, "SUBMITTED")], "SUBMITTED"),
    ([(0, "STAGING"), (1, "STARTED")], "STAGING"),
    ([(0, "ARCHIVING")], "ARCHIVING"),
    # multi-source: one logical file, its first replica failed, the second finished
    ([(0, "FAILED"), (0, "FINISHED"), (0, "NOT_USED")], "FINISHED"),
    ([(0, "FAILED"), (0, "SUBMITTED")], "SUBMITTED"),  # the next replica is queued
])
def test_job_state_is_derived_from_files(files: list[tuple[int, str]], expected: str) -> None:
    assert derive_job_state(files) == expected


def test_checksums_and_verify_modes() -> None:
    assert parse_checksum("ADLER32:1A2B3C") == ("adler32", "001a2b3c")
    assert parse_checksum("ADLER32") == ("adler32", None)
    assert parse_checksum(None) == ("adler32", None)
    with pytest.raises(Exception, match="not supported"):
        parse_checksum("SHA1:abc")
    assert verify_mode(True, False) == "b"
    assert verify_mode(False, True) == "t"
    assert verify_mode(False, False) == "n"
    assert verify_mode("s", True) == "s" and verify_mode("both", False) == "b" and verify_mode("n", True) == "n"
    assert transfer_timeout(100_000_000, None) == pytest.approx(800.0)
    assert transfer_timeout(100_000_000, 30) == 30.0


def test_error_classification() -> None:
    from junodcs.core.errors import Conflict, Forbidden, NotFound
    from junodcs.storage.client import ChecksumMismatch, StorageError, TransferFailed

    never = [NotFound("GET x: HTTP 404"), Conflict("exists"), Forbidden("nope"), ChecksumMismatch("a != b"),
             TransferFailed("pull copy failed: checksum mismatch: source adler32=1, destination adler32=2"),
             TransferFailed("pull copy failed: Remote side failed with status code 404 on GET http://x"),
             TransferFailed("pull copy failed: /juno/x exists and Overwrite is F")]
    for error in never:
        assert not classify(error).recoverable, error
    assert "checksum mismatch" in classify(never[3]).reason
    assert "overwrite" in classify(never[-1]).reason
    always = [TimeoutError("read timed out"), StorageError("PUT x: HTTP 503"),
              TransferFailed("pull copy failed: transfer from http://x failed: Connection reset by peer"),
              ConnectionResetError("reset")]
    for error in always:
        assert classify(error).recoverable, error


def test_optimizer_increases_holds_and_decreases() -> None:
    rng = Range(2, 20)
    first = optimize(LinkSample(0, 100, 0, 0, 50), None, rng)
    assert first.active == 11 and "middle" in first.rationale
    assert optimize(LinkSample(0, 100, 0, 0, 50), None, Range(2, 20, specific=True)).active == 20
    prev = Previous(10, 50.0, 100.0, 0, 1e6)
    up = optimize(LinkSample(60.0, 100.0, 0, 10, 100, 1e6), prev, rng)
    assert up.active == 12 and "increase" in up.rationale
    bad = optimize(LinkSample(60.0, 80.0, 5, 10, 100, 1e6), prev, rng)
    assert bad.active == 9 and "success rate" in bad.rationale
    hold = optimize(LinkSample(60.0, 100.0, 0, 10, 3, 1e6), prev, rng)
    assert hold.active == 10 and "queue" in hold.rationale
    crash = optimize(LinkSample(0.5, 100.0, 0, 10, 100, 1e6), Previous(10, 50.0, 100.0, 0, 1e6), rng)
    assert crash.active == 10  # ema 45.05: same order of magnitude, hold
    assert optimize(LinkSample(0, 100, 0, 0, 50), Previous(2, 0, 100, 0, 0), rng).rationale.startswith("no throughput")
    assert optimize(LinkSample(60.0, 50.0, 9, 2, 100), Previous(2, 50, 90, 0, 0), rng).active == 2  # min bound


@pytest.fixture
def service(tmp_path: Path) -> TransferService:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    upgrade(engine)
    return TransferService(engine, settings=Settings(lease=0.5, default_retry_delay=0),
                           se_names={"http://a:1": "A", "http://b:2": "B", "http://c:3": "C"})


def job(n: int, src: str = "http://a:1", dst: str = "http://b:2", **params: object) -> dict:
    return {"files": [{"sources": [f"{src}/juno/f{i}"], "destinations": [f"{dst}/juno/f{i}"],
                       "checksum": "ADLER32:0000abcd"} for i in range(n)], "params": {"retry": 1, **params}}


def test_claim_respects_link_limit_and_se_caps_and_leases(service: TransferService) -> None:
    job_id = service.submit(job(10), ME)
    service.set_link(LinkConfig(source="A", destination="B", min_active=1, max_active=3))
    first = service.claim("w1", 100)
    assert len(first) == 3  # the configured link's maximum
    assert service.claim("w2", 100) == []
    service.set_se("B", SELimits(inbound_max_active=4))
    service.set_link(LinkConfig(source="A", destination="B", min_active=1, max_active=50))
    assert len(service.claim("w2", 100)) == 1  # B takes at most 4 in total
    assert service.job(job_id)["job_state"] == "ACTIVE"
    # a worker that never reports loses its files when the lease runs out; its late result is ignored
    time.sleep(0.6)
    assert service.reap_expired() == 4
    late = service.report([Outcome(first[0].file_id, first[0].attempt, F.FINISHED, filesize=1, duration=1.0)], "w1")
    assert late == {first[0].file_id: "stale"}
    again = {c.file_id: c for c in service.claim("w3", 100)}
    assert first[0].file_id in again and again[first[0].file_id].attempt == first[0].attempt + 1
    assert "lost its lease" in service.retries(job_id, first[0].file_id)[0]["reason"]


def test_report_retries_recoverable_and_promotes_next_replica(service: TransferService) -> None:
    body = {"files": [{"sources": ["http://a:1/juno/x", "http://c:3/juno/x"], "destinations": ["http://b:2/juno/x"]}],
            "params": {"retry": 1}}
    job_id = service.submit(body, ME)
    assert [f["file_state"] for f in service.files(job_id)] == ["SUBMITTED", "NOT_USED"]
    (c,) = service.claim("w", 10)
    service.mark_active([(c.file_id, c.attempt, "pull")], "w")
    assert service.report([Outcome(c.file_id, c.attempt, F.FAILED, "TRANSFER: timeout", True)], "w") == \
        {c.file_id: "SUBMITTED"}
    (c,) = service.claim("w", 10)
    service.mark_active([(c.file_id, c.attempt, "pull")], "w")
    service.report([Outcome(c.file_id, c.attempt, F.FAILED, "TRANSFER: timeout", True)], "w")  # retries used up
    states = [f["file_state"] for f in service.files(job_id)]
    assert states == ["FAILED", "SUBMITTED"]
    (c2,) = service.claim("w", 10)
    assert c2.source_surl == "http://c:3/juno/x"
    service.mark_active([(c2.file_id, c2.attempt, "pull")], "w")
    service.report([Outcome(c2.file_id, c2.attempt, F.FINISHED, filesize=10, duration=0.1)], "w")
    assert service.job(job_id)["job_state"] == "FINISHED"


def test_cancel_and_deterministic_ids(service: TransferService) -> None:
    a = service.submit(job(2, id_generator="deterministic", sid="rms-1-1"), ME)
    assert service.submit(job(2, id_generator="deterministic", sid="rms-1-1"), ME) == a
    assert len(service.files(a)) == 2
    assert service.cancel(a)["job_state"] == "CANCELED"
    assert service.claim("w", 10) == []


def test_shares_pick_by_weight(service: TransferService) -> None:
    import random

    service.set_link(LinkConfig(source="*", destination="*", min_active=1, max_active=1))
    service.set_share("juno", "express", 9.0)
    service.set_share("juno", "default", 1.0)
    for activity in ("express", "default"):
        body = job(30)
        for f in body["files"]:
            f["activity"] = activity
        service.submit(body, ME)
    picks = {"express": 0, "default": 0}
    rng = random.Random(1)
    for _ in range(20):
        (c,) = service.claim("w", 1, rng=rng)
        picks[c.activity] += 1
        service.mark_active([(c.file_id, c.attempt, "pull")], "w")
        service.report([Outcome(c.file_id, c.attempt, F.FINISHED, filesize=1, duration=0.1)], "w")
    assert picks["express"] > picks["default"]


@pytest.mark.parametrize("known_job", [False, True], ids=["read-first", "job-given"])
def test_batched_start_and_finish_on_every_database(engine: object, known_job: bool) -> None:
    """The reporter's batch paths (one executemany for READY -> ACTIVE and one for ACTIVE -> FINISHED) on
    SQLite, PostgreSQL and MariaDB: applied only to this worker's current attempt, stale ones reported.
    Both with results that name their job (a worker's: no read before the update) and without."""
    svc = TransferService(engine, settings=Settings(lease=60.0), se_names={"http://a:1": "A", "http://b:2": "B"})  # type: ignore[arg-type]
    job_id = svc.submit(job(6), ME)
    claimed = svc.claim("w", 100)
    assert len(claimed) == 6
    canceled = claimed[5]
    svc.cancel(job_id, [canceled.file_id])
    started = svc.mark_active([(c.file_id, c.attempt, "pull") for c in claimed[:4]]
                              + [(claimed[4].file_id, claimed[4].attempt + 7, "pull"),  # not this attempt
                                 (canceled.file_id, canceled.attempt, "pull")], "w")
    assert started == {c.file_id for c in claimed[:4]}
    assert svc.mark_active([(claimed[0].file_id, claimed[0].attempt, "pull")], "other") == set()
    outcomes = [Outcome(c.file_id, c.attempt, F.FINISHED, filesize=2048, duration=0.5, mode="pull") for c in claimed[:3]]
    outcomes.append(Outcome(claimed[3].file_id, claimed[3].attempt + 1, F.FINISHED, filesize=1, duration=1.0))
    if known_job:
        for o in outcomes:
            o.job_id = job_id
    applied = svc.report(outcomes, "w")
    assert applied == {**{c.file_id: "FINISHED" for c in claimed[:3]}, claimed[3].file_id: "stale"}
    before = {f["file_id"]: f for f in svc.files(job_id)}
    # a repeated result changes nothing; without a read first it cannot be told from the first one, so it is
    # reported as the state the file holds for that attempt
    assert svc.report(outcomes[:1], "w") == {claimed[0].file_id: "FINISHED" if known_job else "stale"}
    files = {f["file_id"]: f for f in svc.files(job_id)}
    assert files == before
    for c in claimed[:3]:
        f = files[c.file_id]
        assert f["file_state"] == "FINISHED" and f["filesize"] == 2048 and f["transfer_mode"] == "pull"
        assert f["tx_duration"] == pytest.approx(0.5) and f["throughput"] == pytest.approx(2048 / 1e6 / 0.5)
        assert f["start_time"] is not None and f["finish_time"] is not None and f["transfer_host"] is None
    assert files[claimed[3].file_id]["file_state"] == "ACTIVE"
    assert files[claimed[4].file_id]["file_state"] == "READY"
    assert files[canceled.file_id]["file_state"] == "CANCELED"
    assert svc.job(job_id)["job_state"] == "ACTIVE"
    svc.report([Outcome(claimed[3].file_id, claimed[3].attempt, F.FINISHED, filesize=1, duration=1.0,
                        job_id=job_id if known_job else None)], "w")
    svc.cancel(job_id, [claimed[4].file_id])
    assert svc.job(job_id)["job_state"] == "FINISHEDDIRTY"


class _MarkArrivesLate(queue.Queue):  # type: ignore[type-arg]
    """The started-queue of a worker whose copy queues its mark and its result while the reporter drains."""

    def __init__(self, on_empty: object) -> None:
        super().__init__()
        self.on_empty = on_empty

    def get_nowait(self):  # type: ignore[no-untyped-def]
        if self.empty() and self.on_empty is not None:
            hook, self.on_empty = self.on_empty, None
            hook()  # type: ignore[operator]
            raise queue.Empty  # this drain has ended: the mark is for the next one
        return super().get_nowait()


def test_reporter_never_lets_a_result_overtake_its_start_mark(service: TransferService) -> None:
    from junodcs.transfer.agents import TransferWorker, WorkerOptions

    job_id = service.submit(job(1), ME)
    worker = TransferWorker(service, options=WorkerOptions(concurrency=1, optimizer=False, stager=False), name="w")
    (c,) = service.claim("w", 1)
    worker.inflight[c.file_id] = (c, threading.Event())

    def copy_starts_and_ends() -> None:  # a copy of a few milliseconds, between the reporter's two drains
        worker._started.put((c.file_id, c.attempt, "pull"))
        worker._results.put(Outcome(c.file_id, c.attempt, F.FINISHED, filesize=1, duration=0.001))

    worker._started = _MarkArrivesLate(copy_starts_and_ends)
    worker._flush()
    worker._flush()
    assert [f["file_state"] for f in service.files(job_id)] == ["FINISHED"]
    assert worker.inflight == {} and worker.completed == 1
    worker.pool.shutdown()


def test_reporter_keeps_a_batch_the_database_refused(service: TransferService,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from junodcs.transfer.agents import TransferWorker, WorkerOptions

    job_id = service.submit(job(2), ME)
    worker = TransferWorker(service, options=WorkerOptions(concurrency=2, optimizer=False, stager=False), name="w")
    claimed = service.claim("w", 2)
    for c in claimed:
        worker.inflight[c.file_id] = (c, threading.Event())
        worker._started.put((c.file_id, c.attempt, "pull"))
        worker._results.put(Outcome(c.file_id, c.attempt, F.FINISHED, filesize=1, duration=0.01))
    real_report = service._report

    def locked(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(service, "_report", locked)  # the flush's transaction fails: marks roll back too
    with pytest.raises(RuntimeError):
        worker._flush()
    assert set(worker.inflight) == {c.file_id for c in claimed}, "still in flight, so its lease is renewed"
    service.renew_leases("w", list(worker.inflight))
    monkeypatch.setattr(service, "_report", real_report)
    worker._flush()
    assert [f["file_state"] for f in service.files(job_id)] == ["FINISHED", "FINISHED"]
    assert worker.inflight == {} and worker.completed == 2
    worker.pool.shutdown()


def test_a_stopping_worker_puts_files_it_never_started_back_in_the_queue(service: TransferService) -> None:
    from junodcs.transfer.agents import TransferWorker, WorkerOptions

    job_id = service.submit(job(3), ME)
    worker = TransferWorker(service, options=WorkerOptions(concurrency=1, optimizer=False, stager=False), name="w")
    for c in service.claim("w", 3):  # claimed ahead of the copy threads (prefetch), none started
        worker.inflight[c.file_id] = (c, threading.Event())
    assert [f["file_state"] for f in service.files(job_id)] == ["READY"] * 3
    worker.stop()
    assert [f["file_state"] for f in service.files(job_id)] == ["SUBMITTED"] * 3, "not held until the lease ends"
    assert len(service.claim("w2", 3)) == 3
    assert service.retries(job_id, service.files(job_id)[0]["file_id"]) == [], "no retry counted"


def test_stopping_a_worker_requeues_its_running_copies_instead_of_canceling_them(service: TransferService) -> None:
    """A graceful stop (server restart) interrupts the copies; the user did not cancel anything."""
    from junodcs.transfer.agents import Canceled, TransferWorker, WorkerOptions

    job_id = service.submit(job(2), ME)
    worker = TransferWorker(service, options=WorkerOptions(concurrency=2, prefetch=0, optimizer=False,
                                                           stager=False, poll=0.01), name="w")
    running = threading.Barrier(3)

    def copy_until_interrupted(c, mode, canceled):  # type: ignore[no-untyped-def]
        running.wait(10)
        canceled.wait(30)
        try:
            raise Canceled()
        except Canceled:  # what `Copier.run` answers when its copy is interrupted
            return Outcome(c.file_id, c.attempt, F.CANCELED, reason="Transfer canceled", recoverable=False)

    worker.copier.run = copy_until_interrupted  # type: ignore[method-assign]
    worker.start()
    running.wait(10)
    deadline = time.monotonic() + 10
    while [f["file_state"] for f in service.files(job_id)] != ["ACTIVE"] * 2:
        assert time.monotonic() < deadline, service.files(job_id)
        time.sleep(0.02)
    worker.stop()
    assert [f["file_state"] for f in service.files(job_id)] == ["SUBMITTED"] * 2
    assert service.job(job_id)["job_state"] == "ACTIVE", "started once, it stays active until its files end"
    assert {c.attempt for c in service.claim("w2", 2)} == {2}, "the next claim fences off the old copies"
