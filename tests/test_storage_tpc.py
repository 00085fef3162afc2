"""HTTP-TPC between two of our SEs (and against misbehaving sources), and the storage client."""

from __future__ import annotations

import http.server
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_storage_support import LocalIssuer, issuer, leftovers, se, se2, write_file  # noqa: F401

from junodcs.core.errors import Conflict, NotFound
from junodcs.storage.client import ChecksumMismatch, StorageClient, TransferFailed
from junodcs.storage.markers import MarkerParser
from junodcs.storage.server.run import BackgroundSE

PAYLOAD = os.urandom(3 << 20)
ADLER = f"{zlib.adler32(PAYLOAD) & 0xFFFFFFFF:08x}"


class FakeSource(http.server.BaseHTTPRequestHandler):
    """A passive SE that lies: wrong digest, truncated body, or slow drip."""

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self, length: int, digest: str) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.send_header("Digest", f"adler32={digest}")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers(len(PAYLOAD), "00000001" if "wrong" in self.path else ADLER)

    def do_GET(self) -> None:
        if "nodigest" in self.path:  # answers Want-Digest on HEAD only (the HEAD says wrong for */wrong-*)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif "wrong" in self.path:
            self._headers(len(PAYLOAD), "00000001")
            self.wfile.write(PAYLOAD)
        elif "short" in self.path:
            self._headers(len(PAYLOAD), ADLER)
            self.wfile.write(PAYLOAD[:100_000])
            self.wfile.flush()
            self.connection.shutdown(2)
        elif "slow" in self.path:
            self._headers(len(PAYLOAD), ADLER)
            step = len(PAYLOAD) // 4
            for i in range(4):
                self.wfile.write(PAYLOAD[i * step:(i + 1) * step if i < 3 else None])
                self.wfile.flush()
                time.sleep(0.25)
        else:
            self.send_error(404)


