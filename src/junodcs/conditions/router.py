"""Conditions REST API (`/api/v1/conditions`) and the Frontier endpoint (`/Frontier`).

`router` (what the server mounts for the `conditions` system) holds both. `frontier_router` alone is
what `create_frontier_app` serves on a plain-HTTP port for the site Squids (see that function for why
it is a separate small application).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Boolean, DateTime, Engine, Integer, LargeBinary, Select, select
from starlette.concurrency import run_in_threadpool

from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, requires
from junodcs.conditions import db, frontier
from junodcs.conditions.frontier import FrontierError, SelectQuery
from junodcs.conditions.logic import Conditions, change_times
from junodcs.conditions.models import (
    GlobalTagCreate,
    GlobalTagInfo,
    GlobalTagStatus,
    IOVCreate,
    IOVInfo,
    MapEntry,
    PayloadInfo,
    Resolution,
    TagCreate,
    TagInfo,
)
from junodcs.core.errors import InvalidInput
from junodcs.core.gridconfig import Property

log = logging.getLogger(__name__)


class ConditionsAction(StrEnum):
    READ = "read conditions"
    WRITE = "write conditions (payloads, tags, IOVs)"
    MANAGE_GLOBAL_TAGS = "manage global tags"


class ConditionsPolicy(AccessPolicy):
    """Who may do what with condition data (REST API).

    * Reading (payloads, tags, IOVs, global tags, resolution) is open to every registered VO member,
      pilots included (jobs read conditions).
    * Writing payloads, tags and IOVs, locking tags, and creating, filling, locking and invalidating
      global tags need `ConditionsManager` (JUNO's per-payload-type manager role; the top manager holds
      it too). `ServiceAdministrator` alone does not grant it.
    * Locked tags, locked global tags and payloads are immutable for everyone (the rules in `logic`).
    * The Frontier endpoint is governed by `FrontierPolicy`, not by this policy.
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if not identity.is_known or not isinstance(action, ConditionsAction):
            return False
        if action is ConditionsAction.READ:
            return True
        return identity.has(Property.CONDITIONS_MANAGER)


class FrontierAction(StrEnum):
    READ = "read the conditions schema through Frontier"


class FrontierPolicy(AccessPolicy):
    """The Frontier endpoint (`GET /Frontier`) is anonymous: Squid caches answers only for requests
    without credentials, and every job of the VO at every site must be able to read conditions through
    its site Squid. That is safe because the endpoint is read-only and reaches nothing but the
    conditions schema: it answers GETs only, its SQL is parsed against a whitelist (SELECT on the
    `cond_payloads`, `cond_tags`, `cond_iovs`, `cond_global_tags`, `cond_global_tag_map` tables, with
    simple conditions, ordering and limits) and rebuilt as SQLAlchemy Core; statements that modify, any
    other table (accounts, tokens, catalog, jobs), joins and sub-queries get an error payload. Condition
    data is not secret inside the experiment; writes go through the authenticated REST API
    (`ConditionsPolicy`)."""

    public = True

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        return action is FrontierAction.READ


# -- Frontier service --------------------------------------------------------------------------------


@dataclass
class FrontierSettings:
    """Cache lifetimes (Frontier's `ShortCacheExpireSeconds` etc.) and server limits; `DCS_FRONTIER_*`
    environment variables override the defaults (`from_env`)."""

    short_seconds: int = 60
    long_seconds: int = 7 * 86400
    forever_seconds: int = 365 * 86400
    error_seconds: int = 300
    validate_seconds: float = 1.0
    """How long the tables' change times are cached (`ValidateLastModifiedSeconds`)."""
    keepalive_seconds: float = 5.0
    server_name: str = "junodcs-frontier"
    max_result_bytes: int = 512 * 1024 * 1024

    @classmethod
    def from_env(cls) -> FrontierSettings:
        settings = cls()
        for name, variable in (("short_seconds", "SHORT_TTL"), ("long_seconds", "LONG_TTL"),
                               ("forever_seconds", "FOREVER_TTL"), ("error_seconds", "ERROR_TTL"),
                               ("validate_seconds", "VALIDATE_SECONDS"), ("keepalive_seconds", "KEEPALIVE_SECONDS")):
            value = os.environ.get(f"DCS_FRONTIER_{variable}")
            if value:
                setattr(settings, name, type(getattr(settings, name))(float(value)))
        return settings

    def max_age(self, ttl: str) -> int:
        return {"short": self.short_seconds, "long": self.long_seconds, "forever": self.forever_seconds}[ttl]


