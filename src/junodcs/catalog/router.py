"""File catalog REST API (`/api/v1/catalog`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, requires
from junodcs.catalog.logic import MAX_BULK, Action, Caller, Catalog, DirInfo, StorageElementInfo
from junodcs.catalog.errors import TooManyEntries
from junodcs.core.gridconfig import Property


class CatalogAction(StrEnum):
    READ = "read the catalog"
    CREATE = "create catalog entries"
    MODIFY = "modify or remove catalog entries"
    DEFINE_METADATA = "define metadata fields"


_LOGIC_ACTIONS = {Action.READ: CatalogAction.READ, Action.CREATE: CatalogAction.CREATE,
                  Action.MODIFY: CatalogAction.MODIFY}
_SCOPES = {CatalogAction.READ: "storage.read", CatalogAction.CREATE: "storage.create",
           CatalogAction.MODIFY: "storage.modify"}


def user_area(vo: str, username: str) -> str:
    """A user's own namespace, DIRAC/JUNO style: `/juno/user/z/zhangxm`."""
    return f"/{vo}/user/{username[0]}/{username}"


def _within(path: str, area: str) -> bool:
    return path == area or path.startswith(area + "/")


class CatalogPolicy(AccessPolicy):
    """Who may do what in the file catalog.

    * Reading (ls, stat, find, replicas, metadata, usage, datasets) is open to every registered VO member.
    * `FileCatalogAdministrator` may write everywhere and is the only one who defines metadata fields.
    * `/<vo>/production` is writable only with `ProductionManagement` (whatever the directory modes say).
    * Every user may write in their own area `/<vo>/user/<initial>/<username>` (created on first use).
    * Elsewhere writes follow POSIX modes of the nearest existing directory: owner bits for its owner,
      group bits for members of its group, other bits for everyone else.
    * Token identities also need the matching storage scope for the path: `storage.read` to read,
      `storage.create` to create, `storage.modify` to change or remove (WLCG profile).
    """

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        if not identity.is_known or not isinstance(action, CatalogAction):
            return False
        if identity.properties == frozenset({Property.PILOT}):
            return False
        path: str | None = context.get("path")
        if action is CatalogAction.DEFINE_METADATA:
            return identity.has(Property.FILE_CATALOG_ADMINISTRATOR)
        if path is None:  # coarse check at the route: any member; the path rules follow per entry
            return True
        if not identity.allows_scope(_SCOPES[action], path):
            return False
        if action is CatalogAction.READ:
            return True
        if identity.has(Property.FILE_CATALOG_ADMINISTRATOR):
            return True
        vo_root = f"/{identity.vo}"
        if _within(path, f"{vo_root}/production"):
            return identity.has(Property.PRODUCTION_MANAGEMENT)
        if identity.username and _within(path, user_area(identity.vo, identity.username)):
            return True
        node: DirInfo | None = context.get("node")
        if node is None:
            return False
        if node.owner == identity.username:
            bit = 0o200
        elif node.group == identity.group:
            bit = 0o020
        else:
            bit = 0o002
        return bool(node.mode & bit)


router = APIRouter(prefix="/api/v1/catalog", tags=["catalog"])
Read = Annotated[Guard, requires(CatalogPolicy, CatalogAction.READ)]
Create = Annotated[Guard, requires(CatalogPolicy, CatalogAction.CREATE)]
Modify = Annotated[Guard, requires(CatalogPolicy, CatalogAction.MODIFY)]
Define = Annotated[Guard, requires(CatalogPolicy, CatalogAction.DEFINE_METADATA)]


def catalog(request: Request) -> Catalog:
    state = request.app.state
    found = getattr(state, "catalog", None)
    if found is None:
        urls: dict[str, str] = getattr(state, "se_urls", {}) or {}
        ses = [
            StorageElementInfo(se.name, se.url or urls.get(se.name), se.path)
            for site in state.grid.sites
            for se in site.storage_elements
        ]
        found = state.catalog = Catalog(state.engine, vo=state.grid.vo, storage_elements=ses)
    else:  # the local grid fills se_urls once its SEs listen
        urls = getattr(state, "se_urls", {}) or {}
        for name, url in urls.items():
            info = found.storage_elements.get(name)
            if info is not None and info.base_url is None:
                found.storage_elements[name] = StorageElementInfo(name, url, info.path)
    return found