@pytest.fixture
def fake() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeSource)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def copy(se: BackgroundSE, path: str, token: str, **headers: str) -> tuple[int, MarkerParser, str]:
    parser = MarkerParser()
    with httpx.stream("COPY", f"{se.url}{path}", headers={"Authorization": f"Bearer {token}", **headers},
                      timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        parser.feed(line)
    return r.status_code, parser, text


def test_pull_and_push_between_two_ses(se: BackgroundSE, se2: BackgroundSE, issuer: LocalIssuer) -> None:
    write_file(se.config.root / "juno/src/f", 0)
    (se.config.root / "juno/src/f").write_bytes(PAYLOAD)
    token = issuer.token("storage.read:/ storage.modify:/")
    status, parser, text = copy(se2, "/juno/dst/pulled", token, Source=f"{se.url}/juno/src/f",
                                TransferHeaderAuthorization=f"Bearer {token}", Credential="none")
    assert status == 202 and parser.outcome == "success", text
    assert text.startswith("Perf Marker") and "Stripe Bytes Transferred: 0" in text
    # a pull's success line names the stored file's adler32, after the word davix and gfal2 look for
    assert text.rstrip().endswith(f"success: Created; adler32={ADLER}") and parser.transferred == len(PAYLOAD)
    assert parser.adler32 == ADLER and parser.message.startswith("Created")
    assert (se2.config.root / "juno/dst/pulled").read_bytes() == PAYLOAD
    status, parser, text = copy(se, "/juno/src/f", token, Destination=f"{se2.url}/juno/dst/pushed",
                                TransferHeaderAuthorization=f"Bearer {token}")
    assert status == 202 and parser.outcome == "success", text
    assert parser.adler32 is None, "a push's active side is the source: it names no stored checksum"
    assert (se2.config.root / "juno/dst/pushed").read_bytes() == PAYLOAD
    r = httpx.head(f"{se2.url}/juno/dst/pushed", headers={"Authorization": f"Bearer {token}", "Want-Digest": "adler32"})
    assert r.headers["digest"] == f"adler32={ADLER}"
    # Overwrite: F
    status, _, text = copy(se2, "/juno/dst/pulled", token, Source=f"{se.url}/juno/src/f", Overwrite="F",
                           TransferHeaderAuthorization=f"Bearer {token}")
    assert status == 412
    status, parser, _ = copy(se, "/juno/src/f", token, Destination=f"{se2.url}/juno/dst/pushed", Overwrite="F",
                             TransferHeaderAuthorization=f"Bearer {token}")
    assert status == 202 and parser.outcome == "failure" and "exists" in parser.message


def test_tpc_failures_leave_nothing(se: BackgroundSE, se2: BackgroundSE, issuer: LocalIssuer, fake: str) -> None:
    token = issuer.token("storage.read:/ storage.modify:/")
    status, parser, text = copy(se2, "/juno/dst/nope", token, Source=f"{se.url}/juno/missing",
                                TransferHeaderAuthorization=f"Bearer {token}")
    assert status == 202 and parser.outcome == "failure" and "404" in parser.message, text
    status, parser, _ = copy(se2, "/juno/dst/noauth", token, Source=f"{se.url}/juno/missing")
    assert parser.outcome == "failure" and "401" in parser.message  # TransferHeader* not given
    for name in ("wrong", "short"):
        status, parser, text = copy(se2, f"/juno/dst/{name}", token, Source=f"{fake}/{name}")
        assert status == 202 and parser.outcome == "failure", text
    assert "checksum mismatch" in copy(se2, "/juno/dst/wrong", token, Source=f"{fake}/wrong")[1].message
    assert not (se2.config.root / "juno/dst").exists() or not any((se2.config.root / "juno/dst").iterdir())
    assert leftovers(se2.config.root) == []


def test_pull_asks_a_head_for_the_checksum_the_get_did_not_give(se2: BackgroundSE, issuer: LocalIssuer,
                                                                 fake: str) -> None:
    token = issuer.token("storage.modify:/")
    status, parser, text = copy(se2, "/juno/headsum", token, Source=f"{fake}/nodigest")
    assert status == 202 and parser.outcome == "success", text
    assert (se2.config.root / "juno/headsum").read_bytes() == PAYLOAD
    status, parser, text = copy(se2, "/juno/headwrong", token, Source=f"{fake}/wrong-nodigest")
    assert parser.outcome == "failure" and "checksum mismatch" in parser.message, text
    assert not (se2.config.root / "juno/headwrong").exists() and leftovers(se2.config.root) == []


def test_markers_arrive_while_the_copy_runs(se2: BackgroundSE, issuer: LocalIssuer, fake: str) -> None:
    token = issuer.token("storage.modify:/")
    status, parser, text = copy(se2, "/juno/slow", token, Source=f"{fake}/slow")
    assert status == 202 and parser.outcome == "success", text
    assert parser.markers >= 3 and text.count("Total Stripe Count: 1") == parser.markers


def test_copy_request_validation(se: BackgroundSE, se2: BackgroundSE, issuer: LocalIssuer) -> None:
    token = issuer.token("storage.read:/ storage.modify:/")
    write_file(se.config.root / "juno/f", 10)
    assert copy(se, "/juno/f", token)[0] == 400  # neither Source nor Destination
    assert copy(se, "/juno/f", token, Source=f"{se2.url}/a", Destination=f"{se2.url}/b")[0] == 400
    assert copy(se, "/juno/g", token, Source="gsiftp://host/a")[0] == 400
    assert copy(se, "/juno/g", token, Source=f"{se2.url}/a", Credential="gridsite")[0] == 400
    assert copy(se, "/juno/g", token, Source=f"{se2.url}/a", Overwrite="maybe")[0] == 400
    assert copy(se, "/juno/g", token, Source=f"{se2.url}/a", RequireChecksumVerification="yes")[0] == 400
    assert copy(se, "/juno/none", token, Destination=f"{se2.url}/a")[0] == 404
    assert copy(se, "/juno/f", issuer.token("storage.modify:/x"), Destination=f"{se2.url}/a")[0] == 403
    assert copy(se, "/juno/g", issuer.token("storage.read:/"), Source=f"{se2.url}/a")[0] == 403


def test_storage_client(se: BackgroundSE, se2: BackgroundSE, issuer: LocalIssuer, tmp_path: Path) -> None:
    token = issuer.token("storage.read:/ storage.modify:/")
    local = tmp_path / "local.bin"
    local.write_bytes(PAYLOAD)
    with StorageClient(token) as client:
        client.mkdir(f"{se.url}/juno/c/d/e")
        assert client.stat(f"{se.url}/juno/c/d/e").is_dir
        assert client.put(local, f"davs://x".replace("davs://x", f"{se.url}/juno/c/f")) == ADLER
        info = client.stat(f"{se.url}/juno/c/f")
        assert info.size == len(PAYLOAD) and not info.is_dir and info.adler32 == ADLER
        assert sorted(e.name for e in client.ls(f"{se.url}/juno/c")) == ["d", "f"]
        assert client.checksum(f"{se.url}/juno/c/f") == ADLER
        assert client.checksum(f"{se.url}/juno/c/f", "md5")
        assert client.get(f"{se.url}/juno/c/f", tmp_path / "back.bin") == ADLER
        assert (tmp_path / "back.bin").read_bytes() == PAYLOAD
        with pytest.raises(Conflict):
            client.put(local, f"{se.url}/juno/c/f", overwrite=False)
        for mode in ("pull", "push", "stream"):
            result = client.tpc(f"{se.url}/juno/c/f", f"{se2.url}/juno/copy/{mode}", mode=mode)
            assert result.adler32 == ADLER
            assert (se2.config.root / f"juno/copy/{mode}").read_bytes() == PAYLOAD
        asked: list[str] = []
        real_checksum = client.checksum
        client.checksum = lambda url, algorithm="adler32": asked.append(url) or real_checksum(url, algorithm)  # type: ignore[method-assign]
        assert client.tpc(f"{se.url}/juno/c/f", f"{se2.url}/juno/copy/again", mode="pull").adler32 == ADLER
        assert asked == [f"{se.url}/juno/c/f"], "the destination named its checksum in the success line"
        del client.checksum
        result = client.tpc(f"file://{local}", f"{se2.url}/juno/copy/fromfile", mode="stream")
        assert result.adler32 == ADLER
        with pytest.raises(TransferFailed, match="404"):
            client.tpc(f"{se.url}/juno/c/none", f"{se2.url}/juno/copy/x", verify_checksum=False)
        with pytest.raises(ChecksumMismatch):
            client.put(local, f"{se.url}/juno/c/bad", adler32="00000001")
        client.delete(f"{se.url}/juno/c/f")
        with pytest.raises(NotFound):
            client.stat(f"{se.url}/juno/c/f")
        client.mkdir(f"file://{tmp_path}/x/y")
        assert client.stat(f"file://{tmp_path}/x/y").is_dir
        assert client.checksum(f"file://{local}") == ADLER
    assert leftovers(se2.config.root) == [] and leftovers(se.config.root) == []
