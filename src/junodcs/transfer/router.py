"""The FTS3-compatible REST API (`<server>/fts`) and transfer monitoring (`/api/v1/transfer`).

Routes and field names follow fts-rest so that the `fts3` client (`fts-rest-transfer-submit`,
`fts-rest-transfer-status`, `fts3.rest.client.easy`) works unchanged. That client joins its endpoint and
paths with a slash (`<endpoint>//jobs`): routes here match with repeated slashes collapsed, as Apache
and nginx do in front of fts-rest. Errors carry FTS3's `message` next to the problem+json fields.

The transfer worker (`agents`) is the agent `transfer-worker`: `dcs server` runs it, `dcs agent run
transfer-worker` runs more copies.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from junodcs import __version__
from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, PublicAccess, requires
from junodcs.core.errors import InvalidInput, NotFound
from junodcs.core.gridconfig import Property
from junodcs.transfer.logic import Settings, Submitter, TransferService, check_owner, se_key
from junodcs.transfer.models import LinkConfig, SELimits, Share, SubmitJob

log = logging.getLogger(__name__)

API_VERSION = {"major": 3, "minor": 12, "patch": 0}


class TransferAction(StrEnum):
    READ = "read transfer jobs"
    SUBMIT = "submit transfer jobs"
    CANCEL = "cancel transfer jobs"
    CONFIGURE = "configure links, storage elements and shares"
    MONITOR = "read transfer monitoring"


class TransferPolicy(AccessPolicy):
    """Who may do what with transfers.

    * Every registered VO member (not a pilot alone) may submit jobs, read jobs and monitoring, and cancel
      or re-prioritise their own jobs.
    * `TransferAdministrator` or `ServiceAdministrator` may cancel or change anybody's jobs and configure
      links, SE limits and shares.
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if not identity.is_known or not isinstance(action, TransferAction):
            return False
        if identity.properties == frozenset({Property.PILOT}):
            return False
        if action is TransferAction.CONFIGURE:
            return identity.has(Property.TRANSFER_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR)
        if action is TransferAction.CANCEL and "owner" in context:
            return context["owner"] == identity.username or identity.has(Property.TRANSFER_ADMINISTRATOR,
                                                                          Property.SERVICE_ADMINISTRATOR)
        return True


