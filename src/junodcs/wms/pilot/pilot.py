"""The pilot: what a CE starts on a worker node (`dcs pilot --server URL --site S --ce C`).

It authenticates with a token that has the `Pilot` property (a token file, re-read on every request so a
site director can renew it, or a robot client's credentials, renewed before expiry), reports itself
Running, then asks the matcher for jobs in a loop ("filling mode") and runs each through the job wrapper,
until no job fits (`stop_after_failed_matches` empty answers in a row), its time runs out (time left below
`min_time_left`), or it is told to stop (SIGTERM). It reports Done at the end (Failed if it broke).

Requests to the central server are retried while the server is unreachable (a restart), for up to
`retry_seconds`: a payload keeps running, heartbeats that cannot be delivered are skipped, and final
reports wait for the server to come back, so a server restart loses no job and runs none twice.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError, ServiceUnavailable
from junodcs.wms.client import WMSClient
from junodcs.wms.pilot.wrapper import JobWrapper, WrapperOptions

log = logging.getLogger("junodcs.pilot")


class TokenSource:
    """The pilot's access token: from a file (re-read when it changes) or by client credentials."""

    def __init__(self, server_url: str, *, token_file: str | None = None, client_id: str | None = None,
                 client_secret: str | None = None, config: Any = None) -> None:
        if not token_file and not (client_id and client_secret):
            token_file = os.environ.get("BEARER_TOKEN_FILE")
            if not token_file and os.environ.get("BEARER_TOKEN"):
                self._static = os.environ["BEARER_TOKEN"]
            elif not token_file:
                raise DCSError("a pilot needs a token: --token-file FILE, or --client-id with --client-secret-file",
                               code="no-pilot-credentials")
        self.server_url = server_url
        self.token_file = token_file
        self.client_id = client_id
        self.client_secret = client_secret
        self.config = config
        self._token: str | None = getattr(self, "_static", None)
        self._expires = float("inf") if self._token else 0.0
        self._mtime = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self.token_file:
                mtime = os.stat(self.token_file).st_mtime
                if self._token is None or mtime != self._mtime:
                    self._token = Path(self.token_file).read_text().strip()
                    self._mtime = mtime
                return self._token
            if self._token is None or time.time() > self._expires - 60:
                from junodcs.auth.client import AuthClient

                with AuthClient(self.server_url, authenticate=False, config=self.config) as auth:
                    answer = auth.client_credentials(str(self.client_id), str(self.client_secret))
                self._token = str(answer["access_token"])
                self._expires = time.time() + float(answer.get("expires_in") or 600)
            return self._token


class PilotWMSClient(WMSClient):
    """The WMS client of a pilot: its own token source, and patience while the server restarts."""

    def __init__(self, server_url: str, tokens: TokenSource, *, config: Any = None, retry_seconds: float = 300.0,
                 timeout: float = 60.0) -> None:
        super().__init__(server_url, config=config, timeout=timeout)
        self.tokens = tokens
        self.retry_seconds = retry_seconds
        self.stop_event: threading.Event | None = None
        """When set, requests stop waiting for an unreachable server (shutdown)."""

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.token()}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return super().request(method, path, **kwargs)
            except ServiceUnavailable as exc:
                # a match whose answer timed out may have been applied: never ask again blindly
                if path == "/match" and exc.code != "server-unreachable":
                    raise
                if time.monotonic() + delay > deadline or (self.stop_event is not None and self.stop_event.is_set()):
                    raise
                log.warning("%s %s: %s; retrying in %.1f s", method, path, exc.detail, delay)
                if self.stop_event is not None:
                    self.stop_event.wait(delay)
                else:
                    time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except DCSError as exc:
                if getattr(exc, "status", 0) in (502, 503, 504) and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise


