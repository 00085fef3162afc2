"""OAuth endpoints and the /api/v1/auth API: grants, rotation, reuse detection, exchange, login, policies."""

from __future__ import annotations

import time

import jwt
import pytest
from fastapi.testclient import TestClient

from authutil import ChainByDN, PresentChain, ProxyCredential, bearer, full_token, make_app
from junodcs.auth.logic import TokenService, check_secret, hash_secret
from junodcs.auth.registry import subject_for

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"

ZHANG_DN = "/C=CN/O=JUNO/OU=IHEP/CN=Xiaomei Zhang"
ALICE_DN = "/C=IT/O=JUNO/OU=CNAF/CN=Alice Rossi"

CHAINS = {
    "zhang-production": ProxyCredential(ZHANG_DN, ("/juno/Role=production/Capability=NULL", "/juno"), "juno"),
    "zhang-plain": ProxyCredential(ZHANG_DN, ("/juno",), "juno"),
    "alice": ProxyCredential(ALICE_DN, ("/juno",), "juno"),
    "stranger": ProxyCredential("/C=XX/O=Nobody/CN=Stranger", ("/juno",), "juno"),
}


@pytest.fixture
def app(grid, engine):
    return make_app(grid, engine, x509_validator=ChainByDN(CHAINS))


@pytest.fixture
def http(app):
    return TestClient(app)


def proxy_client(app, chain: str) -> TestClient:
    return TestClient(PresentChain(app, [chain]))


def admin_client(app, http) -> dict:
    """Create an OAuth client for alice through the API, as an administrator would."""
    response = http.post("/api/v1/auth/clients", headers=bearer(full_token(app, "zhangxm", "juno_admin")),
                         json={"owner": "alice", "group": "juno_user", "description": "alice's robot"})
    assert response.status_code == 201, response.text
    return response.json()


def test_secret_hash_is_salted_and_checked():
    stored = hash_secret("s3cret")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert stored != hash_secret("s3cret")
    assert check_secret("s3cret", stored)
    assert not check_secret("s3cret!", stored)
    assert not check_secret("s3cret", "garbage")


