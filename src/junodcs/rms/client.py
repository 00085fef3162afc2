"""HTTP client of the request management system (CLI, job wrapper, data tools).

    with RequestClient() as rms:
        rid = rms.submit({"name": "replicate-x", "operations": [{"type": "ReplicateAndRegister",
                          "target_se": ["CNAF-STORM"], "files": [{"lfn": "/juno/x"}]}]})
        rms.show(rid)["status"]     # Waiting, Scheduled, Assigned, Done, Failed, Canceled
        rms.wait(rid)              # until a final status
"""

from __future__ import annotations

import time
from typing import Any

from junodcs.core.client import BaseClient

FINAL = ("Done", "Failed", "Canceled")


class RequestClient(BaseClient):
    prefix = "/api/v1/rms"

    def submit(self, request: dict[str, Any]) -> int:
        """A request in junodcs or DIRAC form (the job wrapper's failover record); same name -> same id."""
        return int(self.post("/requests", json=request)["request_id"])

    def replicate(self, lfns: list[str], target_se: str | list[str], *, source_se: str | None = None,
                  name: str | None = None) -> int:
        targets = [target_se] if isinstance(target_se, str) else list(target_se)
        return self.submit({"name": name, "source_component": "dcs dm replicate --async", "operations": [
            {"type": "ReplicateAndRegister", "source_se": source_se, "target_se": targets,
             "files": [{"lfn": lfn} for lfn in lfns]}]})

    def show(self, request_id: int) -> dict[str, Any]:
        return dict(self.get(f"/requests/{request_id}"))

    def list(self, *, status: str | None = None, owner: str | None = None, job_id: int | None = None,
             all: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("status", status), ("owner", owner), ("job_id", job_id)):
            if value is not None:
                params[key] = value
        if all:
            params["all"] = "true"
        return list(self.get("/requests", params=params))

    def reset(self, request_id: int) -> dict[str, Any]:
        return dict(self.post(f"/requests/{request_id}/reset"))

    def cancel(self, request_id: int) -> dict[str, Any]:
        return dict(self.post(f"/requests/{request_id}/cancel"))

    def summary(self) -> dict[str, int]:
        return dict(self.get("/summary"))

    def wait(self, request_id: int, timeout: float = 600.0, interval: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.show(request_id)
            if found["status"] in FINAL:
                return found
            if time.monotonic() > deadline:
                from junodcs.core.errors import DCSError

                raise DCSError(f"request {request_id} still {found['status']} after {timeout:.0f} s",
                               code="timeout")
            time.sleep(interval)
