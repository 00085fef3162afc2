"""`dcs transfer submit|status|cancel|ls|links|test-matrix`: the transfer service (FTS3-like)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from junodcs.cli.output import handle_errors

transfer_app = typer.Typer(help="Transfers between storage elements (FTS3-compatible service).",
                           no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print JSON.")


def _client() -> Any:
    from junodcs.transfer.client import TransferClient

    return TransferClient()


def _out(data: Any) -> None:
    from junodcs.cli.output import print_json

    print_json(data)


@transfer_app.command("submit")
@handle_errors
def submit(
    source: str = typer.Argument(..., help="Source URL (or a bulk JSON file with --file)."),
    destination: str = typer.Argument(None, help="Destination URL."),
    checksum: str | None = typer.Option(None, "--checksum", "-K", help="ADLER32:xxxxxxxx expected checksum."),
    bulk: bool = typer.Option(False, "--file", "-f", help="SOURCE is an FTS3 bulk JSON file {files, params}."),
    overwrite: bool = typer.Option(False, "--overwrite", "-o", help="Overwrite existing destinations."),
    verify: str = typer.Option("both", "--verify", help="Checksum check: both, source, target, none."),
    retry: int | None = typer.Option(None, "--retry", help="Retries of a recoverable failure (-1: none)."),
    retry_delay: int | None = typer.Option(None, "--retry-delay", help="Seconds between retries."),
    priority: int | None = typer.Option(None, "--priority", "-p", min=1, max=5, help="1 (low) .. 5 (high)."),
    activity: str | None = typer.Option(None, "--activity", help="Activity share name."),
    mode: str | None = typer.Option(None, "--mode", help="pull, push or stream (default: link/SE setting)."),
    bring_online: int | None = typer.Option(None, "--bring-online", help="Stage from tape first; timeout (s)."),
    archive_timeout: int | None = typer.Option(None, "--archive-timeout", help="Wait until on tape (s)."),
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait until the job ends; exit 1 unless FINISHED."),
    json_output: bool = JSON,
) -> None:
    """Submit a transfer job; prints its id."""
    from junodcs.core.errors import InvalidInput
    from junodcs.transfer.client import Transfer

    with _client() as fts:
        if bulk:
            body = json.loads(open(source).read())
            result = fts.post("/jobs", json=body)
            job_id = result["job_id"]
        else:
            if not destination:
                raise InvalidInput("give SOURCE and DESTINATION URLs (or --file BULK.json)", code="usage")
            job_id = fts.submit([Transfer(source, destination, checksum=checksum, activity=activity)],
                                verify_checksum=verify, overwrite=overwrite, retry=retry, retry_delay=retry_delay,
                                priority=priority, transfer_mode=mode, bring_online=bring_online,
                                archive_timeout=archive_timeout)
        job = fts.wait(job_id) if wait else None
    if json_output:
        _out(job or {"job_id": job_id})
    else:
        typer.echo(f"Job id: {job_id}")
        if job:
            typer.echo(f"{job['job_state']}" + (f": {job['reason']}" if job.get("reason") else ""))
    if job and job["job_state"] != "FINISHED":
        raise typer.Exit(1)


@transfer_app.command("status")
@handle_errors
def status(job_id: str = typer.Argument(...), json_output: bool = JSON) -> None:
    """A job and its files (state, reason, throughput, retries)."""
    from junodcs.cli.output import print_fields, print_table

    with _client() as fts:
        job = fts.status(job_id)
    if json_output:
        _out(job)
        return
    print_fields({k: job.get(k) for k in ("job_id", "job_state", "reason", "user", "vo_name", "submit_time",
                                          "job_finished", "priority", "retry", "verify_checksum")})
    print_table(job["files"], [("file_id", "file"), ("file_state", "state"), ("source_se_name", "source"),
                               ("dest_se_name", "destination"), ("transfer_mode", "mode"), ("filesize", "size"),
                               ("throughput", "MB/s"), ("retry", "retries"), ("reason", "reason")])


@transfer_app.command("cancel")
@handle_errors
def cancel(job_id: str = typer.Argument(...), json_output: bool = JSON) -> None:
    """Cancel a job (files not finished become CANCELED)."""
    with _client() as fts:
        job = fts.cancel(job_id)
    if json_output:
        _out(job)
    else:
        typer.echo(f"{job_id}: {job['job_state']}")


@transfer_app.command("ls")
@handle_errors
def ls(state: list[str] = typer.Option([], "--state", "-s", help="Only jobs in this state (repeat)."),
       mine: bool = typer.Option(False, "--mine", help="Only my jobs."),
       limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000),
       json_output: bool = JSON) -> None:
    """Recent transfer jobs, newest first."""
    from junodcs.cli.output import print_table

    with _client() as fts:
        jobs = fts.list_jobs(state_in=[s.upper() for s in state] or None, mine=mine, limit=limit)
    if json_output:
        _out(jobs)
        return
    print_table(jobs, [("job_id", "job"), ("job_state", "state"), ("user", "user"), ("submit_time", "submitted"),
                       ("job_finished", "finished"), ("reason", "reason")])


def _fmt(value: Any, digits: int = 1) -> Any:
    return None if value is None else round(float(value), digits)


@transfer_app.command("links")
@handle_errors
def links(window: float | None = typer.Option(None, "--window", help="Seconds of history (default 300)."),
          set_link: list[str] = typer.Option([], "--set", help="SRC:DST[:MIN:MAX[:MODE]] configure a link "
                                                               "(names, URLs or *; administrators)."),
          json_output: bool = JSON) -> None:
    """Per link: queue, active, optimizer limit, throughput, success rate, transfer mode."""
    from junodcs.cli.output import print_table
    from junodcs.core.errors import InvalidInput

    with _client() as fts:
        for spec in set_link:
            parts = spec.split(":") if "://" not in spec else spec.split(",")
            if len(parts) < 2:
                raise InvalidInput(f"--set {spec!r}: expected SRC:DST[:MIN:MAX[:MODE]]", code="usage")
            settings: dict[str, Any] = {}
            if len(parts) >= 4:
                settings.update(min_active=int(parts[2]), max_active=int(parts[3]))
            if len(parts) >= 5:
                settings["tpc_mode"] = parts[4]
            fts.set_link(parts[0], parts[1], **settings)
        rows = fts.links(window)
    if json_output:
        _out(rows)
        return
    for r in rows:
        r["throughput"] = _fmt(r["throughput"], 2)
        r["success_rate"] = _fmt(r["success_rate"])
        r["limit"] = f"{r['optimizer_active'] if r['optimizer_active'] is not None else '-'} " \
                     f"[{r['min_active']}..{r['max_active']}]"
    print_table(rows, [("source", "source"), ("destination", "destination"), ("queue", "queue"),
                       ("active", "active"), ("limit", "limit [min..max]"), ("finished", "finished"),
                       ("failed", "failed"), ("success_rate", "success %"), ("throughput", "MB/s"),
                       ("tpc_mode", "mode")])


MODES = ("stream", "pull", "push")


@transfer_app.command("test-matrix")
@handle_errors
def test_matrix(
    size: int = typer.Option(1 << 20, "--size", help="Bytes of the test file."),
    se: list[str] = typer.Option([], "--se", help="Only these SEs (repeat); default: every SE with a URL."),
    mode: list[str] = typer.Option([], "--mode", help="Only these modes (stream, pull, push)."),
    show: bool = typer.Option(False, "--show", help="Only show the stored results; run nothing."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the test transfers."),
    path: str = typer.Option("/juno/test/transfer-matrix", "--path", help="Directory for the test files."),
    json_output: bool = JSON,
) -> None:
    """A small transfer for every ordered SE pair in each mode; results are stored and shown as a table."""
    import os
    import tempfile
    import uuid

    from junodcs.core.errors import DCSError
    from junodcs.storage.client import StorageClient
    from junodcs.transfer.client import Transfer

    with _client() as fts:
        if not show:
            ses = [s for s in fts.storage_elements() if s["url"] and (not se or s["name"] in se)]
            if len(ses) < 2:
                raise DCSError("the test matrix needs at least two SEs with a URL", code="too-few-ses")
            modes = [m for m in MODES if not mode or m in mode]
            run = uuid.uuid4().hex[:8]
            token = fts._headers().get("Authorization", "").removeprefix("Bearer ") or None
            data = os.urandom(size)
            sources: dict[str, str] = {}
            errors: dict[str, str] = {}
            with StorageClient(token, ca_dir=fts.config.ca_dir or fts.config.ca_file) as storage, \
                    tempfile.NamedTemporaryFile() as tmp:
                tmp.write(data)
                tmp.flush()
                for s in ses:
                    url = f"{s['url'].rstrip('/')}{path}/{run}/src-{s['name']}"
                    try:
                        storage.put(tmp.name, url)
                        sources[s["name"]] = url
                    except DCSError as exc:
                        errors[s["name"]] = f"cannot write the test file at the source: {exc.detail}"
                jobs: list[tuple[str, str, str, str, str]] = []  # job, mode, src, dst, dest url
                for m in modes:
                    for a in ses:
                        for b in ses:
                            if a is b:
                                continue
                            if a["name"] not in sources:
                                continue
                            dst = f"{b['url'].rstrip('/')}{path}/{run}/{m}-{a['name']}-to-{b['name']}"
                            job_id = fts.submit([Transfer(sources[a["name"]], dst)], transfer_mode=m, retry=-1,
                                                overwrite=True, activity="test-matrix",
                                                job_metadata={"test_matrix": run})
                            jobs.append((job_id, m, a["name"], b["name"], dst))
                results = []
                deadline = time.monotonic() + timeout
                for m in modes:
                    for a in ses:
                        for b in ses:
                            if a is not b and a["name"] in errors:
                                results.append({"source": a["name"], "destination": b["name"], "mode": m,
                                                "ok": False, "size": size, "duration": None,
                                                "error": errors[a["name"]]})
                for job_id, m, a_name, b_name, dst in jobs:
                    try:
                        job = fts.wait(job_id, timeout=max(1.0, deadline - time.monotonic()), interval=0.3)
                        f = job["files"][0]
                        ok = f["file_state"] == "FINISHED"
                        results.append({"source": a_name, "destination": b_name, "mode": m, "ok": ok, "size": size,
                                        "duration": f.get("tx_duration"), "error": None if ok else f.get("reason")})
                    except DCSError as exc:
                        fts.cancel(job_id)
                        results.append({"source": a_name, "destination": b_name, "mode": m, "ok": False,
                                        "size": size, "duration": None, "error": exc.detail})
                    try:
                        storage.delete(dst)
                    except DCSError:
                        pass
                for url in sources.values():
                    try:
                        storage.delete(url)
                    except DCSError:
                        pass
            fts.record_tests(results)
        matrix = fts.test_matrix()
    if json_output:
        _out(matrix)
        return
    from junodcs.cli.output import print_table

    for r in matrix:
        r["result"] = "ok" if r["ok"] else "FAILED"
        r["rate"] = _fmt(r["rate"], 2)
        r["history"] = f"{r['successes']}/{r['runs']}"
    print_table(sorted(matrix, key=lambda r: (r["source"], r["destination"], MODES.index(r["mode"])
                                              if r["mode"] in MODES else 9)),
                [("source", "source"), ("destination", "destination"), ("mode", "mode"), ("result", "result"),
                 ("rate", "MB/s"), ("time", "last run"), ("history", "ok/runs"), ("last_error", "last error")],
                title="HTTP-TPC test matrix")
    if any(not r["ok"] for r in matrix):
        sys.stderr.write("some pairs/modes fail: see the last error column\n")


def register(app: typer.Typer) -> None:
    app.add_typer(transfer_app, name="transfer")