class SlashTolerantRoute(APIRoute):
    """Matches `/fts//jobs` like `/fts/jobs` (the fts3 client builds such paths)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if "//" in path:
            scope = {**scope, "path": re.sub("/{2,}", "/", path)}
        return super().matches(scope)


Read = Annotated[Guard, requires(TransferPolicy, TransferAction.READ)]
Submit = Annotated[Guard, requires(TransferPolicy, TransferAction.SUBMIT)]
Cancel = Annotated[Guard, requires(TransferPolicy, TransferAction.CANCEL)]
Configure = Annotated[Guard, requires(TransferPolicy, TransferAction.CONFIGURE)]
Monitor = Annotated[Guard, requires(TransferPolicy, TransferAction.MONITOR)]
Public = Annotated[Guard, requires(PublicAccess)]


router = APIRouter()
fts = APIRouter(prefix="/fts", tags=["transfer (FTS3)"], route_class=SlashTolerantRoute)
api = APIRouter(prefix="/api/v1/transfer", tags=["transfer"])

_service_lock = threading.Lock()


def se_names_of(state: Any) -> dict[str, str]:
    urls: dict[str, str] = getattr(state, "se_urls", {}) or {}
    names = {}
    for site in state.grid.sites:
        for se in site.storage_elements:
            url = se.url or urls.get(se.name)
            if url:
                names[se_key(url)] = se.name
    return names


def service_for(state: Any) -> TransferService:
    with _service_lock:
        service = getattr(state, "transfer_service", None)
        if service is None:
            settings = getattr(state, "transfer_settings", None) or Settings.from_env()
            service = state.transfer_service = TransferService(state.engine, vo=state.grid.vo, settings=settings)
            register_metrics(service)
        service.se_names = se_names_of(state)
        return service


def _service(request: Request) -> TransferService:
    return service_for(request.app.state)


def _submitter(identity: Identity) -> Submitter:
    dn = identity.dn or identity.subject or identity.username or "anonymous"
    return Submitter(identity.username, identity.group, identity.vo, dn)


# -- endpoint information, whoami, delegation ----------------------------------------------------------


@fts.get("/")
def endpoint_info(request: Request, _guard: Public) -> dict[str, Any]:
    """What the fts3 client reads first (`Context._validate_endpoint`)."""
    base = str(request.app.state.public_url) + "/fts"
    return {"api": API_VERSION, "core": API_VERSION, "schema": API_VERSION, "delegation": API_VERSION,
            "server": f"junodcs {__version__}",
            "_links": {"jobs": {"href": f"{base}/jobs{{?vo_name,user_dn,dlg_id,state_in}}", "templated": True},
                       "whoami": {"href": f"{base}/whoami"}, "optimizer": {"href": f"{base}/optimizer"},
                       "config": {"href": f"{base}/config"}}}


def _delegation_id(identity: Identity) -> str:
    import hashlib

    return hashlib.sha1((identity.dn or identity.subject or identity.username or "").encode()).hexdigest()[:16]


@fts.get("/whoami")
def whoami(guard: Read) -> dict[str, Any]:
    i = guard.identity
    dn = i.dn or i.subject or i.username
    vos = list(i.fqans) or [f"{i.vo}/{i.group}" if i.group else i.vo]
    return {"dn": [dn], "vos": vos, "vos_id": [], "voms_cred": list(i.fqans), "user_dn": dn,
            "delegation_id": _delegation_id(i), "base_id": _delegation_id(i), "roles": [],
            "level": {"transfer": "all" if i.has(Property.TRANSFER_ADMINISTRATOR) else "vo"},
            "is_root": i.has(Property.SERVICE_ADMINISTRATOR), "method": "oauth2" if i.scopes else str(i.method),
            "user": i.username, "group": i.group, "vo": i.vo}


@fts.get("/delegation/{delegation_id}")
def delegation(delegation_id: str, guard: Read) -> dict[str, Any] | None:
    """Token identities need no delegated proxy: report a delegation valid as long as the token."""
    if delegation_id != _delegation_id(guard.identity):
        return None
    from datetime import UTC, datetime, timedelta

    until = datetime.now(UTC) + timedelta(hours=12)
    return {"delegation_id": delegation_id, "termination_time": until.strftime("%Y-%m-%dT%H:%M:%S"),
            "user_dn": guard.identity.dn or guard.identity.subject}


# -- jobs ---------------------------------------------------------------------------------------------


@fts.post("/jobs")
@fts.put("/jobs", include_in_schema=False)
def submit(request: Request, guard: Submit, body: Annotated[SubmitJob, Body()]) -> dict[str, Any]:
    service = _service(request)
    job_id = service.submit(body, _submitter(guard.identity), request.url.hostname or "")
    worker = getattr(request.app.state, "transfer_worker", None)
    if worker is not None:
        worker._wake.set()
    return {"job_id": job_id}


@fts.get("/jobs")
def list_jobs(request: Request, guard: Read, state_in: str | None = None, vo_name: str | None = None,
              user_dn: str | None = None, source_se: str | None = None, dest_se: str | None = None,
              dlg_id: str | None = None, limit: int = Query(100, ge=1, le=10_000),
              mine: bool = False, time_window: float | None = None) -> list[dict[str, Any]]:
    service = _service(request)
    states = [s.strip().upper() for s in state_in.split(",")] if state_in else None
    rows = service.list_jobs(states=states, vo=vo_name, source_se=source_se, dest_se=dest_se, limit=limit,
                             username=guard.identity.username if mine or dlg_id else None,
                             time_window=time_window * 3600 if time_window else None)
    if user_dn:
        rows = [r for r in rows if r["user_dn"] == user_dn]
    return rows


@fts.get("/jobs/{job_ids}")
def get_jobs(request: Request, job_ids: str, _guard: Read, files: str | None = None) -> Any:
    """One id -> the job; `id1,id2` -> a list (FTS3). `?files=field,...` adds those file fields."""
    service = _service(request)
    ids = [j for j in job_ids.split(",") if j]
    out = []
    for job_id in ids:
        job = service.job(job_id)
        if files:
            fields = [f.strip() for f in files.split(",") if f.strip()]
            job["files"] = [{k: f.get(k) for k in fields} for f in service.files(job_id)]
        out.append(job)
    return out[0] if len(ids) == 1 else out


@fts.get("/jobs/{job_id}/files")
def get_files(request: Request, job_id: str, _guard: Read) -> list[dict[str, Any]]:
    return _service(request).files(job_id)


@fts.get("/jobs/{job_id}/files/{file_id}/retries")
def get_retries(request: Request, job_id: str, file_id: int, _guard: Read) -> list[dict[str, Any]]:
    return _service(request).retries(job_id, file_id)


@fts.get("/jobs/{job_id}/dm")
def get_dm(request: Request, job_id: str, _guard: Read) -> list[dict[str, Any]]:
    _service(request).job(job_id)
    return []


@fts.get("/jobs/{job_id}/{field}")
def get_job_field(request: Request, job_id: str, field: str, _guard: Read) -> Any:
    job = _service(request).job(job_id)
    if field not in job:
        raise NotFound(f"no field {field} in a job", code="no-such-field")
    return job[field]


@fts.delete("/jobs/{job_ids}")
def cancel_jobs(request: Request, job_ids: str, guard: Cancel) -> Any:
    service = _service(request)
    if job_ids in ("all",):
        raise InvalidInput("cancel every job: not supported; cancel by id", code="not-supported")
    ids = [j for j in job_ids.split(",") if j]
    out = []
    for job_id in ids:
        owner, _vo = service.owner(job_id)
        guard.check(TransferAction.CANCEL, owner=owner)
        out.append(service.cancel(job_id))
    return out[0] if len(ids) == 1 else out


@fts.delete("/jobs/{job_id}/files/{file_ids}")
def cancel_files(request: Request, job_id: str, file_ids: str, guard: Cancel) -> Any:
    service = _service(request)
    owner, _vo = service.owner(job_id)
    guard.check(TransferAction.CANCEL, owner=owner)
    try:
        ids = [int(x) for x in file_ids.split(",") if x]
    except ValueError:
        raise InvalidInput(f"file ids must be integers, not {file_ids!r}", code="bad-file-id") from None
    service.cancel(job_id, ids, reason="File canceled by the user")
    states = service.file_states(job_id, ids)
    return states[0] if len(states) == 1 else states


@fts.post("/jobs/{job_ids}")
def modify_jobs(request: Request, job_ids: str, guard: Cancel, body: Annotated[dict[str, Any], Body()]) -> Any:
    service = _service(request)
    params = body.get("params", body)
    if "priority" not in params:
        raise InvalidInput("only the priority of a job can be changed", code="not-supported")
    out = []
    for job_id in [j for j in job_ids.split(",") if j]:
        owner, _vo = service.owner(job_id)
        check_owner(guard.identity.username, owner, guard.allows(TransferAction.CONFIGURE))
        out.append(service.set_priority(job_id, int(params["priority"])))
    return out[0] if len(out) == 1 else out


# -- configuration -------------------------------------------------------------------------------------


@fts.get("/config/links")
def config_links(request: Request, _guard: Monitor) -> list[dict[str, Any]]:
    return _service(request).links_config()


@fts.post("/config/links")
def config_set_link(request: Request, _guard: Configure, body: Annotated[LinkConfig, Body()]) -> dict[str, Any]:
    return _service(request).set_link(body)


@fts.get("/config/links/{name}")
def config_link(request: Request, name: str, _guard: Monitor) -> dict[str, Any]:
    for link in _service(request).links_config():
        if link["symbolicname"] == name:
            return link
    raise NotFound(f"no link configuration named {name}", code="no-such-link")


@fts.delete("/config/links/{name}", status_code=204)
def config_delete_link(request: Request, name: str, _guard: Configure) -> None:
    _service(request).delete_link(name)


@fts.get("/config/se")
def config_se(request: Request, _guard: Monitor) -> dict[str, Any]:
    return _service(request).se_config()


@fts.post("/config/se")
def config_set_se(request: Request, _guard: Configure, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """`{"<se>": {"se_info": {...}}}` (fts-rest) or `{"<se>": {...limits}}`; `<se>` a name, URL or `*`."""
    service = _service(request)
    out = {}
    for se, value in body.items():
        if not isinstance(value, dict):
            raise InvalidInput(f"{se}: expected an object of limits", code="bad-se-config")
        limits = SELimits.model_validate(value.get("se_info", value))
        out[se] = service.set_se(se, limits)
    return out


@fts.get("/config/shares")
def config_shares(request: Request, _guard: Monitor) -> list[dict[str, Any]]:
    return _service(request).shares()


@fts.post("/config/shares")
def config_set_share(request: Request, _guard: Configure, body: Annotated[Share, Body()]) -> dict[str, Any]:
    _service(request).set_share(body.vo, body.activity, body.weight)
    return body.model_dump()


@fts.get("/config/activity_shares/{vo}")
def config_activity_shares(request: Request, vo: str, _guard: Monitor) -> dict[str, float]:
    return {s["activity"]: s["weight"] for s in _service(request).shares() if s["vo"] == vo and s["activity"] != "*"}


@fts.post("/config/activity_shares")
def config_set_activity_shares(request: Request, _guard: Configure,
                               body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """fts-rest form: `{"vo": "juno", "active": true, "share": {"Data Consolidation": 0.3, ...}}`."""
    vo = body.get("vo")
    shares = body.get("share") or {}
    if not isinstance(vo, str) or not isinstance(shares, dict):
        raise InvalidInput('expected {"vo": ..., "share": {activity: weight}}', code="bad-share")
    service = _service(request)
    for activity, weight in shares.items():
        service.set_share(vo, activity, float(weight))
    return {"vo": vo, "share": shares}


@fts.get("/optimizer")
def optimizer(request: Request, _guard: Monitor) -> list[dict[str, Any]]:
    return [{k: s[k] for k in ("source_se", "dest_se", "optimizer_active", "ema", "throughput", "success_rate",
                                "active", "queue")} for s in _service(request).link_stats()]


@fts.get("/optimizer/evolution")
def optimizer_evolution(request: Request, _guard: Monitor, source_se: str | None = None, dest_se: str | None = None,
                        limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
    return _service(request).optimizer_evolution(source_se, dest_se, limit)


# -- junodcs monitoring API ----------------------------------------------------------------------------


@api.get("/links")
def links(request: Request, _guard: Monitor, window: float | None = Query(None, gt=0, le=86_400)) -> list[dict[str, Any]]:
    """Per link: queue, active, finished/failed and success rate in the window, throughput (MB/s), the
    optimizer's limit and its configuration."""
    service = _service(request)
    stats = service.link_stats(window)
    for s in stats:
        cfg = service.link_config_for(s["source_se"], s["dest_se"])
        s.update(min_active=cfg.min_active, max_active=cfg.max_active,
                 tpc_mode=service.tpc_mode_for(s["source_se"], s["dest_se"]))
    return stats


