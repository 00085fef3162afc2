"""HTTP client of the transfer service: the CLI, the request management system and other services use it.

The API the request management system calls (ReplicateAndRegister and friends):

    with TransferClient() as fts:
        job_id = fts.submit([Transfer(source_url, dest_url, checksum="ADLER32:1a2b3c4d", filesize=n,
                                      metadata={"lfn": lfn, "request_id": 42, "operation": 7})],
                            sid=f"rms-42-7", activity="Data Consolidation", retry=3, retry_delay=60)
        job = fts.status(job_id)               # {"job_state": ..., "files": [{"file_state", "reason", ...}]}
        done = fts.wait(job_id, timeout=3600)  # until a terminal job state
        fts.cancel(job_id)

`sid` makes the job id deterministic (uuid5 of the VO and `sid`, FTS3's `id_generator=deterministic`):
re-submitting after a crash returns the same job instead of copying twice, so an RMS operation stays
idempotent. Checksums are verified at both ends by default (`verify_checksum="both"`); a file is
FINISHED only when the destination's adler32 equals the source's and the given one, so the RMS may
register the replica when (and only when) `file_state == "FINISHED"`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from junodcs.core.client import BaseClient

TERMINAL_JOB_STATES = ("FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED")


@dataclass
class Transfer:
    source: str | list[str]
    destination: str | list[str]
    checksum: str | None = None
    filesize: int | None = None
    metadata: Any = None
    activity: str | None = None
    source_token: str | None = None
    destination_token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_fts(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sources": self.source if isinstance(self.source, list) else [self.source],
            "destinations": self.destination if isinstance(self.destination, list) else [self.destination],
        }
        for key in ("checksum", "filesize", "metadata", "activity"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.source_token:
            out["source_tokens"] = [self.source_token]
        if self.destination_token:
            out["destination_tokens"] = [self.destination_token]
        out.update(self.extra)
        return out


class TransferClient(BaseClient):
    prefix = "/fts"

    def submit(self, transfers: Sequence[Transfer | dict[str, Any]], *, verify_checksum: bool | str = "both",
               overwrite: bool = False, retry: int | None = None, retry_delay: int | None = None,
               priority: int | None = None, activity: str | None = None, sid: str | None = None,
               job_metadata: Any = None, bring_online: int | None = None, copy_pin_lifetime: int | None = None,
               archive_timeout: int | None = None, timeout: int | None = None, transfer_mode: str | None = None,
               max_time_in_queue: int | str | None = None) -> str:
        files = [t.to_fts() if isinstance(t, Transfer) else dict(t) for t in transfers]
        if activity:
            for f in files:
                f.setdefault("activity", activity)
        params: dict[str, Any] = {"verify_checksum": verify_checksum, "overwrite": overwrite}
        optional = {"retry": retry, "retry_delay": retry_delay, "priority": priority, "job_metadata": job_metadata,
                    "bring_online": bring_online, "copy_pin_lifetime": copy_pin_lifetime,
                    "archive_timeout": archive_timeout, "timeout": timeout, "transfer_mode": transfer_mode,
                    "max_time_in_queue": max_time_in_queue}
        params.update({k: v for k, v in optional.items() if v is not None})
        if sid:
            params.update(id_generator="deterministic", sid=sid)
        return str(self.post("/jobs", json={"files": files, "params": params})["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/jobs/{job_id}"))

    def files(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/jobs/{job_id}/files"))

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        job["files"] = self.files(job_id)
        return job

    def retries(self, job_id: str, file_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/jobs/{job_id}/files/{file_id}/retries"))

    def wait(self, job_id: str, timeout: float = 3600.0, interval: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["job_state"] in TERMINAL_JOB_STATES:
                job["files"] = self.files(job_id)
                return job
            if time.monotonic() > deadline:
                from junodcs.core.errors import DCSError

                raise DCSError(f"job {job_id} still {job['job_state']} after {timeout:.0f} s", code="timeout")
            time.sleep(interval)

    def cancel(self, job_id: str, file_ids: Sequence[int] | None = None) -> Any:
        if file_ids:
            return self.delete(f"/jobs/{job_id}/files/{','.join(str(i) for i in file_ids)}")
        return self.delete(f"/jobs/{job_id}")

    def list_jobs(self, *, state_in: Sequence[str] | None = None, mine: bool = False, limit: int = 100,
                  source_se: str | None = None, dest_se: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state_in:
            params["state_in"] = ",".join(state_in)
        if mine:
            params["mine"] = "true"
        if source_se:
            params["source_se"] = source_se
        if dest_se:
            params["dest_se"] = dest_se
        return list(self.get("/jobs", params=params))

    def whoami(self) -> dict[str, Any]:
        return dict(self.get("/whoami"))

    # configuration and monitoring
    def links(self, window: float | None = None) -> list[dict[str, Any]]:
        return list(self._api("GET", "/links", params={"window": window} if window else None))

    def link_config(self) -> list[dict[str, Any]]:
        return list(self.get("/config/links"))

    def set_link(self, source: str, destination: str, **settings: Any) -> dict[str, Any]:
        return dict(self.post("/config/links", json={"source": source, "destination": destination, **settings}))

    def set_se(self, se: str, **limits: Any) -> dict[str, Any]:
        return dict(self.post("/config/se", json={se: {"se_info": limits}}))

    def set_share(self, vo: str, weight: float, activity: str = "*") -> dict[str, Any]:
        return dict(self.post("/config/shares", json={"vo": vo, "activity": activity, "weight": weight}))

    def optimizer_evolution(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.get("/optimizer/evolution", params={"limit": limit}))

    def storage_elements(self) -> list[dict[str, Any]]:
        return list(self._api("GET", "/ses"))

    def test_matrix(self) -> list[dict[str, Any]]:
        return list(self._api("GET", "/test-matrix"))

    def record_tests(self, results: list[dict[str, Any]]) -> None:
        self._api("POST", "/test-matrix", json=results)

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """The junodcs monitoring API next to the FTS3 one (`/api/v1/transfer`)."""
        saved, self.prefix = self.prefix, "/api/v1/transfer"
        try:
            return self.request(method, path, **kwargs)
        finally:
            self.prefix = saved
