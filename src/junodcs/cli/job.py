"""`dcs job`: submit and follow jobs (DIRAC's dirac-wms-job-* commands and output formats); `dcs site ban|allow|
mask|history` attach to the lead's `site` app from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_json, print_table

job_app = typer.Typer(help="Jobs: submit (JDL or JSON), status, logging, output, kill, reschedule, select.",
                      no_args_is_help=True)


def _client() -> Any:
    from junodcs.wms.client import WMSClient

    return WMSClient()


def _read_description(path: Path) -> Any:
    """A .json file is a JSON description (or a list of them); anything else is JDL text."""
    from junodcs.core.errors import InvalidInput

    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read: {exc.strerror or exc}", code="unreadable-file") from None
    if path.suffix.lower() == ".json":
        import json

        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{path}: not valid JSON: {exc}", code="invalid-json") from None
    from junodcs.wms import jdl

    jdl.parse(text)  # a syntax error shows here, with its line, before anything is uploaded
    return text


def _attach_sandbox(client: Any, description: Any, base: Path) -> Any:
    """Upload the local files of InputSandbox as one archive and replace them by its SB: reference."""
    from junodcs.core.errors import InvalidInput
    from junodcs.wms import jdl as jdlmod
    from junodcs.wms.sandbox import pack

    if isinstance(description, str):
        attributes, _ = jdlmod.parse(description)
    else:
        attributes = dict(description)
    key = next((k for k in attributes if k.lower() == "inputsandbox"), None)
    if key is None:
        return description
    entries = attributes[key]
    entries = [entries] if isinstance(entries, str) else list(entries)
    local = [e for e in entries if isinstance(e, str) and not e.upper().startswith(("LFN:", "SB:"))]
    if not local:
        return description
    missing = [e for e in local if not (base / e).exists()]
    if missing:
        raise InvalidInput(f"InputSandbox: {missing[0]} does not exist (relative to {base})", code="missing-file")
    info = client.upload_sandbox(pack(local, base))
    attributes[key] = [e for e in entries if e not in local] + [info["ref"]]
    return attributes


@job_app.command("submit")
@handle_errors
def submit(files: list[Path] = typer.Argument(..., help="JDL (.jdl) or JSON (.json) job descriptions."),
           json: bool = JSON_OPTION) -> None:
    """Submit jobs; prints `JobID = N` (DIRAC style), or the list of IDs for a parametric or bulk submission."""
    descriptions: list[Any] = []
    for path in files:
        loaded = _read_description(path)
        descriptions.extend(loaded if isinstance(loaded, list) else [loaded])
    with _client() as client:
        ready = [_attach_sandbox(client, d, files[0].parent) for d in descriptions]
        ids = client.submit(ready)
    if json:
        print_json({"job_ids": ids})
    elif len(ids) == 1:
        typer.echo(f"JobID = {ids[0]}")
    else:
        typer.echo(f"JobID = {ids}")


def _dirac_status(job: dict[str, Any]) -> str:
    return (f"JobID={job['job_id']} Status={job['status']}; MinorStatus={job['minor_status']}; "
            f"Site={job['site'] or 'ANY'};")


@job_app.command("status")
@handle_errors
def status(job_ids: list[int], json: bool = JSON_OPTION) -> None:
    """Status of jobs (`JobID=N Status=...; MinorStatus=...; Site=...;`)."""
    with _client() as client:
        found = client.status(job_ids)
    if json:
        print_json(found)
        return
    for job_id in job_ids:
        job = found.get(str(job_id))
        typer.echo(_dirac_status(job) if job else f"JobID={job_id} not found")
    if len(found) < len(set(job_ids)):
        raise typer.Exit(1)


@job_app.command("logging-info")
@handle_errors
def logging_info(job_id: int, json: bool = JSON_OPTION) -> None:
    """The job's full history: status, minor status, application status, time, source."""
    with _client() as client:
        rows = client.logging_info(job_id)
    if json:
        print_json(rows)
        return
    print_table(rows, [("attempt", "Attempt"), ("status", "Status"), ("minor_status", "MinorStatus"),
                       ("application_status", "ApplicationStatus"), ("time", "DateTime (UTC)"), ("source", "Source")],
                title=f"Job {job_id}")


@job_app.command("parameters")
@handle_errors
def parameters(job_id: int, attempt: int = typer.Option(None, help="An earlier attempt's parameters."),
               json: bool = JSON_OPTION) -> None:
    """Parameters the job reported (and those of earlier attempts)."""
    with _client() as client:
        data = client.parameters(job_id, attempt)
    if json:
        print_json(data)
        return
    rows = [{"name": k, "value": v} for k, v in data["parameters"].items()]
    print_table(rows, [("name", "Parameter"), ("value", "Value")], title=f"Job {job_id}, attempt {data['attempt']}")


@job_app.command("peek")
@handle_errors
def peek(job_id: int, json: bool = JSON_OPTION) -> None:
    """The standard output of a running job, as far as its last heartbeat."""
    with _client() as client:
        text = client.peek(job_id)
    if json:
        print_json({"job_id": job_id, "stdout": text})
    else:
        typer.echo(text, nl=not text.endswith("\n"))


@job_app.command("get-output")
@handle_errors
def get_output(job_ids: list[int], directory: Path = typer.Option(Path("."), "-D", "--dir",
                                                                   help="Write into DIR/<JobID>/."),
               json: bool = JSON_OPTION) -> None:
    """Download and unpack output sandboxes into `<dir>/<JobID>/`."""
    from junodcs.wms.sandbox import unpack

    done = {}
    with _client() as client:
        for job_id in job_ids:
            target = directory / str(job_id)
            done[str(job_id)] = {"directory": str(target), "files": unpack(client.output_sandbox(job_id), target)}
    if json:
        print_json(done)
        return
    for job_id, info in done.items():
        typer.echo(f"Job output sandbox retrieved in {info['directory']}/ ({len(info['files'])} files)")


