"""Catalog REST API with tokens from the server's own issuer (the whole auth path: signature, issuer,
audience, registry, scopes); access control by property, area, mode and scope; on all three databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from authutil import bearer, full_token
from junodcs.core.gridconfig import GridConfig
from junodcs.server.app import ServerOptions, create_app

URL = "http://testserver"


@pytest.fixture
def app(grid: GridConfig, engine: Engine) -> FastAPI:
    app = create_app(grid, engine, ServerOptions(public_url=URL, systems=("auth", "config", "catalog")))
    app.state.se_urls = {"IHEP-EOS": "https://127.0.0.1:9001"}
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=URL) as test_client:
        yield test_client


def _scope_path(path: str) -> str:
    """Storage scopes name paths relative to the VO prefix (WLCG profile) where identity supports that."""
    from junodcs.auth import identity

    relative = getattr(identity, "vo_relative_path", None)
    if relative is None or not (path == "/juno" or path.startswith("/juno/")):
        return path
    return relative("juno", path)


def scopes(text: str) -> str:
    """`storage.read:/juno storage.create:/juno/x` in the form the issuer's tokens carry."""
    out = []
    for item in text.split():
        name, sep, path = item.partition(":")
        out.append(f"{name}:{_scope_path(path)}" if sep and name.startswith("storage.") else item)
    return " ".join(out)


def token(app: FastAPI, username: str, group: str, scope: str | None = None) -> dict[str, str]:
    """A token minted by the server's issuer: every scope the policy grants (as `dcs login` gets), or
    exactly `scope`."""
    if scope is None:
        return bearer(full_token(app, username, group))
    minted, _ = app.state.token_issuer.issue_access_token(username=username, group=group, scopes=scopes(scope).split())
    return bearer(minted)


@pytest.fixture
def who(app: FastAPI) -> dict[str, dict[str, str]]:
    return {"ADMIN": token(app, "zhangxm", "juno_admin"), "PROD": token(app, "zhangxm", "juno_production"),
            "ALICE": token(app, "alice", "juno_user"), "BORIS": token(app, "boris", "juno_user")}


def entry(lfn: str, **extra: Any) -> dict[str, Any]:
    return {"lfn": lfn, "size": 10, "checksum": "0a0b0c0d", **extra}


def test_access_control(client: TestClient, app: FastAPI, who: dict[str, dict[str, str]]) -> None:
    ADMIN, PROD, ALICE, BORIS = who["ADMIN"], who["PROD"], who["ALICE"], who["BORIS"]
    # alice cannot write production; zhangxm as production manager can
    denied = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/production/a")]}, headers=ALICE)
    assert denied.status_code == 200 and denied.json()["results"][0]["code"] == "permission-denied"
    assert client.post("/api/v1/catalog/mkdir", json={"lfn": "/juno/production/x"}, headers=ALICE).status_code == 403
    ok = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/production/a")]}, headers=PROD)
    assert ok.json()["results"][0]["ok"]
    # users write in their own area only
    mine = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/user/a/alice/f1")]}, headers=ALICE)
    assert mine.json()["ok"] == 1
    theirs = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/user/a/alice/f2")]}, headers=BORIS)
    assert theirs.json()["results"][0]["code"] == "permission-denied"
    assert client.post("/api/v1/catalog/remove", json={"lfn": "/juno/user/a/alice/f1"}, headers=BORIS).status_code == 403
    # reads are open to members, closed to anonymous callers
    assert client.get("/api/v1/catalog/stat", params={"lfn": "/juno/user/a/alice/f1"}, headers=BORIS).status_code == 200
    assert client.get("/api/v1/catalog/stat", params={"lfn": "/juno/user/a/alice/f1"}).status_code == 401
    # group-writable directory: modes decide outside the special areas
    client.post("/api/v1/catalog/mkdir", json={"lfn": "/juno/shared", "mode": "775"}, headers=ADMIN)
    client.post("/api/v1/catalog/chown", json={"lfn": "/juno/shared", "group": "juno_user"}, headers=ADMIN)
    # (a login token of a plain user carries storage.create only for the user's own area, so the scope
    # refuses first; a token scoped for the directory reaches the mode rule)
    refused = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/shared/s")]}, headers=BORIS)
    assert refused.json()["results"][0]["code"] == "permission-denied"
    scoped = token(app, "boris", "juno_user", "storage.read:/juno storage.create:/juno/shared")
    assert client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/shared/s")]}, headers=scoped).json()["ok"] == 1
    client.post("/api/v1/catalog/chmod", json={"lfn": "/juno/shared", "mode": "755"}, headers=ADMIN)
    assert client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/shared/t")]}, headers=scoped).json()["ok"] == 0
    # only administrators define metadata fields
    assert client.post("/api/v1/catalog/metadata/fields", json={"name": "run", "type": "int"}, headers=ALICE).status_code == 403
    assert client.post("/api/v1/catalog/metadata/fields", json={"name": "run", "type": "int"}, headers=ADMIN).status_code == 200


