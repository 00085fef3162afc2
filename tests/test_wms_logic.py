"""WMS logic on SQLite, PostgreSQL and MariaDB: submission, optimizers with the real catalog, the state machine,
matching, heartbeats and kills, rescheduling (manual, automatic, memory-aware), stalled jobs, site mask,
sandboxes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from junodcs.catalog.logic import Catalog
from junodcs.core.errors import DCSError
from junodcs.core.gridconfig import GridConfig
from junodcs.wms import db
from junodcs.wms.logic import TRANSITIONS, WMS, Caller, IllegalTransition, JobStatus, WMSConfig, check_transition, now
from junodcs.wms.matcher import Matcher
from junodcs.wms.models import Heartbeat, MatchRequest, SiteStatus, StatusReport
from junodcs.wms.optimizers import CatalogLogicResolver, Optimizer
from junodcs.wms.sandbox import LocalSandboxStore

ALICE = Caller("alice", "juno_user")
BORIS = Caller("boris", "juno_user")
ADMIN = Caller("zhangxm", "juno_admin", admin=True, group_manager=True)


def pilot(site: str = "GRID.IHEP.cn", ce: str = "ce.ihep.ac.cn", **kw) -> MatchRequest:
    values = {"pilot_id": "pilot-1", "platform": "el9", "tags": ["juno"], "memory_mb": 3000, "time_left": 200000}
    values.update(kw)
    return MatchRequest(site=site, ce=ce, **values)


@pytest.fixture
def wms(engine: Engine, grid: GridConfig, tmp_path: Path) -> WMS:
    return WMS(engine, grid, config=WMSConfig(heartbeat_period=60), sandbox_store=LocalSandboxStore(tmp_path / "sb"))


@pytest.fixture
def catalog(engine: Engine) -> Catalog:
    return Catalog(engine)


def test_transition_table_is_closed_and_enforced() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[JobStatus.DELETED] == frozenset()
    check_transition(1, "Waiting", JobStatus.MATCHED)
    with pytest.raises(IllegalTransition, match="Done -> Running is not allowed"):
        check_transition(1, "Done", JobStatus.RUNNING)


def test_bulk_parametric_submission_is_all_or_nothing(wms: WMS) -> None:
    ids = wms.submit([{"Executable": "x", "Arguments": "%s", "Parameters": 500}, '[Executable = "y"]'], ALICE)
    assert len(ids) == 501 and ids == list(range(ids[0], ids[0] + 501))
    assert wms.description(ids[7], ALICE)["Arguments"] == "7"
    with pytest.raises(DCSError) as bad:  # the second description names an unknown site: nothing is created
        wms.submit([{"Executable": "x", "Parameters": 10}, {"Executable": "y", "Site": "GRID.NOWHERE.xx"}], ALICE)
    assert bad.value.code == "unknown-site" and "job description 2" in bad.value.detail
    with pytest.raises(DCSError) as big:
        wms.submit([{"Executable": "x", "Parameters": 6000}, {"Executable": "x", "Parameters": 6000}], ALICE)
    assert big.value.code == "too-many-jobs"
    with pytest.raises(DCSError) as local:
        wms.submit({"Executable": "x", "InputSandbox": ["run.sh"]}, ALICE)
    assert local.value.code == "local-sandbox-file"
    with wms.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.jobs)).scalar() == 501
    more = wms.submit('Executable = "z"', ALICE)
    assert more[0] == ids[-1] + 1
    # others do not see alice's jobs
    assert wms.status(ids[:3], BORIS) == {}
    with pytest.raises(DCSError) as hidden:
        wms.job(ids[0], BORIS)
    assert hidden.value.code == "no-such-job"
    assert len(wms.select(ADMIN, status=["Received"])) == 502
    assert wms.select(BORIS) == []


def test_optimizer_data_sites_staging_hold_and_failures(wms: WMS, catalog: Catalog) -> None:
    catalog.register([
        {"lfn": "/juno/raw/disk.root", "size": 1, "checksum": "1", "se": "JINR-DCACHE"},
        {"lfn": "/juno/raw/tape.root", "size": 1, "checksum": "1", "se": "CNAF-TAPE"},
    ])
    opt = Optimizer(wms, CatalogLogicResolver(catalog))
    data, tape, missing, huge, banned_only = (
        wms.submit({"Executable": "x", "InputData": ["/juno/raw/disk.root"]}, ALICE)[0],
        wms.submit({"Executable": "x", "InputData": ["LFN:/juno/raw/tape.root"]}, ALICE)[0],
        wms.submit({"Executable": "x", "InputData": ["/juno/raw/none.root"]}, ALICE)[0],
        wms.submit({"Executable": "x", "MaxRAM": 64000}, ALICE)[0],
        wms.submit({"Executable": "x", "Site": ["GRID.MSU.ru"]}, ALICE)[0],
    )
    wms.set_site_status("GRID.MSU.ru", SiteStatus.BANNED, "disk server down", ADMIN)
    assert opt.run_once() == {"Waiting": 1, "Staging": 1, "Failed": 1, "Checking": 2}
    assert wms.job(data, ALICE)["status"] == "Waiting"
    tq = wms.task_queues()[0]
    assert tq["sites"] == ["GRID.JINR.ru"] and tq["waiting"] == 1
    assert wms.job(tape, ALICE)["status"] == "Staging"
    assert wms.job(missing, ALICE)["minor_status"] == "Input Data Not Available: /juno/raw/none.root"
    held = wms.job(huge, ALICE)
    assert held["status"] == "Checking" and "no CE offers MaxRAM 64000 MB (largest slot: 16000 MB)" in held["minor_status"]
    assert wms.job(banned_only, ALICE)["minor_status"] == (
        "On hold: every candidate site is banned: GRID.MSU.ru (disk server down)")
    # nothing to do until the holds expire; allowing the site releases its held job at once
    assert opt.run_once() == {}
    wms.set_site_status("GRID.MSU.ru", SiteStatus.ACTIVE, "fixed", ADMIN)
    assert opt.run_once() == {"Waiting": 1, "Checking": 1}  # every held job is looked at again; one still waits
    assert wms.job(huge, ALICE)["minor_status"] == held["minor_status"]
    assert [h["status"] for h in wms.site_history("GRID.MSU.ru")] == ["Banned", "Active"]
    # the tape file comes online on disk at CNAF: the staging job proceeds
    catalog.add_replicas([{"lfn": "/juno/raw/tape.root", "se": "CNAF-STORM"}])
    later = now() + timedelta(seconds=wms.config.staging_recheck + 1)
    assert opt.run_once(at=later) == {"Waiting": 1}
    history = [(r["status"], r["source"]) for r in wms.logging_info(tape, ALICE)]
    assert history == [("Received", "JobManager"), ("Checking", "Optimizer"), ("Staging", "Optimizer"),
                       ("Waiting", "Optimizer")]


def test_match_heartbeat_kill_and_stale_attempts(wms: WMS) -> None:
    (job_id,) = wms.submit({"Executable": "x", "Site": ["GRID.IHEP.cn"], "Tags": ["juno"]}, ALICE)
    Optimizer(wms).run_once()
    matcher = Matcher(wms, cache_seconds=0)
    assert matcher.match(pilot(site="GRID.CNAF.it", ce="ce.cnaf.infn.it"))["job"] is None
    assert matcher.match(pilot(tags=[]))["job"] is None  # the job needs tag juno
    got = matcher.match(pilot())["job"]
    assert got["job_id"] == job_id and got["attempt"] == 1 and got["description"]["Executable"] == "x"
    assert matcher.match(pilot())["job"] is None
    answer = wms.heartbeat([Heartbeat(job_id=job_id, attempt=1, pilot_id="pilot-1", cpu=5, rss_mb=100, wall=6,
                                      stdout_tail="event 1\n")])[0]
    assert answer["commands"] == [] and wms.job(job_id, ALICE)["status"] == "Running"
    assert wms.peek(job_id, ALICE) == "event 1\n"
    assert wms.parameters(job_id, ALICE)["parameters"]["MemoryUsedMB"] == 100
    over = wms.heartbeat([Heartbeat(job_id=job_id, attempt=1, rss_mb=3500)])[0]
    assert over["commands"][0]["reason"] == "memory"
    assert wms.kill([job_id], ALICE)["successful"] == {str(job_id): "Killed"}
    assert wms.job(job_id, ALICE)["minor_status"] == "Marked for termination"
    kill = wms.heartbeat([Heartbeat(job_id=job_id, attempt=1)])[0]["commands"]
    assert any(c["command"] == "Kill" for c in kill)
    with pytest.raises(DCSError) as illegal:  # the wrapper cannot bring a killed job back
        wms.report([StatusReport(job_id=job_id, attempt=1, status=JobStatus.DONE)])
    assert illegal.value.code == "illegal-transition"
    assert wms.reschedule([job_id], ALICE)["successful"] == {str(job_id): "Received"}
    # the old attempt's pilot is told to stop; the new attempt gets no stale Kill
    assert "rescheduled" in wms.heartbeat([Heartbeat(job_id=job_id, attempt=1)])[0]["commands"][0]["reason"]
    with pytest.raises(DCSError) as stale:
        wms.report([StatusReport(job_id=job_id, attempt=1, status=JobStatus.DONE)])
    assert stale.value.code == "stale-attempt"
    Optimizer(wms).run_once()
    again = matcher.match(pilot(pilot_id="pilot-2"))["job"]
    assert again["attempt"] == 2
    assert wms.heartbeat([Heartbeat(job_id=job_id, attempt=2, pilot_id="pilot-2")])[0]["commands"] == []
    wms.report([StatusReport(job_id=job_id, attempt=2, status=JobStatus.COMPLETING, minor_status="Uploading Output Sandbox")])
    wms.report([StatusReport(job_id=job_id, attempt=2, status=JobStatus.DONE, minor_status="Execution Complete",
                             application_status="exit 0", parameters={"events": 100})])
    final = wms.job(job_id, ALICE)
    assert (final["status"], final["minor_status"], final["application_status"]) == ("Done", "Execution Complete", "exit 0")
    params = wms.parameters(job_id, ALICE)
    assert params["parameters"]["events"] == "100" and params["earlier_attempts"]["1"]["StandardOutput"] == "event 1\n"
    attempts = {r["attempt"] for r in wms.logging_info(job_id, ALICE)}
    assert attempts == {1, 2}


def test_memory_aware_rescheduling_goes_to_the_high_memory_site(wms: WMS) -> None:
    (job_id,) = wms.submit({"Executable": "x"}, ALICE)
    opt, matcher = Optimizer(wms), Matcher(wms, cache_seconds=0)
    opt.run_once()
    got = matcher.match(pilot(tags=[]))["job"]
    wms.report([StatusReport(job_id=job_id, attempt=1, status=JobStatus.RUNNING)])
    result = wms.report([StatusReport(job_id=job_id, attempt=1, status=JobStatus.FAILED, memory_exceeded_mb=5200)])
    assert result == [{"job_id": job_id, "status": "Received"}] and got["attempt"] == 1
    job = wms.job(job_id, ALICE)
    assert job["max_ram"] == 6500 and job["attempt"] == 2  # max(2 x 3000, 1.25 x 5200) rounded up to 500 MB
    opt.run_once()
    assert wms.task_queues()[-1]["sites"] == ["GRID.JINR.ru"]
    assert matcher.match(pilot(tags=[], pilot_id="p2"))["job"] is None  # 3 GB slots no longer fit
    big = matcher.match(pilot(site="GRID.JINR.ru", ce="ce.jinr.ru", memory_mb=16000, tags=["highmem"]))["job"]
    assert big["job_id"] == job_id and big["description"]["MaxRAM"] == 6500
    # the next growth is capped at the largest slot; failing there ends the job with the reason
    wms.report([StatusReport(job_id=job_id, attempt=2, status=JobStatus.FAILED, memory_exceeded_mb=13500)])
    job = wms.job(job_id, ALICE)
    assert job["max_ram"] == 16000 and job["attempt"] == 3
    opt.run_once()
    assert matcher.match(pilot(site="GRID.JINR.ru", ce="ce.jinr.ru", memory_mb=16000, pilot_id="p4"))["job"]
    wms.report([StatusReport(job_id=job_id, attempt=3, status=JobStatus.FAILED, memory_exceeded_mb=17000)])
    job = wms.job(job_id, ALICE)
    assert job["status"] == "Failed" and "no CE offers more than 16000 MB" in job["minor_status"]


def test_stalled_jobs_and_the_reschedule_limit(wms: WMS) -> None:
    ids = wms.submit({"Executable": "x", "Parameters": 3}, ALICE)
    opt, matcher = Optimizer(wms), Matcher(wms, cache_seconds=0)
    opt.run_once()
    for index, job_id in enumerate(ids):
        got = matcher.match(pilot(tags=[], pilot_id=f"p{index}"))["job"]
        wms.heartbeat([Heartbeat(job_id=got["job_id"], attempt=1, pilot_id=f"p{index}")])
    start = now()
    assert wms.check_stalled(start) == {"stalled": [], "failed": [], "rescheduled": []}
    # no heartbeat for 3 periods: Stalled; the pilot of the first job is known dead: failed and rescheduled now
    later = start + timedelta(seconds=60 * 3 + 5)
    result = wms.pilot_status("p0", "Failed")
    assert result["jobs"]["rescheduled"] == [ids[0]]
    assert wms.check_stalled(later)["stalled"] == ids[1:]
    assert wms.job(ids[0], ALICE)["status"] == "Received"
    minors = [r["minor_status"] for r in wms.logging_info(ids[0], ALICE)]
    assert "Job stalled: pilot not running" in minors
    # a stalled job that sends a heartbeat again is Running again
    wms.heartbeat([Heartbeat(job_id=ids[1], attempt=1, pilot_id="p1")])
    assert wms.job(ids[1], ALICE)["status"] == "Running"
    much_later = start + timedelta(seconds=60 * 11)
    outcome = wms.check_stalled(much_later)
    assert ids[2] in outcome["failed"] and ids[2] in outcome["rescheduled"]
    # manual reschedules run out after MaxRescheduling (3)
    job_id = ids[2]
    refused = wms.reschedule([job_id], ALICE)["failed"][str(job_id)]
    assert "Received -> Rescheduled is not allowed" in refused
    for _ in range(2):  # the automatic reschedule counted once already
        wms.kill([job_id], ALICE)
        assert wms.reschedule([job_id], ALICE)["successful"][str(job_id)] == "Received"
    wms.kill([job_id], ALICE)
    assert "rescheduled 3 times already" in wms.reschedule([job_id], ALICE)["failed"][str(job_id)]
    job = wms.job(job_id, ALICE)
    assert job["status"] == "Killed" and job["reschedule_counter"] == 3
    with pytest.raises(DCSError):
        wms.reschedule([job_id], ALICE, reset=True)
    assert wms.reschedule([job_id], ADMIN, reset=True)["successful"][str(job_id)] == "Received"
    assert wms.job(job_id, ALICE)["attempt"] == 5
    # an automatic reschedule beyond the limit fails the job with the reason
    wms.config.max_rescheduling = 1
    (other,) = [i for i in ids if wms.job(i, ALICE)["reschedule_counter"] == 1][:1]
    Optimizer(wms).run_once()
    got = Matcher(wms, cache_seconds=0).match(pilot(tags=[], pilot_id="last"))["job"]
    done = wms.report([StatusReport(job_id=got["job_id"], attempt=got["attempt"], status=JobStatus.FAILED,
                                    reschedule=True)])[0]
    if wms.job(got["job_id"], ALICE)["reschedule_counter"] >= 1:
        assert done["status"] == "Failed"
        assert wms.job(got["job_id"], ALICE)["minor_status"] == "Maximum of reschedulings reached"
    del other


def test_fair_share_priority_and_running_limits(wms: WMS) -> None:
    wms.config.shares = {"juno_production": 3000, "juno_user": 1000}
    wms.config.running_limits = {"GRID.CNAF.it": 2}
    prod = Caller("zhangxm", "juno_production", group_manager=True)
    low = wms.submit({"Executable": "low", "Parameters": 10, "Priority": 1}, ALICE)
    high = wms.submit({"Executable": "high", "Parameters": 10, "Priority": 9}, ALICE)
    wms.submit({"Executable": "boris", "Parameters": 10}, BORIS)
    wms.submit({"Executable": "prod", "Parameters": 30, "JobType": "MCSimulation"}, prod)
    Optimizer(wms).run_once()
    matcher = Matcher(wms, cache_seconds=0)
    taken = [matcher.match(pilot(tags=[], pilot_id=f"p{i}"))["job"] for i in range(20)]
    by_group = {g: sum(1 for j in taken if j["group"] == g) for g in ("juno_production", "juno_user")}
    assert by_group == {"juno_production": 15, "juno_user": 5}  # 3:1 shares
    users = [j["owner"] for j in taken if j["group"] == "juno_user"]
    assert abs(users.count("alice") - users.count("boris")) <= 1  # users split their group's share
    alice_jobs = [j["job_id"] for j in taken if j["owner"] == "alice"]
    assert all(j in high for j in alice_jobs)  # priority orders a user's jobs
    assert low[0] not in alice_jobs
    cnaf = [matcher.match(pilot(site="GRID.CNAF.it", ce="ce.cnaf.infn.it", tags=[], pilot_id=f"c{i}")) for i in range(3)]
    assert [a["job"] is not None for a in cnaf] == [True, True, False]
    assert "running limit is 2" in cnaf[2]["reason"]
    # a banned site's pilots get only Test jobs
    wms.set_site_status("GRID.IHEP.cn", SiteStatus.BANNED, "downtime", ADMIN)
    (test_job,) = wms.submit({"Executable": "t", "JobType": "Test"}, ALICE)
    Optimizer(wms).run_once()
    assert matcher.match(pilot(tags=[], pilot_id="t1"))["job"]["job_id"] == test_job
    assert "banned" in matcher.match(pilot(tags=[], pilot_id="t2"))["reason"]
    with pytest.raises(DCSError) as forbidden:
        wms.submit({"Executable": "x", "JobType": "MCSimulation"}, ALICE)
    assert forbidden.value.code == "forbidden-job-type"


def test_sandboxes_are_shared_deduplicated_and_removed_with_the_last_job(wms: WMS, tmp_path: Path) -> None:
    first = wms.upload_sandbox(b"archive-bytes", ALICE)
    again = wms.upload_sandbox(b"archive-bytes", ALICE)
    assert first == again and wms.sandbox_store.exists(first["hash"])
    ids = wms.submit({"Executable": "x", "InputSandbox": [first["ref"], "LFN:/juno/a"], "Parameters": 5}, ALICE)
    with pytest.raises(DCSError) as unknown:
        wms.submit({"Executable": "x", "InputSandbox": ["SB:sha256:" + "0" * 64]}, ALICE)
    assert unknown.value.code == "unknown-sandbox"
    assert wms.sandbox(first["hash"], ALICE) == b"archive-bytes"
    with pytest.raises(DCSError):
        wms.sandbox(first["hash"], BORIS)
    # output sandbox from the wrapper, downloaded by the owner
    Optimizer(wms).run_once()
    got = Matcher(wms, cache_seconds=0).match(pilot(tags=[]))["job"]
    assert got["input_sandbox"] == first["hash"]
    assert wms.job_input_sandbox(got["job_id"], 1, "pilot-1") == b"archive-bytes"
    out = wms.store_output_sandbox(got["job_id"], 1, "pilot-1", b"outputs")
    assert wms.output_sandbox(got["job_id"], ALICE) == b"outputs"
    assert wms.delete(ids[:4], ALICE)["sandboxes_removed"] == [out["hash"]]
    assert wms.sandbox_store.exists(first["hash"])
    assert wms.delete(ids[4:], ALICE)["sandboxes_removed"] == [first["hash"]]
    assert not wms.sandbox_store.exists(first["hash"])
    assert wms.job(ids[0], ALICE)["status"] == "Deleted"
    stale = wms.upload_sandbox(b"never used", ALICE)
    assert wms.purge_unused_sandboxes() == []
    assert wms.purge_unused_sandboxes(now() + timedelta(days=2)) == [stale["hash"]]