def _outcome(verb: str, result: dict[str, Any], json: bool) -> None:
    if json:
        print_json(result)
    else:
        ok = sorted(result["successful"], key=int)
        if ok:
            typer.echo(f"{verb} job(s): {', '.join(ok)}")
        for job_id, reason in sorted(result["failed"].items(), key=lambda kv: int(kv[0])):
            typer.echo(f"error: job {job_id}: {reason}", err=True)
    if result["failed"]:
        raise typer.Exit(1)


@job_app.command("kill")
@handle_errors
def kill(job_ids: list[int], json: bool = JSON_OPTION) -> None:
    """Kill jobs (a running payload is stopped by its pilot at the next heartbeat)."""
    with _client() as client:
        _outcome("Killed", client.kill(job_ids), json)


@job_app.command("delete")
@handle_errors
def delete(job_ids: list[int], json: bool = JSON_OPTION) -> None:
    """Delete jobs (killed first when active); their sandboxes go when no job uses them."""
    with _client() as client:
        _outcome("Deleted", client.delete_jobs(job_ids), json)


@job_app.command("reschedule")
@handle_errors
def reschedule(job_ids: list[int], reset: bool = typer.Option(False, "--reset",
                                                              help="Reset the counter (JobAdministrator)."),
               json: bool = JSON_OPTION) -> None:
    """Run jobs again from their description (at most MaxRescheduling times)."""
    with _client() as client:
        _outcome("Rescheduled", client.reschedule(job_ids, reset=reset), json)


@job_app.command("select")
@handle_errors
def select(status: list[str] = typer.Option(None, "--status", help="Repeat for several."),
           site: str = typer.Option(None, "--site"), owner: str = typer.Option(None, "--owner"),
           group: str = typer.Option(None, "--group", help="Owner group."),
           job_group: str = typer.Option(None, "--job-group"),
           date: str = typer.Option(None, "--date", help="Submitted on this day (YYYY-MM-DD, UTC)."),
           since: str = typer.Option(None, "--since", help="Submitted at or after (ISO time)."),
           until: str = typer.Option(None, "--until", help="Submitted before (ISO time)."),
           limit: int = typer.Option(100_000, "--limit"), json: bool = JSON_OPTION) -> None:
    """Select jobs by status, site, owner, group, job group and submission date."""
    from datetime import datetime, timedelta

    from junodcs.core.errors import InvalidInput

    def parse(value: str, option: str) -> datetime:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{option} {value!r}: expected an ISO date or time, e.g. 2025-03-01") from None

    if date:
        since = since or parse(date, "--date").isoformat()
        until = until or (parse(date, "--date") + timedelta(days=1)).isoformat()
    filters = {"status": status or None, "site": site, "owner": owner, "group": group, "job_group": job_group,
               "since": parse(since, "--since").isoformat() if since else None,
               "until": parse(until, "--until").isoformat() if until else None, "limit": limit}
    with _client() as client:
        jobs = list(client.select(**filters))
    if json:
        print_json(jobs)
        return
    conditions = "; ".join(f"{k} = {v}" for k, v in filters.items() if v is not None and k != "limit")
    typer.echo(f"==> Selected {len(jobs)} jobs with conditions: {conditions or 'none'}")
    if jobs:
        typer.echo(",".join(str(j["job_id"]) for j in jobs))


# -- site mask: attached to the lead's `dcs site` app -----------------------------------------------------


@handle_errors
def site_ban(site: str, reason: str = typer.Argument(..., help="Why (shown to users and operators)."),
             json: bool = JSON_OPTION) -> None:
    """Ban a site: no more jobs start there (Test jobs still do); held jobs say why."""
    with _client() as client:
        data = client.ban(site, reason)
    print_json(data) if json else typer.echo(f"{data['site']} is {data['status']}: {data['reason']}")


@handle_errors
def site_allow(site: str, reason: str = typer.Argument(..., help="Why."), json: bool = JSON_OPTION) -> None:
    """Allow a banned site again; jobs held for it are re-checked at once."""
    with _client() as client:
        data = client.allow(site, reason)
    print_json(data) if json else typer.echo(f"{data['site']} is {data['status']}: {data['reason']}")


@handle_errors
def site_mask(json: bool = JSON_OPTION) -> None:
    """The site mask: status, reason, who changed it, running jobs and limits."""
    with _client() as client:
        rows = client.sites()
    if json:
        print_json(rows)
        return
    print_table(rows, [("site", "Site"), ("status", "Status"), ("reason", "Reason"), ("author", "By"),
                       ("updated_at", "Since"), ("running", "Running"), ("running_limit", "Limit")],
                title="Site mask")


@handle_errors
def site_history(site: str, json: bool = JSON_OPTION) -> None:
    """Every ban and allow of a site, with reasons."""
    with _client() as client:
        rows = client.site_history(site)
    if json:
        print_json(rows)
        return
    print_table(rows, [("time", "Time (UTC)"), ("status", "Status"), ("reason", "Reason"), ("author", "By")],
                title=site)


def register(app: typer.Typer) -> None:
    from junodcs.cli.site import site_app

    app.add_typer(job_app, name="job")
    site_app.command("ban")(site_ban)
    site_app.command("allow")(site_allow)
    site_app.command("mask")(site_mask)
    site_app.command("history")(site_history)
