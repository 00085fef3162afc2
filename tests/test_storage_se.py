"""The SE's WebDAV protocol against a real server on a free loopback port."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import zlib
from pathlib import Path

import httpx
import pytest
from test_storage_support import LocalIssuer, issuer, leftovers, make_se, se, write_file  # noqa: F401

from junodcs.storage.server.run import BackgroundSE
from junodcs.storage.server.store import XATTR


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@pytest.fixture
def admin(se: BackgroundSE, issuer: LocalIssuer) -> httpx.Client:
    token = issuer.token("storage.read:/ storage.modify:/")
    with httpx.Client(base_url=se.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def raw_request(se: BackgroundSE, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, bytes]:
    """Send the request target exactly as given (no client-side normalisation of `..` or `%2F`)."""
    connection = http.client.HTTPConnection("127.0.0.1", se.port, timeout=10)
    connection.putrequest(method, target, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def test_put_get_head_range_digest(se: BackgroundSE, admin: httpx.Client) -> None:
    data = os.urandom(3 << 20) + b"\x00"
    r = admin.put("/juno/raw/run1/f.bin", content=data, headers={"Digest": f"adler32={adler(data)}"})
    assert r.status_code == 201
    assert r.headers["digest"] == f"adler32={adler(data)}"
    assert admin.put("/juno/raw/run1/f.bin", content=data).status_code == 204  # overwrite
    r = admin.get("/juno/raw/run1/f.bin", headers={"Want-Digest": "adler32"})
    assert r.status_code == 200 and r.content == data and r.headers["digest"] == f"adler32={adler(data)}"
    r = admin.get("/juno/raw/run1/f.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = admin.head("/juno/raw/run1/f.bin", headers={"Want-Digest": "md5;q=0.5, adler32"})
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)
    assert r.headers["digest"] == f"adler32={adler(data)}"
    r = admin.head("/juno/raw/run1/f.bin", headers={"Want-Digest": "md5"})
    assert r.headers["digest"] == "md5=" + base64.b64encode(hashlib.md5(data).digest()).decode()
    assert admin.get("/juno/raw/run1/missing").status_code == 404


@pytest.mark.parametrize("inline", [True, False], ids=["inline-writes", "threaded-writes"])
def test_upload_write_paths_store_exact_bytes(tmp_path: Path, issuer: LocalIssuer, inline: bool) -> None:
    """Both write paths (on the event loop, or batches in a worker thread) store the bytes exactly, with
    their checksum, whatever the piece sizes the socket delivers; a wrong Digest still keeps nothing."""
    data = os.urandom((5 << 20) + 12345)
    token = issuer.token("storage.modify:/")
    with make_se(tmp_path / "se", issuer, inline_writes=inline, write_block=100_000, io_block=300_000) as server, \
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        pieces = (data[i:i + 77_777] for i in range(0, len(data), 77_777))
        r = client.put("/juno/w/f.bin", content=pieces,
                       headers={"Content-Length": str(len(data)), "Digest": f"adler32={adler(data)}"})
        assert r.status_code == 201 and r.headers["digest"] == f"adler32={adler(data)}"
        assert (server.config.root / "juno/w/f.bin").read_bytes() == data
        r = client.put("/juno/w/g.bin", content=data, headers={"Digest": "adler32=00000001"})
        assert r.status_code == 400 and not (server.config.root / "juno/w/g.bin").exists()
        assert leftovers(server.config.root) == []


def test_checksum_stored_with_file_not_recomputed(se: BackgroundSE, admin: httpx.Client) -> None:
    data = b"stored checksum"
    admin.put("/juno/c/f", content=data)
    local = se.config.root / "juno/c/f"
    meta = json.loads(os.getxattr(local, XATTR))
    assert meta["adler32"] == adler(data) and meta["size"] == len(data)
    meta["adler32"] = "deadbeef"  # a recomputation would notice; a stored value is answered as is
    os.setxattr(local, XATTR, json.dumps(meta).encode())
    assert admin.head("/juno/c/f", headers={"Want-Digest": "adler32"}).headers["digest"] == "adler32=deadbeef"
    # a file changed behind the SE's back (size differs) is recomputed once and stored again
    local.write_bytes(b"changed behind the SE's back")
    assert admin.head("/juno/c/f", headers={"Want-Digest": "adler32"}).headers["digest"] == \
        f"adler32={adler(b'changed behind the SE' + chr(39).encode() + b's back')}"


def test_put_verifies_client_checksum_and_leaves_nothing(se: BackgroundSE, admin: httpx.Client) -> None:
    data = os.urandom(2 << 20)
    r = admin.put("/juno/bad/f", content=data, headers={"Digest": "adler32=00000001"})
    assert r.status_code == 400 and r.json()["code"] == "checksum-mismatch"
    r = admin.put("/juno/bad/g", content=data, headers={"Content-MD5": base64.b64encode(b"0" * 16).decode()})
    assert r.status_code == 400
    good_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert admin.put("/juno/bad/h", content=data, headers={"Content-MD5": good_md5}).status_code == 201
    assert not (se.config.root / "juno/bad/f").exists() and not (se.config.root / "juno/bad/g").exists()
    assert leftovers(se.config.root) == []
    # a failed overwrite keeps the old file intact
    r = admin.put("/juno/bad/h", content=b"other", headers={"Digest": "adler32=00000001"})
    assert r.status_code == 400 and (se.config.root / "juno/bad/h").read_bytes() == data


def test_truncated_upload_and_dropped_connection_leave_nothing(se: BackgroundSE, issuer: LocalIssuer) -> None:
    import time

    def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.time() + 30  # a loaded CI machine is slow
        while not condition():
            assert time.time() < deadline, what
            time.sleep(0.02)

    token = issuer.token("storage.modify:/")
    with socket.create_connection(("127.0.0.1", se.port)) as sock:
        sock.sendall(f"PUT /juno/drop/f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Length: {4 << 20}\r\n\r\n".encode() + os.urandom(1 << 20))
        until(lambda: len(leftovers(se.config.root)) == 1, "the upload never started")  # then drop it
    until(lambda: not leftovers(se.config.root), "the truncated upload was kept")
    with socket.create_connection(("127.0.0.1", se.port)) as sock:  # chunked, never terminated
        sock.sendall(f"PUT /juno/drop/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n100000\r\n".encode() + os.urandom(1 << 20) + b"\r\n")
        until(lambda: len(leftovers(se.config.root)) == 1, "the chunked upload never started")
    until(lambda: not leftovers(se.config.root), "the unterminated upload was kept")
    assert not (se.config.root / "juno/drop/f").exists() and not (se.config.root / "juno/drop/g").exists()


def test_expect_continue_is_decided_before_the_body(se: BackgroundSE, issuer: LocalIssuer) -> None:
    def expect(target: str, token: str | None) -> bytes:
        with socket.create_connection(("127.0.0.1", se.port)) as sock:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            sock.sendall(f"PUT {target} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n"
                         "Expect: 100-continue\r\n\r\n".encode())
            first = sock.recv(4096)
            if first.startswith(b"HTTP/1.1 100"):
                sock.sendall(b"hello")
                while b"\r\n\r\n" not in first[first.index(b"\r\n\r\n") + 4:]:
                    more = sock.recv(4096)
                    if not more:
                        break
                    first += more
            return first

    assert expect("/juno/e/f", None).startswith(b"HTTP/1.1 401")
    assert expect("/juno/e/f", issuer.token("storage.read:/")).startswith(b"HTTP/1.1 403")
    answer = expect("/juno/e/f", issuer.token("storage.create:/"))
    assert answer.startswith(b"HTTP/1.1 100") and b"201 Created" in answer
    assert (se.config.root / "juno/e/f").read_bytes() == b"hello"


def test_propfind_mkcol_delete_move(se: BackgroundSE, admin: httpx.Client) -> None:
    assert admin.request("MKCOL", "/juno").status_code in (201, 405)
    assert admin.request("MKCOL", "/juno/a").status_code == 201
    assert admin.request("MKCOL", "/juno/a").status_code == 405
    assert admin.request("MKCOL", "/juno/x/y").status_code == 409
    admin.put("/juno/a/f1", content=b"12345")
    (se.config.root / "juno/a/.dcs-upload.abc").write_bytes(b"in flight")  # never listed
    r = admin.request("PROPFIND", "/juno/a", headers={"Depth": "1"})
    assert r.status_code == 207
    assert "<d:multistatus" in r.text and "<d:getcontentlength>5</d:getcontentlength>" in r.text
    assert "<d:collection/>" in r.text and "<d:iscollection>1</d:iscollection>" in r.text
    assert "/juno/a/f1" in r.text and ".dcs-upload" not in r.text
    r = admin.request("PROPFIND", "/juno/a/f1", headers={"Depth": "0"})
    assert r.status_code == 207 and r.text.count("<d:response>") == 1 and "getlastmodified" in r.text
    assert admin.request("PROPFIND", "/juno/a", headers={"Depth": "infinity"}).status_code == 403
    assert admin.request("PROPFIND", "/juno/nope", headers={"Depth": "0"}).status_code == 404
    r = admin.request("MOVE", "/juno/a/f1", headers={"Destination": f"{se.url}/juno/a/f2"})
    assert r.status_code == 201 and (se.config.root / "juno/a/f2").exists()
    assert admin.head("/juno/a/f2", headers={"Want-Digest": "adler32"}).headers["digest"] == f"adler32={adler(b'12345')}"
    admin.put("/juno/a/f3", content=b"x")
    r = admin.request("MOVE", "/juno/a/f3", headers={"Destination": "/juno/a/f2", "Overwrite": "F"})
    assert r.status_code == 412
    assert admin.request("MOVE", "/juno/a/f3", headers={"Destination": "/juno/a/f2"}).status_code == 204
    assert admin.delete("/juno/a/f2").status_code == 204
    assert admin.delete("/juno/a/f2").status_code == 404
    assert admin.delete("/").status_code == 403
    assert admin.request("OPTIONS", "/juno").headers["dav"] == "1,2"
    assert admin.request("LOCK", "/juno/a").status_code == 405


@pytest.mark.parametrize("target", [
    "/juno/../../etc/passwd",
    "/juno/%2e%2e/%2e%2e/etc/passwd",
    "/juno/a%2F..%2F..%2Fetc%2Fpasswd",
    "/juno/a%2fb",
    "/juno/a%5c..%5cb",
    "/juno/a%00b",
    "/juno/./a",
    "/juno/%ff%fe",
])
def test_hostile_paths_are_refused(se: BackgroundSE, issuer: LocalIssuer, target: str) -> None:
    token = issuer.token("storage.read:/ storage.modify:/")
    for method in ("GET", "PUT", "DELETE", "PROPFIND"):
        status, body = raw_request(se, method, target, {"Authorization": f"Bearer {token}", "Depth": "0"})
        assert status == 400, (method, target, status, body)


def test_nul_byte_in_request_line_is_refused(se: BackgroundSE) -> None:
    with socket.create_connection(("127.0.0.1", se.port)) as sock:
        sock.sendall(b"GET /juno/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).split(b" ")[1] == b"400"  # refused by the HTTP parser itself


def test_symlinks_and_internal_names_cannot_escape(se: BackgroundSE, issuer: LocalIssuer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    root = se.config.root
    (root / "juno").mkdir(parents=True, exist_ok=True)
    os.symlink(outside, root / "juno" / "link")
    os.symlink(outside / "secret", root / "juno" / "filelink")
    headers = {"Authorization": f"Bearer {issuer.token('storage.read:/ storage.modify:/')}", "Depth": "1"}
    for method, target in (("GET", "/juno/link/secret"), ("GET", "/juno/filelink"), ("PUT", "/juno/link/new"),
                           ("DELETE", "/juno/link/secret"), ("PROPFIND", "/juno/link"),
                           ("GET", "/juno/.dcs-upload.x"), ("PUT", "/juno/.dcs-meta.f")):
        status, body = raw_request(se, method, target, headers)
        assert status == 403, (method, target, status, body)
        assert b"outside" in body or b"reserved" in body
    assert not (outside / "new").exists() and (outside / "secret").exists()
    status, body = raw_request(se, "PROPFIND", "/juno", headers)
    assert status == 207 and b"/juno/link" not in body and b"filelink" not in body
    status, _ = raw_request(se, "MOVE", "/juno/filelink", {**headers, "Destination": "/juno/../../x"})
    assert status in (400, 403)


def test_anonymous_access(tmp_path: Path, issuer: LocalIssuer) -> None:
    with make_se(tmp_path / "closed", issuer) as closed:
        write_file(closed.config.root / "juno/f", 10)
        r = httpx.get(f"{closed.url}/juno/f")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    with make_se(tmp_path / "open", issuer, anonymous_read=True) as open_se:
        write_file(open_se.config.root / "juno/f", 10)
        assert httpx.get(f"{open_se.url}/juno/f").status_code == 200
        assert httpx.request("PROPFIND", f"{open_se.url}/juno", headers={"Depth": "1"}).status_code == 207
        assert httpx.put(f"{open_se.url}/juno/g", content=b"x").status_code == 401
        assert httpx.delete(f"{open_se.url}/juno/f").status_code == 401


def test_health_and_metrics(se: BackgroundSE, admin: httpx.Client) -> None:
    assert httpx.get(f"{se.url}/healthz").json() == {"status": "ok", "se": "TEST-DISK"}
    admin.put("/juno/m", content=b"abc")
    text = httpx.get(f"{se.url}/metrics").text
    assert 'dcs_se_requests_total{method="PUT",se="TEST-DISK",status="201"}' in text
    assert "dcs_se_bytes_written_total" in text
