"""`dcs cond` against a real server on a loopback port (logged in as a conditions manager), including
`dcs cond get --frontier` through the server's own Frontier endpoint, and the encoder/client settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authutil import bound_socket, make_app, serve
from junodcs.auth.logic import TokenService
from junodcs.conditions import frontier
from junodcs.conditions.client import parse_connection_string, settings_from_env, site_proxies
from test_catalog_cli import dcs, fails, ok_json


@pytest.fixture
def manager(grid, sqlite_engine, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    sock, url = bound_socket()
    app = make_app(grid, sqlite_engine, url=url)
    with serve(app, sock):
        s = app.state
        row, secret = TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry).create_client(
            owner="boris", group="juno_conditions", scopes=None)
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
        monkeypatch.setenv("DCS_SERVER_URL", url)
        code, _, err = dcs("login", "--client-id", row.client_id, "--client-secret-file", str(secret_file))
        assert code == 0, err
        yield url


def test_cond_commands(manager: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = tmp_path / "v1.bin", tmp_path / "v2.bin"
    v1.write_bytes(b"\x00gain-1" * 100)
    v2.write_bytes(b"\x00gain-2" * 100)
    code, h1, err = dcs("cond", "payload", "put", str(v1), "--type", "Calib.PMT")
    assert code == 0, err
    h1 = h1.strip()
    h2 = ok_json("cond", "payload", "put", str(v2), "--type", "Calib.PMT")["hash"]
    assert dcs("cond", "tag", "create", "PMT-v1", "--type", "Calib.PMT")[0] == 0
    assert fails("cond", "tag", "create", "PMT-v1", "--type", "Calib.PMT") == "tag-exists"
    assert dcs("cond", "iov", "add", "PMT-v1", "--since", "1", "--payload", h1)[0] == 0
    assert dcs("cond", "iov", "add", "PMT-v1", "--since", "50", "--payload", h2)[0] == 0
    assert [i["since"] for i in ok_json("cond", "iov", "ls", "PMT-v1")] == [1, 50]
    assert ok_json("cond", "tag", "ls")[0]["iovs"] == 2
    assert dcs("cond", "gt", "create", "GT-1")[0] == 0
    assert dcs("cond", "gt", "add", "GT-1", "PMT-v1")[0] == 0
    assert ok_json("cond", "gt", "show", "GT-1")["tags"] == {"Calib.PMT": "PMT-v1"}
    assert [g["name"] for g in ok_json("cond", "gt", "ls")] == ["GT-1"]
    got = ok_json("cond", "get", "--gt", "GT-1", "--type", "Calib.PMT", "--run", "49")
    assert got["payload_hash"] == h1 and got["until"] == 50
    out = tmp_path / "out.bin"
    assert dcs("cond", "get", "--gt", "GT-1", "--type", "Calib.PMT", "--run", "60", "-o", str(out))[0] == 0
    assert out.read_bytes() == v2.read_bytes()
    # the same through Frontier (the server's /Frontier; FRONTIER_SERVER as jobs set it)
    monkeypatch.setenv("FRONTIER_SERVER", manager + "/Frontier")
    via = ok_json("cond", "get", "--gt", "GT-1", "--type", "Calib.PMT", "--run", "60", "--frontier", "-o", str(out))
    assert via["payload_hash"] == h2 and out.read_bytes() == v2.read_bytes()
    assert fails("cond", "gt", "lock", "GT-1") == "open-tags"
    assert dcs("cond", "tag", "lock", "PMT-v1")[0] == 0
    assert fails("cond", "iov", "add", "PMT-v1", "--since", "70", "--payload", h1) == "locked"
    assert dcs("cond", "gt", "lock", "GT-1")[1].strip() == "global tag GT-1 locked"
    assert fails("cond", "get", "--gt", "NOPE", "--type", "Calib.PMT", "--run", "1") == "global-tag-not-found"
    assert ok_json("cond", "payload", "get", h1)["size"] == 700
    code, out_text, _ = dcs("cond", "payload", "get", h1, "-o", str(out))
    assert code == 0 and out.read_bytes() == v1.read_bytes()


def test_encoder_and_settings(grid) -> None:  # type: ignore[no-untyped-def]
    # encoding as every Frontier client does it: zlib level 9 ("eNo" header), base64, .-_ substitution
    p1 = frontier.encode_query("select 1 from dual")
    assert p1 == "eNorTs1JTS5RMFRIK8rPVUgpTcwBAD0rBmw_"
    assert frontier.decode_query(p1) == "select 1 from dual"
    path = frontier.request_path(["SELECT name FROM cond_tags"], ttl="short")
    assert path.startswith("type=frontier_request:1:DEFAULT&encoding=BLOBzip5&p1=eNo") and path.endswith("&ttl=short")
    servers, proxies = parse_connection_string("(serverurl=http://a:8000/F/Frontier)(proxyurl=http://s1:3128)"
                                               "(proxyurl=http://s2:3128)")
    assert servers == ["http://a:8000/F/Frontier"] and proxies == ["http://s1:3128", "http://s2:3128"]
    env = {"FRONTIER_SERVER": "http://a/Frontier", "FRONTIER_SERVER2": "http://b/Frontier",
           "FRONTIER_PROXY1": "http://p1:3128"}
    assert settings_from_env(env) == (["http://a/Frontier", "http://b/Frontier"], ["http://p1:3128"])
    site = grid.sites[0]
    with_urls = grid.model_copy(update={"sites": (site.model_copy(update={"squids": tuple(
        s.model_copy(update={"url": "http://127.0.0.1:3128"}) for s in site.squids)}),) + grid.sites[1:]})
    assert site_proxies(with_urls, site.name) == ["http://127.0.0.1:3128"]
    assert settings_from_env({"FRONTIER_SERVER": "http://a/Frontier", "DCS_SITE": site.name}, grid=with_urls)[1] == [
        "http://127.0.0.1:3128"]
    assert json.dumps(settings_from_env({}, grid=with_urls)) == "[[], []]"
