"""Request management REST API (`/api/v1/rms`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, requires
from junodcs.core.gridconfig import Property
from junodcs.rms.agents import service_for
from junodcs.rms.logic import RequestService, check_owner
from junodcs.rms.models import RequestIn, from_dirac

ADMIN = (Property.TRANSFER_ADMINISTRATOR, Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR)


class RMSAction(StrEnum):
    SUBMIT = "submit requests"
    READ = "read requests"
    MANAGE = "reset or cancel requests"


class RMSPolicy(AccessPolicy):
    """Who may do what with requests.

    * Every registered VO member (not a pilot alone) may submit requests; a request runs with its owner's
      rights, so it can do nothing its owner could not.
    * Members read, reset and cancel their own requests; `TransferAdministrator`,
      `FileCatalogAdministrator` or `ServiceAdministrator` read and manage everybody's.
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if not identity.is_known or not isinstance(action, RMSAction):
            return False
        if identity.properties == frozenset({Property.PILOT}):
            return False
        owner = context.get("owner")
        if owner is not None and action in (RMSAction.READ, RMSAction.MANAGE):
            return owner == identity.username or identity.has(*ADMIN)
        return True


Submit = Annotated[Guard, requires(RMSPolicy, RMSAction.SUBMIT)]
Read = Annotated[Guard, requires(RMSPolicy, RMSAction.READ)]
Manage = Annotated[Guard, requires(RMSPolicy, RMSAction.MANAGE)]

router = APIRouter(prefix="/api/v1/rms", tags=["rms"])


def _service(request: Request) -> RequestService:
    return service_for(request.app.state)


def _wake(request: Request) -> None:
    executor = getattr(request.app.state, "rms_executor", None)
    if executor is not None:
        executor.wake.set()


@router.post("/requests")
def submit(request: Request, guard: Submit, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """Create a request (junodcs form `{name, job_id, operations: [{type, source_se, target_se, arguments,
    files: [{lfn, ...}]}]}` or DIRAC's `{RequestName, JobID, Operations: [{Type, LFN, ...}]}`)."""
    parsed = RequestIn.model_validate(from_dirac(body))
    service = _service(request)
    request_id = service.create(parsed, guard.identity.username or "", guard.identity.group)
    _wake(request)
    return {"request_id": request_id}


@router.get("/requests")
def list_requests(request: Request, guard: Read, status: str | None = None, owner: str | None = None,
                  job_id: int | None = None, all: bool = False,
                  limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
    admin = guard.identity.has(*ADMIN)
    if not admin or not (all or owner):
        owner = owner if admin else guard.identity.username
    statuses = [s.strip() for s in status.split(",")] if status else None
    return _service(request).list(owner=owner, statuses=statuses, job_id=job_id, limit=limit)


@router.get("/requests/{request_id}")
def show(request: Request, request_id: int, guard: Read) -> dict[str, Any]:
    found = _service(request).get(request_id)
    check_owner(guard.identity, found, guard.allows(RMSAction.READ, owner=found["owner"]))
    return found


@router.post("/requests/{request_id}/reset")
def reset(request: Request, request_id: int, guard: Manage) -> dict[str, Any]:
    service = _service(request)
    found = service.get(request_id)
    check_owner(guard.identity, found, guard.allows(RMSAction.MANAGE, owner=found["owner"]))
    out = service.reset(request_id)
    _wake(request)
    return out


@router.post("/requests/{request_id}/cancel")
def cancel(request: Request, request_id: int, guard: Manage) -> dict[str, Any]:
    service = _service(request)
    found = service.get(request_id)
    check_owner(guard.identity, found, guard.allows(RMSAction.MANAGE, owner=found["owner"]))
    return service.cancel(request_id)


@router.get("/summary")
def summary(request: Request, guard: Read) -> dict[str, int]:
    """Requests per status (DIRAC's `dirac-rms-reqdb-summary`)."""
    return _service(request).summary()
