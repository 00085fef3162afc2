"""Bringing files online from a tape SE through the WLCG Tape REST API v1 (what `gfal-bringonline` does).

A tape SE refuses to serve a file whose disk copy was evicted (503 `not-on-disk`); the reader must first
ask for it: `POST {endpoint}/stage` with the file's path, then poll `GET {endpoint}/stage/{id}` until the
file is `COMPLETED` (and `onDisk`), `FAILED` or `CANCELED`. The endpoint comes from the SE's discovery
document (`/.well-known/wlcg-tape-rest-api`), as the API says, never from a guessed path. A file already
on disk is not staged at all (`POST /archiveinfo` tells), and a request that outlives its deadline is
cancelled so that the tape system does not keep recalling a file nobody waits for. Once the caller has
read the file it releases the pin (`POST /release/{id}`), so the disk copy may go again.

Reference: reference/data-management.md section 5.2.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from junodcs.core.errors import DCSError, NotFound
from junodcs.storage.client import StorageClient, StorageError, http_url, raise_for

#: `archiveinfo` localities with a disk copy (readable now)
ON_DISK = frozenset({"DISK", "DISK_AND_TAPE"})
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})


class StagingFailed(DCSError):
    status = 502
    code = "stage-failed"
    title = "Staging failed"


class StagingTimeout(DCSError):
    status = 504
    code = "stage-timeout"
    title = "Staging timed out"


@dataclass
class StageOutcome:
    """What bringing one file online took: the request (None when the file was on disk already)."""

    url: str
    locality: str
    request_id: str | None = None
    endpoint: str | None = None
    seconds: float = 0.0
    polls: int = 0
    states: list[str] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return self.request_id is not None


def _base(url: str) -> str:
    parts = urlsplit(http_url(url))
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _path(url: str) -> str:
    """The SE-local path the API speaks of: the URL path with duplicate slashes collapsed."""
    return re.sub(r"/{2,}", "/", urlsplit(http_url(url)).path)


class TapeRestClient:
    """The Tape REST API of the SEs behind one `StorageClient` (its HTTP session and tokens)."""

    def __init__(self, storage: StorageClient, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.storage = storage
        self._endpoints: dict[str, str] = {}
        self._clock = clock
        self._sleep = sleep

    def _call(self, method: str, url: str, *, ok: tuple[int, ...] = (200,), token_url: str | None = None,
              **kwargs: Any) -> Any:
        headers = self.storage._headers(token_url or url, {"Accept": "application/json"})
        response = self.storage.http.request(method, url, headers=headers, **kwargs)
        if response.status_code not in ok:
            raise_for(response, f"{method} {url}")
        return response.json() if response.content else None

    def endpoint(self, url: str) -> str:
        """The v1 endpoint of the SE holding `url`, from its discovery document (cached per SE)."""
        base = _base(url)
        if base not in self._endpoints:
            try:
                doc = self._call("GET", f"{base}/.well-known/wlcg-tape-rest-api", token_url=url)
            except NotFound:
                raise StagingFailed(f"{base} does not offer the WLCG Tape REST API (no discovery document)",
                                    code="no-tape-api") from None
            uris = [e.get("uri") for e in (doc or {}).get("endpoints", [])
                    if isinstance(e, dict) and e.get("version") == "v1" and e.get("uri")]
            if not uris:
                raise StagingFailed(f"{base}: the discovery document lists no v1 endpoint", code="no-tape-api")
            self._endpoints[base] = str(uris[0]).rstrip("/")
        return self._endpoints[base]

    def locality(self, url: str) -> str:
        """`DISK`, `TAPE`, `DISK_AND_TAPE`...; `NotFound` when the SE does not have the file."""
        answer = self._call("POST", f"{self.endpoint(url)}/archiveinfo", token_url=url,
                            json={"paths": [_path(url)]})
        entry = answer[0] if isinstance(answer, list) and answer else {}
        if entry.get("error"):
            raise NotFound(f"{url}: {entry['error']}")
        locality = entry.get("locality")
        if not isinstance(locality, str):
            raise StorageError(f"{url}: archiveinfo gave no locality ({answer!r})", code="bad-tape-answer")
        return locality

    def stage(self, url: str, *, lifetime: float | None = None) -> str:
        entry: dict[str, Any] = {"path": _path(url)}
        if lifetime is not None:
            entry["diskLifetime"] = int(lifetime)
        answer = self._call("POST", f"{self.endpoint(url)}/stage", ok=(200, 201), token_url=url,
                            json={"files": [entry]})
        request_id = (answer or {}).get("requestId")
        if not request_id:
            raise StorageError(f"{url}: the stage request got no requestId ({answer!r})", code="bad-tape-answer")
        return str(request_id)

    def status(self, url: str, request_id: str) -> dict[str, Any]:
        """This file's entry of the request (`state`, `onDisk`, `error`...)."""
        answer = self._call("GET", f"{self.endpoint(url)}/stage/{request_id}", token_url=url)
        path = _path(url)
        for entry in (answer or {}).get("files", []):
            if entry.get("path") == path:
                return dict(entry)
        raise StorageError(f"stage request {request_id} does not list {path}", code="bad-tape-answer")

    def cancel(self, url: str, request_id: str) -> None:
        self._call("POST", f"{self.endpoint(url)}/stage/{request_id}/cancel", token_url=url,
                   json={"paths": [_path(url)]})

    def release(self, url: str, request_id: str) -> None:
        self._call("POST", f"{self.endpoint(url)}/release/{request_id}", token_url=url,
                   json={"paths": [_path(url)]})

    def bring_online(self, url: str, *, timeout: float, lifetime: float | None = None,
                     poll: float = 0.2, max_poll: float = 10.0,
                     on_progress: Callable[[str], None] | None = None) -> StageOutcome:
        """Make sure `url` is on disk: nothing to do when it is, otherwise stage and wait (at most
        `timeout` seconds; the request is cancelled when the deadline passes)."""
        started = self._clock()
        outcome = StageOutcome(url, self.locality(url))
        if outcome.locality in ON_DISK:
            return outcome
        if outcome.locality == "LOST":  # the SE knows the name but has lost the bytes: a bad replica
            raise NotFound(f"{url}: the tape SE reports the file LOST")
        if outcome.locality != "TAPE":  # NONE (nothing to stage), UNAVAILABLE (try later)
            raise StagingFailed(f"{url} cannot be staged now: locality {outcome.locality}")
        outcome.endpoint = self.endpoint(url)
        outcome.request_id = self.stage(url, lifetime=lifetime)
        say = on_progress or (lambda _message: None)
        say(f"staging {_path(url)}: request {outcome.request_id} submitted to {outcome.endpoint}")
        delay, last = poll, ""
        while True:
            entry = self.status(url, outcome.request_id)
            outcome.polls += 1
            state = str(entry.get("state", "?"))
            elapsed = self._clock() - started
            outcome.seconds = round(elapsed, 3)
            if state != last:
                outcome.states.append(state)
                last = state
            if entry.get("error"):  # a per-file error fails the file, whatever its state says
                raise StagingFailed(f"staging {url} (request {outcome.request_id}) failed in state {state}: "
                                    f"{entry['error']}")
            if entry.get("onDisk") is True or state == "COMPLETED":  # gfal2's reading of the answer
                say(f"staging {_path(url)}: {state}, on disk after {elapsed:.1f} s")
                return outcome
            if state in FINAL:
                raise StagingFailed(f"staging {url} (request {outcome.request_id}) ended {state}"
                                    + (f": {entry['error']}" if entry.get("error") else ""))
            if elapsed >= timeout:
                try:
                    self.cancel(url, outcome.request_id)
                except DCSError:
                    pass  # the deadline is the error that matters
                raise StagingTimeout(f"{url} was not on disk {timeout:g} s after the stage request "
                                     f"{outcome.request_id} (last state {state}); request cancelled")
            say(f"staging {_path(url)}: {state} ({elapsed:.1f} s of at most {timeout:g} s)")
            self._sleep(max(0.0, min(delay, timeout - elapsed)))
            delay = min(delay * 1.5, max_poll)