@dataclass
class PilotOptions:
    server_url: str
    site: str
    ce: str
    pilot_id: str = field(default_factory=lambda: f"pilot-{uuid.uuid4().hex[:16]}")
    memory_mb: int = 2000
    cores: int = 1
    platform: str | None = None
    tags: list[str] = field(default_factory=list)
    required_tags: list[str] = field(default_factory=list)
    job_types: list[str] = field(default_factory=list)
    lifetime: float = 86400.0
    """Seconds this pilot may run (the batch slot's length)."""
    min_time_left: float = 360.0
    """Stop matching when less than this is left (the shortest CPU time bucket)."""
    max_jobs: int | None = None
    stop_after_failed_matches: int = 1
    match_retry_delay: float = 2.0
    workdir: Path = field(default_factory=lambda: Path.cwd() / "pilot-work")
    grace: float = 5.0
    poll: float = 0.2
    max_wall: float | None = None
    keep_workdir: bool = False
    retry_seconds: float = 300.0


class Pilot:
    def __init__(self, options: PilotOptions, tokens: TokenSource, *, config: Any = None,
                 wms: Any = None, dm_factory: Any = None) -> None:
        self.options = options
        self.started = time.monotonic()
        self.wms = wms or PilotWMSClient(options.server_url, tokens, config=config,
                                         retry_seconds=options.retry_seconds)
        self.dm_factory = dm_factory
        self.stop_event = threading.Event()
        self.jobs: list[dict[str, Any]] = []

    def time_left(self) -> float:
        return self.options.lifetime - (time.monotonic() - self.started)

    def _status(self, status: str, reason: str | None = None) -> None:
        try:
            self.wms.pilot_status(self.options.pilot_id, status, reason)
        except DCSError as exc:
            if exc.code == "no-such-pilot" and status == "Running":
                return  # started by hand: the record is made at the first match
            log.warning("pilot status %s not recorded: %s", status, exc)

    def run(self) -> int:
        o = self.options
        import platform
        import sys

        log.info("pilot %s starting at %s / %s (%d MB, %d cores, %.0f s) on %s, Python %s", o.pilot_id, o.site, o.ce,
                 o.memory_mb, o.cores, o.lifetime, platform.node(), sys.version.split()[0])
        o.workdir.mkdir(parents=True, exist_ok=True)
        self._status("Running")
        empty = 0
        try:
            while not self.stop_event.is_set():
                if o.max_jobs is not None and len(self.jobs) >= o.max_jobs:
                    log.info("pilot %s ran its %d jobs: done", o.pilot_id, o.max_jobs)
                    break
                left = self.time_left()
                if left < o.min_time_left:
                    log.info("pilot %s: %.0f s left, less than %.0f s: no more jobs", o.pilot_id, left,
                             o.min_time_left)
                    break
                answer = self.wms.match(pilot_id=o.pilot_id, site=o.site, ce=o.ce, memory_mb=o.memory_mb,
                                        time_left=int(left), platform=o.platform, tags=o.tags,
                                        required_tags=o.required_tags, cores=o.cores, job_types=o.job_types)
                if answer is None:
                    empty += 1
                    if empty >= o.stop_after_failed_matches:
                        log.info("pilot %s: no waiting job fits: done after %d jobs", o.pilot_id, len(self.jobs))
                        break
                    self.stop_event.wait(o.match_retry_delay)
                    continue
                empty = 0
                log.info("pilot %s: job %s attempt %s matched", o.pilot_id, answer["job_id"], answer["attempt"])
                wrapper = JobWrapper(self.wms, answer, WrapperOptions(
                    site=o.site, ce=o.ce, pilot_id=o.pilot_id, workdir=o.workdir, poll=o.poll, grace=o.grace,
                    max_wall=o.max_wall, keep_workdir=o.keep_workdir), dm_factory=self.dm_factory, time_left=left)
                outcome = wrapper.run()
                log.info("pilot %s: job %s -> %s (%s)", o.pilot_id, answer["job_id"], outcome.status, outcome.minor)
                self.jobs.append({"job_id": answer["job_id"], "attempt": answer["attempt"], "status": outcome.status,
                                  "minor": outcome.minor})
        except Exception as exc:
            log.exception("pilot %s failed", o.pilot_id)
            self._status("Failed", f"{type(exc).__name__}: {exc}"[:255])
            return 1
        self._status("Done", f"ran {len(self.jobs)} jobs")
        return 0


def run_pilot(options: PilotOptions, tokens: TokenSource, config: Any = None) -> int:
    pilot = Pilot(options, tokens, config=config)

    def on_term(_signum: int, _frame: Any) -> None:  # finish the current job's bookkeeping, take no more
        pilot.stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    return pilot.run()
