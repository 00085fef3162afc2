"""`dcs request ls|show|reset|cancel`: requests of the request management system (DIRAC's
`dirac-rms-request`), and the submission behind `dcs dm replicate --async`."""

from __future__ import annotations

from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, console, handle_errors, print_fields, print_json, print_table

request_app = typer.Typer(help="Requests of data operations (request management system).", no_args_is_help=True)


def _client() -> Any:
    from junodcs.rms.client import RequestClient

    return RequestClient()


def submit_replication(lfns: list[str], destination: str, source_se: str | None, json: bool) -> None:
    """One ReplicateAndRegister request for all `lfns`; prints its id."""
    with _client() as rms:
        request_id = rms.replicate(list(lfns), destination, source_se=source_se)
    if json:
        print_json({"request_id": request_id, "files": len(lfns), "target_se": destination})
    else:
        console().print(f"request {request_id}: ReplicateAndRegister of {len(lfns)} file(s) to {destination} "
                        f"queued; follow it with `dcs request show {request_id}`")


@request_app.command("ls")
@handle_errors
def ls(
    status: str = typer.Option(None, "--status", "-s", help="Only these statuses (comma-separated)."),
    owner: str = typer.Option(None, "--owner", help="Another owner's requests (administrators)."),
    job: int = typer.Option(None, "--job", help="Requests of this job."),
    all_owners: bool = typer.Option(False, "--all", help="Everybody's requests (administrators)."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=10_000),
    json: bool = JSON_OPTION,
) -> None:
    """Your requests, newest first."""
    with _client() as rms:
        rows = rms.list(status=status, owner=owner, job_id=job, all=all_owners, limit=limit)
    if json:
        print_json(rows)
        return
    for row in rows:
        row["progress"] = f"{row.get('operations_done', 0)}/{row.get('operations', 0)}"
    print_table(rows, [("request_id", "ID"), ("name", "Name"), ("owner", "Owner"), ("job_id", "Job"),
                       ("status", "Status"), ("progress", "Ops done"), ("not_before", "Not before"),
                       ("last_update", "Last update"), ("error", "Error")])


@request_app.command("show")
@handle_errors
def show(request_id: int = typer.Argument(..., help="Request ID."), json: bool = JSON_OPTION) -> None:
    """A request with its operations and their files."""
    with _client() as rms:
        found = rms.show(request_id)
    if json:
        print_json(found)
        return
    print_fields({k: found[k] for k in ("request_id", "name", "owner", "owner_group", "job_id", "source_component",
                                        "status", "error", "created_at", "last_update", "not_before", "executor",
                                        "lease_until", "claims")}, title=f"Request {request_id}")
    for op in found["operations"]:
        console().print(f"\n[bold]{op['position'] + 1}. {op['type']}[/bold] {op['status']}"
                        + (f"  {op['source_se']} ->" if op["source_se"] else "")
                        + (f" {', '.join(op['target_se'])}" if op["target_se"] else "")
                        + (f"  transfer job {op['transfer_job']}" if op["transfer_job"] else "")
                        + (f"\n   error: {op['error']}" if op["error"] else ""))
        print_table(op["files"], [("lfn", "LFN"), ("status", "Status"), ("attempt", "Attempt"),
                                  ("checksum", "Adler32"), ("size", "Size"), ("error", "Error")])


@request_app.command("reset")
@handle_errors
def reset(request_id: int = typer.Argument(..., help="Request ID."), json: bool = JSON_OPTION) -> None:
    """Retry a request: failed files back to Waiting with their attempts cleared, due now."""
    with _client() as rms:
        found = rms.reset(request_id)
    if json:
        print_json(found)
    else:
        console().print(f"request {request_id}: {found['status']}")


@request_app.command("cancel")
@handle_errors
def cancel(request_id: int = typer.Argument(..., help="Request ID."), json: bool = JSON_OPTION) -> None:
    """Cancel a request that is not final yet (operations already done stay done)."""
    with _client() as rms:
        found = rms.cancel(request_id)
    if json:
        print_json(found)
    else:
        console().print(f"request {request_id}: {found['status']}")


def register(app: typer.Typer) -> None:
    app.add_typer(request_app, name="request")
