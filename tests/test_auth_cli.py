"""Client side against a real server on loopback: dcs login/whoami/token/logout, token store, auto-refresh,
bearer-token discovery files."""

from __future__ import annotations

import json
import os
import stat
import time

import jwt
import pytest
from typer.testing import CliRunner

from authutil import bound_socket, full_token, make_app, serve
from junodcs.auth.client import (
    REFRESH_MARGIN,
    bearer_token_path,
    current_access_token,
    load_store,
    save_session,
    save_store,
    token_store_path,
)
from junodcs.auth.identity import AuthMethod, Identity
from junodcs.auth.logic import TokenService


@pytest.fixture
def server(grid, sqlite_engine):
    sock, url = bound_socket()
    app = make_app(grid, sqlite_engine, url=url)
    with serve(app, sock):
        yield app, url


def dcs(*args: str) -> tuple[int, str, str]:
    from junodcs.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _service(app) -> TokenService:
    s = app.state
    return TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_login_with_client_credentials_whoami_token_logout(server, tmp_path, monkeypatch):
    app, url = server
    monkeypatch.setenv("DCS_SERVER_URL", url)
    row, secret = _service(app).create_client(owner="boris", group="juno_data", scopes=None)
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")

    code, out, err = dcs("login", "--client-id", row.client_id, "--client-secret-file", str(secret_file))
    assert code == 0, err
    assert f"logged in to {url} as {row.client_id}" in out
    store_path = token_store_path()
    assert _mode(store_path) == 0o600
    session = load_store()["servers"][url]
    assert secret not in store_path.read_text(), "the client secret itself is never stored"
    bt = bearer_token_path()
    assert bt == tmp_path / "runtime" / f"bt_u{os.getuid()}"
    assert bt.read_text().strip() == session["access_token"] and _mode(bt) == 0o600

    code, out, err = dcs("whoami", "--json")
    assert code == 0, err
    who = json.loads(out)
    assert who["username"] == "boris" and who["group"] == "juno_data" and who["method"] == "token"

    code, out, err = dcs("token")
    assert code == 0 and out.strip() == session["access_token"]
    code, out, err = dcs("token", "--scope", "storage.read:/raw", "--audience", "https://se.example.org")
    assert code == 0, err
    narrowed = jwt.decode(out.strip(), options={"verify_signature": False})
    assert narrowed["scope"] == "storage.read:/raw" and narrowed["aud"] == "https://se.example.org"
    code, out, err = dcs("token", "--scope", "storage.read:/raw", "--decode")
    assert code == 0, err
    decoded = json.loads(out)
    assert decoded["header"]["alg"] == "ES256" and decoded["header"]["kid"]
    assert decoded["claims"]["scope"] == "storage.read:/raw" and decoded["claims"]["wlcg.ver"] == "1.0"
    code, out, err = dcs("token", "--scope", "storage.read")  # a storage scope without a path
    assert code == 1 and err.startswith("error[invalid_scope]:")

    # a robot session renews itself with a new client-credentials grant when near expiry
    session["expires_at"] = time.time() + REFRESH_MARGIN - 10
    save_store({"servers": {url: session}})
    renewed = current_access_token(url)
    assert renewed != session["access_token"] and app.state.token_verifier.verify(renewed)
    assert bt.read_text().strip() == renewed

    code, out, err = dcs("logout")
    assert code == 0 and "logged out" in out
    assert url not in load_store()["servers"] and not bt.exists()
    assert current_access_token(url) is None
    code, out, err = dcs("whoami")
    assert code == 1 and err.startswith("error[unauthenticated]:")


def test_refresh_grant_rotates_stored_tokens(server, monkeypatch, tmp_path):
    app, url = server
    bt_file = tmp_path / "explicit-bt"
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(bt_file))
    identity = Identity(method=AuthMethod.X509, vo="juno", username="alice", group="juno_user",
                        dn="/C=IT/O=JUNO/OU=CNAF/CN=Alice Rossi")
    login = _service(app).login(identity)
    metadata = {"token_endpoint": f"{url}/oauth2/token", "revocation_endpoint": f"{url}/oauth2/revoke",
                "issuer": url}
    from junodcs.auth.client import new_session

    save_session(url, new_session(url, login.to_json(), metadata, username="alice", group="juno_user"))
    assert bt_file.read_text().strip() == login.access_token
    # plenty of time left: no refresh
    assert current_access_token(url) == login.access_token

    store = load_store()
    store["servers"][url]["expires_at"] = time.time() + 30
    save_store(store)
    fresh = current_access_token(url)
    assert fresh != login.access_token
    stored = load_store()["servers"][url]
    assert stored["refresh_token"] != login.refresh_token, "refresh tokens rotate"
    assert bt_file.read_text().strip() == fresh
    assert app.state.token_verifier.verify(fresh)["sub"] == app.state.token_verifier.verify(login.access_token)["sub"]

    # the old refresh token leaked and is replayed: the session is revoked, the client says so clearly
    import httpx

    replay = httpx.post(f"{url}/oauth2/token", data={"grant_type": "refresh_token",
                                                     "refresh_token": login.refresh_token})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    store = load_store()
    store["servers"][url]["expires_at"] = time.time() + 30
    save_store(store)
    from junodcs.core.errors import Unauthenticated

    with pytest.raises(Unauthenticated) as info:
        current_access_token(url)
    assert info.value.code == "login-expired"