@api.post("/links")
def set_link(request: Request, _guard: Configure, body: Annotated[LinkConfig, Body()]) -> dict[str, Any]:
    return _service(request).set_link(body)


@api.get("/test-matrix")
def test_matrix(request: Request, _guard: Monitor) -> list[dict[str, Any]]:
    return _service(request).test_matrix()


@api.post("/test-matrix")
def record_test_results(request: Request, _guard: Configure,
                        body: Annotated[list[dict[str, Any]], Body()]) -> dict[str, int]:
    """Store results of a test-matrix run (`dcs transfer test-matrix` submits, follows and records)."""
    service = _service(request)
    for r in body:
        service.record_test(str(r["source"]), str(r["destination"]), str(r["mode"]), bool(r["ok"]),
                            int(r.get("size") or 0), r.get("duration"), r.get("error"))
    return {"recorded": len(body)}


@api.get("/ses")
def storage_elements(request: Request, _guard: Monitor) -> list[dict[str, Any]]:
    """SEs the transfer service knows (grid.yaml with their current URLs)."""
    state = request.app.state
    urls: dict[str, str] = getattr(state, "se_urls", {}) or {}
    out = []
    for site in state.grid.sites:
        for se in site.storage_elements:
            out.append({"name": se.name, "site": site.name, "kind": str(se.kind.value if hasattr(se.kind, "value")
                                                                         else se.kind),
                        "url": se.url or urls.get(se.name), "path": se.path})
    return out


