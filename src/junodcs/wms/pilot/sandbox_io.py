"""Sandbox transfers of the job wrapper: straight between the worker node and the sandbox SE.

The WMS hands out, per archive, the SE URL and a token scoped to that one file (read for the input sandbox,
create-only for the output sandbox). The bytes never pass through the central server, which only records the
output sandbox once the SE holds it. A server that keeps sandboxes on its own disk answers without a URL, and
the wrapper then uses the server routes, as before.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from junodcs.core.client import ClientConfig
from junodcs.core.errors import Conflict, DCSError
from junodcs.storage.client import StorageClient
from junodcs.wms.sandbox import SandboxIntegrityError


def _storage(wms: Any, token: str) -> StorageClient:
    """A storage client trusting the CAs the pilot's WMS client trusts (the grid's CA on a local grid)."""
    config = getattr(wms, "config", None)
    if not isinstance(config, ClientConfig):
        config = ClientConfig.load()
    return StorageClient(token, ca_dir=config.ca_dir or config.ca_file)


def fetch_input_sandbox(wms: Any, job_id: int, attempt: int, pilot_id: str | None) -> bytes:
    """The input sandbox archive of (job, attempt), verified against its sha256."""
    access = wms.input_sandbox_access(job_id, attempt, pilot_id)
    if not access.get("url"):
        return bytes(wms.input_sandbox(job_id, attempt, pilot_id))
    with tempfile.TemporaryDirectory(prefix="dcs-isb-") as tmp, _storage(wms, access["token"]) as storage:
        path = Path(tmp) / "input-sandbox.tar.gz"
        storage.get(access["url"], path)  # adler32 checked against the SE
        data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != access["sha256"]:
        raise SandboxIntegrityError(f"input sandbox from {access.get('se')}: sha256 differs from {access['sha256']}")
    return data


def store_output_sandbox(wms: Any, job_id: int, attempt: int, pilot_id: str | None, data: bytes) -> dict[str, Any]:
    """Put the output sandbox on the sandbox SE (unless the same bytes are there already) and register it.

    The server checks the stored bytes against their name when registering; a file it found wrong (and
    removed) is uploaded once more."""
    digest = hashlib.sha256(data).hexdigest()
    for last in (False, True):
        access = wms.output_sandbox_access(job_id, attempt, digest, len(data), pilot_id=pilot_id)
        if not access.get("url"):
            return dict(wms.upload_output_sandbox(job_id, attempt, data, pilot_id=pilot_id))
        if not access.get("exists"):
            _put(wms, access, digest, data)
        try:
            return dict(wms.register_output_sandbox(job_id, attempt, digest, len(data), pilot_id=pilot_id))
        except DCSError as exc:  # Conflict in process, RemoteError through the server
            if exc.code != "sha256-mismatch" or last:
                raise
    raise AssertionError("unreachable")


def _put(wms: Any, access: dict[str, Any], digest: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="dcs-osb-") as tmp, _storage(wms, access["token"]) as storage:
        path = Path(tmp) / f"{digest}.tar.gz"
        path.write_bytes(data)
        try:
            storage.put(path, access["url"], overwrite=False)
        except Conflict as exc:  # the same content was stored meanwhile: content-addressed, so it is ours
            if exc.code != "exists":
                raise