def test_client_credentials_grant(app, http):
    created = admin_client(app, http)
    client_id, secret = created["client_id"], created["client_secret"]
    assert "storage.modify:/user/a/alice" in created["scopes"]

    # HTTP Basic
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and 3500 < body["expires_in"] <= 3600
    assert "refresh_token" not in body, "client credentials never get a refresh token (RFC 6749 4.4.3)"
    claims = app.state.token_verifier.verify(body["access_token"])
    assert claims["sub"] == subject_for("juno", "alice") and claims["client_id"] == client_id
    assert claims["dcs.group"] == "juno_user"
    who = http.get("/api/v1/auth/whoami", headers=bearer(body["access_token"])).json()
    assert who["username"] == "alice" and who["group"] == "juno_user"

    # form parameters, narrowed scope, other audience
    response = http.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": "storage.read:/raw compute.read", "audience": "https://se.example.org"})
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["scope"] == "storage.read:/raw compute.read"
    assert claims["aud"] == "https://se.example.org"

    # a scope beyond the client's (alice cannot write /juno/production)
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                "scope": "storage.modify:/production"}, auth=(client_id, secret))
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    assert "storage.modify:/production" in response.json()["error_description"]

    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, "wrong"))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials", "client_id": "nope",
                                                "client_secret": "x"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    response = http.post("/oauth2/token", data={"grant_type": "password", "username": "a", "password": "b"})
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"
    response = http.post("/oauth2/token", data={})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    response = http.post("/oauth2/token", json={"grant_type": "client_credentials"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_client_management_and_deleted_client(app, http):
    admin = bearer(full_token(app, "zhangxm", "juno_admin"))
    created = admin_client(app, http)
    listed = http.get("/api/v1/auth/clients", headers=admin).json()
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0] and listed[0]["owner"] == "alice"
    # a client may not get more than its owner's policy
    response = http.post("/api/v1/auth/clients", headers=admin, json={
        "owner": "alice", "group": "juno_user", "scopes": ["storage.modify:/"]})
    assert response.status_code == 422 and response.json()["code"] == "invalid-scope"
    response = http.post("/api/v1/auth/clients", headers=admin, json={"owner": "alice", "group": "juno_admin"})
    assert response.status_code == 403
    narrow = http.post("/api/v1/auth/clients", headers=admin, json={
        "owner": "boris", "group": "juno_data", "scopes": ["storage.modify:/raw"]}).json()
    assert narrow["scopes"] == ["storage.modify:/raw"]

    assert http.delete(f"/api/v1/auth/clients/{created['client_id']}", headers=admin).status_code == 204
    assert http.delete(f"/api/v1/auth/clients/{created['client_id']}", headers=admin).status_code == 404
    response = http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                         auth=(created["client_id"], created["client_secret"]))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def _login(app, chain: str, **body) -> dict:
    response = proxy_client(app, chain).post("/api/v1/auth/login", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_login_with_proxy_maps_fqans_to_group(app, http):
    tokens = _login(app, "zhang-production")
    assert tokens["group"] == "juno_production" and tokens["username"] == "zhangxm"
    assert tokens["refresh_token"] and tokens["access_token"]
    claims = app.state.token_verifier.verify(tokens["access_token"])
    assert claims["dcs.group"] == "juno_production"
    assert "storage.modify:/production" in claims["scope"].split()
    assert "storage.modify:/" not in claims["scope"].split()
    who = http.get("/api/v1/auth/whoami", headers=bearer(tokens["access_token"])).json()
    assert who["method"] == "token" and who["group"] == "juno_production"
    assert "ProductionManagement" in who["properties"]

    assert _login(app, "zhang-plain")["group"] == "juno_user"
    assert _login(app, "zhang-plain", group="juno_admin")["group"] == "juno_admin"
    assert "storage.modify:/" in _login(app, "zhang-plain", group="juno_admin")["scope"].split()
    narrowed = _login(app, "alice", scope="compute.read storage.read:/raw")
    assert narrowed["scope"] == "compute.read storage.read:/raw"

    response = proxy_client(app, "alice").post("/api/v1/auth/login", json={"group": "juno_admin"})
    assert response.status_code == 403
    response = proxy_client(app, "alice").post("/api/v1/auth/login", json={"scope": "storage.modify:/"})
    assert response.status_code == 422 and response.json()["code"] == "invalid-scope"
    response = proxy_client(app, "stranger").post("/api/v1/auth/login", json={})
    assert response.status_code == 401 and response.json()["code"] == "unknown-user"
    # a token cannot log in again (login is for certificates), and anonymous callers are told to log in
    response = http.post("/api/v1/auth/login", json={}, headers=bearer(tokens["access_token"]))
    assert response.status_code == 403
    assert http.post("/api/v1/auth/login", json={}).status_code == 401


def _refresh(http, token: str, **extra):
    return http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token, **extra})


def test_refresh_rotation_and_reuse_detection(app, http):
    first = _login(app, "alice")
    r1 = first["refresh_token"]
    response = _refresh(http, r1)
    assert response.status_code == 200, response.text
    second = response.json()
    r2 = second["refresh_token"]
    assert r2 != r1 and second["access_token"] != first["access_token"]
    assert second["scope"] == first["scope"]
    assert http.get("/api/v1/auth/whoami", headers=bearer(second["access_token"])).json()["username"] == "alice"
    # narrowing on refresh is fine, widening is not
    assert _refresh(http, r2, scope="storage.modify:/").json()["error"] == "invalid_scope"
    third = _refresh(http, r2, scope="compute.read").json()
    assert third["scope"] == "compute.read"
    r3 = third["refresh_token"]

    # r1 was already used: presenting it again means it leaked -> the whole family is revoked
    response = _refresh(http, r1)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert "reuse" in response.json()["error_description"]
    response = _refresh(http, r3)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert "revoked" in response.json()["error_description"]
    # another login (another family) is unaffected
    assert _refresh(http, _login(app, "alice")["refresh_token"]).status_code == 200
    assert _refresh(http, "made-up").json()["error"] == "invalid_grant"


