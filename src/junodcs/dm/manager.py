"""The data manager: put-and-register, get, replicate-and-register and remove, over the catalog and SEs.

Client-side only (DIRAC's `DataManager`): it talks to the central server through the catalog and
config clients and to the SEs through the storage client, with the caller's access token. The rules
that keep the catalog and the SEs consistent:

* put: the adler32 is computed locally and sent as `Digest`, so the SE refuses (and keeps nothing of) a
  corrupted or truncated upload; the stored checksum is read back before the file is registered with
  its size and checksum; if the registration fails the uploaded file is removed again. An LFN already in
  the catalog is refused before anything is uploaded, and an upload never replaces a file the catalog
  points to.
* get: replicas best first (same site, then link bandwidth; disk before tape, Problematic last), each
  download checked against the SE's digest and the catalog's size and checksum, written under a
  temporary name and renamed only when good; a failed replica falls back to the next. A replica on a
  tape SE whose disk copy is gone is staged first (WLCG Tape REST API, `stage_timeout`), and its pin
  released once read.
* replicate: HTTP-TPC pull, then push, then a streamed copy through this process (or the one `mode`
  asked for); the destination's checksum must equal the catalog's before the replica is registered, and
  whatever a failed attempt left at the destination is removed. A tape source is staged first, like
  for get. A destination replica marked Problematic is copied again (repaired) and marked good.
* Problematic replicas: a replica whose SE says 404, or whose bytes disagree with the catalog's size or
  adler32, is marked `Problematic` in the catalog at once (and the result says so), so that later
  readers try it last; transient failures (connection, timeout, staging) mark nothing. A Problematic
  replica that is read (or repaired) with the catalog's checksum is marked `AprioriGood` again.
* remove: the physical file first, then the catalog entry; a physical file already gone is fine; the
  last replica of a file goes only with `force` (removing a whole file removes all its replicas).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from junodcs.core.errors import Conflict, DCSError, InvalidInput, NotFound, RemoteError, ServiceUnavailable
from junodcs.dm.ranking import Candidate, Links, SEInfo, rank_replicas

log = logging.getLogger(__name__)

MODES = ("pull", "push", "stream")

PROBLEMATIC, GOOD = "Problematic", "AprioriGood"
#: failure codes that say the replica itself is bad (not the network, not the moment)
BAD_REPLICA_CODES = frozenset({"not-found", "checksum-mismatch", "size-mismatch"})


class DataManagerError(DCSError):
    status = 502
    code = "dm-error"
    title = "Data management error"


@dataclass
class Attempt:
    se: str
    error: str
    code: str
    mode: str | None = None
    marked: str | None = None
    """The catalog status this failure set on the replica (`Problematic`), if any."""


@dataclass
class Result:
    """Outcome of one operation on one LFN (what `--json` prints)."""

    action: str
    lfn: str
    ok: bool = False
    status: str = ""
    se: str | None = None
    source_se: str | None = None
    mode: str | None = None
    path: str | None = None
    size: int | None = None
    checksum: str | None = None
    seconds: float = 0.0
    code: str | None = None
    detail: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problematic: list[str] = field(default_factory=list)
    """SEs whose replica this operation marked Problematic."""
    recovered: list[str] = field(default_factory=list)
    """SEs whose Problematic replica this operation found (or made) good again."""
    staged_from: str | None = None
    stage_request: str | None = None
    stage_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v not in (None, [], "") or k in ("ok", "lfn", "action")}

    def fail(self, exc: DCSError) -> Result:
        self.ok, self.status, self.code, self.detail = False, "failed", exc.code, exc.detail
        return self

    def raise_for(self) -> Result:
        """Raise the failure as a `DCSError` (for callers that want exceptions, e.g. the job wrapper)."""
        if not self.ok:
            raise DataManagerError(self.detail or f"{self.action} {self.lfn} failed",
                                   code=self.code or "dm-error",
                                   attempts=[asdict(a) for a in self.attempts])
        return self


def _error(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, DCSError):
        return exc.code, exc.detail
    import httpx

    if isinstance(exc, httpx.HTTPError):
        return "connection-failed", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) or type(exc).__module__.startswith(("h11", "httpcore")):
        return "connection-failed", f"{type(exc).__name__}: {exc}"
    log.debug("unexpected error", exc_info=exc)
    return "unexpected-error", f"{type(exc).__name__}: {exc}"


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """What a transfer step may raise and we catch, record per attempt and clean up after: besides our
    errors, whatever the HTTP stack raises on a broken connection (httpx, h11, OSError...)."""
    return (Exception,)


class _SourceUnusable(Exception):
    """This source replica failed (recorded in the result's attempts): try the next one."""


class DataManager:
    """Data operations for one user against one central server. Thread-safe: bulk commands share one."""

    def __init__(self, server_url: str | None = None, *, token: str | None = None, site: str | None = None,
                 catalog: Any = None, config: Any = None, storage: Any = None,
                 timeout: float = 120.0, stage_timeout: float = 3600.0,
                 on_message: Callable[[str], None] | None = None) -> None:
        """`stage_timeout`: seconds a read waits for a tape SE to bring a file online; `on_message`: where
        progress and warnings for people go (staging, replicas marked Problematic); default: the log."""
        from junodcs.catalog.client import CatalogClient
        from junodcs.config.client import ConfigClient
        from junodcs.core.client import ClientConfig
        from junodcs.storage.client import StorageClient

        self.client_config = ClientConfig.load()
        self.server_url = (server_url or self.client_config.require_server()).rstrip("/")
        self._token = token
        self.catalog = catalog or CatalogClient(self.server_url, token=token, config=self.client_config)
        self.config = config or ConfigClient(self.server_url, token=token, config=self.client_config)
        ca = self.client_config.ca_dir or self.client_config.ca_file
        self.storage = storage or StorageClient(ca_dir=ca, timeout=timeout)
        self.site = site if site is not None else (os.environ.get("DCS_SITE") or None)
        self._ses: dict[str, SEInfo] | None = None
        self._links: Links | None = None
        self._lock = threading.Lock()
        self._tape_client: Any = None
        self.stage_timeout = stage_timeout
        self.on_message = on_message
        self.vo = "juno"

    def close(self) -> None:
        self.catalog.close()
        self.config.close()
        self.storage.close()

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- grid description ------------------------------------------------------------------------------

    def storage_elements(self) -> dict[str, SEInfo]:
        with self._lock:
            if self._ses is None:
                self._ses = {se["name"]: SEInfo.from_api(se) for se in self.config.storage_elements()}
            return self._ses

    def links(self) -> Links:
        with self._lock:
            if self._links is None:
                self._links = Links(self.config.links())
            return self._links

    def se(self, name: str) -> SEInfo:
        ses = self.storage_elements()
        if name not in ses:
            raise InvalidInput(f"unknown storage element {name!r}; known: {', '.join(sorted(ses))}",
                               code="unknown-se")
        return ses[name]

    def se_url(self, name: str, lfn: str) -> str:
        se = self.se(name)
        url = se.url_for(lfn, self.vo)
        if url is None:
            raise DataManagerError(f"storage element {name} has no URL in the grid description "
                                   "(not started?)",
                                   code="se-without-url")
        return url

    def default_se(self) -> str:
        """The first disk SE of the user's site (`DCS_SITE`), for `put` without `--se`."""
        if self.site:
            for se in self.storage_elements().values():
                if se.site == self.site and not se.is_tape:
                    return se.name
        raise InvalidInput("no storage element given: use --se (or set DCS_SITE to a site with a disk SE)",
                           code="no-se")

    def rank(self, lfn: str, replicas: Iterable[Mapping[str, Any]], site: str | None = None, *,
             exclude: Iterable[str] = (), tape: bool = False) -> tuple[list[Candidate], list[str]]:
        site = site if site is not None else self.site
        return rank_replicas(replicas, self.storage_elements(), self.links(), site,
                             lfn=lfn, vo=self.vo, exclude=exclude, tape=tape)

    # -- plumbing ------------------------------------------------------------------------------------

    def _storage(self) -> Any:
        """The storage client with a fresh token (renewed on the fly by the session when near expiry)."""
        if self._token is not None:
            self.storage.token = self._token
        else:
            from junodcs.auth.client import current_access_token

            self.storage.token = current_access_token(self.server_url, self.client_config)
        return self.storage

    def _say(self, message: str, level: int = logging.INFO) -> None:
        if self.on_message is not None:
            self.on_message(message)
        else:
            log.log(level, "%s", message)

    def _tape(self) -> Any:
        """The Tape REST client, sharing the storage client's session and (fresh) token."""
        from junodcs.storage.staging import TapeRestClient

        storage = self._storage()
        with self._lock:
            if self._tape_client is None:
                self._tape_client = TapeRestClient(storage)
            return self._tape_client

    def _set_replica_status(self, lfn: str, se: str, status: str) -> None:
        self.catalog.set_replica_status(lfn, se, status)  # needs write access to the file's directory

    def _judge(self, lfn: str, candidate: Candidate, code: str, detail: str, result: Result,
               attempt: Attempt) -> None:
        """After a failed read of `candidate`: mark the replica Problematic when the failure says the
        replica itself is bad (404 on its SE, other bytes than the catalog's), and say so."""
        if code not in BAD_REPLICA_CODES or candidate.status == PROBLEMATIC:
            return
        name = candidate.se.name
        try:
            self._set_replica_status(lfn, name, PROBLEMATIC)
        except DCSError as exc:
            self._say(f"warning: the replica of {lfn} at {name} is bad ({code}) but could not be marked "
                      f"{PROBLEMATIC}: {exc.detail}", logging.WARNING)
            return
        attempt.marked = PROBLEMATIC
        result.problematic.append(name)
        self._say(f"warning: replica of {lfn} at {name} marked {PROBLEMATIC} in the catalog ({code}: {detail})",
                  logging.WARNING)

    def _recovered(self, lfn: str, candidate: Candidate, result: Result) -> None:
        """A Problematic replica just proved good (the catalog's checksum): mark it good again."""
        if candidate.status != PROBLEMATIC:
            return
        try:
            self._set_replica_status(lfn, candidate.se.name, GOOD)
        except DCSError as exc:
            log.warning("could not mark the replica of %s at %s good again: %s", lfn, candidate.se.name,
                        exc.detail)
            return
        result.recovered.append(candidate.se.name)
        self._say(f"replica of {lfn} at {candidate.se.name} is good again: marked {GOOD}")

    def _bring_online(self, lfn: str, candidate: Candidate, result: Result) -> Any:
        """Stage a tape replica when its disk copy is gone; the outcome (for the release afterwards)."""
        name = candidate.se.name
        outcome = self._tape().bring_online(candidate.url, timeout=self.stage_timeout,
                                            on_progress=lambda message: self._say(f"{name}: {message}"))
        if outcome.staged:
            result.staged_from, result.stage_request = name, outcome.request_id
            result.stage_seconds = outcome.seconds
        return outcome

    def _release(self, candidate: Candidate, outcome: Any) -> None:
        """Unpin what we staged: the tape SE may evict its disk copy again (best effort)."""
        if outcome is None or not outcome.staged:
            return
        try:
            self._tape().release(candidate.url, outcome.request_id)
        except _transfer_errors() as exc:
            log.warning("could not release %s (request %s): %s", candidate.url, outcome.request_id,
                        _error(exc)[1])

    def _lfn(self, lfn: str) -> str:
        if not isinstance(lfn, str) or not lfn.startswith(f"/{self.vo}/"):
            raise InvalidInput(f"LFN {lfn!r} must start with /{self.vo}/", code="invalid-lfn")
        return lfn.rstrip("/")

    def _stat(self, lfn: str) -> dict[str, Any] | None:
        try:
            return self.catalog.stat(lfn)
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    def _replicas(self, lfn: str) -> list[dict[str, Any]]:
        return list(self.catalog.replicas([lfn]).get(lfn, []))

    def _delete_quietly(self, url: str) -> bool:
        """Remove a physical file we created; True when it is gone (or was never there)."""
        try:
            self._storage().delete(url)
            return True
        except NotFound:
            return True
        except _transfer_errors() as exc:
            log.warning("could not remove %s: %s", url, _error(exc)[1])
            return False

    # -- put -----------------------------------------------------------------------------------------

    def put(self, local: str | os.PathLike[str], lfn: str, se: str | None = None, *,
            metadata: Mapping[str, Any] | None = None, guid: str | None = None) -> Result:
        """Upload a local file to an SE and register it (size, adler32, GUID, replica, metadata)."""
        started = time.monotonic()
        result = Result("put", lfn, path=str(local))
        try:
            self._put(Path(local), self._lfn(lfn), se, metadata, guid, result)
        except DCSError as exc:
            result.fail(exc)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _put(self, path: Path, lfn: str, se_name: str | None, metadata: Mapping[str, Any] | None,
             guid: str | None, result: Result) -> None:
        from junodcs.core.checksums import file_adler32

        result.lfn = lfn
        if not path.is_file():
            raise InvalidInput(f"{path}: no such regular file", code="no-such-file")
        size = path.stat().st_size
        if size == 0:
            raise InvalidInput(f"{path}: empty file (not uploaded)", code="empty-file")
        se_name = se_name or self.default_se()
        result.se = se_name
        url = self.se_url(se_name, lfn)
        if self.se(se_name).is_tape:
            raise InvalidInput(f"{se_name} is a tape SE; put to a disk SE and replicate to tape",
                               code="tape-se")
        existing = self._stat(lfn)
        if existing is not None:
            raise Conflict(f"{lfn} is already registered ({existing.get('type', 'file')}); nothing uploaded",
                           code="already-exists")
        checksum = file_adler32(path)
        result.size, result.checksum = size, checksum
        guid = str(uuid.UUID(guid) if guid else uuid.uuid4()).upper()
        storage = self._storage()
        try:
            try:
                storage.put(path, url, overwrite=False, adler32=checksum)
            except Conflict:
                # a file the catalog does not know (left by a crashed client): not ours to keep, replace it
                if self._stat(lfn) is not None:
                    raise Conflict(f"{lfn} was registered while uploading", code="already-exists") from None
                log.info("replacing unregistered file %s", url)
                storage.put(path, url, overwrite=True, adler32=checksum)
            stored = storage.checksum(url)
            if stored != checksum:
                from junodcs.storage.client import ChecksumMismatch

                raise ChecksumMismatch(f"{url}: the SE holds adler32 {stored}, the local file has {checksum}")
        except _transfer_errors() as exc:
            # the SE keeps nothing of a refused or broken upload; remove what a lost answer may have left
            if not (isinstance(exc, Conflict) and exc.code == "already-exists"):
                self._delete_quietly(url)
            code, detail = _error(exc)
            raise DataManagerError(f"upload of {path} to {se_name} failed: {detail}", code=code) from None
        self._register(lfn, url, se_name, size, checksum, guid, metadata)
        result.ok, result.status = True, "uploaded"

    def _register(self, lfn: str, url: str, se: str, size: int, checksum: str, guid: str,
                  metadata: Mapping[str, Any] | None) -> None:
        entry: dict[str, Any] = {"lfn": lfn, "size": size, "checksum": checksum, "guid": guid, "se": se}
        if metadata:
            entry["metadata"] = dict(metadata)
        try:
            answer = self.catalog.register([entry])[0]
        except DCSError as exc:
            if isinstance(exc, ServiceUnavailable) or (isinstance(exc, RemoteError) and exc.status >= 500):
                # the answer may be lost after the catalog committed: look before deleting
                try:
                    now = self._stat(lfn)
                except DCSError:
                    now = None
                if now is not None and str(now.get("guid", "")).upper() == guid:
                    return
            self._cleanup_after_refused_registration(lfn, url, se, checksum)
            raise DataManagerError(f"registration of {lfn} failed ({exc.detail}); the uploaded file was "
                                   "removed",
                                   code=exc.code) from None
        if not answer.get("ok"):
            self._cleanup_after_refused_registration(lfn, url, se, checksum)
            raise DataManagerError(f"registration of {lfn} refused: {answer.get('detail')}; the uploaded "
                                   "file "
                                   "was removed", code=str(answer.get("code") or "registration-failed"))

    def _cleanup_after_refused_registration(self, lfn: str, url: str, se: str, checksum: str) -> None:
        # never delete a physical file the catalog points to (someone registered the same LFN meanwhile)
        try:
            if self._stat(lfn) is not None and any(r["se"] == se for r in self._replicas(lfn)):
                log.warning("%s was registered at %s by someone else meanwhile; leaving %s", lfn, se, url)
                return
        except DCSError:
            pass
        self._delete_quietly(url)

    # -- get -----------------------------------------------------------------------------------------

    def get(self, lfn: str, destination: str | os.PathLike[str] | None = None, *, site: str | None = None,
            source_se: str | None = None, overwrite: bool = False) -> Result:
        """Download the best replica; checksum checked against the catalog; next replica on failure."""
        started = time.monotonic()
        result = Result("get", lfn)
        try:
            self._get(self._lfn(lfn), destination, site, source_se, overwrite, result)
        except DCSError as exc:
            result.fail(exc)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _get(self, lfn: str, destination: str | os.PathLike[str] | None, site: str | None,
             source_se: str | None, overwrite: bool, result: Result) -> None:
        from junodcs.core.checksums import file_adler32

        result.lfn = lfn
        entry = self._stat(lfn)
        if entry is None or entry.get("type") == "directory":
            raise NotFound(f"no such file in the catalog: {lfn}", code="no-such-path")
        size, checksum = entry["size"], entry["checksum"]
        result.size, result.checksum = size, checksum
        target = Path(destination) if destination is not None else Path.cwd()
        if target.is_dir():
            target = target / lfn.rsplit("/", 1)[-1]
        result.path = str(target)
        if target.exists():
            if target.is_file() and target.stat().st_size == size and file_adler32(target) == checksum:
                result.ok, result.status = True, "present"
                return
            if not overwrite:
                raise Conflict(f"{target} exists and differs from {lfn}; use --overwrite",
                               code="local-exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        replicas = self._replicas(lfn)
        if source_se:
            replicas = [r for r in replicas if r["se"] == source_se]
            if not replicas:
                raise NotFound(f"{lfn} has no replica at {source_se}", code="no-such-replica")
        candidates, skipped = self.rank(lfn, replicas, site, tape=True)
        if not candidates:
            ses = self.storage_elements()
            if skipped and all(s in ses and ses[s].is_tape for s in skipped):
                raise DataManagerError(f"{lfn} is only on tape ({', '.join(skipped)}), and no URL is known for "
                                       "that SE: it cannot be staged", code="tape-only")
            raise DataManagerError(f"{lfn} has no readable replica" + (f" (skipped {', '.join(skipped)})"
                                   if skipped else ""), code="no-replica")
        tmp = target.with_name(f".{target.name}.dcs-{uuid.uuid4().hex[:8]}")
        for candidate in candidates:
            staged = None
            try:
                if candidate.se.is_tape:
                    staged = self._bring_online(lfn, candidate, result)
                got = self._storage().get(candidate.url, tmp, verify_checksum=True)
                if tmp.stat().st_size != size:
                    raise DataManagerError(f"{candidate.url}: {tmp.stat().st_size} bytes, the catalog says "
                                           f"{size}",
                                           code="size-mismatch")
                if got != checksum:
                    raise DataManagerError(f"{candidate.url}: adler32 {got}, the catalog says {checksum}",
                                           code="checksum-mismatch")
                os.replace(tmp, target)
                result.ok, result.status, result.se = True, "downloaded", candidate.se.name
                self._recovered(lfn, candidate, result)
                return
            except _transfer_errors() as exc:
                tmp.unlink(missing_ok=True)
                code, detail = _error(exc)
                log.warning("get %s from %s failed: %s", lfn, candidate.se.name, detail)
                attempt = Attempt(candidate.se.name, detail, code)
                result.attempts.append(attempt)
                self._judge(lfn, candidate, code, detail, result, attempt)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                self._release(candidate, staged)
        raise DataManagerError(f"{lfn}: every replica failed ("
                               + ", ".join(f"{a.se}: {a.code}" + (f" (marked {a.marked})" if a.marked else "")
                                           for a in result.attempts) + ")",
                               code="all-replicas-failed")

    # -- replicate -----------------------------------------------------------------------------------

    def replicate(self, lfn: str, destination_se: str, *, source_se: str | None = None,
                  mode: str | None = None) -> Result:
        """Copy a file to another SE (TPC pull, push, then streamed) and register the new replica."""
        started = time.monotonic()
        result = Result("replicate", lfn, se=destination_se)
        try:
            self._replicate(self._lfn(lfn), destination_se, source_se, mode, result)
        except DCSError as exc:
            result.fail(exc)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _replicate(self, lfn: str, dest: str, source_se: str | None, mode: str | None,
                   result: Result) -> None:
        result.lfn = lfn
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"mode {mode!r} is not one of {', '.join(MODES)}", code="invalid-mode")
        modes = [mode] if mode else list(MODES)
        dest_url = self.se_url(dest, lfn)
        entry = self._stat(lfn)
        if entry is None or entry.get("type") == "directory":
            raise NotFound(f"no such file in the catalog: {lfn}", code="no-such-path")
        checksum = entry["checksum"]
        result.size, result.checksum = entry["size"], checksum
        replicas = self._replicas(lfn)
        existing = [r for r in replicas if r["se"] == dest]
        repairing = bool(existing) and existing[0].get("status") == PROBLEMATIC
        if existing and not repairing:
            result.ok, result.status = True, "exists"
            return
        if source_se:
            replicas = [r for r in replicas if r["se"] == source_se]
            if not replicas:
                raise NotFound(f"{lfn} has no replica at {source_se}", code="no-such-replica")
        candidates, skipped = self.rank(lfn, replicas, self.se(dest).site, exclude=[dest], tape=True)
        if not candidates:
            raise DataManagerError(f"{lfn} has no replica to copy from"
                                   + (f" (skipped {', '.join(skipped)})" if skipped else ""),
                                   code="no-replica")
        for candidate in candidates:
            try:
                self._copy_from(lfn, candidate, dest, dest_url, checksum, modes, result, repairing)
                return
            except _SourceUnusable:
                continue
        raise DataManagerError(f"{lfn}: no copy to {dest} succeeded ("
                               + "; ".join(f"{a.mode or 'check'} from {a.se}: {a.error}"
                                           + (f" (marked {a.marked})" if a.marked else "")
                                           for a in result.attempts)
                               + ")",
                               code="replication-failed")

    def _copy_from(self, lfn: str, candidate: Candidate, dest: str, dest_url: str, checksum: str,
                   modes: list[str], result: Result, repairing: bool) -> None:
        """Copy from one source replica (staged first if on tape), trying each mode; returns on success,
        raises `_SourceUnusable` when this source is to be skipped or every mode failed."""
        from junodcs.storage.client import ChecksumMismatch

        staged = None
        try:
            try:  # a source that lost its file or holds other bytes than the catalog says is skipped
                if candidate.se.is_tape:
                    staged = self._bring_online(lfn, candidate, result)
                source_sum = self._storage().checksum(candidate.url)
                if source_sum != checksum:
                    raise ChecksumMismatch(f"{candidate.se.name} holds adler32 {source_sum}, the catalog "
                                           f"says {checksum}")
            except _transfer_errors() as exc:
                code, detail = _error(exc)
                attempt = Attempt(candidate.se.name, f"source unusable: {detail}", code)
                result.attempts.append(attempt)
                self._judge(lfn, candidate, code, detail, result, attempt)
                raise _SourceUnusable() from None
            self._recovered(lfn, candidate, result)
            for how in modes:
                storage = self._storage()
                try:
                    storage.tpc(candidate.url, dest_url, mode=how, overwrite=True, verify_checksum=True)
                    stored = storage.checksum(dest_url)
                    if stored != checksum:
                        raise ChecksumMismatch(f"{dest}: adler32 {stored} after the copy, the catalog says "
                                               f"{checksum}")
                except _transfer_errors() as exc:
                    code, detail = _error(exc)
                    log.warning("%s copy of %s from %s to %s failed: %s", how, lfn, candidate.se.name, dest,
                                detail)
                    result.attempts.append(Attempt(candidate.se.name, detail, code, mode=how))
                    self._delete_quietly(dest_url)  # a failed copy leaves nothing behind
                    continue
                if repairing:
                    self._set_replica_status(lfn, dest, GOOD)
                    result.recovered.append(dest)
                    self._say(f"replica of {lfn} at {dest} repaired from {candidate.se.name}: marked {GOOD}")
                else:
                    self._register_replica(lfn, dest, dest_url)
                result.ok, result.status, result.mode = True, "repaired" if repairing else "replicated", how
                result.source_se = candidate.se.name
                return
            raise _SourceUnusable()
        finally:
            self._release(candidate, staged)

    def _register_replica(self, lfn: str, se: str, url: str) -> None:
        try:
            answer = self.catalog.add_replicas([{"lfn": lfn, "se": se}])[0]
        except DCSError as exc:
            self._delete_quietly(url)
            raise DataManagerError(f"registration of the replica of {lfn} at {se} failed ({exc.detail}); "
                                   "the copy "
                                   "was removed", code=exc.code) from None
        if not answer.get("ok") and answer.get("code") != "replica-exists":
            self._delete_quietly(url)
            raise DataManagerError(f"replica of {lfn} at {se} refused: {answer.get('detail')}; the copy was "
                                   "removed",
                                   code=str(answer.get("code") or "registration-failed"))

    # -- remove --------------------------------------------------------------------------------------

    def remove(self, lfn: str, *, se: str | None = None, force: bool = False) -> Result:
        """Remove a file (every replica, then the catalog entry) or, with `se`, one replica."""
        started = time.monotonic()
        result = Result("rm", lfn, se=se)
        try:
            self._remove(self._lfn(lfn), se, force, result)
        except DCSError as exc:
            result.fail(exc)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _physical_remove(self, lfn: str, replica: Mapping[str, Any]) -> None:
        name = replica["se"]
        se = self.storage_elements().get(name)
        url = replica.get("url") or (se.url_for(lfn, self.vo) if se else None)
        if url is None:
            raise DataManagerError(f"{name} has no URL: cannot remove the physical file",
                                   code="se-without-url")
        try:
            self._storage().delete(url)
        except NotFound:
            log.info("%s was already gone from %s", lfn, name)

    def _remove(self, lfn: str, se: str | None, force: bool, result: Result) -> None:
        result.lfn = lfn
        entry = self._stat(lfn)
        if entry is None:
            raise NotFound(f"no such file in the catalog: {lfn}", code="no-such-path")
        if entry.get("type") == "directory":
            raise InvalidInput(f"{lfn} is a directory; dm rm removes files", code="is-directory")
        replicas = self._replicas(lfn)
        if se is not None:
            mine = [r for r in replicas if r["se"] == se]
            if not mine:
                raise NotFound(f"{lfn} has no replica at {se}", code="no-such-replica")
            last = len(replicas) == 1
            if last and not force:
                raise Conflict(f"{se} holds the last replica of {lfn}; use --force to remove it (and the "
                               "file)",
                               code="last-replica")
            try:
                self._physical_remove(lfn, mine[0])
            except _transfer_errors() as exc:
                code, detail = _error(exc)
                raise DataManagerError(f"removing {lfn} from {se} failed: {detail}; catalog unchanged",
                                       code=code) from None
            if last:
                self.catalog.remove(lfn)
                result.status = "removed"
            else:
                self.catalog.remove_replica(lfn, se, force=force)
                result.status = "replica-removed"
            result.ok, result.removed = True, [se]
            return
        failed: list[str] = []
        for replica in replicas:
            try:
                self._physical_remove(lfn, replica)
                result.removed.append(replica["se"])
            except _transfer_errors() as exc:
                code, detail = _error(exc)
                failed.append(replica["se"])
                result.attempts.append(Attempt(replica["se"], detail, code))
        if not failed:
            self.catalog.remove(lfn)
            result.ok, result.status = True, "removed"
            return
        for name in result.removed:  # keep the catalog true: drop what is gone, keep what is still there
            self.catalog.remove_replica(lfn, name, force=True)
        raise DataManagerError(f"{lfn}: could not remove the replicas at {', '.join(failed)} ("
                               + "; ".join(a.error for a in result.attempts) + "); they stay registered",
                               code="partially-removed")
