"""Conditions REST API and Frontier endpoint in-process (TestClient) on SQLite, PostgreSQL and MariaDB:
model and resolution rules, access control, the exact Frontier envelope, cache headers, 304, crafted p1."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from authutil import bearer, full_token
from junodcs.conditions import frontier
from junodcs.conditions.router import FrontierSettings
from junodcs.core.gridconfig import GridConfig
from junodcs.server.app import ServerOptions, create_app

URL = "http://testserver"
API = "/api/v1/conditions"


@pytest.fixture
def app(grid: GridConfig, engine: Engine) -> FastAPI:
    app = create_app(grid, engine, ServerOptions(public_url=URL, systems=("auth", "conditions")))
    app.state.frontier_settings = FrontierSettings(short_seconds=2, validate_seconds=0)
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=URL) as test_client:
        yield test_client


@pytest.fixture
def who(app: FastAPI) -> dict[str, dict[str, str]]:
    return {"MANAGER": bearer(full_token(app, "boris", "juno_conditions")),
            "USER": bearer(full_token(app, "alice", "juno_user"))}


def put(client: TestClient, headers: dict[str, str], ptype: str, data: bytes) -> str:
    response = client.post(f"{API}/payloads", params={"type": ptype}, content=data, headers=headers)
    assert response.status_code in (200, 201), response.text
    assert response.json()["hash"] == hashlib.sha256(data).hexdigest()
    return response.json()["hash"]


def frontier_get(client: TestClient, *sqls: str, ttl: str | None = None, headers: dict[str, str] | None = None,
                 encoding: str = "BLOBzip5"):  # type: ignore[no-untyped-def]
    return client.get("/Frontier?" + frontier.request_path(sqls, ttl=ttl, encoding=encoding), headers=headers or {})


def test_model_resolution_and_access(client: TestClient, who: dict[str, dict[str, str]]) -> None:
    M, U = who["MANAGER"], who["USER"]
    # writes need ConditionsManager; reads any member; anonymous nothing on the REST API
    assert client.post(f"{API}/payloads", params={"type": "Calib.PMT"}, content=b"x", headers=U).status_code == 403
    assert client.get(f"{API}/tags").status_code == 401
    h1, h2, h3 = (put(client, M, "Calib.PMT", b"gain-v%d" % i) for i in (1, 2, 3))
    assert put(client, M, "Calib.PMT", b"gain-v1") == h1  # idempotent
    assert client.post(f"{API}/tags", json={"name": "PMT-v1", "payload_type": "Calib.PMT"}, headers=U).status_code == 403
    assert client.post(f"{API}/tags", json={"name": "PMT-v1", "payload_type": "Calib.PMT"}, headers=M).status_code == 201
    assert client.post(f"{API}/tags", json={"name": "PMT-v1", "payload_type": "Calib.PMT"},
                       headers=M).json()["code"] == "tag-exists"
    added = client.post(f"{API}/tags/PMT-v1/iovs", json={"iovs": [{"since": 1, "payload_hash": h1},
                                                                  {"since": 100, "payload_hash": h2}]}, headers=M)
    assert added.json() == {"tag": "PMT-v1", "added": 2}
    # the later insertion for since=100 wins
    client.post(f"{API}/tags/PMT-v1/iovs", json={"since": 100, "payload_hash": h3}, headers=M)
    # a payload of another type cannot go into the tag; nor an unknown one
    other = put(client, M, "Geometry", b"geo")
    assert client.post(f"{API}/tags/PMT-v1/iovs", json={"since": 5, "payload_hash": other},
                       headers=M).json()["code"] == "type-mismatch"
    assert client.post(f"{API}/tags/PMT-v1/iovs", json={"since": 5, "payload_hash": "0" * 64},
                       headers=M).json()["code"] == "payload-not-found"
    iovs = client.get(f"{API}/tags/PMT-v1/iovs", headers=U).json()
    assert [(i["since"], i["until"]) for i in iovs] == [(1, 100), (100, None), (100, None)]
    assert [i["payload_hash"] for i in client.get(f"{API}/tags/PMT-v1/iovs?effective=true", headers=U).json()] == [h1, h3]

    assert client.post(f"{API}/globaltags", json={"name": "GT-2025"}, headers=M).status_code == 201
    assert client.post(f"{API}/globaltags", json={"name": "payloads"}, headers=M).status_code == 422
    gt = client.post(f"{API}/globaltags/GT-2025/tags", json={"tag": "PMT-v1"}, headers=M).json()
    assert gt["tags"] == {"Calib.PMT": "PMT-v1"}
    r = client.get(f"{API}/GT-2025/Calib.PMT", params={"run": 99}, headers=U)
    assert r.json()["payload_hash"] == h1 and (r.json()["since"], r.json()["until"]) == (1, 100)
    assert r.headers["cache-control"] == "max-age=2" and not r.json()["cacheable"]
    r = client.get(f"{API}/GT-2025/Calib.PMT", params={"run": 100}, headers=U).json()
    assert r["payload_hash"] == h3 and r["until"] is None
    assert client.get(f"{API}/GT-2025/Calib.PMT", params={"run": 0}, headers=U).json()["code"] == "no-iov"
    assert client.get(f"{API}/GT-2025/Geometry", params={"run": 5}, headers=U).json()["code"] == "type-not-in-global-tag"
    # payload by hash: bytes, cacheable forever
    p = client.get(f"{API}/payloads/{h3}", headers=U)
    assert p.content == b"gain-v3" and "immutable" in p.headers["cache-control"]
    # locking: a global tag with open tags cannot be locked; locked tags take no IOVs
    assert client.post(f"{API}/globaltags/GT-2025/status", json={"status": "locked"},
                       headers=M).json()["code"] == "open-tags"
    assert client.post(f"{API}/tags/PMT-v1/lock", headers=M).json()["locked"] is True
    assert client.post(f"{API}/tags/PMT-v1/iovs", json={"since": 7, "payload_hash": h1},
                       headers=M).json()["code"] == "locked"
    assert client.post(f"{API}/globaltags/GT-2025/status", json={"status": "locked"}, headers=M).json()["status"] == "locked"
    assert client.post(f"{API}/globaltags/GT-2025/tags", json={"tag": "PMT-v1"}, headers=M).json()["code"] == "locked"
    r = client.get(f"{API}/GT-2025/Calib.PMT", params={"run": 100}, headers=U)
    assert r.json()["cacheable"] and r.headers["cache-control"] == f"max-age={7 * 86400}"
    assert client.post(f"{API}/globaltags/GT-2025/status", json={"status": "open"}, headers=M).json()["code"] == "locked"
    client.post(f"{API}/globaltags/GT-2025/status", json={"status": "invalid"}, headers=M)
    assert client.get(f"{API}/GT-2025/Calib.PMT", params={"run": 100}, headers=U).json()["code"] == "global-tag-invalid"


def test_frontier_protocol(client: TestClient, who: dict[str, dict[str, str]]) -> None:
    M = who["MANAGER"]
    blob = bytes(range(256)) * 400  # 100 KB, binary
    h = put(client, M, "Calib.PMT", blob)
    # anonymous GET, several payloads in one transaction, typed stream, BLOB column as bytes
    r = frontier_get(client, f"SELECT hash, payload_type, size, data FROM cond_payloads WHERE hash = '{h}'",
                     "SELECT name FROM cond_tags", ttl="forever")
    assert r.status_code == 200
    body = r.content
    assert body.startswith(b'<?xml version="1.0" encoding="US-ASCII"?>\n<!DOCTYPE frontier SYSTEM '
                           b'"http://frontier.fnal.gov/frontier.dtd">\n<frontier version="')
    assert b'<transaction payloads="2">' in body and b'encoding="BLOBzip5"' in body
    assert r.headers["cache-control"] == f"max-age={365 * 86400}"
    first, second = frontier.parse_response(body, expected=2)
    assert first.header == [("hash", "VARCHAR2"), ("payload_type", "VARCHAR2"), ("size", "NUMBER"), ("data", "BLOB")]
    assert first.rows == [[h.encode(), b"Calib.PMT", str(len(blob)).encode(), blob]] and first.records == 1
    assert second.records == 0
    # md5 is that of the base64-decoded (compressed) bytes; full_size the uncompressed stream
    data = body.split(b"<data>")[1].split(b"</data>")[0]
    raw = base64.b64decode(b"".join(data.split()))
    quality = body.split(b"<quality ")[1].split(b"/>")[0].decode()
    assert f'md5="{hashlib.md5(raw).hexdigest()}"' in quality and f'full_size="{len(zlib.decompress(raw))}"' in quality
    # BLOB (uncompressed) and path-info form, bind variables
    r = client.get("/Frontier/" + frontier.request_path(
        ["SELECT hash FROM cond_payloads WHERE hash = ? AND size > ?:%s:5" % h], encoding="BLOB"))
    (only,) = frontier.parse_response(r.content)
    assert only.encoding == "BLOB" and only.rows == [[h.encode()]]
    assert r.headers["cache-control"] == f"max-age={7 * 86400}"  # long by default
    # Last-Modified and 304 on If-Modified-Since; a change in the table is newer
    time.sleep(1.0)  # no Last-Modified for tables changed in the running second
    r = frontier_get(client, "SELECT name FROM cond_tags", ttl="short")
    assert r.headers["cache-control"] == "max-age=2"
    lm = r.headers["last-modified"]
    assert frontier_get(client, "SELECT name FROM cond_tags", ttl="short", headers={"If-Modified-Since": lm}).status_code == 304
    client.post(f"{API}/tags", json={"name": "T2", "payload_type": "X"}, headers=M)
    assert "last-modified" not in frontier_get(client, "SELECT name FROM cond_tags").headers
    r = frontier_get(client, "SELECT name FROM cond_tags", ttl="short", headers={"If-Modified-Since": lm})
    assert r.status_code == 200 and frontier.parse_response(r.content)[0].rows == [[b"T2"]]
    # payload queries do not depend on the tags table
    assert frontier_get(client, "SELECT hash FROM cond_payloads", headers={
        "If-Modified-Since": formatdate(time.time() + 5, usegmt=True)}).status_code == 304


CRAFTED = {
    "bad base64": "p1=!!!notbase64",
    "bad zlib": "p1=" + base64.b64encode(b"not zlib at all").decode().replace("=", "_"),
    "DML": "p1=" + frontier.encode_query("DELETE FROM cond_tags"),
    "update": "p1=" + frontier.encode_query("update cond_tags set locked=1"),
    "other table": "p1=" + frontier.encode_query("SELECT * FROM auth_users"),
    "other column": "p1=" + frontier.encode_query("SELECT password FROM cond_tags"),
    "subquery": "p1=" + frontier.encode_query("SELECT name FROM cond_tags WHERE name IN (SELECT username FROM auth_users)"),
    "union": "p1=" + frontier.encode_query("SELECT name FROM cond_tags UNION SELECT x FROM y"),
    "two statements": "p1=" + frontier.encode_query("SELECT name FROM cond_tags; SELECT 1"),
    "comment": "p1=" + frontier.encode_query("SELECT name FROM cond_tags -- x"),
    "huge": "p1=" + "A" * 40000,
    "zip bomb": "p1=" + base64.b64encode(zlib.compress(b"SELECT " + b" " * 10_000_000, 9)).decode().replace(
        "+", ".").replace("/", "-").replace("=", "_"),
    "bad number": "p1=" + frontier.encode_query("SELECT name FROM cond_iovs WHERE since = 'x'"),
    "missing bind": "p1=" + frontier.encode_query("SELECT tag_name FROM cond_iovs WHERE since = ?"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_p1_gets_error_payload(client: TestClient, name: str, database_url: str) -> None:
    if name not in ("DML", "other table", "huge") and not database_url.startswith("sqlite"):
        pytest.skip("protocol-only cases: one database is enough")
    r = client.get(f"/Frontier?type=frontier_request:1:DEFAULT&encoding=BLOBzip5&{CRAFTED[name]}")
    assert r.status_code == 200
    (result,) = frontier.parse_response(r.content)
    assert result.error == 1 and result.message.startswith("junodcs-frontier: ")
    assert r.headers["last-modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert r.headers["cache-control"] == "max-age=2"
    assert b"auth_" not in r.content.split(b"message=")[1] or name in ("other table", "subquery")


def test_frontier_bad_requests_and_write_methods(client: TestClient) -> None:
    for query in ("", "type=other:1&p1=x", "type=frontier_request:1:DEFAULT&encoding=GZIP&p1=x", "meta=1",
                  "type=frontier_request:1:DEFAULT&encoding=BLOB&p1=x&sec=sig"):
        r = client.get("/Frontier?" + query)
        assert r.status_code == 200 and all(p.error for p in frontier.parse_response(r.content))
    assert client.post("/Frontier?" + frontier.request_path(["SELECT name FROM cond_tags"])).status_code == 405


def test_keepalives_during_slow_query(app: FastAPI, client: TestClient, database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("protocol behaviour: one database is enough")
    from junodcs.conditions.router import FrontierService

    service = FrontierService(app.state.engine, FrontierSettings(keepalive_seconds=0.1, validate_seconds=0))
    slow = service.execute

    def execute(statement):  # type: ignore[no-untyped-def]
        time.sleep(0.45)
        return slow(statement)

    service.execute = execute  # type: ignore[method-assign]
    app.state.frontier = service
    r = frontier_get(client, "SELECT name FROM cond_tags", "SELECT hash FROM cond_payloads")
    assert r.content.count(frontier.KEEPALIVE) >= 2
    results = frontier.parse_response(r.content, expected=2)
    assert [x.error for x in results] == [0, 0]


def test_crafted_values_never_widen_a_query(client: TestClient, who: dict[str, dict[str, str]]) -> None:
    """Values are bound, never spliced into SQL: quote tricks in literals and bind values match nothing;
    a crafted payload next to a good one in the same transaction spoils only itself."""
    M = who["MANAGER"]
    for name in ("PMT-v1", "Geo-v1"):
        assert client.post(f"{API}/tags", json={"name": name, "payload_type": "Calib.PMT"}, headers=M).status_code == 201
    injections = [
        "SELECT name FROM cond_tags WHERE name = ?:x' OR '1'='1",
        "SELECT name FROM cond_tags WHERE name = 'x'' OR ''1''=''1'",
        "SELECT name FROM cond_tags WHERE name IN (?,?):x') OR ('1'='1:y",
        "SELECT name FROM cond_tags WHERE name = ?:PMT-v1\\' OR 1=1 -- ",
    ]
    r = frontier_get(client, *injections)
    assert r.status_code == 200
    assert [(x.error, x.rows) for x in frontier.parse_response(r.content, expected=len(injections))] == [
        (0, [])] * len(injections)
    r = frontier_get(client, "SELECT name FROM cond_tags ORDER BY name", "DELETE FROM cond_tags",
                     "SELECT name FROM cond_tags WHERE name = ?:PMT-v1:extra")
    good, dml, extra = frontier.parse_response(r.content, expected=3)
    assert good.error == 0 and good.rows == [[b"Geo-v1"], [b"PMT-v1"]]
    assert dml.error == 1 and "not allowed" in (dml.message or "") and not dml.rows
    assert extra.error == 1 and "bind values" in (extra.message or "")
    # an error anywhere makes the whole answer short-lived and never valid for revalidation
    assert r.headers["last-modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    # the refused statement changed nothing
    assert [t["name"] for t in client.get(f"{API}/tags", headers=M).json()] == ["Geo-v1", "PMT-v1"]
    too_many = "&".join(["type=frontier_request:1:DEFAULT&encoding=BLOB&p1=" + frontier.encode_query(
        "SELECT name FROM cond_tags")] * (frontier.MAX_PAYLOADS + 1))
    r = client.get("/Frontier?" + too_many)
    assert r.status_code == 200
    assert all(x.error and "payloads" in (x.message or "") for x in frontier.parse_response(r.content))
