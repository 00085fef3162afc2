"""`dcs job ...` and `dcs site ban|allow|mask` against a real server on loopback."""

from __future__ import annotations

import json
import tarfile
import io

import pytest
from typer.testing import CliRunner

from authutil import bound_socket, full_token, make_app, serve
from junodcs.wms.models import Heartbeat, MatchRequest, StatusReport
from junodcs.wms.optimizers import Optimizer
from junodcs.wms.matcher import Matcher


@pytest.fixture
def server(grid, sqlite_engine, monkeypatch):
    sock, url = bound_socket()
    app = make_app(grid, sqlite_engine, url=url)
    with serve(app, sock):
        monkeypatch.setenv("DCS_SERVER_URL", url)
        monkeypatch.setenv("BEARER_TOKEN", full_token(app, "alice"))
        yield app


def dcs(*args: str) -> tuple[int, str, str]:
    from junodcs.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_job_commands_end_to_end(server, tmp_path, monkeypatch) -> None:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hello\n")
    (tmp_path / "job.jdl").write_text('[\n  Executable = "run.sh";\n  Arguments = "%s";\n  InputSandbox = {"run.sh"};\n'
                                      '  OutputSandbox = {"std.out"};\n  Parameters = 3;\n]\n')
    code, out, err = dcs("job", "submit", str(tmp_path / "job.jdl"))
    assert code == 0, err
    assert out.startswith("JobID = [")
    ids = json.loads(out.split("=", 1)[1])
    (tmp_path / "one.json").write_text(json.dumps({"Executable": "x", "JobGroup": "g1"}))
    code, out, err = dcs("job", "submit", str(tmp_path / "one.json"))
    assert code == 0 and out.strip() == f"JobID = {ids[-1] + 1}"
    code, out, err = dcs("job", "status", str(ids[0]))
    assert out.strip() == f"JobID={ids[0]} Status=Received; MinorStatus=Job accepted; Site=ANY;"
    code, out, err = dcs("job", "select", "--status", "Received", "--json")
    assert [j["job_id"] for j in json.loads(out)] == ids + [ids[-1] + 1]
    code, out, err = dcs("job", "select", "--job-group", "g1")
    assert out.splitlines() == ["==> Selected 1 jobs with conditions: job_group = g1", str(ids[-1] + 1)]
    # the sandbox was uploaded once and shared; a pilot runs the first job and uploads its output
    wms = server.state.wms
    Optimizer(wms).run_once()
    got = Matcher(wms, cache_seconds=0).match(MatchRequest(pilot_id="p", site="GRID.IHEP.cn", ce="ce.ihep.ac.cn",
                                                           platform="el9", memory_mb=3000, time_left=10**5))["job"]
    archive = wms.job_input_sandbox(got["job_id"], 1, "p")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["run.sh"]
    wms.heartbeat([Heartbeat(job_id=got["job_id"], attempt=1, pilot_id="p", stdout_tail="hello\n")])
    code, out, err = dcs("job", "peek", str(got["job_id"]))
    assert out == "hello\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("std.out")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    wms.store_output_sandbox(got["job_id"], 1, "p", buffer.getvalue())
    wms.report([StatusReport(job_id=got["job_id"], attempt=1, status="Done", minor_status="Execution Complete")])
    code, out, err = dcs("job", "get-output", str(got["job_id"]), "-D", str(tmp_path / "out"))
    assert code == 0, err
    assert (tmp_path / "out" / str(got["job_id"]) / "std.out").read_text() == "hello\n"
    code, out, err = dcs("job", "logging-info", str(got["job_id"]), "--json")
    assert [r["status"] for r in json.loads(out)] == ["Received", "Checking", "Waiting", "Matched", "Running", "Done"]
    code, out, err = dcs("job", "parameters", str(got["job_id"]), "--json")
    assert json.loads(out)["parameters"]["StandardOutput"] == "hello\n"
    code, out, err = dcs("job", "kill", str(ids[1]))
    assert code == 0 and out.strip() == f"Killed job(s): {ids[1]}"
    code, out, err = dcs("job", "reschedule", str(ids[1]))
    assert code == 0 and "Rescheduled" in out
    code, out, err = dcs("job", "delete", str(got["job_id"]), "999999")
    assert code == 1 and "error: job 999999: no such job" in err
    code, out, err = dcs("job", "kill", str(got["job_id"]))
    assert code == 1 and "Deleted -> Killed is not allowed" in err


def test_errors_are_one_line(server, tmp_path) -> None:
    (tmp_path / "bad.jdl").write_text('[\n  Executable = "x"\n  Arguments = "y";\n]\n')
    code, out, err = dcs("job", "submit", str(tmp_path / "bad.jdl"))
    assert code == 1 and err.strip() == ("error[jdl-syntax]: JDL line 3, column 3: expected ';' after the value of "
                                         "Executable, found 'Arguments'")
    (tmp_path / "missing.jdl").write_text('Executable = "x"; InputSandbox = {"nothere.sh"};')
    code, out, err = dcs("job", "submit", str(tmp_path / "missing.jdl"))
    assert code == 1 and err.startswith("error[missing-file]: InputSandbox: nothere.sh does not exist")
    (tmp_path / "many.jdl").write_text('Executable = "x"; Parameters = 100000;')
    code, out, err = dcs("job", "submit", str(tmp_path / "many.jdl"))
    assert code == 1 and err.startswith("error[too-many-jobs]:")
    code, out, err = dcs("job", "status", "12345")
    assert code == 1 and out.strip() == "JobID=12345 not found"


def test_site_mask_commands(server, monkeypatch) -> None:
    code, out, err = dcs("site", "ban", "GRID.MSU.ru", "network down")
    assert code == 1 and err.startswith("error[forbidden]:")
    monkeypatch.setenv("BEARER_TOKEN", full_token(server, "zhangxm", "juno_admin"))
    code, out, err = dcs("site", "ban", "GRID.MSU.ru", "network down")
    assert code == 0 and out.strip() == "GRID.MSU.ru is Banned: network down"
    code, out, err = dcs("site", "allow", "GRID.MSU.ru", "fixed")
    assert code == 0
    code, out, err = dcs("site", "history", "GRID.MSU.ru", "--json")
    assert [(h["status"], h["reason"]) for h in json.loads(out)] == [("Banned", "network down"), ("Active", "fixed")]
    code, out, err = dcs("site", "mask", "--json")
    assert {s["site"]: s["status"] for s in json.loads(out)}["GRID.MSU.ru"] == "Active"