def caller(guard: Guard) -> Caller:
    identity = guard.identity

    def authorize(action: str, path: str, node: DirInfo | None) -> bool:
        return guard.allows(_LOGIC_ACTIONS[action], path=path, node=node)

    return Caller(
        username=identity.username or "anonymous",
        group=identity.group or "",
        admin=identity.has(Property.FILE_CATALOG_ADMINISTRATOR),
        authorize=authorize,
    )


def _entries(body: Any) -> list[Any]:
    entries = body.get("entries") if isinstance(body, dict) else body
    if not isinstance(entries, list):
        from junodcs.core.errors import InvalidInput

        raise InvalidInput("the body is {\"entries\": [...]} or a list of entries")
    if len(entries) > MAX_BULK:
        raise TooManyEntries(f"{len(entries)} entries: at most {MAX_BULK} per call, split the request")
    return entries


_BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"entries": {"type": "array", "maxItems": MAX_BULK, "items": {"type": "object"}}},
            "required": ["entries"],
        }}},
    }
}


async def _bulk_entries(request: Request) -> list[Any]:
    """The entries of a bulk body, parsed with the C JSON decoder only: no per-entry model validation here,
    the logic checks every entry itself and answers per entry."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        from junodcs.core.errors import InvalidInput

        raise InvalidInput(f"the body is not valid JSON: {exc}", code="invalid-json") from None
    return _entries(body)


def _bulk_answer(results: list[dict[str, Any]]) -> Response:
    """Per-entry results serialized in one C call (FastAPI's encoder walks 10,000 dicts in Python)."""
    ok = sum(1 for r in results if r["ok"])
    body = json.dumps({"results": results, "ok": ok, "failed": len(results) - ok}, separators=(",", ":"),
                      default=str)
    return Response(body, media_type="application/json")


def _ndjson(items: Iterator[dict[str, Any]]) -> StreamingResponse:
    def lines() -> Iterator[bytes]:
        for item in items:
            yield (json.dumps(item, default=str) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# -- namespace ---------------------------------------------------------------------------------------


@router.get("/stat")
def stat(request: Request, guard: Read, lfn: str) -> dict[str, Any]:
    return catalog(request).stat(lfn, caller(guard))


@router.get("/ls")
def ls(request: Request, guard: Read, lfn: str, cursor: str | None = None,
       limit: Annotated[int, Query(ge=1, le=MAX_BULK)] = 1000, stream: bool = False) -> Any:
    """One page of a directory (`next_cursor` continues), or with `stream=true` every entry as NDJSON."""
    cat = catalog(request)
    if stream:
        first = cat.ls(lfn, caller(guard), limit=1)  # errors (no such directory...) before streaming starts
        del first
        return _ndjson(cat.iter_ls(lfn, caller(guard)))
    return cat.ls(lfn, caller(guard), cursor=cursor, limit=limit)


@router.post("/mkdir")
def mkdir(request: Request, guard: Create, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    mode = body.get("mode")
    if isinstance(mode, str):
        mode = int(mode, 8)
    return catalog(request).mkdir(body.get("lfn"), caller(guard), mode=mode)


@router.post("/move")
def move(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).move(body.get("source"), body.get("destination"), caller(guard))


@router.post("/remove")
def remove(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).remove(body.get("lfn"), caller(guard), recursive=bool(body.get("recursive")))


@router.post("/chmod")
def chmod(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    mode = body.get("mode")
    if isinstance(mode, str):
        mode = int(mode, 8)
    return catalog(request).chmod(body.get("lfn"), mode, caller(guard))


@router.post("/chown")
def chown(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).chown(body.get("lfn"), caller(guard), owner=body.get("owner"), group=body.get("group"))


@router.get("/usage")
def usage(request: Request, guard: Read, lfn: str, children: bool = False) -> dict[str, Any]:
    return catalog(request).usage(lfn, caller(guard), children=children)


# -- files and replicas ------------------------------------------------------------------------------


@router.post("/files", openapi_extra=_BULK_BODY)
async def register(request: Request, guard: Create, all_or_nothing: bool = False) -> Response:
    """Bulk registration (at most 10,000 entries): `{"entries": [{lfn, size, checksum, guid?, se?|replicas?,
    metadata?, ancestors?}]}`; per-entry results."""
    entries = await _bulk_entries(request)
    cat, who = catalog(request), caller(guard)
    results = await run_in_threadpool(cat.register, entries, who, all_or_nothing=all_or_nothing)
    return _bulk_answer(results)


@router.post("/replicas", openapi_extra=_BULK_BODY)
async def add_replicas(request: Request, guard: Modify, all_or_nothing: bool = False) -> Response:
    entries = await _bulk_entries(request)
    cat, who = catalog(request), caller(guard)
    results = await run_in_threadpool(cat.add_replicas, entries, who, all_or_nothing=all_or_nothing)
    return _bulk_answer(results)


@router.post("/replicas/get")
def get_replicas(request: Request, guard: Read, body: Annotated[Any, Body()]) -> dict[str, Any]:
    return catalog(request).replicas(_entries(body), caller(guard))


@router.post("/replicas/remove")
def remove_replica(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).remove_replica(body.get("lfn"), body.get("se"), caller(guard),
                                           force=bool(body.get("force")))


@router.post("/replicas/status")
def replica_status(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).set_replica_status(body.get("lfn"), body.get("se"), body.get("status"), caller(guard))


@router.post("/files/status")
def file_status(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).set_file_status(body.get("lfn"), body.get("status"), caller(guard))


@router.post("/ancestors")
def add_ancestors(request: Request, guard: Modify, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).add_ancestors(body.get("lfn"), body.get("ancestors") or [], caller(guard))


@router.get("/ancestors")
def ancestors(request: Request, guard: Read, lfn: str, depth: int = 1) -> list[dict[str, Any]]:
    return catalog(request).provenance(lfn, "up", caller(guard), depth=depth)


@router.get("/descendants")
def descendants(request: Request, guard: Read, lfn: str, depth: int = 1) -> list[dict[str, Any]]:
    return catalog(request).provenance(lfn, "down", caller(guard), depth=depth)


# -- metadata ----------------------------------------------------------------------------------------


@router.get("/metadata/fields")
def list_fields(request: Request, _guard: Read) -> list[dict[str, Any]]:
    return catalog(request).list_fields()


@router.post("/metadata/fields")
def define_field(request: Request, guard: Define, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).define_field(body.get("name"), body.get("type"), body.get("level", "file"), caller(guard))


@router.post("/metadata", openapi_extra=_BULK_BODY)
async def set_metadata(request: Request, guard: Modify, all_or_nothing: bool = False) -> Response:
    entries = await _bulk_entries(request)
    cat, who = catalog(request), caller(guard)
    results = await run_in_threadpool(cat.set_metadata, entries, who, all_or_nothing=all_or_nothing)
    return _bulk_answer(results)


@router.get("/metadata")
def get_metadata(request: Request, guard: Read, lfn: str) -> dict[str, Any]:
    return catalog(request).get_metadata(lfn, caller(guard))


@router.post("/find")
def find(request: Request, guard: Read, body: Annotated[dict[str, Any], Body()]) -> StreamingResponse:
    """Files matching `{"query": {...} | "compact string", "path": "/juno/...", "limit": N}` as NDJSON."""
    cat = catalog(request)
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        from junodcs.core.errors import InvalidInput

        raise InvalidInput("limit must be a positive integer")
    items = cat.find(body.get("query"), body.get("path"), caller(guard), limit=limit)
    return _ndjson(items)


@router.post("/count")
def count(request: Request, guard: Read, body: Annotated[dict[str, Any], Body()]) -> dict[str, int]:
    return catalog(request).count(body.get("query"), body.get("path"), caller(guard))


# -- datasets ----------------------------------------------------------------------------------------


@router.get("/datasets")
def list_datasets(request: Request, guard: Read) -> list[dict[str, Any]]:
    return catalog(request).list_datasets(caller(guard))


@router.post("/datasets")
def create_dataset(request: Request, guard: Create, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return catalog(request).create_dataset(body.get("name"), body.get("query"), body.get("path"), caller(guard),
                                           description=body.get("description") or "")


@router.get("/datasets/{name:path}/files")
def dataset_files(request: Request, guard: Read, name: str) -> StreamingResponse:
    return _ndjson(catalog(request).dataset_files(name, caller(guard)))


@router.post("/datasets/{name:path}/freeze")
def freeze_dataset(request: Request, guard: Modify, name: str) -> dict[str, Any]:
    return catalog(request).freeze_dataset(name, caller(guard))


@router.post("/datasets/{name:path}/release")
def release_dataset(request: Request, guard: Modify, name: str) -> dict[str, Any]:
    return catalog(request).release_dataset(name, caller(guard))


@router.get("/datasets/{name:path}")
def show_dataset(request: Request, guard: Read, name: str) -> dict[str, Any]:
    return catalog(request).show_dataset(name, caller(guard))


@router.delete("/datasets/{name:path}")
def remove_dataset(request: Request, guard: Modify, name: str) -> dict[str, Any]:
    return catalog(request).remove_dataset(name, caller(guard))
