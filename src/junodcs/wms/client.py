"""Client of the workload management API (`/api/v1/wms`): used by `dcs job`, JSUB, ProdSys and pilots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from junodcs.core.client import BaseClient


class WMSClient(BaseClient):
    prefix = "/api/v1/wms"

    # -- users ---------------------------------------------------------------------------------------
    def submit(self, jobs: list[str | dict[str, Any]]) -> list[int]:
        """JDL texts and/or JSON descriptions, all or nothing; returns the job IDs."""
        return self.post("/jobs", json={"jobs": jobs})["job_ids"]

    def upload_sandbox(self, data: bytes) -> dict[str, Any]:
        return self.post("/sandboxes", content=data, headers={"Content-Type": "application/gzip"})

    def status(self, job_ids: list[int]) -> dict[str, dict[str, Any]]:
        return self.post("/jobs/status", json={"job_ids": job_ids})

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def select(self, **filters: Any) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        params["stream"] = "true"
        return self.stream_lines("GET", "/jobs", params=params)

    def logging_info(self, job_id: int) -> list[dict[str, Any]]:
        return self.get(f"/jobs/{job_id}/logging")

    def jdl(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}/jdl")

    def parameters(self, job_id: int, attempt: int | None = None) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}/parameters", params={"attempt": attempt} if attempt else None)

    def peek(self, job_id: int) -> str:
        return self.get(f"/jobs/{job_id}/peek")["stdout"]

    def output_sandbox(self, job_id: int) -> bytes:
        return self.get(f"/jobs/{job_id}/output-sandbox")

    def kill(self, job_ids: list[int]) -> dict[str, Any]:
        return self.post("/jobs/kill", json={"job_ids": job_ids})

    def delete_jobs(self, job_ids: list[int]) -> dict[str, Any]:
        return self.post("/jobs/delete", json={"job_ids": job_ids})

    def reschedule(self, job_ids: list[int], *, reset: bool = False) -> dict[str, Any]:
        return self.post("/jobs/reschedule", json={"job_ids": job_ids, "reset": reset})

    def task_queues(self) -> list[dict[str, Any]]:
        return self.get("/task-queues")

    # -- sites ---------------------------------------------------------------------------------------
    def sites(self) -> list[dict[str, Any]]:
        return self.get("/sites")

    def site_history(self, site: str) -> list[dict[str, Any]]:
        return self.get(f"/sites/{site}/history")

    def ban(self, site: str, reason: str) -> dict[str, Any]:
        return self.post(f"/sites/{site}/ban", json={"reason": reason})

    def allow(self, site: str, reason: str) -> dict[str, Any]:
        return self.post(f"/sites/{site}/allow", json={"reason": reason})

    # -- pilots --------------------------------------------------------------------------------------
    def match(self, *, pilot_id: str, site: str, ce: str, memory_mb: int, time_left: int, platform: str | None = None,
              tags: list[str] | None = None, required_tags: list[str] | None = None, cores: int = 1,
              job_types: list[str] | None = None) -> dict[str, Any] | None:
        """Ask for a job; returns the job (description, attempt, sandbox, limits) or None."""
        answer = self.post("/match", json={
            "pilot_id": pilot_id, "site": site, "ce": ce, "platform": platform, "tags": tags or [],
            "required_tags": required_tags or [], "memory_mb": memory_mb, "cores": cores, "time_left": time_left,
            "job_types": job_types or []})
        return answer["job"]

    def heartbeat(self, job_id: int, attempt: int, *, pilot_id: str | None = None, cpu: float = 0,
                  rss_mb: float = 0, wall: float = 0, stdout_tail: str | None = None) -> dict[str, Any]:
        """One heartbeat; the answer's `commands` may hold a Kill (stop the payload gracefully)."""
        return self.post("/heartbeats", json=[{
            "job_id": job_id, "attempt": attempt, "pilot_id": pilot_id, "cpu": cpu, "rss_mb": rss_mb, "wall": wall,
            "stdout_tail": stdout_tail}])[0]

    def report(self, job_id: int, attempt: int, *, status: str | None = None, minor_status: str | None = None,
               application_status: str | None = None, pilot_id: str | None = None, source: str = "JobWrapper",
               memory_exceeded_mb: float | None = None, reschedule: bool = False,
               parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.post("/reports", json=[{
            "job_id": job_id, "attempt": attempt, "status": status, "minor_status": minor_status,
            "application_status": application_status, "pilot_id": pilot_id, "source": source,
            "memory_exceeded_mb": memory_exceeded_mb, "reschedule": reschedule,
            "parameters": parameters or {}}])[0]

    def input_sandbox(self, job_id: int, attempt: int, pilot_id: str | None = None) -> bytes:
        return self.get(f"/jobs/{job_id}/input-sandbox", params={"attempt": attempt, "pilot_id": pilot_id})

    def upload_output_sandbox(self, job_id: int, attempt: int, data: bytes,
                              pilot_id: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"attempt": attempt}
        if pilot_id:
            params["pilot_id"] = pilot_id
        return self.post(f"/jobs/{job_id}/output-sandbox", content=data, params=params,
                         headers={"Content-Type": "application/gzip"})

    def input_sandbox_access(self, job_id: int, attempt: int, pilot_id: str | None = None) -> dict[str, Any]:
        """SE URL and read token of the job's input sandbox (`url` None: fetch it with `input_sandbox`)."""
        params: dict[str, Any] = {"attempt": attempt}
        if pilot_id:
            params["pilot_id"] = pilot_id
        return self.post(f"/jobs/{job_id}/input-sandbox/access", params=params)

    def output_sandbox_access(self, job_id: int, attempt: int, sha256: str, size: int,
                              pilot_id: str | None = None) -> dict[str, Any]:
        """SE URL and create-only token for an output sandbox (`url` None: `upload_output_sandbox`)."""
        params: dict[str, Any] = {"attempt": attempt, "sha256": sha256, "size": size}
        if pilot_id:
            params["pilot_id"] = pilot_id
        return self.post(f"/jobs/{job_id}/output-sandbox/access", params=params)

    def register_output_sandbox(self, job_id: int, attempt: int, sha256: str, size: int,
                                pilot_id: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"attempt": attempt, "sha256": sha256, "size": size}
        if pilot_id:
            params["pilot_id"] = pilot_id
        return self.post(f"/jobs/{job_id}/output-sandbox/register", params=params)

    def pilot_status(self, pilot_id: str, status: str, reason: str | None = None,
                     source: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if reason:
            body["reason"] = reason
        if source:
            body["source"] = source
        return self.post(f"/pilots/{pilot_id}/status", json=body)

    def payload_token(self, job_id: int, attempt: int, pilot_id: str | None = None) -> dict[str, Any]:
        """The job owner's storage token for the attempt this pilot runs."""
        params: dict[str, Any] = {"attempt": attempt}
        if pilot_id:
            params["pilot_id"] = pilot_id
        return self.post(f"/jobs/{job_id}/payload-token", params=params)

    # -- pilot records (site directors, `dcs pilot`) ---------------------------------------------------
    def register_pilots(self, pilots: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.post("/pilots", json={"pilots": pilots})

    def pilots(self, *, site: str | None = None, ce: str | None = None, status: list[str] | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if site:
            params["site"] = site
        if ce:
            params["ce"] = ce
        if status:
            params["status"] = status
        return self.get("/pilots", params=params)

    def pilot(self, pilot_id: str) -> dict[str, Any]:
        return self.get(f"/pilots/{pilot_id}")

    def pilot_output(self, pilot_id: str) -> dict[str, Any]:
        return self.get(f"/pilots/{pilot_id}/output")

    def store_pilot_output(self, pilot_id: str, text: str) -> dict[str, Any]:
        return self.post(f"/pilots/{pilot_id}/output", content=text.encode(),
                         headers={"Content-Type": "text/plain; charset=utf-8"})

    def job_pilots(self, job_id: int) -> list[dict[str, Any]]:
        return self.get(f"/jobs/{job_id}/pilots")

    def ce_waiting(self, site: str, ce: str) -> dict[str, Any]:
        return self.get(f"/ces/{ce}/waiting", params={"site": site})
