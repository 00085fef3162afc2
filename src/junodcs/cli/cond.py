"""`dcs cond`: condition data (payloads, tags, IOVs, global tags) and the Frontier server for Squids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_fields, print_json, print_table

cond_app = typer.Typer(help="Condition data: payloads, tags, IOVs, global tags, Frontier.", no_args_is_help=True)
payload_app = typer.Typer(help="Immutable payloads, identified by their sha256.", no_args_is_help=True)
tag_app = typer.Typer(help="Tags: one payload type each, lockable.", no_args_is_help=True)
iov_app = typer.Typer(help="Intervals of validity of a tag.", no_args_is_help=True)
gt_app = typer.Typer(help="Global tags: a tag per payload type (open, locked, invalid).", no_args_is_help=True)
cond_app.add_typer(payload_app, name="payload")
cond_app.add_typer(tag_app, name="tag")
cond_app.add_typer(iov_app, name="iov")
cond_app.add_typer(gt_app, name="gt")


def _client() -> Any:
    from junodcs.conditions.client import ConditionsClient

    return ConditionsClient()


@payload_app.command("put")
@handle_errors
def payload_put(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="File with the payload."),
                type: str = typer.Option(..., "--type", "-t", help="Payload type, e.g. Calib.PMT."),
                json: bool = JSON_OPTION) -> None:
    """Store a payload; prints its hash (the same bytes always give the same hash)."""
    with _client() as client:
        info = client.put_payload(type, file.read_bytes())
    print_json(info) if json else typer.echo(info["hash"])


@payload_app.command("get")
@handle_errors
def payload_get(hash: str, output: Path = typer.Option(None, "--output", "-o", help="Write here (default stdout)."),
                info: bool = typer.Option(False, "--info", help="Show the payload's record, not its bytes."),
                json: bool = JSON_OPTION) -> None:
    """Fetch a payload by hash (verified against it)."""
    with _client() as client:
        if info or json:
            data = client.payload_info(hash)
            print_json(data) if json else print_fields(data, title=hash)
            return
        payload = client.payload(hash)
    if output:
        output.write_bytes(payload)
    else:
        typer.get_binary_stream("stdout").write(payload)


@tag_app.command("create")
@handle_errors
def tag_create(name: str, type: str = typer.Option(..., "--type", "-t", help="Payload type the tag holds."),
               time_type: str = typer.Option("run", help="run or time."),
               description: str = typer.Option("", "--description", "-d"), json: bool = JSON_OPTION) -> None:
    """Create an (open) tag."""
    with _client() as client:
        data = client.create_tag(name, type, time_type=time_type, description=description)
    print_json(data) if json else typer.echo(f"tag {data['name']} created ({data['payload_type']})")


@tag_app.command("ls")
@handle_errors
def tag_ls(type: str = typer.Option(None, "--type", "-t", help="Only tags of this payload type."),
           json: bool = JSON_OPTION) -> None:
    """List tags."""
    with _client() as client:
        rows = client.tags(type)
    if json:
        print_json(rows)
        return
    print_table(rows, [("name", "Tag"), ("payload_type", "Type"), ("time_type", "Time"), ("iovs", "IOVs"),
                       ("locked", "Locked"), ("created_by", "By"), ("description", "Description")],
                title=f"{len(rows)} tags")


@tag_app.command("lock")
@handle_errors
def tag_lock(name: str) -> None:
    """Lock a tag: its IOVs never change again."""
    with _client() as client:
        client.lock_tag(name)
    typer.echo(f"tag {name} locked")


@iov_app.command("add")
@handle_errors
def iov_add(tag: str, since: int = typer.Option(..., "--since", help="First run (or UNIX second) of validity."),
            payload: str = typer.Option(..., "--payload", "-p", help="Payload hash.")) -> None:
    """Add an IOV to an open tag (a later insertion for the same `since` wins)."""
    with _client() as client:
        client.add_iovs(tag, [{"since": since, "payload_hash": payload}])
    typer.echo(f"{tag}: since {since} -> {payload}")


@iov_app.command("ls")
@handle_errors
def iov_ls(tag: str, effective: bool = typer.Option(False, "--effective", help="Only the winning IOV per since."),
           json: bool = JSON_OPTION) -> None:
    """List a tag's IOVs."""
    with _client() as client:
        rows = client.iovs(tag, effective=effective)
    if json:
        print_json(rows)
        return
    print_table(rows, [("since", "Since"), ("until", "Until"), ("payload_hash", "Payload"),
                       ("insertion_time", "Inserted"), ("inserted_by", "By")], title=f"{tag}: {len(rows)} IOVs")


