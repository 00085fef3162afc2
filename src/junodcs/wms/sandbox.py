"""Sandbox storage: content-addressed archives (sha256), de-duplicated by hash.

`SandboxStore` is the interface the WMS uses. Two stores exist:

* `SESandboxStore` (the production one, chosen when grid.yaml names `servers.sandbox_se`): each archive is
  one file `<vo path>/sandbox/<ab>/<sha256>.tar.gz` on that storage element, written and removed by the
  central server with its own service token (storage scopes on `/sandbox` only). Pilots do not stream
  sandboxes through the central server: they get a short-lived token scoped to the one archive (read for an
  input sandbox, create-only for an output sandbox, so nothing stored can be overwritten) and talk to the
  SE directly. The central server's disk and bandwidth then do not bound how many jobs run.
* `LocalSandboxStore` keeps archives on the server's filesystem (`<DCS_HOME>/sandboxes/ab/cd/<hash>`). It
  stays for a server whose grid has no sandbox SE (one machine, unit tests without any SE): there the
  pilots fetch and upload through the server's REST routes, which is fine at that scale.

Metadata (size, owner, which jobs use it) live in the database (`wms_sandboxes`,
`wms_jobs.input_sandbox|output_sandbox`); the store only holds bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from junodcs.core.errors import Conflict, DCSError, NotFound

MAX_SANDBOX_BYTES = 100 * 1024 * 1024
SB_PREFIX = "SB:"


def sandbox_ref(digest: str) -> str:
    return f"{SB_PREFIX}sha256:{digest}"


def is_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse_ref(ref: str) -> str | None:
    """`SB:sha256:<hex>` -> hex digest; None when `ref` is not a sandbox reference."""
    if not ref.startswith(SB_PREFIX):
        return None
    rest = ref[len(SB_PREFIX):]
    algo, _, digest = rest.partition(":")
    if algo != "sha256" or not is_digest(digest):
        return ""
    return digest


class SandboxIntegrityError(DCSError):
    status = 502
    code = "sandbox-corrupted"
    title = "Sandbox corrupted"


@dataclass(frozen=True, slots=True)
class SandboxAccess:
    """Where a pilot reads or writes one archive directly, and the token scoped to exactly that file."""

    se: str
    url: str
    token: str
    expires_in: int


class SandboxStore(ABC):
    @abstractmethod
    def put(self, data: bytes) -> tuple[str, int]:
        """Store `data`; returns (sha256 hex, size). Storing the same bytes twice keeps one copy."""

    @abstractmethod
    def get(self, digest: str) -> bytes: ...

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def delete(self, digest: str) -> None: ...

    def intact(self, digest: str) -> bool:
        """Whether the bytes stored under `digest` hash to it."""
        return hashlib.sha256(self.get(digest)).hexdigest() == digest

    def size(self, digest: str) -> int | None:
        """Bytes stored under `digest`, or None when nothing is."""
        try:
            return len(self.get(digest))
        except (FileNotFoundError, NotFound):
            return None

    def read_access(self, digest: str, username: str) -> SandboxAccess | None:
        """Direct read access for a pilot; None: this store is only reachable through the server."""
        return None

    def write_access(self, digest: str, username: str) -> SandboxAccess | None:
        """Direct create-only access for a pilot's output sandbox; None: upload through the server."""
        return None