def test_admin_commands(server, monkeypatch):
    app, url = server
    monkeypatch.setenv("DCS_SERVER_URL", url)
    admin_token = full_token(app, "zhangxm", "juno_admin")
    monkeypatch.setenv("BEARER_TOKEN", admin_token)  # a job-style token, found by bearer-token discovery
    code, out, err = dcs("auth", "client", "create", "--owner", "alice", "--group", "juno_user",
                         "--scope", "compute.read", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["scopes"] == ["compute.read"] and created["client_secret"]
    code, out, err = dcs("auth", "client", "ls", "--json")
    assert [c["client_id"] for c in json.loads(out)] == [created["client_id"]]
    code, out, err = dcs("auth", "client", "rm", created["client_id"])
    assert code == 0 and created["client_id"] in out
    code, out, err = dcs("auth", "client", "rm", created["client_id"])
    assert code == 1 and err.startswith("error[unknown-client]:")
    code, out, err = dcs("auth", "keys", "rotate", "--json")
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["kid"] in rotated["published"] and len(rotated["published"]) == 2
    code, out, err = dcs("auth", "groups", "--json")
    assert "juno_production" in {g["name"] for g in json.loads(out)}
    code, out, err = dcs("auth", "users", "--json")
    assert {u["username"] for u in json.loads(out)} == set(app.state.grid.registry.users)

    monkeypatch.setenv("BEARER_TOKEN", full_token(app, "alice"))
    code, out, err = dcs("auth", "keys", "rotate")
    assert code == 1 and err.startswith("error[forbidden]:")


def test_login_without_proxy_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("DCS_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "missing-proxy"))
    code, out, err = dcs("login")
    assert code == 1 and err.startswith("error[no-proxy]:") and "missing-proxy" in err
    code, out, err = dcs("logout")
    assert code == 0 and "not logged in" in out


def test_dcs_login_with_a_real_voms_proxy_over_tls(grid, dcs_home, tmp_path, monkeypatch):
    """End to end with the X509 side: project CA, user certificate, VOMS proxy, TLS server with client
    authentication, `dcs login` (proxy) -> tokens -> `dcs whoami` with the token."""
    import threading

    import uvicorn

    from junodcs.auth.voms import VOMSServer
    from junodcs.auth.x509 import CertificateAuthority
    from junodcs.core.client import ClientConfig
    from junodcs.db.engine import create_engine
    from junodcs.server.app import ServerOptions, create_app
    from junodcs.server.tls import apply_tls, default_tls_files

    for args in (("ca", "init"), ("cert", "issue", "--user", "zhangxm", "--out", str(dcs_home / "zhangxm"))):
        code, out, err = dcs(*args)
        assert code == 0, out + err
    ca = CertificateAuthority.load()
    VOMSServer.ensure(ca, grid)
    proxy = tmp_path / "x509up"
    code, out, err = dcs("proxy", "init", "--voms", "juno:/juno/Role=production",
                         "--cert", str(dcs_home / "zhangxm" / "usercert.pem"),
                         "--key", str(dcs_home / "zhangxm" / "userkey.pem"), "--out", str(proxy))
    assert code == 0, out + err

    tls = default_tls_files(host="127.0.0.1")
    sock, plain_url = bound_socket()
    url = plain_url.replace("http://", "https://")
    engine = create_engine(f"sqlite:///{tmp_path / 'server.db'}")
    app = create_app(grid, engine, ServerOptions(public_url=url, tls=True, extra_state={"tls_files": tls}))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    apply_tls(config, tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        ClientConfig(server_url=url, ca_file=str(ca.cert_path)).save()
        monkeypatch.setenv("X509_USER_PROXY", str(proxy))
        code, out, err = dcs("login")
        assert code == 0, out + err
        assert "as zhangxm (group juno_production)" in out
        session = load_store()["servers"][url]
        assert session["refresh_token"] and session["group"] == "juno_production"
        code, out, err = dcs("whoami", "--json")
        assert code == 0, err
        who = json.loads(out)
        assert who["method"] == "token" and who["group"] == "juno_production" and who["issuer"] == url
        code, out, err = dcs("login", "--group", "juno_admin")
        assert code == 0 and "group juno_admin" in out, out + err
        code, out, err = dcs("login", "--group", "juno_data")
        assert code == 1 and err.startswith("error[forbidden]:")
        code, out, err = dcs("logout")
        assert code == 0
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.dispose()
