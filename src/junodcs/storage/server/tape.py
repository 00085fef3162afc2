"""The tape flavour of the SE: files migrate from disk to tape, and come back only when staged.

The model (dCache/CTA vocabulary, reference/data-management.md section 5):

- a file written through the SE (PUT, TPC pull) is on DISK only; `flush_delay` seconds later it is also
  on tape (DISK_AND_TAPE); `evict_delay` seconds after that its disk copy is evicted (TAPE) unless a
  stage request pinned it longer;
- a GET (or a TPC push) of a file whose disk copy is evicted is refused with 503 `not-on-disk`: the
  client must stage it first (`POST /api/v1/stage`); HEAD, PROPFIND and checksums keep working, as on
  dCache, because the namespace knows the file;
- a stage request mounts the tape (`mount_delay`), then recalls its files one after the other
  (`stage_delay` each); a recalled file stays on disk for its `diskLifetime` (pin), or until released.

The bytes themselves stay under the SE root (this is a simulation of the timing and the states, not of
a second medium); what is "on disk" is decided by the timestamps kept here. Every state is a function
of stored timestamps and the clock, so nothing depends on a background loop having run: a stage that
completed while the SE was down is complete at restart, with its pin counted from its completion.

State lives in SQLite, `<root>/.dcs-tape.sqlite` (names starting with `.dcs-` are never addressable
through the SE), so a restart loses neither files' tape state nor stage requests. A file under the root
that the SE did not write (no row) counts as written at its mtime.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError, NotFound
from junodcs.storage.server.config import TapeSettings

DB_NAME = ".dcs-tape.sqlite"
MAX_FILES_PER_REQUEST = 10_000

SUBMITTED, STARTED, COMPLETED, FAILED, CANCELED = "SUBMITTED", "STARTED", "COMPLETED", "FAILED", "CANCELED"
FINAL = frozenset({COMPLETED, FAILED, CANCELED})

DISK, TAPE, DISK_AND_TAPE, NONE, LOST = "DISK", "TAPE", "DISK_AND_TAPE", "NONE", "LOST"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tape_files (
    path TEXT PRIMARY KEY,
    written_at REAL NOT NULL,
    flush_at REAL NOT NULL,
    disk_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_requests (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    mount_at REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS stage_files (
    request_id TEXT NOT NULL REFERENCES stage_requests(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    ready_at REAL,
    lifetime REAL NOT NULL,
    error TEXT,
    finished_at REAL,
    PRIMARY KEY (request_id, idx)
);
CREATE INDEX IF NOT EXISTS stage_files_pending ON stage_files (ready_at) WHERE state NOT IN ('COMPLETED', 'FAILED', 'CANCELED');
"""


class NotOnDisk(DCSError):
    """503: the bytes are unavailable until staged (409 would read as "file exists" to davix/gfal2,
    423 as "permission refused")."""

    status = 503
    code = "not-on-disk"
    title = "File is on tape only"


class TapeRequestError(DCSError):
    status = 400
    code = "bad-tape-request"
    title = "Bad tape request"


