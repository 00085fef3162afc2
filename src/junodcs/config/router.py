"""The grid description as an API: sites, computing and storage elements, links (read-only).

This is what `dcs site ls`, `dcs se ls` and clients that pick replicas by site read. It changes only
when operators edit grid.yaml; masking a site (ban/allow) is workload-management state, not here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Request

from junodcs.auth.identity import Identity
from junodcs.auth.policies import AccessPolicy, Guard, requires


class ConfigAction(StrEnum):
    READ = "read the grid configuration"


class ConfigPolicy(AccessPolicy):
    """Any registered member of the VO may read the grid description; nobody writes it through the API
    (grid.yaml is the source of truth)."""

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        return action is ConfigAction.READ and identity.is_known


router = APIRouter(prefix="/api/v1/config", tags=["config"])
ReadAccess = Annotated[Guard, requires(ConfigPolicy, ConfigAction.READ)]


def _site_view(request: Request, site: Any) -> dict[str, Any]:
    urls: dict[str, str] = getattr(request.app.state, "se_urls", {})
    return {
        "name": site.name,
        "tiers": list(site.tiers),
        "country": site.country,
        "description": site.description,
        "computing_elements": [ce.model_dump(mode="json") for ce in site.computing_elements],
        "storage_elements": [
            {**se.model_dump(mode="json"), "url": se.url or urls.get(se.name)} for se in site.storage_elements
        ],
        "squids": [sq.model_dump(mode="json") for sq in site.squids],
    }


@router.get("/sites")
def list_sites(request: Request, _guard: ReadAccess) -> list[dict[str, Any]]:
    return [_site_view(request, site) for site in request.app.state.grid.sites]


@router.get("/sites/{name}")
def show_site(request: Request, name: str, _guard: ReadAccess) -> dict[str, Any]:
    from junodcs.core.errors import NotFound

    try:
        return _site_view(request, request.app.state.grid.site(name))
    except KeyError:
        raise NotFound(f"no site {name!r}", code="unknown-site") from None


@router.get("/storage-elements")
def list_storage_elements(request: Request, _guard: ReadAccess) -> list[dict[str, Any]]:
    urls: dict[str, str] = getattr(request.app.state, "se_urls", {})
    return [
        {**se.model_dump(mode="json"), "url": se.url or urls.get(se.name), "site": site.name}
        for site in request.app.state.grid.sites
        for se in site.storage_elements
    ]


@router.get("/links")
def list_links(request: Request, _guard: ReadAccess) -> list[dict[str, Any]]:
    return [link.model_dump(mode="json") for link in request.app.state.grid.links]