def _type_name(column: Any) -> str:
    kind = column.type
    if isinstance(kind, LargeBinary):
        return "BLOB"
    if isinstance(kind, Boolean):
        return "NUMBER(1)"
    if isinstance(kind, Integer):
        return "NUMBER"
    if isinstance(kind, DateTime):
        return "DATE"
    return "VARCHAR2"


def _http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


class FrontierService:
    """Answers Frontier requests from the conditions tables. `execute` is the one place that touches
    the database for a query (tests wrap it to simulate a slow database)."""

    def __init__(self, engine: Engine, settings: FrontierSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or FrontierSettings.from_env()
        self.columns = {name: [c.name for c in table.columns] for name, table in db.FRONTIER_TABLES.items()}
        self._changes: tuple[float, dict[str, float]] | None = None
        self._compiled: dict[str, tuple[Select[Any], list[tuple[str, str]], str]] = {}
        self.queries = 0
        """Statements executed against the database (for benches and tests)."""

    # database side
    def compile(self, query: SelectQuery) -> tuple[Select[Any], list[tuple[str, str]]]:
        table = db.FRONTIER_TABLES[query.table]
        columns = [table.c[name] for name in query.columns]
        statement = select(*columns)
        for condition in query.where:
            column = table.c[condition.column]
            values = [self._coerce(column, v) for v in condition.values]
            if condition.op == "in":
                statement = statement.where(column.in_(values))
            else:
                value = values[0]
                statement = statement.where({
                    "=": column == value, "!=": column != value, "<": column < value, "<=": column <= value,
                    ">": column > value, ">=": column >= value}[condition.op])
        for name, descending in query.order:
            statement = statement.order_by(table.c[name].desc() if descending else table.c[name])
        if query.limit is not None:
            statement = statement.limit(query.limit)
        return statement, [(c.name, _type_name(c)) for c in columns]

    @staticmethod
    def _coerce(column: Any, value: Any) -> Any:
        if isinstance(column.type, (Integer, Boolean)):
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise FrontierError(f"{column.name} takes a number, not {str(value)[:30]!r}") from None
            return bool(number) if isinstance(column.type, Boolean) else number
        if isinstance(column.type, LargeBinary):
            raise FrontierError(f"{column.name} cannot be compared")
        return str(value)

    def execute(self, statement: Select[Any]) -> list[Any]:
        self.queries += 1
        rows: list[Any] = []
        size = 0
        with self.engine.connect() as connection:
            result = connection.execute(statement)
            for row in result:
                for value in row:
                    size += len(value) if isinstance(value, (bytes, bytearray, memoryview)) else 16
                if size > self.settings.max_result_bytes:
                    raise FrontierError(f"result larger than {self.settings.max_result_bytes} bytes: narrow the query")
                rows.append(row)
        return rows

    def last_modified(self, tables: set[str]) -> float:
        now = time.monotonic()
        cached = self._changes
        if cached is None or now - cached[0] >= self.settings.validate_seconds:
            cached = self._changes = (now, change_times(self.engine))
        return max((cached[1].get(t, 0.0) for t in tables), default=0.0)

    # protocol side
    def plan(self, query_string: str) -> tuple[frontier.FrontierRequest | None, list[Any]]:
        """Parse and compile every payload: a list of (statement, header, encoding, zip level) or an error
        message per payload."""
        try:
            request = frontier.parse_request(query_string)
        except FrontierError as exc:
            return None, [str(exc)]
        plans: list[Any] = []
        for payload in request.payloads:
            if payload.error:
                plans.append(payload.error)
                continue
            p1 = payload.params.get("p1")
            if p1 is None:
                plans.append("missing p1 (the encoded query)")
                continue
            compiled = self._compiled.get(p1)
            if compiled is None:
                try:
                    sql = frontier.decode_query(p1)
                    query = frontier.parse_sql(sql, self.columns)
                    statement, header = self.compile(query)
                except FrontierError as exc:
                    plans.append(str(exc))
                    continue
                compiled = (statement, header, query.table)
                if len(self._compiled) >= 4096:  # the hot set of a job wave is small
                    self._compiled.clear()
                self._compiled[p1] = compiled
            statement, header, table = compiled
            zip_level = payload.zip_level if payload.encoding.startswith("BLOBzip") else None
            plans.append((statement, header, payload.encoding, zip_level, table))
        return request, plans

    def run_plans(self, plans: list[Any]) -> list[bytes]:
        """Execute and encode each payload (the part that runs in a worker thread)."""
        bodies: list[bytes] = []
        for plan in plans:
            if isinstance(plan, str):
                bodies.append(frontier.payload_error(self._message(plan)))
                continue
            statement, header, _, zip_level, _ = plan
            try:
                rows = self.execute(statement)
                stream, count = frontier.encode_rows(header, rows)
                bodies.append(frontier.payload_body(stream, count, zip_level))
            except FrontierError as exc:
                bodies.append(frontier.payload_error(self._message(str(exc))))
            except Exception as exc:  # the database failed: say so, never leak what it said
                log.exception("Frontier query failed")
                bodies.append(frontier.payload_error(self._message(f"database error ({type(exc).__name__})")))
        return bodies

    def _message(self, text: str) -> str:
        return f"{self.settings.server_name}: {text}"

    async def respond(self, request: Request, query_string: str) -> Response:
        settings = self.settings
        freq, plans = self.plan(query_string)
        errors = [p for p in plans if isinstance(p, str)]
        headers: dict[str, str] = {"Content-Type": "text/xml; charset=US-ASCII"}
        if errors:
            headers["Cache-Control"] = f"max-age={min(settings.error_seconds, settings.short_seconds)}"
            headers["Last-Modified"] = _http_date(0)
        else:
            assert freq is not None
            tables = {plan[4] for plan in plans}
            cached = self._changes
            if cached is not None and time.monotonic() - cached[0] < settings.validate_seconds:
                changed = max((cached[1].get(t, 0.0) for t in tables), default=0.0)
            else:
                changed = await run_in_threadpool(self.last_modified, tables)
            # HTTP dates have one-second resolution: a change in the second now running could not be
            # told from the answer's own Last-Modified, so such answers carry none (Squid then refetches
            # them when they expire instead of revalidating).
            modified = math.floor(changed) + 1
            headers["Cache-Control"] = f"max-age={settings.max_age(freq.ttl)}"
            if modified <= time.time():
                headers["Last-Modified"] = _http_date(modified)
            since = request.headers.get("if-modified-since")
            if since and "Last-Modified" in headers:
                try:
                    if modified <= parsedate_to_datetime(since).timestamp():
                        return Response(status_code=304, headers={k: v for k, v in headers.items()
                                                                  if k != "Content-Type"})
                except (TypeError, ValueError):
                    pass
        count = len(plans)
        encodings = [p[2] if not isinstance(p, str) else (freq.payloads[i].encoding if freq else "BLOB")
                     for i, p in enumerate(plans)]
        work = asyncio.ensure_future(run_in_threadpool(self.run_plans, plans))
        done, _ = await asyncio.wait({work}, timeout=settings.keepalive_seconds)
        if done:
            bodies = work.result()
            content = b"".join([frontier.xml_head(count)] +
                               [frontier.payload_open(e) + b for e, b in zip(encodings, bodies, strict=True)] +
                               [frontier.XML_TAIL])
            return Response(content, headers=headers)

        async def stream() -> Any:  # slow query: headers are out, keep proxies from timing out
            yield frontier.xml_head(count) + frontier.payload_open(encodings[0])
            while True:
                finished, _ = await asyncio.wait({work}, timeout=settings.keepalive_seconds)
                if finished:
                    break
                yield frontier.KEEPALIVE
            try:
                bodies = work.result()
            except Exception:
                log.exception("Frontier request failed after the response started")
                yield frontier.payload_error(self._message("internal error")) + frontier.global_error(
                    self._message("internal error after the response started")) + frontier.XML_TAIL
                return
            yield bodies[0]
            for encoding, body in zip(encodings[1:], bodies[1:], strict=True):
                yield frontier.payload_open(encoding) + body
            yield frontier.XML_TAIL

        return StreamingResponse(stream(), headers=headers)


# -- routers -----------------------------------------------------------------------------------------

api = APIRouter(prefix="/api/v1/conditions", tags=["conditions"])
frontier_router = APIRouter(tags=["frontier"])
Read = Annotated[Guard, requires(ConditionsPolicy, ConditionsAction.READ)]
Write = Annotated[Guard, requires(ConditionsPolicy, ConditionsAction.WRITE)]
ManageGT = Annotated[Guard, requires(ConditionsPolicy, ConditionsAction.MANAGE_GLOBAL_TAGS)]
FrontierRead = Annotated[Guard, requires(FrontierPolicy, FrontierAction.READ)]
FOREVER = "public, max-age=31536000, immutable"


def conditions(request: Request) -> Conditions:
    state = request.app.state
    found = getattr(state, "conditions", None)
    if found is None:
        found = state.conditions = Conditions(state.engine)
    return found


def frontier_service(request: Request) -> FrontierService:
    state = request.app.state
    found = getattr(state, "frontier", None)
    if found is None:
        found = state.frontier = FrontierService(state.engine, getattr(state, "frontier_settings", None))
    return found


def _user(guard: Guard) -> str:
    return guard.identity.username or "anonymous"


@frontier_router.get("/Frontier", include_in_schema=True, summary="Frontier protocol endpoint (read-only)")
async def frontier_query(request: Request, guard: FrontierRead) -> Response:
    return await frontier_service(request).respond(request, request.url.query)


@frontier_router.get("/Frontier/{rest:path}", include_in_schema=False)
async def frontier_query_path(request: Request, rest: str, guard: FrontierRead) -> Response:
    """The servlet reads the query string or, as here, the path info (`/Frontier/type=...`)."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    tail = raw_path.decode("latin-1").split("/Frontier/", 1)[-1]
    query = request.url.query
    return await frontier_service(request).respond(request, tail + ("&" + query if query else ""))


@api.post("/payloads", response_model=PayloadInfo)
async def put_payload(request: Request, guard: Write, type: str = Query(..., description="payload type"),
                      uri: str | None = None, hash: str | None = None, size: int | None = None) -> Any:
    """Store a payload: the request body is its bytes (or empty, with `uri`, `hash` and `size`)."""
    data = await request.body()
    info, created = await run_in_threadpool(
        conditions(request).put_payload, type, data if data or not uri else None, user=_user(guard), uri=uri,
        hash=hash, size=size)
    return Response(info.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@api.get("/payloads/{hash}", summary="payload bytes by hash (immutable: cacheable forever)")
def get_payload(request: Request, hash: str, guard: Read) -> Response:
    info, data = conditions(request).payload_data(hash)
    headers = {"Cache-Control": FOREVER, "ETag": f'"{hash}"', "X-Payload-Type": info.payload_type}
    if data is None:
        headers["Location"] = info.uri or ""
        return Response(status_code=303, headers=headers)
    if request.headers.get("if-none-match") == f'"{hash}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/octet-stream", headers=headers)


@api.get("/payloads/{hash}/info", response_model=PayloadInfo)
def payload_info(request: Request, hash: str, guard: Read, response: Response) -> Any:
    response.headers["Cache-Control"] = FOREVER
    return conditions(request).payload_info(hash)


@api.post("/tags", response_model=TagInfo, status_code=201)
def create_tag(request: Request, spec: TagCreate, guard: Write) -> Any:
    return conditions(request).create_tag(spec, user=_user(guard))


@api.get("/tags", response_model=list[TagInfo])
def list_tags(request: Request, guard: Read, payload_type: str | None = None) -> Any:
    return conditions(request).list_tags(payload_type)


@api.get("/tags/{name}", response_model=TagInfo)
def show_tag(request: Request, name: str, guard: Read) -> Any:
    return conditions(request).tag(name)


@api.post("/tags/{name}/lock", response_model=TagInfo)
def lock_tag(request: Request, name: str, guard: Write) -> Any:
    return conditions(request).lock_tag(name)


@api.post("/tags/{name}/iovs")
def add_iovs(request: Request, name: str, guard: Write, body: Any = Body(...)) -> Any:
    """Add IOVs to an open tag: `{"iovs": [{"since": N, "payload_hash": H}, ...]}` or one IOV object;
    all or nothing."""
    items = body.get("iovs") if isinstance(body, dict) and "iovs" in body else [body]
    if not isinstance(items, list):
        raise InvalidInput('the body is {"iovs": [...]} or one {"since", "payload_hash"} object')
    try:
        entries = [IOVCreate.model_validate(item) for item in items]
    except ValueError as exc:
        raise InvalidInput(f"bad IOV: {exc}".splitlines()[0]) from None
    added = conditions(request).add_iovs(name, entries, user=_user(guard))
    return {"tag": name, "added": added}


@api.get("/tags/{name}/iovs", response_model=list[IOVInfo])
def list_iovs(request: Request, name: str, guard: Read, effective: bool = False) -> Any:
    return conditions(request).list_iovs(name, effective=effective)


@api.post("/globaltags", response_model=GlobalTagInfo, status_code=201)
def create_global_tag(request: Request, spec: GlobalTagCreate, guard: ManageGT) -> Any:
    return conditions(request).create_global_tag(spec.name, spec.description, user=_user(guard))


@api.get("/globaltags", response_model=list[GlobalTagInfo])
def list_global_tags(request: Request, guard: Read) -> Any:
    return conditions(request).list_global_tags()


@api.get("/globaltags/{name}", response_model=GlobalTagInfo)
def show_global_tag(request: Request, name: str, guard: Read) -> Any:
    return conditions(request).global_tag(name)


@api.post("/globaltags/{name}/tags", response_model=GlobalTagInfo)
def add_to_global_tag(request: Request, name: str, entry: MapEntry, guard: ManageGT) -> Any:
    return conditions(request).add_to_global_tag(name, entry.tag, entry.payload_type)


@api.post("/globaltags/{name}/status", response_model=GlobalTagInfo)
def set_global_tag_status(request: Request, name: str, guard: ManageGT,
                          status: GlobalTagStatus = Body(..., embed=True)) -> Any:
    return conditions(request).set_global_tag_status(name, status)


@api.get("/{global_tag}/{payload_type}", response_model=Resolution,
         summary="the payload valid for a run in a global tag")
def resolve(request: Request, global_tag: str, payload_type: str, guard: Read, response: Response,
            run: int = Query(..., ge=0)) -> Any:
    resolution = conditions(request).resolve(global_tag, payload_type, run)
    settings = frontier_service(request).settings
    age = settings.long_seconds if resolution.cacheable else settings.short_seconds
    response.headers["Cache-Control"] = f"max-age={age}"
    return resolution


router = APIRouter()
router.include_router(api)
router.include_router(frontier_router)


def create_frontier_app(grid: Any, engine: Engine, settings: FrontierSettings | None = None) -> FastAPI:
    """A plain-HTTP application serving only `/Frontier` (and `/healthz`), for `dcs cond serve-frontier`.

    Why a separate process rather than a second port of `dcs server`: the Frontier endpoint is what
    every site Squid talks to, and Squid caches only plain HTTP (it cannot cache what it tunnels to the
    HTTPS central server). Serving it from its own small application keeps the central server's TLS and
    authentication untouched, exposes on the plain port nothing but the anonymous read-only route, lets
    the Frontier tier scale out and restart on its own (as Frontier's Tomcat does beside the database),
    and keeps it off the central server's event loop during a job wave. It reads the same database
    through the project's db layer and runs no migrations (the central server owns the schema).
    """
    from junodcs import __version__
    from junodcs.server.app import ServerOptions, check_every_route_has_a_policy, install_error_handlers
    from junodcs.server.health import router as health_router

    app = FastAPI(title="junodcs Frontier", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.grid = grid
    app.state.engine = engine
    app.state.frontier_settings = settings or FrontierSettings.from_env()
    app.state.options = ServerOptions(public_url="", systems=(), migrate=False)
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(frontier_router)
    check_every_route_has_a_policy(app)
    return app