def test_token_scopes_narrow_writes(client: TestClient, app: FastAPI) -> None:
    narrow = token(app, "zhangxm", "juno_production", "storage.read:/juno storage.create:/juno/production/mc")
    ok = client.post("/api/v1/catalog/files", json={"entries": [entry("/juno/production/mc/a"), entry("/juno/production/data/b")]},
                     headers=narrow)
    assert [r["ok"] for r in ok.json()["results"]] == [True, False], ok.json()
    assert client.post("/api/v1/catalog/remove", json={"lfn": "/juno/production/mc/a"}, headers=narrow).status_code == 403
    no_read = token(app, "alice", "juno_user", "storage.read:/juno/user")
    assert client.get("/api/v1/catalog/stat", params={"lfn": "/juno/production/mc/a"}, headers=no_read).status_code == 403


def test_api_end_to_end(client: TestClient, who: dict[str, dict[str, str]]) -> None:
    ADMIN, PROD, ALICE = who["ADMIN"], who["PROD"], who["ALICE"]
    client.post("/api/v1/catalog/metadata/fields", json={"name": "run", "type": "int"}, headers=ADMIN)
    entries = [entry(f"/juno/production/mc/f{i}", se="IHEP-EOS", metadata={"run": i}) for i in range(30)]
    assert client.post("/api/v1/catalog/files", json={"entries": entries}, headers=PROD).json()["ok"] == 30
    reps = client.post("/api/v1/catalog/replicas/get", json={"entries": ["/juno/production/mc/f1"]}, headers=ALICE).json()
    assert reps["/juno/production/mc/f1"][0]["url"] == "https://127.0.0.1:9001/juno/production/mc/f1"
    found = client.post("/api/v1/catalog/find", json={"query": "run>=25 se=IHEP-EOS"}, headers=ALICE)
    assert found.headers["content-type"].startswith("application/x-ndjson")
    assert len(found.text.splitlines()) == 5
    assert client.post("/api/v1/catalog/find", json={"query": "run>>"}, headers=ALICE).json()["code"] in (
        "invalid-query", "metadata-type-mismatch")
    stream = client.get("/api/v1/catalog/ls", params={"lfn": "/juno/production/mc", "stream": "true"}, headers=ALICE)
    assert len(stream.text.splitlines()) == 30
    page = client.get("/api/v1/catalog/ls", params={"lfn": "/juno/production/mc", "limit": 10}, headers=ALICE).json()
    assert len(page["entries"]) == 10 and page["next_cursor"]
    usage = client.get("/api/v1/catalog/usage", params={"lfn": "/juno"}, headers=ALICE).json()
    assert usage["files"] == 30 and usage["per_se"]["IHEP-EOS"]["bytes"] == 300
    last = client.post("/api/v1/catalog/replicas/remove", json={"lfn": "/juno/production/mc/f1", "se": "IHEP-EOS"},
                       headers=PROD)
    assert last.status_code == 409 and last.json()["code"] == "last-replica"
    status = {"lfn": "/juno/production/mc/f2", "status": "Trash"}
    assert client.post("/api/v1/catalog/files/status", json=status, headers=ALICE).status_code == 403
    assert client.post("/api/v1/catalog/files/status", json=status, headers=PROD).json() == status
    assert client.get("/api/v1/catalog/stat", params={"lfn": "/juno/production/mc/f2"}, headers=ALICE).json()["status"] == "Trash"
    assert client.post("/api/v1/catalog/datasets", json={"name": "late", "query": {"run": {">=": 28}}}, headers=PROD).status_code == 200
    assert client.post("/api/v1/catalog/datasets/late/freeze", headers=ALICE).status_code == 403
    frozen = client.post("/api/v1/catalog/datasets/late/freeze", headers=PROD).json()
    assert frozen["files"] == 2
    assert len(client.get("/api/v1/catalog/datasets/late/files", headers=ALICE).text.splitlines()) == 2
    big = client.post("/api/v1/catalog/files", json={"entries": [{}] * 10_001}, headers=PROD)
    assert big.status_code == 413 and big.json()["code"] == "too-many-entries"
    bad = client.get("/api/v1/catalog/stat", params={"lfn": "/juno/../etc"}, headers=ALICE)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid-lfn"


def test_bulk_body_errors_and_foreign_tokens(client: TestClient, app: FastAPI, who: dict[str, dict[str, str]]) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    bad_json = client.post("/api/v1/catalog/files", content=b"{not json", headers={**who["PROD"],
                           "Content-Type": "application/json"})
    assert bad_json.status_code == 422 and bad_json.json()["code"] == "invalid-json"
    not_list = client.post("/api/v1/catalog/files", json={"entries": "x"}, headers=who["PROD"])
    assert not_list.status_code == 422
    # all-or-nothing: one bad entry, nothing written, per-entry results in the problem
    both = [entry("/juno/production/aon/a"), entry("/juno/production/aon/b", checksum="zz")]
    refused = client.post("/api/v1/catalog/files", params={"all_or_nothing": "true"}, json={"entries": both},
                          headers=who["PROD"])
    assert refused.status_code == 422 and refused.json()["code"] == "bulk-failed"
    assert client.get("/api/v1/catalog/stat", params={"lfn": "/juno/production/aon"},
                      headers=who["ALICE"]).json()["code"] == "no-such-path"
    # the same claims signed by a key the issuer never published are refused
    claims = app.state.token_issuer.access_claims(username="zhangxm", group="juno_admin", scopes=["storage.read:/juno"])
    forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": app.state.token_issuer.signing_key().kid})
    answer = client.get("/api/v1/catalog/stat", params={"lfn": "/juno"}, headers=bearer(forged))
    assert answer.status_code == 401
