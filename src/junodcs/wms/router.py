"""Workload management REST API (`/api/v1/wms`): jobs, sandboxes, matcher, pilot reports, site mask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, requires
from junodcs.core.errors import InvalidInput
from junodcs.core.gridconfig import Property
from junodcs.wms.logic import WMS, Caller, wms_for_state
from junodcs.wms.models import Heartbeat, MatchRequest, SiteStatus, StatusReport


class WMSAction(StrEnum):
    SUBMIT = "submit jobs"
    READ = "read jobs"
    CANCEL = "kill or delete jobs"
    MODIFY = "reschedule jobs"
    MATCH = "match jobs as a pilot"
    REPORT = "report job status as a pilot"
    READ_SITES = "read the site mask"
    ADMINISTER = "change the site mask"


_SCOPES = {
    WMSAction.SUBMIT: "compute.create", WMSAction.READ: "compute.read", WMSAction.CANCEL: "compute.cancel",
    WMSAction.MODIFY: "compute.modify", WMSAction.MATCH: "compute.read", WMSAction.REPORT: "compute.modify",
    WMSAction.READ_SITES: "compute.read", WMSAction.ADMINISTER: "compute.modify",
}
_USER_ACTIONS = frozenset({WMSAction.SUBMIT, WMSAction.READ, WMSAction.CANCEL, WMSAction.MODIFY,
                           WMSAction.READ_SITES})


class WMSPolicy(AccessPolicy):
    """Who may do what with jobs.

    * Every registered VO member (a group with any property other than Pilot alone) submits jobs and reads,
      kills, deletes and reschedules **their own** jobs; members of a group with `ProductionManagement` also
      those of their group; `JobAdministrator` all jobs. A job of someone else is answered as not found.
    * Only `Pilot` identities match jobs and report status, heartbeats, parameters and output sandboxes, and
      only for the (job, attempt) they were given.
    * Reading the site mask is open to members and pilots; banning/allowing a site needs `JobAdministrator`.
    * Token identities also need the compute scope of the action: `compute.create` to submit, `compute.read`
      to read or match, `compute.cancel` to kill or delete, `compute.modify` to reschedule, report or change
      the mask (WLCG profile).
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if not identity.is_known or not isinstance(action, WMSAction):
            return False
        if not identity.allows_scope(_SCOPES[action]):
            return False
        pilot_only = identity.properties == frozenset({Property.PILOT})
        if action in (WMSAction.MATCH, WMSAction.REPORT):
            return identity.has(Property.PILOT)
        if action is WMSAction.READ_SITES:
            return True
        if pilot_only:
            return False
        if action is WMSAction.ADMINISTER:
            return identity.has(Property.JOB_ADMINISTRATOR)
        return action in _USER_ACTIONS and bool(identity.properties - {Property.PILOT})


router = APIRouter(prefix="/api/v1/wms", tags=["wms"])
Submit = Annotated[Guard, requires(WMSPolicy, WMSAction.SUBMIT)]
Read = Annotated[Guard, requires(WMSPolicy, WMSAction.READ)]
Cancel = Annotated[Guard, requires(WMSPolicy, WMSAction.CANCEL)]
Modify = Annotated[Guard, requires(WMSPolicy, WMSAction.MODIFY)]
Match = Annotated[Guard, requires(WMSPolicy, WMSAction.MATCH)]
Report = Annotated[Guard, requires(WMSPolicy, WMSAction.REPORT)]
ReadSites = Annotated[Guard, requires(WMSPolicy, WMSAction.READ_SITES)]
Administer = Annotated[Guard, requires(WMSPolicy, WMSAction.ADMINISTER)]


def wms(request: Request) -> WMS:
    return wms_for_state(request.app.state)


def matcher(request: Request) -> Any:
    state = request.app.state
    found = getattr(state, "wms_matcher", None)
    if found is None:
        from junodcs.wms.matcher import Matcher

        found = state.wms_matcher = Matcher(wms(request))
    return found


def caller(guard: Guard) -> Caller:
    identity = guard.identity
    return Caller(
        username=identity.username or "anonymous",
        group=identity.group or "",
        admin=identity.has(Property.JOB_ADMINISTRATOR),
        group_manager=identity.has(Property.PRODUCTION_MANAGEMENT),
    )