def test_refresh_tokens_are_stored_hashed_and_expire(app, http, engine):
    from sqlalchemy import select, update

    from junodcs.auth.db import refresh_tokens

    token = _login(app, "alice")["refresh_token"]
    with engine.connect() as conn:
        stored = list(conn.execute(select(refresh_tokens.c.token_hash, refresh_tokens.c.expires_at)))
    assert len(stored) == 1 and token not in stored[0].token_hash and len(stored[0].token_hash) == 64
    remaining = stored[0].expires_at.timestamp() - time.time()
    assert 30 * 86400 - 60 < remaining <= 30 * 86400
    with engine.begin() as conn:
        conn.execute(update(refresh_tokens).values(expires_at=stored[0].expires_at.replace(year=2000)))
    response = _refresh(http, token)
    assert response.status_code == 400 and "expired" in response.json()["error_description"]


def test_revocation(app, http):
    tokens = _login(app, "alice")
    rotated = _refresh(http, tokens["refresh_token"]).json()
    response = http.post("/oauth2/revoke", data={"token": rotated["refresh_token"],
                                                 "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert _refresh(http, rotated["refresh_token"]).json()["error"] == "invalid_grant"
    # unknown tokens are not an error (RFC 7009 2.2); a missing token is
    assert http.post("/oauth2/revoke", data={"token": "whatever"}).status_code == 200
    assert http.post("/oauth2/revoke", data={}).json()["error"] == "invalid_request"
    assert http.post("/oauth2/revoke", data={"token": "x", "token_type_hint": "weird"}).json()["error"] == \
        "unsupported_token_type"


def _exchange(http, subject: str, **extra):
    return http.post("/oauth2/token", data={"grant_type": EXCHANGE, "subject_token": subject,
                                            "subject_token_type": ACCESS, **extra})


def test_token_exchange_narrows_never_widens(app, http):
    subject = _login(app, "alice")["access_token"]
    subject_claims = app.state.token_verifier.verify(subject)

    response = _exchange(http, subject, scope="storage.read:/raw compute.read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS and body["scope"] == "storage.read:/raw compute.read"
    narrowed = app.state.token_verifier.verify(body["access_token"])
    assert narrowed["sub"] == subject_claims["sub"] and narrowed["exp"] <= subject_claims["exp"]
    # a narrowed token can be narrowed further, never widened back
    assert _exchange(http, body["access_token"], scope="storage.read:/raw/2024").status_code == 200
    response = _exchange(http, body["access_token"], scope="storage.read:/")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    for wider in ("storage.modify:/user/b/boris", "storage.create:/", "compute.create storage.stage:/raw"):
        response = _exchange(http, subject, scope=wider)
        assert response.status_code == 400 and response.json()["error"] == "invalid_scope", wider
    # /raw (that is /juno/raw) does not cover /rawdata
    raw_only = _exchange(http, subject, scope="storage.read:/raw").json()["access_token"]
    assert _exchange(http, raw_only, scope="storage.read:/rawdata").json()["error"] == "invalid_scope"

    # another audience is fine, and then this server no longer accepts the token
    response = _exchange(http, subject, scope="storage.read:/raw", audience="https://dcache.example.org:2880")
    other = response.json()["access_token"]
    assert jwt.decode(other, options={"verify_signature": False})["aud"] == "https://dcache.example.org:2880"
    refused = http.get("/api/v1/auth/whoami", headers=bearer(other))
    assert refused.status_code == 401 and refused.json()["code"] == "wrong-audience"

    # the exchanged token never outlives the subject token
    short, _ = app.state.token_issuer.issue_access_token(
        username="alice", group="juno_user", scopes=("compute.read",), lifetime=300)
    exchanged = app.state.token_verifier.verify(_exchange(http, short).json()["access_token"])
    assert exchanged["exp"] <= app.state.token_verifier.verify(short)["exp"]

    assert _exchange(http, "garbage").json()["error"] == "invalid_grant"
    response = http.post("/oauth2/token", data={"grant_type": EXCHANGE, "subject_token": subject,
                                                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token"})
    assert response.json()["error"] == "invalid_request"


def test_valid_token_lacking_property_or_scope_is_403(app, http):
    alice = bearer(full_token(app, "alice"))
    admin_token = full_token(app, "zhangxm", "juno_admin")
    for method, path in (("GET", "/api/v1/auth/clients"), ("POST", "/api/v1/auth/keys/rotate"),
                         ("GET", "/api/v1/auth/registry/users/boris")):
        response = http.request(method, path, headers=alice)
        assert response.status_code == 403, path
        assert response.json()["code"] == "forbidden"
    # the same admin, but with a delegated (narrowed) token, cannot administer
    narrowed = _exchange(http, admin_token, scope="compute.read").json()["access_token"]
    response = http.post("/api/v1/auth/keys/rotate", headers=bearer(narrowed))
    assert response.status_code == 403
    assert http.post("/api/v1/auth/keys/rotate", headers=bearer(admin_token)).status_code == 200
    # zhangxm in his user group is not a ServiceAdministrator
    assert http.get("/api/v1/auth/clients", headers=bearer(full_token(app, "zhangxm"))).status_code == 403
    # a token of a subject the registry does not know: authenticated, but nothing is allowed
    unknown_claims = app.state.token_issuer.access_claims(username="alice", group="juno_user", scopes=())
    unknown_claims["sub"] = "00000000-0000-0000-0000-000000000000"
    unknown = bearer(app.state.token_issuer.sign(unknown_claims))
    assert http.get("/api/v1/auth/whoami", headers=unknown).json()["username"] is None
    assert http.get("/api/v1/auth/registry/groups", headers=unknown).status_code == 403
    assert http.get("/api/v1/config/sites", headers=unknown).status_code == 403
    # anonymous: 401
    assert http.get("/api/v1/auth/registry/groups").status_code == 401


def test_registry_reads(app, http):
    alice = bearer(full_token(app, "alice"))
    groups = http.get("/api/v1/auth/registry/groups", headers=alice).json()
    by_name = {g["name"]: g for g in groups}
    assert by_name["juno_production"]["voms_fqan"] == "/juno/Role=production"
    assert "ProductionManagement" in by_name["juno_production"]["properties"]
    assert by_name["juno_user"]["default"] is True
    mine = http.get("/api/v1/auth/registry/users", headers=alice).json()
    assert [u["username"] for u in mine] == ["alice"]
    assert http.get("/api/v1/auth/registry/users/alice", headers=alice).json()["dn"] == ALICE_DN
    admin = bearer(full_token(app, "zhangxm", "juno_admin"))
    everyone = http.get("/api/v1/auth/registry/users", headers=admin).json()
    assert {u["username"] for u in everyone} == set(app.state.grid.registry.users)
    assert http.get("/api/v1/auth/registry/users/nobody", headers=admin).status_code == 403


def test_every_route_declares_a_policy(app):
    from fastapi import APIRouter

    from junodcs.auth.policies import declared_policies
    from junodcs.server.app import check_every_route_has_a_policy, iter_api_routes

    routes = list(iter_api_routes(app.routes))
    paths = {r.path for r in routes}
    assert {"/oauth2/token", "/oauth2/revoke", "/oauth2/jwks", "/.well-known/openid-configuration",
            "/api/v1/auth/login", "/api/v1/auth/keys/rotate", "/api/v1/auth/clients"} <= paths
    for route in routes:
        assert declared_policies(route.endpoint, route.dependant), route.path
    # and the start-up check really sees routes of included routers
    naked = APIRouter(prefix="/api/v1/naked")
    naked.add_api_route("/hole", lambda: {"open": True})
    app.include_router(naked)
    with pytest.raises(RuntimeError, match="/api/v1/naked/hole"):
        check_every_route_has_a_policy(app)


def test_service_rules_without_http(grid, engine, app):
    """The logic layer alone (what a second process or an agent would call)."""
    service = TokenService(engine, app.state.token_issuer, app.state.token_verifier, app.state.registry)
    row, secret = service.create_client(owner="boris", group="juno_data", scopes=None)
    assert "storage.modify:/" in row.scopes
    result = service.client_credentials(row.client_id, secret, "storage.modify:/raw")
    assert result.scope == "storage.modify:/raw"
    assert [c.client_id for c in service.list_clients(owner="boris")] == [row.client_id]
    assert service.list_clients(owner="alice") == []