@gt_app.command("create")
@handle_errors
def gt_create(name: str, description: str = typer.Option("", "--description", "-d"), json: bool = JSON_OPTION) -> None:
    """Create an (open) global tag."""
    with _client() as client:
        data = client.create_global_tag(name, description)
    print_json(data) if json else typer.echo(f"global tag {name} created")


@gt_app.command("add")
@handle_errors
def gt_add(name: str, tag: str, type: str = typer.Option(None, "--type", "-t", help="Default: the tag's type."),
           json: bool = JSON_OPTION) -> None:
    """Map a payload type to a tag in an open global tag (replaces the previous tag of that type)."""
    with _client() as client:
        data = client.add_to_global_tag(name, tag, type)
    print_json(data) if json else typer.echo(f"{name}: {type or 'tag'} -> {tag}")


@gt_app.command("lock")
@handle_errors
def gt_lock(name: str, invalidate: bool = typer.Option(False, "--invalidate", help="Mark it invalid instead.")) -> None:
    """Lock a global tag (all its tags must be locked), or invalidate it."""
    with _client() as client:
        data = client.set_global_tag_status(name, "invalid" if invalidate else "locked")
    typer.echo(f"global tag {name} {data['status']}")


@gt_app.command("ls")
@handle_errors
def gt_ls(json: bool = JSON_OPTION) -> None:
    """List global tags."""
    with _client() as client:
        rows = client.global_tags()
    if json:
        print_json(rows)
        return
    print_table(rows, [("name", "Global tag"), ("status", "Status"), ("modified_at", "Modified"),
                       ("created_by", "By"), ("description", "Description")], title=f"{len(rows)} global tags")


@gt_app.command("show")
@handle_errors
def gt_show(name: str, json: bool = JSON_OPTION) -> None:
    """Show a global tag and its tags."""
    with _client() as client:
        data = client.global_tag(name)
    if json:
        print_json(data)
        return
    print_fields({k: v for k, v in data.items() if k != "tags"}, title=name)
    print_table([{"type": k, "tag": v} for k, v in (data.get("tags") or {}).items()],
                [("type", "Payload type"), ("tag", "Tag")], title="tags")


@cond_app.command("get")
@handle_errors
def cond_get(gt: str = typer.Option(..., "--gt", help="Global tag."),
             type: str = typer.Option(..., "--type", "-t", help="Payload type."),
             run: int = typer.Option(..., "--run", help="Run number."),
             output: Path = typer.Option(None, "--output", "-o", help="Write the payload here."),
             frontier: bool = typer.Option(False, "--frontier", help="Read through Frontier (FRONTIER_SERVER/"
                                           "FRONTIER_PROXY or the site's squids), as jobs do."),
             json: bool = JSON_OPTION) -> None:
    """The payload valid for a run in a global tag: its IOV (and bytes with --output)."""
    if frontier:
        from junodcs.conditions.client import FrontierClient

        with FrontierClient.from_env() as fclient:
            resolved = fclient.resolve(gt, [type], run)[type]
            data = fclient.payloads([resolved["payload_hash"]])[resolved["payload_hash"]] if output else None
        resolved = {"global_tag": gt, "payload_type": type, "run": run, **resolved}
    else:
        with _client() as client:
            resolved = client.resolve(gt, type, run)
            data = client.payload(resolved["payload_hash"]) if output else None
    if output and data is not None:
        output.write_bytes(data)
    if json:
        print_json(resolved)
    else:
        print_fields(resolved, title=f"{gt} {type} run {run}")


@cond_app.command("serve-frontier")
@handle_errors
def serve_frontier(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
                   port: int = typer.Option(8000, help="Plain-HTTP port (Frontier's usual 8000)."),
                   database_url: str | None = typer.Option(None, "--database-url", envvar="DCS_DATABASE_URL"),
                   grid: Path | None = typer.Option(None, "--grid", "-g", help="grid.yaml."),
                   short_ttl: int = typer.Option(None, help="max-age of ttl=short answers (s)."),
                   log_level: str = typer.Option("warning")) -> None:
    """Serve the read-only Frontier endpoint over plain HTTP, for the site Squids (see
    `junodcs.conditions.router.create_frontier_app` for why this is its own process)."""
    import uvicorn

    from junodcs.cli.server import grid_config_path
    from junodcs.conditions.router import FrontierSettings, create_frontier_app
    from junodcs.core.gridconfig import load_grid_config
    from junodcs.db.engine import create_engine

    settings = FrontierSettings.from_env()
    if short_ttl is not None:
        settings.short_seconds = short_ttl
    app = create_frontier_app(load_grid_config(grid_config_path(grid)), create_engine(database_url), settings)
    typer.echo(f"Frontier endpoint http://{host}:{port}/Frontier", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def register(app: typer.Typer) -> None:
    app.add_typer(cond_app, name="cond")
