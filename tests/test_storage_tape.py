"""Tape SE: the DISK -> DISK_AND_TAPE -> TAPE life of a file, staging, pins, release, the WLCG Tape REST API
on the wire (and gfal2's tape commands against it), persistence across restarts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_storage_support import LocalIssuer, issuer, make_se, write_file  # noqa: F401

from junodcs.storage.server.config import TapeSettings
from junodcs.storage.server.run import BackgroundSE
from junodcs.storage.server.tape import NotOnDisk, TapeRequestError, TapeSystem, parse_lifetime

SETTINGS = TapeSettings(mount_delay=10, stage_delay=5, flush_delay=100, evict_delay=50, default_pin=1000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def tape_system(root: Path, clock: Clock) -> TapeSystem:
    return TapeSystem(root, SETTINGS, lambda logical: root / logical.lstrip("/"), clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def put(root: Path, tape: TapeSystem, path: str, size: int = 10) -> None:
    write_file(root / path.lstrip("/"), size)
    tape.written(path)


def locality(tape: TapeSystem, path: str) -> str:
    return tape.archiveinfo([path])[0]["locality"]


def test_file_life_disk_to_tape(tmp_path: Path, clock: Clock) -> None:
    tape = tape_system(tmp_path, clock)
    put(tmp_path, tape, "/juno/a")
    assert locality(tape, "/juno/a") == "DISK"
    clock.now += 99
    assert locality(tape, "/juno/a") == "DISK"
    clock.now += 1
    assert locality(tape, "/juno/a") == "DISK_AND_TAPE"
    tape.require_on_disk("/juno/a")
    clock.now += 50
    assert locality(tape, "/juno/a") == "TAPE"
    with pytest.raises(NotOnDisk):
        tape.require_on_disk("/juno/a")
    # rewriting starts the life again; directories and missing files
    tape.written("/juno/a")
    assert locality(tape, "/juno/a") == "DISK"
    assert tape.archiveinfo(["/juno", "/juno/missing"]) == [
        {"path": "/juno", "locality": "NONE"}, {"path": "/juno/missing", "error": "/juno/missing does not exist"}]
    # a file the SE did not write counts from its mtime
    write_file(tmp_path / "juno/old", 1)
    os.utime(tmp_path / "juno/old", (clock.now - 120, clock.now - 120))
    assert locality(tape, "/juno/old") == "DISK_AND_TAPE"


def test_stage_pin_release_cancel_delete(tmp_path: Path, clock: Clock) -> None:
    tape = tape_system(tmp_path, clock)
    for name in ("a", "b", "c"):
        put(tmp_path, tape, f"/juno/{name}")
    put(tmp_path, tape, "/juno/fresh")
    clock.now += 150 + 10  # a, b, c, fresh on TAPE
    tape.written("/juno/fresh")  # fresh rewritten: on DISK
    rid = tape.stage([("/juno/a", None), ("/juno/b", 30.0), ("/juno/fresh", None), ("/juno/nope", None),
                      ("/juno/c", None)])
    info = tape.request(rid)
    states = {f["path"]: (f["state"], f["onDisk"]) for f in info["files"]}
    assert states == {"/juno/a": ("SUBMITTED", False), "/juno/b": ("SUBMITTED", False),
                      "/juno/fresh": ("COMPLETED", True), "/juno/nope": ("FAILED", False),
                      "/juno/c": ("SUBMITTED", False)}
    assert "does not exist" in info["files"][3]["error"] and "completedAt" not in info
    clock.now += 10  # mounted
    assert [f["state"] for f in tape.request(rid)["files"]][:2] == ["STARTED", "STARTED"]
    tape.cancel(rid, ["/juno/c"])
    clock.now += 5  # a back
    files = tape.request(rid)["files"]
    assert (files[0]["state"], files[0]["onDisk"], files[1]["state"]) == ("COMPLETED", True, "STARTED")
    assert files[4]["state"] == "CANCELED"
    assert locality(tape, "/juno/a") == "DISK_AND_TAPE"
    tape.require_on_disk("/juno/a")
    clock.now += 5  # b back, pinned 30 s
    info = tape.request(rid)
    assert info["files"][1]["state"] == "COMPLETED" and "completedAt" in info
    assert locality(tape, "/juno/c") == "TAPE"
    clock.now += 31
    assert locality(tape, "/juno/b") == "TAPE", "the 30 s pin ran out"
    assert tape.request(rid)["files"][1]["onDisk"] is False
    assert locality(tape, "/juno/a") == "DISK_AND_TAPE", "default pin 1000 s"
    tape.release(rid, ["/juno/a"])
    assert locality(tape, "/juno/a") == "TAPE"
    tape.release("placeholder-id", ["/juno/fresh"])  # gfal2's placeholder; not yet on tape: stays
    assert locality(tape, "/juno/fresh") == "DISK"
    with pytest.raises(TapeRequestError):
        tape.cancel(rid, ["/juno/other"])
    tape.delete(rid)
    with pytest.raises(Exception) as info_:
        tape.request(rid)
    assert getattr(info_.value, "status", None) == 404


def test_state_survives_restart_and_completion_while_down(tmp_path: Path, clock: Clock) -> None:
    tape = tape_system(tmp_path, clock)
    put(tmp_path, tape, "/juno/a")
    put(tmp_path, tape, "/juno/gone")
    clock.now += 200
    rid = tape.stage([("/juno/a", 100.0), ("/juno/gone", None)])
    os.unlink(tmp_path / "juno/gone")
    tape.close()
    clock.now += 20  # the recall completed at +15 while the SE was down
    again = tape_system(tmp_path, clock)
    files = again.request(rid)["files"]
    assert files[0]["state"] == "COMPLETED" and files[0]["finishedAt"] == int(clock.now - 5)
    assert files[1]["state"] == "FAILED" and "removed" in files[1]["error"]
    clock.now += 94
    assert locality(again, "/juno/a") == "DISK_AND_TAPE"
    clock.now += 2  # pin counted from the completion, not from the restart
    assert locality(again, "/juno/a") == "TAPE"
    os.rename(tmp_path / "juno", tmp_path / "moved")
    again.moved("/juno", "/moved")
    assert locality(again, "/moved/a") == "TAPE"


def test_disk_lifetime_parsing() -> None:
    assert parse_lifetime("P1D") == 86400 and parse_lifetime("PT2H30M") == 9000 and parse_lifetime(60) == 60
    assert parse_lifetime("P1DT1S") == 86401
    for bad in ("1 day", "P", "PT", "P1DT", True, -5, "PT-1S"):
        with pytest.raises(TapeRequestError):
            parse_lifetime(bad)


# -- on the wire ---------------------------------------------------------------------------------------

FAST = TapeSettings(mount_delay=0.2, stage_delay=0.2, flush_delay=0.4, evict_delay=0.2, default_pin=60)


@pytest.fixture
def tape_se(tmp_path: Path, issuer: LocalIssuer) -> Iterator[BackgroundSE]:  # noqa: F811
    with make_se(tmp_path / "tape", issuer, name="TEST-TAPE", tape=FAST) as server:
        yield server


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_tape_rest_api_on_the_wire(tape_se: BackgroundSE, issuer: LocalIssuer) -> None:  # noqa: F811
    writer = {"Authorization": "Bearer " + issuer.token("storage.modify:/ storage.stage:/")}
    reader = {"Authorization": "Bearer " + issuer.token("storage.read:/")}
    http = httpx.Client(base_url=tape_se.url, timeout=10)
    discovery = http.get("/.well-known/wlcg-tape-rest-api").json()
    assert discovery["sitename"] == "TEST-TAPE"
    assert discovery["endpoints"] == [{"uri": f"{tape_se.url}/api/v1", "version": "v1", "metadata": {}}]
    assert http.put("/juno/raw/f1", content=b"x" * 1000, headers=writer).status_code == 201

    def where() -> str:
        answer = http.post("/api/v1/archiveinfo", json={"paths": ["/juno/raw/f1"]}, headers=reader)
        assert answer.status_code == 200, answer.text
        return answer.json()[0]["locality"]

    assert where() == "DISK"
    assert http.get("/juno/raw/f1", headers=reader).status_code == 200
    wait_for(lambda: where() == "TAPE")
    refused = http.get("/juno/raw/f1", headers=reader)
    assert refused.status_code == 503 and refused.json()["code"] == "not-on-disk"
    assert "stage it first" in refused.json()["detail"]
    head = http.head("/juno/raw/f1", headers={**reader, "Want-Digest": "adler32"})
    assert head.status_code == 200 and head.headers["Content-Length"] == "1000"  # namespace still knows it
    # staging needs storage.stage (UPDATE_METADATA), not just storage.read
    body = {"files": [{"path": "//juno/raw/f1", "diskLifetime": "PT1M"}]}
    assert http.post("/api/v1/stage", json=body, headers=reader).status_code == 403
    assert http.post("/api/v1/stage", json=body).status_code == 401
    created = http.post("/api/v1/stage", json=body, headers=writer)
    assert created.status_code == 201, created.text
    rid = created.json()["requestId"]
    assert created.headers["Location"].endswith(f"/api/v1/stage/{rid}")
    first = http.get(f"/api/v1/stage/{rid}", headers=reader).json()
    assert first["id"] == rid and first["files"][0]["state"] in ("SUBMITTED", "STARTED")
    assert first["files"][0]["path"] == "/juno/raw/f1" and first["files"][0]["onDisk"] is False
    wait_for(lambda: http.get(f"/api/v1/stage/{rid}", headers=reader).json()["files"][0]["onDisk"])
    assert where() == "DISK_AND_TAPE"
    assert http.get("/juno/raw/f1", headers=reader).content == b"x" * 1000
    assert http.post(f"/api/v1/release/{rid}", json={"paths": ["/juno/raw/f1"]}, headers=writer).status_code == 200
    assert where() == "TAPE"
    # bad input: clear 4xx problems, nothing changes
    for bad in (b"not json", b"{}", b'{"files": []}', b'{"files": [{"path": 3}]}',
                b'{"files": [{"path": "/juno/../etc"}]}', b'{"files": [{"path": "/juno/raw/f1", "diskLifetime": "x"}]}'):
        answer = http.post("/api/v1/stage", content=bad, headers=writer)
        assert answer.status_code == 400 and answer.headers["Content-Type"].startswith("application/problem+json"), bad
    assert http.get("/api/v1/stage/nope", headers=reader).status_code == 404
    assert http.post(f"/api/v1/stage/{rid}/cancel", json={"paths": ["/juno/x"]}, headers=writer).status_code == 400
    assert http.post(f"/api/v1/stage/{rid}/cancel", json={"paths": ["/juno/raw/f1"]}, headers=writer).status_code == 200
    assert http.delete(f"/api/v1/stage/{rid}", headers=reader).status_code == 403
    assert http.delete(f"/api/v1/stage/{rid}", headers=writer).status_code == 200
    assert http.get(f"/api/v1/stage/{rid}", headers=reader).status_code == 404
    # a TPC push of a file only on tape is refused before any transfer starts
    push = http.request("COPY", "/juno/raw/f1", headers={**writer, "Destination": "http://127.0.0.1:9/x"})
    assert push.status_code == 503
    # deleting forgets the tape state
    assert http.delete("/juno/raw/f1", headers=writer).status_code == 204
    assert http.post("/api/v1/archiveinfo", json={"paths": ["/juno/raw/f1"]}, headers=reader).json()[0]["error"]


def test_tape_state_survives_se_restart(tmp_path: Path, issuer: LocalIssuer) -> None:  # noqa: F811
    slow = TapeSettings(mount_delay=0.3, stage_delay=0.3, flush_delay=0.2, evict_delay=0.0, default_pin=60)
    writer = {"Authorization": "Bearer " + issuer.token("storage.modify:/ storage.stage:/")}
    with make_se(tmp_path / "tape", issuer, name="TEST-TAPE", tape=slow) as se:
        assert httpx.put(f"{se.url}/juno/f", content=b"abc", headers=writer).status_code == 201
        time.sleep(0.3)
        rid = httpx.post(f"{se.url}/api/v1/stage", json={"files": [{"path": "/juno/f"}]},
                         headers=writer).json()["requestId"]
    time.sleep(0.7)
    with make_se(tmp_path / "tape", issuer, name="TEST-TAPE", tape=slow) as se:
        info = httpx.get(f"{se.url}/api/v1/stage/{rid}", headers=writer).json()
        assert info["files"][0]["state"] == "COMPLETED" and info["files"][0]["onDisk"] is True
        assert httpx.get(f"{se.url}/juno/f", headers=writer).content == b"abc"
        assert not [p for p in os.listdir(tmp_path / "tape") if not p.startswith(".dcs-")] == []


@pytest.mark.interop
def test_gfal_bringonline_and_archivepoll(tape_se: BackgroundSE, issuer: LocalIssuer,  # noqa: F811
                                          tmp_path: Path) -> None:
    if shutil.which("gfal-bringonline") is None:
        pytest.skip("gfal2-util-scripts not installed (.ci/run installs it)")
    token = issuer.token("storage.modify:/ storage.stage:/")
    env = {**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3", "BEARER_TOKEN": token}
    url = f"{tape_se.url}/juno/gfal/t.bin"
    assert httpx.put(url, content=os.urandom(5000), headers={"Authorization": f"Bearer {token}"}).status_code == 201

    def gfal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env)

    polled = gfal("gfal-archivepoll", url)
    assert polled.returncode == 0 and polled.stdout.split()[-1] == "QUEUED", polled.stdout + polled.stderr
    wait_for(lambda: httpx.post(f"{tape_se.url}/api/v1/archiveinfo", json={"paths": ["/juno/gfal/t.bin"]},
                                headers={"Authorization": f"Bearer {token}"}).json()[0]["locality"] == "TAPE")
    polled = gfal("gfal-archivepoll", url)
    assert polled.returncode == 0 and polled.stdout.split()[-1] == "READY", polled.stdout + polled.stderr
    refused = gfal("gfal-copy", "-f", url, f"file://{tmp_path}/early.bin")
    assert refused.returncode != 0 and "HTTP 503" in refused.stderr, refused.stderr
    staged = gfal("gfal-bringonline", "--polling-timeout", "30", url)
    assert staged.returncode == 0 and staged.stdout.split()[-1] == "READY", staged.stdout + staged.stderr
    got = subprocess.run(["gfal-copy", "-f", url, f"file://{tmp_path}/back.bin"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert got.returncode == 0, got.stdout + got.stderr
