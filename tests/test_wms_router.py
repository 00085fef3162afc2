"""WMS REST API with tokens from the server's own issuer: own jobs vs JobAdministrator, pilots, scopes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from authutil import TEST_URL, bearer, full_token
from junodcs.core.gridconfig import GridConfig, User
from junodcs.server.app import ServerOptions, create_app

API = "/api/v1/wms"


def with_pilot_user(grid: GridConfig) -> GridConfig:
    users = {**grid.registry.users, "pilotbot": User(groups=("juno_pilot",))}
    return grid.model_copy(update={"registry": grid.registry.model_copy(update={"users": users})})


@pytest.fixture
def app(grid: GridConfig, sqlite_engine: Engine):
    return create_app(with_pilot_user(grid), sqlite_engine, ServerOptions(public_url=TEST_URL,
                                                                          systems=("auth", "catalog", "wms")))


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, base_url=TEST_URL) as test_client:
        yield test_client


def token(app, username: str, group: str | None = None, scopes: tuple[str, ...] | None = None) -> dict[str, str]:
    if scopes is None:
        return bearer(full_token(app, username, group))
    issued, _ = app.state.token_issuer.issue_access_token(username=username, group=group or "juno_user", scopes=scopes)
    return bearer(issued)


def test_users_see_their_own_jobs_admins_all(app, client: TestClient) -> None:
    alice, boris, admin = token(app, "alice"), token(app, "boris"), token(app, "zhangxm", "juno_admin")
    answer = client.post(f"{API}/jobs", json={"jdl": '[Executable = "x"; Parameters = 3; Arguments = "%s"]'},
                         headers=alice)
    assert answer.status_code == 200, answer.text
    ids = answer.json()["job_ids"]
    assert len(ids) == 3
    assert client.get(f"{API}/jobs/{ids[0]}", headers=alice).json()["status"] == "Received"
    hidden = client.get(f"{API}/jobs/{ids[0]}", headers=boris)
    assert hidden.status_code == 404 and hidden.json()["code"] == "no-such-job"
    assert client.get(f"{API}/jobs/{ids[0]}", headers=admin).status_code == 200
    assert client.post(f"{API}/jobs/status", json={"job_ids": ids}, headers=boris).json() == {}
    killed = client.post(f"{API}/jobs/kill", json={"job_ids": ids[:1]}, headers=boris).json()
    assert killed["failed"] == {str(ids[0]): "no such job of yours"}
    assert client.post(f"{API}/jobs/kill", json={"job_ids": ids[:1]}, headers=admin).json()["successful"]
    listed = client.get(f"{API}/jobs", params={"status": "Received"}, headers=alice).json()
    assert [j["job_id"] for j in listed] == ids[1:]
    streamed = client.get(f"{API}/jobs", params={"stream": "true"}, headers=admin)
    assert len(streamed.text.splitlines()) == 3
    assert client.get(f"{API}/jobs/{ids[1]}/jdl", headers=alice).json()["Arguments"] == "1"
    assert [r["status"] for r in client.get(f"{API}/jobs/{ids[0]}/logging", headers=alice).json()] == [
        "Received", "Killed"]
    assert client.get(f"{API}/jobs").status_code == 401


def test_bad_submissions_create_no_jobs(app, client: TestClient) -> None:
    alice = token(app, "alice")
    bad = client.post(f"{API}/jobs", json={"jdl": '[ Executable = "x";\n Arguments = "a" CPUTime = 500 ]'},
                      headers=alice)
    assert bad.status_code == 422 and bad.json()["code"] == "jdl-syntax" and "line 2" in bad.json()["detail"]
    big = client.post(f"{API}/jobs", json={"job": {"Executable": "x", "Parameters": 10_001}}, headers=alice)
    assert big.status_code == 422 and big.json()["code"] == "too-many-jobs"
    site = client.post(f"{API}/jobs", json={"jobs": ['Executable="x"', {"Executable": "y", "Site": "LCG.X.xx"}]},
                       headers=alice)
    assert site.json()["code"] == "unknown-site"
    assert client.get(f"{API}/jobs", headers=token(app, "zhangxm", "juno_admin")).json() == []


def test_pilots_match_and_report_users_cannot(app, client: TestClient) -> None:
    alice, pilot = token(app, "alice"), token(app, "pilotbot", "juno_pilot")
    (job_id,) = client.post(f"{API}/jobs", json={"job": {"Executable": "x"}}, headers=alice).json()["job_ids"]
    from junodcs.wms.optimizers import Optimizer

    Optimizer(app.state.wms).run_once()  # the server's WMS (created by the submission above)
    offer = {"pilot_id": "p1", "site": "GRID.IHEP.cn", "ce": "ce.ihep.ac.cn", "platform": "el9", "memory_mb": 3000,
             "time_left": 100000}
    assert client.post(f"{API}/match", json=offer, headers=alice).status_code == 403
    assert client.post(f"{API}/jobs", json={"job": {"Executable": "x"}}, headers=pilot).status_code == 403
    bad_ce = client.post(f"{API}/match", json={**offer, "ce": "ce.jinr.ru"}, headers=pilot)
    assert bad_ce.status_code == 422 and bad_ce.json()["code"] == "unknown-ce"
    got = client.post(f"{API}/match", json=offer, headers=pilot).json()["job"]
    assert got["job_id"] == job_id and got["attempt"] == 1
    beat = client.post(f"{API}/heartbeats", json=[{"job_id": job_id, "attempt": 1, "pilot_id": "p1", "cpu": 1,
                                                    "rss_mb": 50, "wall": 2, "stdout_tail": "hi"}], headers=pilot)
    assert beat.json()[0]["commands"] == []
    assert client.get(f"{API}/jobs/{job_id}/peek", headers=alice).json()["stdout"] == "hi"
    assert client.post(f"{API}/jobs/{job_id}/output-sandbox", params={"attempt": 1, "pilot_id": "p1"},
                       content=b"out", headers=pilot).status_code == 200
    done = client.post(f"{API}/reports", json=[{"job_id": job_id, "attempt": 1, "status": "Done",
                                                "minor_status": "Execution Complete"}], headers=pilot)
    assert done.json() == [{"job_id": job_id, "status": "Done"}]
    assert client.get(f"{API}/jobs/{job_id}/output-sandbox", headers=alice).content == b"out"
    stale = client.post(f"{API}/reports", json=[{"job_id": job_id, "attempt": 7, "status": "Done"}], headers=pilot)
    assert stale.status_code == 409 and stale.json()["code"] == "stale-attempt"


def test_scopes_and_site_mask(app, client: TestClient) -> None:
    read_only = token(app, "alice", scopes=("compute.read",))
    assert client.post(f"{API}/jobs", json={"job": {"Executable": "x"}}, headers=read_only).status_code == 403
    assert client.get(f"{API}/jobs", headers=read_only).status_code == 200
    alice, admin = token(app, "alice"), token(app, "zhangxm", "juno_admin")
    assert client.post(f"{API}/sites/GRID.MSU.ru/ban", json={"reason": "x"}, headers=alice).status_code == 403
    no_reason = client.post(f"{API}/sites/GRID.MSU.ru/ban", json={}, headers=admin)
    assert no_reason.json()["code"] == "reason-required"
    assert client.post(f"{API}/sites/GRID.NOPE.xx/ban", json={"reason": "x"}, headers=admin).json()["code"] == "unknown-site"
    assert client.post(f"{API}/sites/GRID.MSU.ru/ban", json={"reason": "power cut"}, headers=admin).status_code == 200
    mask = {s["site"]: s for s in client.get(f"{API}/sites", headers=alice).json()}
    assert mask["GRID.MSU.ru"]["status"] == "Banned" and mask["GRID.MSU.ru"]["reason"] == "power cut"
    assert mask["GRID.IHEP.cn"]["status"] == "Active"
    sandbox = client.post(f"{API}/sandboxes", content=b"tarball", headers=alice).json()
    assert sandbox["ref"].startswith("SB:sha256:") and sandbox["size"] == 7