def _ndjson(items: Iterator[dict[str, Any]]) -> StreamingResponse:
    def lines() -> Iterator[bytes]:
        for item in items:
            yield (json.dumps(item, default=str) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _ids(body: Any) -> list[Any]:
    ids = body.get("job_ids") if isinstance(body, dict) else body
    if not isinstance(ids, list):
        raise InvalidInput('the body is {"job_ids": [...]} or a list of job IDs')
    return ids


# -- jobs ------------------------------------------------------------------------------------------------


@router.post("/jobs")
def submit(request: Request, guard: Submit, body: Annotated[Any, Body()]) -> dict[str, Any]:
    """Submit jobs, all or nothing: `{"jdl": "<JDL text>"}`, `{"job": {JDL attributes}}` or
    `{"jobs": [JDL text or attributes, ...]}`; parametric descriptions expand on the server."""
    if not isinstance(body, dict):
        raise InvalidInput('the body is {"jdl": ...}, {"job": {...}} or {"jobs": [...]}')
    if "jobs" in body:
        sources = body["jobs"]
        if not isinstance(sources, list):
            raise InvalidInput("jobs must be a list of JDL texts or JSON descriptions")
    elif "jdl" in body:
        sources = [body["jdl"]]
    elif "job" in body:
        sources = [body["job"]]
    else:
        raise InvalidInput('the body is {"jdl": ...}, {"job": {...}} or {"jobs": [...]}')
    ids = wms(request).submit(sources, caller(guard))
    return {"job_ids": ids, "count": len(ids)}


@router.get("/jobs")
def select_jobs(request: Request, guard: Read, status: Annotated[list[str] | None, Query()] = None,
                minor_status: str | None = None, application_status: str | None = None, site: str | None = None,
                owner: str | None = None, group: str | None = None, job_group: str | None = None,
                since: datetime | None = None, until: datetime | None = None, after: int | None = None,
                limit: Annotated[int, Query(ge=1, le=100_000)] = 1000, stream: bool = False) -> Any:
    """Jobs by status, site, owner, group, job group, submission date; paged by `after` (the last ID seen),
    or every match as NDJSON with `stream=true`."""
    service, who = wms(request), caller(guard)
    filters = dict(status=status, minor_status=minor_status, application_status=application_status, site=site,
                   owner=owner, group=group, job_group=job_group, since=since, until=until)
    if not stream:
        return service.select(who, after=after, limit=limit, **filters)

    def pages() -> Iterator[dict[str, Any]]:
        last, sent = after, 0
        while sent < limit:
            page = service.select(who, after=last, limit=min(5000, limit - sent), **filters)
            yield from page
            sent += len(page)
            if len(page) < 5000:
                return
            last = page[-1]["job_id"]

    return _ndjson(pages())


@router.post("/jobs/status")
def jobs_status(request: Request, guard: Read, body: Annotated[Any, Body()]) -> dict[str, Any]:
    """Status of many jobs: `{"job_ids": [...]}` -> {id: {...}} (jobs of others are left out)."""
    return {str(k): v for k, v in wms(request).status(_ids(body), caller(guard)).items()}


@router.get("/jobs/{job_id}")
def job(request: Request, guard: Read, job_id: int) -> dict[str, Any]:
    return wms(request).job(job_id, caller(guard))


@router.get("/jobs/{job_id}/logging")
def logging_info(request: Request, guard: Read, job_id: int) -> list[dict[str, Any]]:
    return wms(request).logging_info(job_id, caller(guard))


@router.get("/jobs/{job_id}/jdl")
def jdl(request: Request, guard: Read, job_id: int) -> dict[str, Any]:
    return wms(request).description(job_id, caller(guard))


@router.get("/jobs/{job_id}/parameters")
def parameters(request: Request, guard: Read, job_id: int, attempt: int | None = None) -> dict[str, Any]:
    return wms(request).parameters(job_id, caller(guard), attempt)


@router.get("/jobs/{job_id}/peek")
def peek(request: Request, guard: Read, job_id: int) -> dict[str, Any]:
    return {"job_id": job_id, "stdout": wms(request).peek(job_id, caller(guard))}


@router.get("/jobs/{job_id}/output-sandbox")
def get_output(request: Request, guard: Read, job_id: int) -> Response:
    data = wms(request).output_sandbox(job_id, caller(guard))
    return Response(data, media_type="application/gzip")


@router.post("/jobs/kill")
def kill(request: Request, guard: Cancel, body: Annotated[Any, Body()]) -> dict[str, Any]:
    return wms(request).kill(_ids(body), caller(guard))


@router.post("/jobs/delete")
def delete(request: Request, guard: Cancel, body: Annotated[Any, Body()]) -> dict[str, Any]:
    return wms(request).delete(_ids(body), caller(guard))


@router.post("/jobs/reschedule")
def reschedule(request: Request, guard: Modify, body: Annotated[Any, Body()]) -> dict[str, Any]:
    reset = bool(body.get("reset")) if isinstance(body, dict) else False
    return wms(request).reschedule(_ids(body), caller(guard), reset=reset)


# -- sandboxes -------------------------------------------------------------------------------------------


@router.post("/sandboxes")
async def upload_sandbox(request: Request, guard: Submit) -> dict[str, Any]:
    """Upload an input sandbox archive (the request body); answers its `SB:sha256:<hash>` reference."""
    from junodcs.wms.sandbox import MAX_SANDBOX_BYTES

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_SANDBOX_BYTES:
        from junodcs.core.errors import DCSError

        raise DCSError(f"sandbox of {declared} bytes: at most {MAX_SANDBOX_BYTES}", code="sandbox-too-large")
    data = await request.body()
    # the store may talk to an SE (which may ask this server for its token keys): never on the event loop
    return await run_in_threadpool(wms(request).upload_sandbox, data, caller(guard))


@router.get("/sandboxes/{digest}")
def download_sandbox(request: Request, guard: Read, digest: str) -> Response:
    return Response(wms(request).sandbox(digest, caller(guard)), media_type="application/gzip")


# -- pilots: matcher, heartbeats, reports ----------------------------------------------------------------


@router.post("/match")
def match(request: Request, _guard: Match, body: MatchRequest) -> dict[str, Any]:
    """A pilot asks for a job: `{"job": {...}}` or `{"job": null, "reason": "..."}`."""
    return matcher(request).match(body)


@router.post("/heartbeats")
def heartbeats(request: Request, _guard: Report, body: list[Heartbeat]) -> list[dict[str, Any]]:
    """Heartbeats of running jobs (CPU, RSS, wall time, stdout tail); each answer lists commands (Kill)."""
    return wms(request).heartbeat(body)


@router.post("/reports")
def reports(request: Request, _guard: Report, body: list[StatusReport]) -> list[dict[str, Any]]:
    """Status, minor and application status and parameters from job wrappers, for their own attempt."""
    return wms(request).report(body)


@router.get("/jobs/{job_id}/input-sandbox")
def pilot_input_sandbox(request: Request, _guard: Report, job_id: int, attempt: int,
                        pilot_id: str | None = None) -> Response:
    return Response(wms(request).job_input_sandbox(job_id, attempt, pilot_id), media_type="application/gzip")


@router.post("/jobs/{job_id}/output-sandbox")
async def pilot_output_sandbox(request: Request, _guard: Report, job_id: int, attempt: int,
                               pilot_id: str | None = None) -> dict[str, Any]:
    data = await request.body()
    return await run_in_threadpool(wms(request).store_output_sandbox, job_id, attempt, pilot_id, data)


@router.post("/jobs/{job_id}/input-sandbox/access")
def pilot_input_sandbox_access(request: Request, _guard: Report, job_id: int, attempt: int,
                               pilot_id: str | None = None) -> dict[str, Any]:
    """Where the pilot reads the input sandbox of its (job, attempt) on the sandbox SE, with a read token for
    that one file; `url` null: this server keeps sandboxes itself (GET `/jobs/{id}/input-sandbox`)."""
    return wms(request).input_sandbox_access(job_id, attempt, pilot_id)


@router.post("/jobs/{job_id}/output-sandbox/access")
def pilot_output_sandbox_access(request: Request, _guard: Report, job_id: int, attempt: int, sha256: str,
                                size: int, pilot_id: str | None = None) -> dict[str, Any]:
    """Where the pilot puts the output sandbox named by its sha256: a create-only token for that one file
    (`exists`: already stored, just register it); `url` null: POST the bytes to `/jobs/{id}/output-sandbox`."""
    return wms(request).output_sandbox_access(job_id, attempt, pilot_id, sha256, size)


@router.post("/jobs/{job_id}/output-sandbox/register")
def pilot_output_sandbox_register(request: Request, _guard: Report, job_id: int, attempt: int, sha256: str,
                                  size: int, pilot_id: str | None = None) -> dict[str, Any]:
    """The output sandbox is on the SE: the server checks its size there and records it for the job."""
    return wms(request).register_output_sandbox(job_id, attempt, pilot_id, sha256, size)


@router.post("/pilots/{pilot_id}/status")
def pilot_status(request: Request, _guard: Report, pilot_id: str,
                 body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """`{"status": "Running|Done|Failed|Aborted", "reason": "..."}` from the pilot or its site director; a pilot
    that ended fails (and reschedules) the jobs it still held at once."""
    reason = body.get("reason")
    return pilots(request).update(pilot_id, str(body.get("status")), str(reason) if reason else None,
                                  source=str(body.get("source") or "Pilot")[:16])


# -- pilot records and site directors --------------------------------------------------------------------


def pilots(request: Request) -> Any:
    from junodcs.wms.pilots import pilots_for_state

    return pilots_for_state(request.app.state)


@router.post("/pilots")
def register_pilots(request: Request, _guard: Report, body: Annotated[Any, Body()]) -> list[dict[str, Any]]:
    """A site director registers the pilots it submitted: `[{pilot_id, site, ce, reference}]` -> Submitted."""
    items = body.get("pilots") if isinstance(body, dict) else body
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidInput('the body is {"pilots": [{"pilot_id", "site", "ce", "reference"}, ...]}')
    return pilots(request).register(items)


@router.post("/pilots/{pilot_id}/reference")
def pilot_reference(request: Request, _guard: Report, pilot_id: str,
                    body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """The batch system's reference of a pilot, known once the director's submission returned."""
    pilots(request).set_reference(pilot_id, str(body.get("reference") or ""))
    return {"pilot_id": pilot_id, "reference": body.get("reference")}


@router.get("/pilots")
def list_pilots(request: Request, _guard: Read, site: str | None = None, ce: str | None = None,
                status: Annotated[list[str] | None, Query()] = None,
                limit: Annotated[int, Query(ge=1, le=100_000)] = 1000) -> list[dict[str, Any]]:
    return pilots(request).list(site=site, ce=ce, status=status, limit=limit)


@router.get("/pilots/{pilot_id}")
def pilot_info(request: Request, _guard: Read, pilot_id: str) -> dict[str, Any]:
    """A pilot record with the (job, attempt) pairs it ran."""
    return pilots(request).info(pilot_id)


@router.get("/pilots/{pilot_id}/output")
def pilot_output(request: Request, _guard: Read, pilot_id: str) -> dict[str, Any]:
    return pilots(request).output(pilot_id)


@router.post("/pilots/{pilot_id}/output")
async def store_pilot_output(request: Request, _guard: Report, pilot_id: str) -> dict[str, Any]:
    """The pilot's log as plain text (its site director uploads it when the pilot ends)."""
    data = await request.body()
    return pilots(request).store_output(pilot_id, data.decode("utf-8", errors="replace"))


@router.get("/jobs/{job_id}/pilots")
def job_pilots(request: Request, guard: Read, job_id: int) -> list[dict[str, Any]]:
    wms(request).job(job_id, caller(guard))  # the job must be visible to the caller
    return pilots(request).jobs_pilots(job_id)


@router.get("/ces/{ce}/waiting")
def ce_waiting(request: Request, _guard: ReadSites, ce: str, site: str) -> dict[str, Any]:
    """For a site director: the waiting jobs a pilot of this CE could match now, and the CE's pilots."""
    return pilots(request).waiting_for_ce(site, ce)


@router.post("/jobs/{job_id}/payload-token")
def payload_token(request: Request, _guard: Report, job_id: int, attempt: int,
                  pilot_id: str | None = None) -> dict[str, Any]:
    """The job owner's storage token for the (job, attempt) a pilot runs (DIRAC's payload proxy): the job
    wrapper reads input data and writes output data as the owner, never as the pilot. Storage scopes
    only, lifetime of the job's CPU time (at most a day)."""
    from junodcs.auth.scope_policy import policy_scopes
    from junodcs.wms.logic import StaleAttempt
    from junodcs.wms.models import ACTIVE

    service = wms(request)
    with service.engine.connect() as conn:
        row = service._row(conn, job_id)
    if row.attempt != attempt or (pilot_id and row.pilot_id != pilot_id) or row.status not in ACTIVE:
        raise StaleAttempt(f"job {job_id}: attempt {attempt} is not running")
    state = request.app.state
    membership = state.registry.membership(row.owner, row.grp)
    scopes = tuple(s for s in policy_scopes(state.registry.vo, row.owner, membership.properties)
                   if s.startswith("storage."))
    lifetime = max(600, min(86400, int(row.cpu_time) * 2))
    token, claims = state.token_issuer.issue_access_token(username=row.owner, group=membership.group,
                                                          scopes=scopes, lifetime=lifetime)
    return {"access_token": token, "expires_at": claims.get("exp") if isinstance(claims, dict) else None,
            "scope": " ".join(scopes), "owner": row.owner, "group": membership.group}


# -- sites and task queues -------------------------------------------------------------------------------


@router.get("/sites")
def sites(request: Request, _guard: ReadSites) -> list[dict[str, Any]]:
    return wms(request).site_mask()


@router.get("/sites/{site}/history")
def site_history(request: Request, _guard: ReadSites, site: str) -> list[dict[str, Any]]:
    return wms(request).site_history(site)


@router.post("/sites/{site}/ban")
def ban(request: Request, guard: Administer, site: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    result = wms(request).set_site_status(site, SiteStatus.BANNED, str(body.get("reason") or ""), caller(guard))
    matcher(request).invalidate()
    return result


@router.post("/sites/{site}/allow")
def allow(request: Request, guard: Administer, site: str, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    result = wms(request).set_site_status(site, SiteStatus.ACTIVE, str(body.get("reason") or ""), caller(guard))
    matcher(request).invalidate()
    return result


@router.get("/task-queues")
def task_queues(request: Request, _guard: Read) -> list[dict[str, Any]]:
    return wms(request).task_queues()