class LocalSandboxStore(SandboxStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest, len(data)

    def get(self, digest: str) -> bytes:
        return self._path(digest).read_bytes()

    def exists(self, digest: str) -> bool:
        return self._path(digest).exists()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None


#: issue(username, scopes, audience, lifetime) -> a signed access token of the central issuer
TokenIssue = Callable[[str, tuple[str, ...], str, int], str]

SERVICE_USER = "wms-sandbox-store"
SERVICE_TOKEN_LIFETIME = 3600
PILOT_TOKEN_LIFETIME = 900


class SESandboxStore(SandboxStore):
    """Archives on a storage element, through the project's storage client.

    The service token carries `storage.read|create|modify:/sandbox` and nothing else, with the SE as its
    audience: whoever steals it can touch sandboxes on that one SE only. It is renewed five minutes before it
    expires. Downloads are checked twice: adler32 by the storage client against the SE, and sha256 against the
    name, so a damaged or substituted archive never reaches a job.
    """

    ROOT = "/sandbox"

    def __init__(self, se: str, base_url: str, vo_path: str, issue: TokenIssue, *,
                 ca_dir: str | os.PathLike[str] | None = None, verify: bool = True, timeout: float = 60.0) -> None:
        from junodcs.storage.client import StorageClient

        self.se = se
        self.base_url = base_url.rstrip("/")
        self.vo_path = "/" + vo_path.strip("/")
        self.issue = issue
        self.client = StorageClient(ca_dir=ca_dir, verify=verify, timeout=timeout)
        self._lock = threading.Lock()
        self._token: tuple[str, float] | None = None

    def close(self) -> None:
        self.client.close()

    @classmethod
    def relative(cls, digest: str) -> str:
        """The archive's path relative to the VO prefix, as token scopes name it."""
        if not is_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return f"{cls.ROOT}/{digest[:2]}/{digest}.tar.gz"

    def url(self, digest: str) -> str:
        return f"{self.base_url}{self.vo_path}{self.relative(digest)}"

    def _service_token(self) -> str:
        with self._lock:
            if self._token is None or self._token[1] - time.monotonic() < 300:
                scopes = tuple(f"storage.{verb}:{self.ROOT}" for verb in ("read", "create", "modify"))
                token = self.issue(SERVICE_USER, scopes, self.base_url, SERVICE_TOKEN_LIFETIME)
                self._token = (token, time.monotonic() + SERVICE_TOKEN_LIFETIME)
            return self._token[0]

    def _call(self, work: Callable[[], object]) -> object:
        self.client.token = self._service_token()
        return work()

    def put(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        if self.size(digest) == len(data):
            return digest, len(data)  # already there: one copy per content
        url = self.url(digest)
        with tempfile.TemporaryDirectory(prefix="dcs-sandbox-") as tmp:
            path = Path(tmp) / f"{digest}.tar.gz"
            path.write_bytes(data)
            try:
                self._call(lambda: self.client.put(path, url, overwrite=False))
            except Conflict as exc:  # a concurrent upload of the same bytes won: same content, nothing to do
                if exc.code != "exists":
                    raise
        return digest, len(data)

    def get(self, digest: str) -> bytes:
        url = self.url(digest)
        with tempfile.TemporaryDirectory(prefix="dcs-sandbox-") as tmp:
            path = Path(tmp) / "archive"
            self._call(lambda: self.client.get(url, path))
            data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise SandboxIntegrityError(f"sandbox {digest} on {self.se}: the stored bytes have another sha256")
        return data

    def intact(self, digest: str) -> bool:
        try:
            self.get(digest)  # checks the sha256 itself
        except SandboxIntegrityError:
            return False
        return True

    def exists(self, digest: str) -> bool:
        return self.size(digest) is not None

    def size(self, digest: str) -> int | None:
        try:
            info = self._call(lambda: self.client.stat(self.url(digest)))
        except NotFound:
            return None
        return int(info.size)  # type: ignore[attr-defined]

    def delete(self, digest: str) -> None:
        try:
            self._call(lambda: self.client.delete(self.url(digest)))
        except NotFound:
            pass

    def read_access(self, digest: str, username: str) -> SandboxAccess:
        token = self.issue(username, (f"storage.read:{self.relative(digest)}",), self.base_url, PILOT_TOKEN_LIFETIME)
        return SandboxAccess(self.se, self.url(digest), token, PILOT_TOKEN_LIFETIME)

    def write_access(self, digest: str, username: str) -> SandboxAccess:
        token = self.issue(username, (f"storage.create:{self.relative(digest)}",), self.base_url,
                           PILOT_TOKEN_LIFETIME)
        return SandboxAccess(self.se, self.url(digest), token, PILOT_TOKEN_LIFETIME)


def store_for_grid(grid: object, issue: TokenIssue | None, local_root: str | os.PathLike[str]) -> SandboxStore:
    """The store a server uses: the grid's sandbox SE when it names one (refusing clearly when that SE has no
    URL or no token issuer is available), else the server's own disk."""
    from junodcs.core.gridconfig import GridConfig

    assert isinstance(grid, GridConfig)
    name = grid.servers.sandbox_se
    if name is None:
        return LocalSandboxStore(local_root)
    _, se = grid.storage_element(name)
    if se.url is None:
        raise DCSError(f"servers.sandbox_se: {name} has no URL in grid.yaml; give it one or remove sandbox_se",
                       code="no-sandbox-se-url")
    if issue is None:
        raise DCSError("sandboxes on an SE need this server's token issuer (mount the auth system)",
                       code="no-token-issuer")
    return SESandboxStore(name, se.url, se.path, issue)


def pack(files: Iterable[str | Path], base: str | Path | None = None) -> bytes:
    """A deterministic tar.gz of `files` (sorted, mtime 0, no owners): the same files give the same hash,
    so a bulk or a resubmission shares one stored sandbox."""
    import gzip

    base_path = Path(base) if base else None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted({str(f) for f in files}):
            path = Path(name)
            full = (base_path / path) if base_path and not path.is_absolute() else path
            info = tar.gettarinfo(str(full), arcname=path.name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


def unpack(data: bytes, destination: str | Path) -> list[str]:
    """Extract a sandbox archive safely (no absolute paths, no links out of `destination`)."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        tar.extractall(destination, filter="data")
        return [m.name for m in tar.getmembers() if m.isfile()]
