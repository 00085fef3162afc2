"""The central server's shared behaviour: health, metrics, problem+json errors, deny by default."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from junodcs.core.gridconfig import GridConfig
from junodcs.server import app as app_module
from junodcs.server.app import ServerOptions, check_every_route_has_a_policy, create_app

URL = "http://testserver"


@pytest.fixture
def client(grid: GridConfig, engine: Engine) -> Iterator[TestClient]:
    app = create_app(grid, engine, ServerOptions(public_url=URL))
    with TestClient(app, base_url=URL) as test_client:
        yield test_client


def test_health_reports_the_database(client: TestClient, engine: Engine) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["vo"] == "juno"
    assert body["database"] == engine.dialect.name


def test_health_fails_when_the_database_is_gone(grid: GridConfig, engine: Engine) -> None:
    from junodcs.db.engine import create_engine

    app = create_app(grid, engine, ServerOptions(public_url=URL))
    app.state.engine = create_engine("postgresql://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    with TestClient(app, base_url=URL) as test_client:
        response = test_client.get("/healthz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "database-down"


def test_metrics_count_requests(client: TestClient) -> None:
    client.get("/healthz")
    body = client.get("/metrics").text
    assert 'dcs_http_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert "dcs_http_request_seconds_bucket" in body


def test_openapi_lists_the_mounted_systems(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/config/sites" in paths
    assert "/healthz" in paths


def test_errors_are_problem_json_with_a_stable_code(client: TestClient) -> None:
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not-found"

    anonymous = client.get("/api/v1/config/sites")
    assert anonymous.status_code == 401
    problem = anonymous.json()
    assert problem["code"] == "unauthenticated" and "dcs login" in problem["detail"]
    assert anonymous.headers["www-authenticate"].startswith("Bearer")

    garbage = client.get("/api/v1/config/sites", headers={"Authorization": "Bearer not-a-jwt"})
    assert garbage.status_code == 401
    assert garbage.json()["code"] == "invalid-token"

    wrong_scheme = client.get("/api/v1/config/sites", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert wrong_scheme.status_code == 401
    assert wrong_scheme.json()["code"] == "bad-authorization-header"


def test_a_route_without_policy_stops_the_server(grid: GridConfig, engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rogue = APIRouter()

    @rogue.get("/api/v1/rogue")
    def open_door() -> dict[str, str]:
        return {"secret": "everyone can read this"}

    module = types.ModuleType("rogue_system")
    module.router = rogue  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rogue_system", module)
    monkeypatch.setitem(app_module.SYSTEMS, "rogue", "rogue_system:router")
    with pytest.raises(RuntimeError, match=r"GET /api/v1/rogue"):
        create_app(grid, engine, ServerOptions(public_url=URL, systems=("config", "rogue")))


def test_every_mounted_route_declares_a_policy(client: TestClient) -> None:
    check_every_route_has_a_policy(client.app)  # type: ignore[arg-type]


def test_unknown_system_is_refused(grid: GridConfig, engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown systems nonsense"):
        create_app(grid, engine, ServerOptions(public_url=URL, systems=("nonsense",)))


def test_systems_can_be_selected(grid: GridConfig, engine: Engine) -> None:
    app = create_app(grid, engine, ServerOptions(public_url=URL, systems=("auth",)))
    with TestClient(app, base_url=URL) as test_client:
        paths = test_client.get("/openapi.json").json()["paths"]
    assert "/api/v1/config/sites" not in paths
    assert "/healthz" in paths