router.include_router(fts)
router.include_router(api)


# -- Prometheus -----------------------------------------------------------------------------------------

_services: list[Any] = []
_registered = False
_metrics_lock = threading.Lock()


class _LinkCollector:
    """Per-link gauges computed at scrape time (cached 5 s): queue, active, throughput, success rate."""

    def __init__(self) -> None:
        self._cache: tuple[float, list[Any]] = (0.0, [])

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        t = time.monotonic()
        if t - self._cache[0] > 5.0:
            stats = []
            for ref in list(_services):
                service = ref()
                if service is None:
                    continue
                with contextlib.suppress(Exception):
                    stats.extend(service.link_stats())
            self._cache = (t, stats)
        stats = self._cache[1]
        families = {
            "queue": GaugeMetricFamily("dcs_transfer_link_queue", "Files queued (SUBMITTED) per link",
                                       labels=["source", "destination"]),
            "active": GaugeMetricFamily("dcs_transfer_link_active", "Transfers running per link",
                                        labels=["source", "destination"]),
            "throughput": GaugeMetricFamily("dcs_transfer_link_throughput_mbps",
                                            "Throughput per link over the optimizer window (MB/s)",
                                            labels=["source", "destination"]),
            "success_rate": GaugeMetricFamily("dcs_transfer_link_success_rate",
                                              "Finished / ended transfers per link over the window (%)",
                                              labels=["source", "destination"]),
            "optimizer_active": GaugeMetricFamily("dcs_transfer_link_optimizer_limit",
                                                  "Active transfers the optimizer allows per link",
                                                  labels=["source", "destination"]),
            "finished": GaugeMetricFamily("dcs_transfer_link_finished", "Transfers finished in the window",
                                          labels=["source", "destination"]),
            "failed": GaugeMetricFamily("dcs_transfer_link_failed", "Transfers failed in the window",
                                        labels=["source", "destination"]),
        }
        for s in stats:
            for key, family in families.items():
                if s.get(key) is not None:
                    family.add_metric([s["source"], s["destination"]], float(s[key]))
        yield from families.values()


def register_metrics(service: TransferService) -> None:
    import weakref

    global _registered
    with _metrics_lock:
        _services.append(weakref.ref(service))
        if not _registered:
            from prometheus_client import REGISTRY

            REGISTRY.register(_LinkCollector())  # type: ignore[arg-type]
            _registered = True