_DURATION = re.compile(r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
                       r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_lifetime(value: Any) -> float:
    """`diskLifetime`: ISO 8601 duration (`P1D`, `PT2H30M`) or a number of seconds."""
    if isinstance(value, bool):
        raise TapeRequestError(f"diskLifetime {value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().upper())) and value.strip() not in (
            "P", "PT") and not value.strip().upper().endswith("T"):
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        seconds = parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    else:
        raise TapeRequestError(f"diskLifetime {value!r} is not an ISO 8601 duration such as P1D or PT2H")
    if seconds < 0:
        raise TapeRequestError("diskLifetime must not be negative")
    return seconds


@dataclass(frozen=True, slots=True)
class FileState:
    exists: bool
    is_dir: bool = False
    on_disk: bool = False
    on_tape: bool = False

    @property
    def locality(self) -> str:
        if not self.exists:
            return LOST
        if self.is_dir:
            return NONE
        if self.on_disk and self.on_tape:
            return DISK_AND_TAPE
        if self.on_tape:
            return TAPE
        return DISK if self.on_disk else NONE


class TapeSystem:
    """Tape state of one SE. `resolve(logical) -> local Path` maps SE paths to files under the root."""

    def __init__(self, root: Path, settings: TapeSettings, resolve: Callable[[str], Path], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.resolve = resolve
        self.clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(Path(root) / DB_NAME), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files -------------------------------------------------------------------------------------

    def written(self, path: str) -> None:
        """A file was (re)written through the SE: on disk only, to be flushed after `flush_delay`."""
        now = self.clock()
        flush_at = now + self.settings.flush_delay
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO tape_files VALUES (?, ?, ?, ?)",
                             (path, now, flush_at, flush_at + self.settings.evict_delay))

    def removed(self, path: str) -> None:
        """A file or a whole directory was deleted."""
        with self._lock:
            self._db.execute("DELETE FROM tape_files WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                             (path, _like_prefix(path)))

    def moved(self, source: str, destination: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM tape_files WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                             (destination, _like_prefix(destination)))
            self._db.execute("UPDATE tape_files SET path = ? || substr(path, ?) WHERE path = ? OR path LIKE ? "
                             "ESCAPE '\\'", (destination, len(source) + 1, source, _like_prefix(source)))

    def _times(self, path: str, local: Path) -> tuple[float, float] | None:
        """(flush_at, disk_until) of a regular file, stage pins included; None when there is no such file."""
        row = self._db.execute("SELECT flush_at, disk_until FROM tape_files WHERE path = ?", (path,)).fetchone()
        if row is not None:
            return float(row[0]), float(row[1])
        try:
            mtime = local.stat().st_mtime
        except OSError:
            return None
        flush_at = mtime + self.settings.flush_delay
        return flush_at, flush_at + self.settings.evict_delay

    def state(self, path: str) -> FileState:
        local = self.resolve(path)
        if local.is_dir():
            return FileState(exists=True, is_dir=True)
        if not local.is_file():
            return FileState(exists=False)
        with self._lock:
            now = self.clock()
            self._advance(now)
            times = self._times(path, local)
        if times is None:
            return FileState(exists=False)
        flush_at, disk_until = times
        return FileState(exists=True, on_disk=now < disk_until or now < flush_at, on_tape=now >= flush_at)

    def require_on_disk(self, path: str) -> None:
        state = self.state(path)
        if state.exists and not state.is_dir and not state.on_disk:
            raise NotOnDisk(f"{path} is on tape only: stage it first (POST /api/v1/stage, "
                            "e.g. gfal-bringonline)")

    def _pin(self, path: str, until: float) -> None:
        times = self._times(path, self.resolve(path))
        if times is None:
            return
        flush_at, disk_until = times
        self._db.execute("INSERT OR IGNORE INTO tape_files VALUES (?, ?, ?, ?)",
                         (path, flush_at - self.settings.flush_delay, flush_at, disk_until))
        self._db.execute("UPDATE tape_files SET disk_until = ? WHERE path = ?", (max(disk_until, until), path))

    def _release(self, path: str, now: float) -> None:
        times = self._times(path, self.resolve(path))
        if times is None:
            return
        flush_at, disk_until = times
        # the disk copy can go as soon as the file is on tape, never before
        until = min(disk_until, max(flush_at, now))
        self._db.execute("INSERT OR IGNORE INTO tape_files VALUES (?, ?, ?, ?)",
                         (path, flush_at - self.settings.flush_delay, flush_at, disk_until))
        self._db.execute("UPDATE tape_files SET disk_until = ? WHERE path = ?", (until, path))

    # -- stage requests ----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Complete every recall whose time has come (pins count from the completion time, not from now)."""
        due = self._db.execute(
            "SELECT request_id, idx, path, ready_at, lifetime FROM stage_files WHERE state IN (?, ?) "
            "AND ready_at <= ? ORDER BY ready_at", (SUBMITTED, STARTED, now)).fetchall()
        if not due:
            return
        with self._db:
            for request_id, idx, path, ready_at, lifetime in due:
                local = self.resolve(path)
                if local.is_file():
                    self._pin(path, ready_at + lifetime)
                    self._db.execute("UPDATE stage_files SET state = ?, finished_at = ? WHERE request_id = ? "
                                     "AND idx = ?", (COMPLETED, ready_at, request_id, idx))
                else:
                    self._db.execute("UPDATE stage_files SET state = ?, finished_at = ?, error = ? WHERE "
                                     "request_id = ? AND idx = ?",
                                     (FAILED, ready_at, f"{path} was removed while it was being staged",
                                      request_id, idx))

    def stage(self, files: Iterable[tuple[str, float | None]], owner: str | None = None) -> str:
        """Submit a stage request; `files` are (path, disk lifetime in seconds or None)."""
        request_id = str(uuid.uuid4())
        s = self.settings
        with self._lock, self._db:
            now = self.clock()
            self._advance(now)
            mount_at = now + s.mount_delay
            self._db.execute("INSERT INTO stage_requests VALUES (?, ?, ?, ?)", (request_id, now, mount_at, owner))
            recalls = 0
            for idx, (path, lifetime) in enumerate(files):
                pin = min(s.max_pin, s.default_pin if lifetime is None else lifetime)
                local = self.resolve(path)
                if local.is_dir() or not local.is_file():
                    error = f"{path} is a directory" if local.is_dir() else f"{path} does not exist"
                    row = (request_id, idx, path, FAILED, None, pin, error, now)
                else:
                    times = self._times(path, local)
                    assert times is not None
                    if now < times[1] or now < times[0]:  # already on disk: pin it, done
                        self._pin(path, now + pin)
                        row = (request_id, idx, path, COMPLETED, now, pin, None, now)
                    else:
                        recalls += 1
                        row = (request_id, idx, path, SUBMITTED, mount_at + s.stage_delay * recalls, pin, None, None)
                self._db.execute("INSERT INTO stage_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return request_id

    def _request_row(self, request_id: str) -> tuple[float, float, str | None]:
        row = self._db.execute("SELECT created_at, mount_at, owner FROM stage_requests WHERE id = ?",
                               (request_id,)).fetchone()
        if row is None:
            raise NotFound(f"no stage request {request_id}", code="no-such-request")
        return float(row[0]), float(row[1]), row[2]

    def request_paths(self, request_id: str) -> list[str]:
        with self._lock:
            self._request_row(request_id)
            return [r[0] for r in self._db.execute("SELECT path FROM stage_files WHERE request_id = ? ORDER BY idx",
                                                   (request_id,))]

    def request(self, request_id: str) -> dict[str, Any]:
        """`GET /stage/{id}` answer (WLCG Tape REST API v1)."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            created, mount_at, _owner = self._request_row(request_id)
            rows = self._db.execute("SELECT path, state, error, finished_at FROM stage_files WHERE request_id = ? "
                                    "ORDER BY idx", (request_id,)).fetchall()
        files = []
        for path, state, error, finished_at in rows:
            if state not in FINAL:
                state = STARTED if now >= mount_at else SUBMITTED
            entry: dict[str, Any] = {"path": path, "state": state,
                                     "onDisk": state == COMPLETED and self.state(path).on_disk}
            if state != SUBMITTED:
                entry["startedAt"] = int(min(mount_at, finished_at if finished_at is not None else mount_at))
            if finished_at is not None:
                entry["finishedAt"] = int(finished_at)
            if error:
                entry["error"] = error
            files.append(entry)
        answer: dict[str, Any] = {"id": request_id, "createdAt": int(created)}
        if now >= mount_at or all(f["state"] in FINAL for f in files):
            answer["startedAt"] = int(min(mount_at, now))
        if files and all(f["state"] in FINAL for f in files):
            answer["completedAt"] = max(int(f.get("finishedAt", created)) for f in files)
        answer["files"] = files
        return answer

    def _check_paths(self, request_id: str, paths: list[str]) -> None:
        known = set(self.request_paths(request_id))
        unknown = [p for p in paths if p not in known]
        if unknown:
            raise TapeRequestError(f"not in stage request {request_id}: {', '.join(unknown[:5])}")

    def cancel(self, request_id: str, paths: list[str]) -> None:
        with self._lock, self._db:
            self._advance(self.clock())
            self._check_paths(request_id, paths)
            for path in paths:
                self._db.execute(f"UPDATE stage_files SET state = ?, finished_at = ? WHERE request_id = ? AND path = ? "
                                 f"AND state NOT IN {tuple(FINAL)!r}", (CANCELED, self.clock(), request_id, path))

    def delete(self, request_id: str) -> None:
        """Forget a request (what is still pending is cancelled with it)."""
        with self._lock, self._db:
            self._advance(self.clock())
            self._request_row(request_id)
            self._db.execute("DELETE FROM stage_files WHERE request_id = ?", (request_id,))
            self._db.execute("DELETE FROM stage_requests WHERE id = ?", (request_id,))

    def release(self, request_id: str, paths: list[str]) -> None:
        """Unpin: the disk copies of `paths` may go (at once when on tape). An unknown request id is
        accepted (gfal2 sends a placeholder when it has none); known ones must contain the paths."""
        with self._lock, self._db:
            now = self.clock()
            self._advance(now)
            exists = self._db.execute("SELECT 1 FROM stage_requests WHERE id = ?", (request_id,)).fetchone()
            if exists:
                self._check_paths(request_id, paths)
            for path in paths:
                self._release(path, now)

    def archiveinfo(self, paths: list[str]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for path in paths:
            state = self.state(path)
            if not state.exists:
                out.append({"path": path, "error": f"{path} does not exist"})
            else:
                out.append({"path": path, "locality": state.locality})
        return out


def _like_prefix(path: str) -> str:
    escaped = path.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def parse_body(raw: bytes, key: str) -> list[Any]:
    """The JSON body of a tape call: an object with a non-empty list under `key`."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise TapeRequestError("request body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get(key), list) or not body[key]:
        raise TapeRequestError(f'request body must be {{"{key}": [...]}} with at least one entry')
    if len(body[key]) > MAX_FILES_PER_REQUEST:
        raise TapeRequestError(f"at most {MAX_FILES_PER_REQUEST} entries per request")
    return list(body[key])
