"""Transfer workers: the scheduler, the copies, the reporter, the lease keeper, the tape poller, the optimizer.

One `TransferWorker` runs in the central server process by default (agent `transfer-worker` of `dcs
server`), and as many more as wanted as their own processes (`dcs agent run transfer-worker`) against
the same database. It is safe in several
copies: files are claimed by a guarded UPDATE (SUBMITTED -> READY) under a lease with a fencing
`attempt` counter; every result is applied only if the file is still held by this worker under the same
attempt. A killed worker's files go back to SUBMITTED when its lease runs out and are taken again; its
late results, if any, are ignored. The SE writes every copy atomically, so an interrupted copy leaves
nothing at the destination, and a retry that finds the destination already holding the right bytes
(the previous attempt completed just before it was lost) counts it as done instead of copying again.

Threads of one worker:
* scheduler: reaps expired leases, claims as many files as it has free slots (per-link optimizer
  decision, per-SE caps, VO/activity shares, priority), hands them to a thread pool;
* copies (the pool): HTTP-TPC pull (default), push or streamed per job/link/SE, with checksums compared
  at both ends, a deadline of 600 s + 2 s/MB (or the job's timeout) and a stall detector on the markers;
* reporter: applies ACTIVE marks and results in batches (FTS3's message processing);
* lease keeper: renews the leases of everything in flight;
* stager: bring-online (WLCG Tape REST `stage`) for tape sources, archive polling for tape destinations;
* optimizer: every `optimizer_interval` decides each link's number of active transfers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from junodcs.transfer.logic import (
    Claimed,
    Outcome,
    TransferService,
    classify,
    now,
    parse_checksum,
    transfer_timeout,
    worker_id,
)
from junodcs.transfer.models import FileState

log = logging.getLogger(__name__)
F = FileState


class TransferTimeout(Exception):
    pass


class Stalled(Exception):
    pass


class Canceled(Exception):
    pass


# -- credentials ------------------------------------------------------------------------------------


class Credentials:
    """Tokens for the storage ends of a transfer: those given in the job (`source_tokens`,
    `destination_tokens`, what `--src-access-token`/`--dst-access-token` send), else a token this service
    mints for the submitter with the storage scopes the VO's policy gives them (the FTS3 token-exchange
    role), cached until shortly before it expires."""

    def __init__(self, issuer: Any | None = None, registry: Any | None = None, lifetime: float = 3600.0) -> None:
        self.issuer = issuer
        self.registry = registry
        self.lifetime = lifetime
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def minted(self, username: str | None, group: str | None) -> str | None:
        if self.issuer is None or self.registry is None or not username:
            return None
        key = (username, group or "")
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[1] > time.time() + 300:
                return cached[0]
        from junodcs.auth.scope_policy import policy_scopes

        membership = self.registry.membership(username, group)
        scopes = [s for s in policy_scopes(self.registry.vo, username, membership.properties) if s.startswith("storage.")]
        token, claims = self.issuer.issue_access_token(username=username, group=membership.group, scopes=scopes,
                                                       lifetime=self.lifetime)
        with self._lock:
            self._cache[key] = (token, float(claims["exp"]))
        return token

    def for_transfer(self, c: Claimed) -> dict[str, str]:
        fallback = self.minted(c.username, c.group) if not (c.src_token and c.dst_token) else None
        out = {}
        for url, token in ((c.source_surl, c.src_token or fallback), (c.dest_surl, c.dst_token or fallback)):
            if token:
                out[url] = token
        return out


# -- one copy ---------------------------------------------------------------------------------------


@dataclass
class WorkerOptions:
    concurrency: int = 32
    poll: float = 0.5
    report_interval: float = 0.05
    report_coalesce: float = 0.01
    """Seconds the reporter waits after a result for more to end before it flushes them together."""
    optimizer_interval: float = 60.0
    stage_interval: float = 2.0
    ca_dir: str | None = None
    verify_tls: bool = True
    stall_timeout: float | None = None
    optimizer: bool = True
    stager: bool = True
    prefetch: int | None = None
    """Files claimed ahead of free copy threads (default a quarter of `concurrency`): a thread whose copy ends
    starts the next file at once instead of after a claim, which under load waits tens of milliseconds for
    the interpreter lock. They are READY under this worker's lease and count towards the link's limit."""

    @property
    def capacity(self) -> int:
        return self.concurrency + (self.concurrency // 4 if self.prefetch is None else self.prefetch)

    @property
    def claim_batch(self) -> int:
        """Free slots worth a claim: the prefetch's worth, or an eighth of the threads without prefetch."""
        return max(1, (self.capacity - self.concurrency) or self.concurrency // 8)

    @classmethod
    def from_env(cls) -> WorkerOptions:
        """`DCS_TRANSFER_CONCURRENCY`, `DCS_TRANSFER_OPTIMIZER_INTERVAL` (seconds)."""
        import os

        return cls(concurrency=int(os.environ.get("DCS_TRANSFER_CONCURRENCY", "32")),
                   optimizer_interval=float(os.environ.get("DCS_TRANSFER_OPTIMIZER_INTERVAL", "60")))


class Copier:
    """Runs one claimed transfer with a storage client of its thread."""

    def __init__(self, worker: TransferWorker) -> None:
        self.worker = worker
        self.local = threading.local()

    def client(self) -> Any:
        c = getattr(self.local, "client", None)
        if c is None:
            from junodcs.storage.client import StorageClient

            opts = self.worker.options
            c = self.local.client = StorageClient(ca_dir=opts.ca_dir, verify=opts.verify_tls, timeout=60.0)
        return c

    def run(self, c: Claimed, mode: str, canceled: threading.Event) -> Outcome:
        start = now()
        t0 = time.monotonic()
        client = self.client()
        client.tokens = self.worker.credentials.for_transfer(c)
        client.token = None
        phase = "SOURCE"
        try:
            alg, user_sum = parse_checksum(c.checksum)
            verify = c.verify
            src_sum = None
            # A pull with RequireChecksumVerification: the destination SE compares the source's Digest with
            # the bytes it received before it commits the file. When the job gives the checksum, comparing
            # the destination's checksum with it afterwards then covers both ends with one HEAD instead of
            # two (a corrupt source fails at the SE, or leaves a copy that differs from the expected value).
            after_only = mode == "pull" and user_sum is not None and verify in ("t", "b")
            if verify != "n" and not after_only:
                src_sum = client.checksum(c.source_surl, alg)
                if user_sum and verify in ("s", "b") and src_sum != user_sum:
                    raise _mismatch(f"source {alg} {src_sum} differs from the expected {user_sum}")
            phase = "DESTINATION"
            if c.attempt > 1 or c.retry > 0:
                done = self._already_there(client, c, alg, src_sum or user_sum)
                if done is not None:
                    return Outcome(c.file_id, c.attempt, F.FINISHED, reason=done, filesize=c.filesize, mode=mode,
                                   duration=time.monotonic() - t0, start=start)
            phase = "TRANSFER"
            deadline = t0 + transfer_timeout(c.filesize, c.timeout)
            size, stored = self._copy(client, c, mode, verify != "n", src_sum if alg == "adler32" else None,
                                      deadline, canceled)
            duration = time.monotonic() - t0
            if verify in ("t", "b"):  # FTS3: "s" checks the source only, "t" and "b" the destination too
                phase = "DESTINATION"
                # after a pull, a junodcs destination names the stored file's adler32 in its final line
                # (`storage.markers`); any other SE, or another algorithm, is asked with a HEAD
                dst_sum = stored if stored and alg == "adler32" else client.checksum(c.dest_surl, alg)
                expected = user_sum if user_sum and verify in ("t", "b") else src_sum
                if expected and dst_sum != expected:
                    self._clean_up(client, c)
                    raise _mismatch(f"destination {alg} {dst_sum} differs from the "
                                    f"{'expected' if expected == user_sum else 'source'} {expected}")
                if src_sum and dst_sum != src_sum:
                    self._clean_up(client, c)
                    raise _mismatch(f"destination {alg} {dst_sum} differs from the source {src_sum}")
            state = F.ARCHIVING if c.archive_timeout and c.archive_timeout > 0 else F.FINISHED
            return Outcome(c.file_id, c.attempt, state, reason=None, filesize=size or c.filesize, mode=mode,
                           duration=max(duration, 1e-6), start=start, finish=now())
        except Canceled:
            return Outcome(c.file_id, c.attempt, F.CANCELED, reason="Transfer canceled", recoverable=False, mode=mode)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a classified reason
            verdict = classify(exc, phase)
            if not isinstance(exc, Exception):
                raise
            log.info("transfer %s (%s -> %s) failed: %s", c.file_id, c.source_surl, c.dest_surl, verdict.reason)
            return Outcome(c.file_id, c.attempt, F.FAILED, reason=verdict.reason, recoverable=verdict.recoverable,
                           mode=mode, duration=time.monotonic() - t0, start=start)

    @staticmethod
    def _clean_up(client: Any, c: Claimed) -> None:
        """A copy that failed verification is removed (FTS3 cleans the destination up on failure), so
        nothing wrong is left where a catalogue or a later `_already_there` could take it for good."""
        try:
            client.delete(c.dest_surl)
        except Exception as exc:  # noqa: BLE001 - the failure reason matters more; the leftover is logged
            log.warning("transfer %s: could not remove the unverified copy %s: %s", c.file_id, c.dest_surl, exc)

    def _already_there(self, client: Any, c: Claimed, alg: str, expected: str | None) -> str | None:
        from junodcs.core.errors import NotFound

        try:
            dst_sum = client.checksum(c.dest_surl, alg)
        except NotFound:
            return None
        except Exception:  # noqa: BLE001 - unknown: just copy
            return None
        if expected is None:
            with contextlib.suppress(Exception):
                expected = client.checksum(c.source_surl, alg)
        if expected and dst_sum == expected:
            return "destination already holds the file with a matching checksum (an earlier attempt completed)"
        return None

    def _copy(self, client: Any, c: Claimed, mode: str, verify: bool, adler32: str | None, deadline: float,
              canceled: threading.Event) -> tuple[int, str | None]:
        """Run the copy; returns the bytes moved and, after a pull from a junodcs destination, the adler32 of
        the file it stored."""
        from junodcs.storage.client import TransferFailed, http_url, raise_for
        from junodcs.storage.markers import MarkerParser

        if mode == "stream":
            if canceled.is_set():
                raise Canceled()
            return int(client._stream_copy(c.source_surl, c.dest_surl, adler32, overwrite=c.overwrite)), None
        import httpx

        stall = self.worker.options.stall_timeout or self.worker.service.settings.stall_timeout
        active, passive = (c.dest_surl, c.source_surl) if mode == "pull" else (c.source_surl, c.dest_surl)
        headers = {"Credential": "none", "X-Number-Of-Streams": "1",
                   "RequireChecksumVerification": "true" if verify else "false",
                   "Overwrite": "T" if c.overwrite else "F",
                   "Source" if mode == "pull" else "Destination": http_url(passive)}
        passive_token = client.token_for(passive)
        if passive_token:
            headers["TransferHeaderAuthorization"] = f"Bearer {passive_token}"
        parser = MarkerParser()
        last_bytes, last_change = -1, time.monotonic()
        timeout = httpx.Timeout(30.0, read=max(30.0, stall))
        with client.http.stream("COPY", http_url(active), headers=client._headers(active, headers),
                                timeout=timeout) as r:
            if r.status_code >= 300:
                r.read()
                raise_for(r, f"COPY ({mode}) {active}")
            for line in r.iter_lines():
                parser.feed(line)
                t = time.monotonic()
                if parser.transferred != last_bytes:
                    last_bytes, last_change = parser.transferred, t
                if canceled.is_set():
                    raise Canceled()
                if t > deadline:
                    raise TransferTimeout(f"transfer timed out after {t - deadline + (deadline - t):.0f} s "
                                          f"(limit reached at {parser.transferred} bytes)")
                if t - last_change > stall:
                    raise Stalled(f"stalled: no progress in the performance markers for {stall:.0f} s")
        if parser.outcome is None:
            raise TransferFailed(f"{mode} copy: connection ended without a final line (performance marker stream "
                                 "cut); status of the transfer unknown")
        if parser.outcome != "success":
            raise TransferFailed(f"{mode} copy failed at the {'destination' if mode == 'pull' else 'source'} SE: "
                                 f"{parser.message}")
        return parser.transferred, parser.adler32 if mode == "pull" else None


def _drain(q: queue.Queue[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def _requeue(q: queue.Queue[Any], items: list[Any]) -> None:
    for item in items:
        q.put(item)


def _mismatch(text: str) -> Exception:
    from junodcs.storage.client import ChecksumMismatch

    return ChecksumMismatch(f"checksum mismatch: {text}")


# -- the worker -------------------------------------------------------------------------------------


class TransferWorker:
    def __init__(self, service: TransferService, credentials: Credentials | None = None,
                 options: WorkerOptions | None = None, name: str | None = None) -> None:
        self.service = service
        self.credentials = credentials or Credentials()
        self.options = options or WorkerOptions()
        self.name = name or worker_id()
        self.stop_event = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="transfer")
        self.copier = Copier(self)
        self.inflight: dict[int, tuple[Claimed, threading.Event]] = {}
        """Claimed files until their result is in the database: their leases are renewed."""
        self._copies = 0
        """Claimed files whose copy has not ended (running or queued for a thread)."""
        self._lock = threading.Lock()
        self._started: queue.Queue[tuple[int, int, str]] = queue.Queue()
        self._results: queue.Queue[Outcome] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._results_waiting = threading.Event()
        self._mode_cache: dict[tuple[str, str, int], tuple[str, float]] = {}
        self.completed = 0

    # lifecycle
    def start(self) -> TransferWorker:
        loops: list[tuple[str, Callable[[], None]]] = [("scheduler", self._schedule_loop),
                                                       ("reporter", self._report_loop), ("leases", self._lease_loop)]
        if self.options.stager:
            loops.append(("stager", self._stage_loop))
        if self.options.optimizer:
            loops.append(("optimizer", self._optimizer_loop))
        for name, target in loops:
            thread = threading.Thread(target=self._guard, args=(name, target), name=f"transfer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("transfer worker %s started (concurrency %d)", self.name, self.options.concurrency)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self._wake.set()
        self._results_waiting.set()
        with self._lock:
            for _, ev in self.inflight.values():
                ev.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout)
        self._flush()
        with self._lock:
            unreported = list(self.inflight)
        if unreported:  # claimed ahead, or interrupted by this stop: back to the queue now, not when the lease
            self.service.release(self.name, unreported)  # runs out, and never CANCELED for the user

    def __enter__(self) -> TransferWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guard(self, name: str, target: Callable[[], None]) -> None:
        while not self.stop_event.is_set():
            try:
                target()
                return
            except Exception:  # an agent logs and keeps going
                log.exception("transfer worker %s: %s loop failed; restarting it", self.name, name)
                self.stop_event.wait(1.0)

    # scheduler
    def _schedule_loop(self) -> None:
        last_reap = 0.0
        while not self.stop_event.is_set():
            if time.monotonic() - last_reap > min(5.0, self.service.settings.lease / 4):
                self.service.reap_expired()
                self.service.expire_queued()
                last_reap = time.monotonic()
            with self._lock:
                busy = self._copies
            free = self.options.capacity - busy
            # A slot is free when its copy ends, not when the result is in the database: the copy threads
            # (and the few files queued for them) are the worker's capacity; the link's limit is the
            # database's count, checked by the claim. Claim in batches: claiming one slot at a time as each
            # copy ends costs more than the copies at high rates. Wait until the prefetch's worth of slots
            # is free (the threads meanwhile work through the files claimed ahead), or an eighth without
            # prefetch, unless the worker is idle (ending copies wake this loop).
            claimed = self.service.claim(self.name, free) if self._claim_due(busy) else []
            for c in claimed:
                ev = threading.Event()
                with self._lock:
                    self.inflight[c.file_id] = (c, ev)
                    self._copies += 1
                self.pool.submit(self._run, c, ev)
            if not claimed:
                self._wake.wait(self.options.poll)
                self._wake.clear()

    def _claim_due(self, busy: int) -> bool:
        """Whether enough slots are free for a claim (a batch), or the worker is idle."""
        free = self.options.capacity - busy
        return free >= self.options.claim_batch or (free > 0 and busy == 0)

    def _mode(self, c: Claimed) -> str:
        if c.mode:
            return c.mode
        key = (c.source_se, c.dest_se, self.service.config_version)
        hit = self._mode_cache.get(key)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        mode = self.service.tpc_mode_for(c.source_se, c.dest_se, c.mode)
        self._mode_cache[key] = (mode, time.monotonic() + 5.0)
        return mode

    def _run(self, c: Claimed, canceled: threading.Event) -> None:
        try:
            mode = self._mode(c)
            self._started.put((c.file_id, c.attempt, mode))
            outcome = self.copier.run(c, mode, canceled)
        except Exception as exc:  # noqa: BLE001
            log.exception("transfer %s: unexpected error", c.file_id)
            outcome = Outcome(c.file_id, c.attempt, F.FAILED, reason=f"internal error: {exc}", recoverable=True)
        outcome.job_id = c.job_id
        if not (outcome.state == F.CANCELED and self.stop_event.is_set()):
            self._results.put(outcome)  # else: interrupted because this worker stops, released by `stop`
            self._results_waiting.set()
        with self._lock:
            self._copies -= 1
            due = self._claim_due(self._copies)
        if due:  # waking the scheduler for a claim it would not make costs a thread switch per copy
            self._wake.set()

    # reporter
    def _report_loop(self) -> None:
        """Flush as soon as a copy ends (until its result is in the database, the file still counts towards
        its link's limit there), else every `report_interval` for the start marks. Results that end while a
        flush runs make the next batch, so batches grow with the rate by themselves."""
        while not self.stop_event.is_set():
            if self._results_waiting.wait(self.options.report_interval):
                self._results_waiting.clear()
                # Gather what ends within the next moment too: each flush is a transaction whose fixed cost
                # (commit, job-state refresh) is larger than that of a file, and at a few hundred files a
                # second a flush per result would take more of the interpreter than the copies.
                self.stop_event.wait(self.options.report_coalesce)
            self._flush()

    def _flush(self) -> None:
        """Apply the ACTIVE marks and the results gathered since the last flush.

        Results are taken before marks: a copy queues its mark before its result, so every result taken here
        has its mark in this batch or an earlier one. (The other order let a fast copy's result overtake its
        mark; READY -> FINISHED is refused, so the file stayed held by nobody until its lease ran out.) A
        batch the database refuses (locked, connection lost) goes back to its queue for the next flush, still
        in flight and under lease, instead of being dropped.
        """
        outcomes = _drain(self._results)
        started = _drain(self._started)
        if not started and not outcomes:
            return
        try:
            ok, _ = self.service.apply(started, outcomes, self.name)
        except Exception:
            _requeue(self._started, started)
            _requeue(self._results, outcomes)
            raise
        for file_id, _, _ in started:
            if file_id not in ok:  # canceled or taken away meanwhile: stop the copy
                with self._lock:
                    entry = self.inflight.get(file_id)
                if entry:
                    entry[1].set()
        if outcomes:
            with self._lock:
                for o in outcomes:
                    self.inflight.pop(o.file_id, None)
            self.completed += len(outcomes)
            self._wake.set()

    # leases
    def _lease_loop(self) -> None:
        period = max(0.2, self.service.settings.lease / 3)
        while not self.stop_event.wait(period):
            with self._lock:
                ids = list(self.inflight)
            self.service.renew_leases(self.name, ids)
            # cancellations of running copies
            if ids:
                for file_id in ids:
                    if self.service.is_canceled(file_id):
                        with self._lock:
                            entry = self.inflight.get(file_id)
                        if entry:
                            entry[1].set()

    # optimizer
    def _optimizer_loop(self) -> None:
        while not self.stop_event.wait(self.options.optimizer_interval):
            self.service.run_optimizer()

    # staging and archiving
    def _stage_loop(self) -> None:
        while not self.stop_event.wait(self.options.stage_interval):
            stager = Stager(self.service, self.credentials, self.options, self.name)
            stager.run_once()


class Stager:
    """Bring-online through the WLCG Tape REST API (STAGING -> STARTED -> SUBMITTED) and archive polling
    (ARCHIVING -> FINISHED) for tape destinations, each with its job's timeout."""

    def __init__(self, service: TransferService, credentials: Credentials, options: WorkerOptions, name: str) -> None:
        self.service = service
        self.credentials = credentials
        self.options = options
        self.name = name
        self._endpoints: dict[str, str] = {}

    def _http(self) -> Any:
        import httpx

        from junodcs.storage.client import ssl_context

        verify: Any = ssl_context(self.options.ca_dir) if self.options.verify_tls else False
        return httpx.Client(verify=verify, timeout=30.0)

    def endpoint(self, http: Any, url: str, token: str | None) -> str:
        from junodcs.storage.client import http_url, raise_for

        parts = urlsplit(http_url(url))
        base = f"{parts.scheme}://{parts.netloc}"
        if base not in self._endpoints:
            r = http.get(f"{base}/.well-known/wlcg-tape-rest-api", headers=_auth(token))
            if r.status_code != 200:
                raise_for(r, f"tape REST discovery at {base}")
            endpoints = r.json().get("endpoints") or []
            uri = next((e["uri"] for e in endpoints if e.get("version") == "v1"), None) or f"{base}/api/v1"
            self._endpoints[base] = uri.rstrip("/")
        return self._endpoints[base]

    def run_once(self) -> int:
        rows = self.service.claim_phase(self.name, [F.STAGING, F.STARTED, F.ARCHIVING])
        if not rows:
            return 0
        with self._http() as http:
            for row in rows:
                try:
                    self._one(http, row)
                except Exception as exc:  # noqa: BLE001 - try again next pass, unless the time is up
                    log.info("tape operation for file %s: %s", row["file_id"], exc)
        return len(rows)

    def _token(self, row: dict[str, Any], url: str) -> str | None:
        if url == row["source_surl"] and row.get("src_token"):
            return row["src_token"]
        if url == row["dest_surl"] and row.get("dst_token"):
            return row["dst_token"]
        return self.credentials.minted(row.get("username"), row.get("grp"))

    def _one(self, http: Any, row: dict[str, Any]) -> None:
        from junodcs.storage.client import raise_for

        state = FileState(row["file_state"])
        t = now()
        if state in (F.STAGING, F.STARTED):
            url = row["source_surl"]
            token = self._token(row, url)
            started = row["staging_start"] or t
            limit = row["bring_online"] if row["bring_online"] and row["bring_online"] > 0 else 604800
            if state == F.STARTED and (t - started) > timedelta(seconds=limit):
                self.service.phase_update(row["file_id"], F.STARTED, F.FAILED, finish_time=t, recoverable=False,
                                          reason=f"STAGING: bring-online timeout ({limit} s) exceeded")
                return
            uri = self.endpoint(http, url, token)
            path = urlsplit(url).path
            if state == F.STAGING:
                pin = row["copy_pin_lifetime"] if row["copy_pin_lifetime"] and row["copy_pin_lifetime"] > 0 else None
                entry: dict[str, Any] = {"path": path}
                if pin:
                    entry["diskLifetime"] = f"PT{int(pin)}S"
                r = http.post(f"{uri}/stage", json={"files": [entry]}, headers=_auth(token))
                if r.status_code not in (200, 201):
                    try:
                        raise_for(r, f"stage {url}")
                    except Exception as exc:  # noqa: BLE001
                        verdict = classify(exc, "STAGING")
                        if not verdict.recoverable:
                            self.service.phase_update(row["file_id"], F.STAGING, F.FAILED, finish_time=t,
                                                      reason=verdict.reason, recoverable=False)
                            return
                        raise
                self.service.phase_update(row["file_id"], F.STAGING, F.STARTED, staging_start=t,
                                          bringonline_token=r.json()["requestId"])
                return
            r = http.get(f"{uri}/stage/{row['bringonline_token']}", headers=_auth(token))
            if r.status_code != 200:
                raise_for(r, f"stage status {row['bringonline_token']}")
            for f in r.json().get("files", []):
                if f.get("path", "").rstrip("/") != path.rstrip("/"):
                    continue
                if f.get("onDisk"):
                    self.service.phase_update(row["file_id"], F.STARTED, F.SUBMITTED, staging_finished=t,
                                              transfer_host=None, lease_until=None)
                elif f.get("state") in ("FAILED", "CANCELLED") or f.get("error"):
                    self.service.phase_update(row["file_id"], F.STARTED, F.FAILED, finish_time=t, recoverable=False,
                                              reason=f"STAGING: {f.get('error') or f.get('state')}")
        elif state == F.ARCHIVING:
            url = row["dest_surl"]
            token = self._token(row, url)
            started = row["archive_start_time"] or t
            if (t - started) > timedelta(seconds=row["archive_timeout"] or 0):
                self.service.phase_update(row["file_id"], F.ARCHIVING, F.FAILED, finish_time=t, recoverable=False,
                                          archive_finish_time=t, transfer_host=None, lease_until=None,
                                          reason=f"ARCHIVING: not on tape after {row['archive_timeout']} s")
                return
            uri = self.endpoint(http, url, token)
            r = http.post(f"{uri}/archiveinfo", json={"paths": [urlsplit(url).path]}, headers=_auth(token))
            if r.status_code != 200:
                raise_for(r, f"archiveinfo {url}")
            for f in r.json():
                if "TAPE" in str(f.get("locality", "")):
                    self.service.phase_update(row["file_id"], F.ARCHIVING, F.FINISHED, finish_time=t,
                                              archive_finish_time=t, transfer_host=None, lease_until=None)
                elif f.get("error"):
                    self.service.phase_update(row["file_id"], F.ARCHIVING, F.FAILED, finish_time=t,
                                              archive_finish_time=t, recoverable=False, transfer_host=None,
                                              lease_until=None, reason=f"ARCHIVING: {f['error']}")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def run_worker(state: Any, stop: threading.Event) -> None:
    """Agent `transfer-worker` (`dcs server` runs it; `dcs agent run transfer-worker` alone)."""
    worker = worker_from_app_state(state, WorkerOptions.from_env())
    state.transfer_worker = worker
    worker.start()
    try:
        stop.wait()
    finally:
        worker.stop()


def worker_from_app_state(state: Any, options: WorkerOptions | None = None) -> TransferWorker:
    """The worker the central server runs: its own token issuer mints the storage tokens."""
    from junodcs.transfer.router import service_for

    service = service_for(state)
    return TransferWorker(service, Credentials(state.token_issuer, state.registry), options)
