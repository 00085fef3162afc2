"""Pilot records on the three databases: states and their transitions, what a site director is told (waiting
jobs that fit the CE, idle pilots), output storage, and a dead pilot failing and rescheduling its job."""

from __future__ import annotations

import pytest

from junodcs.core.errors import DCSError
from junodcs.wms.logic import WMS, Caller, WMSConfig
from junodcs.wms.matcher import Matcher
from junodcs.wms.models import MatchRequest
from junodcs.wms.optimizers import Optimizer
from junodcs.wms.pilots import Pilots

ALICE = Caller("alice", "juno_user")


def test_pilot_records_director_view_and_dead_pilot(engine, grid) -> None:  # type: ignore[no-untyped-def]
    wms = WMS(engine, grid, config=WMSConfig())
    pilots = Pilots(wms)
    # nothing waits: a director of any CE would submit nothing
    assert pilots.waiting_for_ce("GRID.JINR.ru", "ce.jinr.ru")["waiting_jobs"] == 0
    ids = wms.submit([{"Executable": "x", "Parameters": 3, "Site": "GRID.IHEP.cn"},
                      {"Executable": "y", "MaxRAM": 8000}], ALICE)
    Optimizer(wms).run_once()
    ihep = pilots.waiting_for_ce("GRID.IHEP.cn", "ce.ihep.ac.cn")
    assert ihep["waiting_jobs"] == 3, "the 8 GB job does not fit a 3 GB IHEP slot"
    jinr = pilots.waiting_for_ce("GRID.JINR.ru", "ce.jinr.ru")
    assert jinr["waiting_jobs"] == 1 and jinr["idle_pilots"] == 0
    with pytest.raises(DCSError) as bad:
        pilots.waiting_for_ce("GRID.JINR.ru", "ce.ihep.ac.cn")
    assert bad.value.code == "unknown-ce"

    pilots.register([{"pilot_id": "p1", "site": "GRID.IHEP.cn", "ce": "ce.ihep.ac.cn", "reference": "local://1"},
                     {"pilot_id": "p2", "site": "GRID.IHEP.cn", "ce": "ce.ihep.ac.cn"}])
    with pytest.raises(DCSError) as twice:
        pilots.register([{"pilot_id": "p1", "site": "GRID.IHEP.cn", "ce": "ce.ihep.ac.cn"}])
    assert twice.value.code == "pilot-exists"
    assert pilots.waiting_for_ce("GRID.IHEP.cn", "ce.ihep.ac.cn")["idle_pilots"] == 2
    assert pilots.update("p1", "Running")["changed"]
    job = Matcher(wms).match(MatchRequest(pilot_id="p1", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn", platform="el9",
                                          tags=["juno"], memory_mb=3000, time_left=100_000))["job"]
    view = pilots.waiting_for_ce("GRID.IHEP.cn", "ce.ihep.ac.cn")
    assert view["waiting_jobs"] == 2 and view["idle_pilots"] == 1, "p1 holds a job, p2 is still idle"
    assert view["pilots"]["Running"] == 1 and view["pilots"]["Submitted"] == 1
    info = pilots.info("p1")
    assert info["reference"] == "local://1" and [j["job_id"] for j in info["jobs"]] == [job["job_id"]]
    assert pilots.jobs_pilots(job["job_id"]) == [{"job_id": job["job_id"], "attempt": 1, "pilot_id": "p1",
                                                  "matched_at": info["jobs"][0]["matched_at"]}]

    # the batch system says p1 died: its job fails at once and comes back for another attempt
    with pytest.raises(DCSError):
        pilots.output("p1")
    pilots.store_output("p1", "pilot log line\n")
    ended = pilots.update("p1", "Aborted", "killed by signal 9", source="Director")
    assert ended["changed"] and job["job_id"] in ended["jobs"]["failed"] and job["job_id"] in ended["jobs"]["rescheduled"]
    assert wms.job(job["job_id"], ALICE)["attempt"] == 2
    assert pilots.output("p1")["output"] == "pilot log line\n"
    late = pilots.update("p1", "Done")
    assert late == {"pilot_id": "p1", "status": "Aborted", "changed": False, "detail": "Aborted is final"}
    assert pilots.update("p2", "Done", "ran 0 jobs")["changed"]
    assert [p["status"] for p in pilots.list(ce="ce.ihep.ac.cn", status=["Aborted"])] == ["Aborted"]
    with pytest.raises(DCSError) as status:
        pilots.update("p2", "Lost")
    assert status.value.code == "invalid-status"
