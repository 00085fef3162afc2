"""`dcs pilot` (run a pilot; `ls`, `show`, `logs`), `dcs ce ls` and `dcs director` (site directors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_fields, print_json, print_table

pilot_app = typer.Typer(
    help="Pilots: `dcs pilot --server URL --site S --ce C` runs one on this worker node; ls, show, logs.",
    invoke_without_command=True,
)
ce_app = typer.Typer(help="Computing elements: their slots, waiting jobs and pilots.", no_args_is_help=True)


@pilot_app.callback()
def run_pilot(
    ctx: typer.Context,
    server: str = typer.Option(None, "--server", help="Central server URL."),
    site: str = typer.Option(None, "--site"),
    ce: str = typer.Option(None, "--ce"),
    pilot_id: str = typer.Option(None, "--pilot-id", help="Pilot reference (default: a new unique one)."),
    token_file: Path = typer.Option(None, "--token-file", help="File with the pilot's access token."),
    client_id: str = typer.Option(None, "--client-id", help="Robot client with the Pilot property."),
    client_secret_file: Path = typer.Option(None, "--client-secret-file"),
    ca_file: Path = typer.Option(None, "--ca-file"),
    memory_mb: int = typer.Option(2000, "--memory-mb", help="Memory of the slot (MB)."),
    cores: int = typer.Option(1, "--cores"),
    platform: str = typer.Option(None, "--platform"),
    tag: list[str] = typer.Option([], "--tag", help="Tag the slot offers (repeatable)."),
    lifetime: float = typer.Option(86400.0, "--lifetime", help="Seconds this pilot may run."),
    max_jobs: int = typer.Option(None, "--max-jobs"),
    max_wall: float = typer.Option(None, "--max-wall", help="Most wall-clock seconds per payload."),
    workdir: Path = typer.Option(None, "--workdir"),
    grace: float = typer.Option(5.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run a pilot: match jobs until none fits or the time runs out (subcommands: ls, show, logs)."""
    if ctx.invoked_subcommand is not None:
        return
    if not (server and site and ce):
        typer.echo(ctx.get_help())
        if server or site or ce:
            typer.echo("error[usage]: a pilot needs --server, --site and --ce", err=True)
            raise typer.Exit(2)
        raise typer.Exit(0)
    from junodcs.wms.pilot.__main__ import main

    argv = ["--server", server, "--site", site, "--ce", ce, "--memory-mb", str(memory_mb), "--cores", str(cores),
            "--lifetime", str(lifetime), "--grace", str(grace), "--log-level", log_level]
    for flag, value in (("--pilot-id", pilot_id), ("--token-file", token_file), ("--client-id", client_id),
                        ("--client-secret-file", client_secret_file), ("--ca-file", ca_file),
                        ("--platform", platform), ("--max-jobs", max_jobs), ("--max-wall", max_wall),
                        ("--workdir", workdir)):
        if value is not None:
            argv += [flag, str(value)]
    for item in tag:
        argv += ["--tag", item]
    raise typer.Exit(main(argv))


@pilot_app.command("ls")
@handle_errors
def list_pilots(
    site: str = typer.Option(None, "--site"),
    ce: str = typer.Option(None, "--ce"),
    status: list[str] = typer.Option([], "--status", help="Submitted, Running, Done, Failed, Aborted (repeatable)."),
    limit: int = typer.Option(1000, "--limit"),
    json: bool = JSON_OPTION,
) -> None:
    """List pilots (newest first) with their state, CE reference and jobs."""
    from junodcs.wms.client import WMSClient

    with WMSClient() as client:
        pilots = client.pilots(site=site, ce=ce, status=status or None, limit=limit)
    if json:
        print_json(pilots)
        return
    print_table(pilots, [("pilot_id", "Pilot"), ("site", "Site"), ("ce", "CE"), ("status", "Status"),
                         ("jobs_matched", "Jobs"), ("current_job", "Job"), ("reference", "Reference"),
                         ("submitted_at", "Submitted"), ("reason", "Reason")], title=f"{len(pilots)} pilots")


@pilot_app.command("show")
@handle_errors
def show_pilot(pilot_id: str = typer.Argument(...), json: bool = JSON_OPTION) -> None:
    """A pilot's record and the (job, attempt) pairs it ran."""
    from junodcs.wms.client import WMSClient

    with WMSClient() as client:
        info = client.pilot(pilot_id)
    if json:
        print_json(info)
        return
    jobs = info.pop("jobs")
    info["jobs"] = ", ".join(f"{j['job_id']}.{j['attempt']}" for j in jobs) or "-"
    print_fields(info, title=f"pilot {pilot_id}")


@pilot_app.command("logs")
@handle_errors
def pilot_logs(pilot_id: str = typer.Argument(...), json: bool = JSON_OPTION) -> None:
    """The pilot's output (stored by its site director when the pilot ended)."""
    from junodcs.wms.client import WMSClient

    with WMSClient() as client:
        output = client.pilot_output(pilot_id)
    if json:
        print_json(output)
        return
    typer.echo(output["output"], nl=not output["output"].endswith("\n"))


@ce_app.command("ls")
@handle_errors
def list_ces(json: bool = JSON_OPTION) -> None:
    """Computing elements with slots, memory per slot, waiting jobs that fit them and their pilots."""
    from junodcs.config.client import ConfigClient
    from junodcs.wms.client import WMSClient

    rows: list[dict[str, Any]] = []
    with ConfigClient() as config, WMSClient() as wms:
        for site in config.sites():
            for ce in site["computing_elements"]:
                row = {"site": site["name"], "ce": ce["name"], "type": ce["type"], "slots": ce["slots"],
                       "memory_mb": ce["memory_per_slot"], "platform": ce.get("platform"),
                       "tags": ce.get("tags") or []}
                try:
                    waiting = wms.ce_waiting(site["name"], ce["name"])
                    row.update(waiting_jobs=waiting["waiting_jobs"], pilots=waiting["pilots"])
                except Exception:  # noqa: BLE001 - a pilot-only view needs the Pilot property
                    row.update(waiting_jobs=None, pilots=None)
                rows.append(row)
    if json:
        print_json(rows)
        return
    for row in rows:
        pilots = row.get("pilots") or {}
        row["pilots"] = " ".join(f"{k}:{v}" for k, v in pilots.items() if v) or "-"
    print_table(rows, [("site", "Site"), ("ce", "CE"), ("type", "Type"), ("slots", "Slots"),
                       ("memory_mb", "MB/slot"), ("tags", "Tags"), ("waiting_jobs", "Waiting jobs"),
                       ("pilots", "Pilots")], title=f"{len(rows)} computing elements")


def director(
    ce: list[str] = typer.Option(..., "--ce", help="Computing element(s) to supply with pilots (repeatable)."),
    server: str = typer.Option(None, "--server", help="Central server URL (default: the configured one)."),
    grid: Path = typer.Option(None, "--grid", help="grid.yaml describing the CEs (default: the configured one)."),
    client_id: str = typer.Option(None, "--client-id", help="Robot client with the Pilot property."),
    client_secret_file: Path = typer.Option(None, "--client-secret-file"),
    token_file: Path = typer.Option(None, "--token-file", help="Instead of a client: a Pilot token file."),
    ca_file: Path = typer.Option(None, "--ca-file", help="CA bundle of the server's certificate (also for pilots)."),
    workdir: Path = typer.Option(None, "--workdir", help="Pilot logs and work areas (default under DCS_HOME)."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between cycles."),
    lifetime: float = typer.Option(None, "--lifetime", help="Pilot lifetime (default: the CE's max_cpu_time)."),
    pilot_arg: list[str] = typer.Option([], "--pilot-arg", help="Extra argument for every pilot (repeatable)."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run site directors: submit pilots to each CE while waiting jobs can run there, within its slots."""
    import logging
    import signal
    import threading

    from junodcs.core.client import ClientConfig
    from junodcs.core.errors import DCSError
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.core.paths import data_dir
    from junodcs.wms.ce import backend_for
    from junodcs.wms.director import DirectorOptions, SiteDirector
    from junodcs.wms.pilot.pilot import PilotWMSClient, TokenSource

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    try:
        config = ClientConfig.load()
        server_url = server or config.require_server()
        config.server_url = server_url
        if ca_file:
            config.ca_file = str(ca_file)
        grid_path = grid or (Path(config.grid_config) if config.grid_config else example_grid_path())
        grid_config = load_grid_config(grid_path)
        secret = client_secret_file.read_text().strip() if client_secret_file else None
        tokens = TokenSource(server_url, token_file=str(token_file) if token_file else None, client_id=client_id,
                             client_secret=secret, config=config)
        elements = {element.name: (site, element) for site in grid_config.sites
                    for element in site.computing_elements}
        unknown = [name for name in ce if name not in elements]
        if unknown:
            raise DCSError(f"unknown computing elements {', '.join(unknown)}; known: {', '.join(elements)}",
                           code="unknown-ce")
        directors = []
        for name in ce:
            site, element = elements[name]
            base = (workdir or data_dir() / "ce") / name
            backend = backend_for(element, workdir=base)
            options = DirectorOptions(server_url=server_url, site=site.name, ce=name,
                                      memory_mb=int(element.memory_per_slot), cores=element.cores,
                                      platform=element.platform, tags=list(element.tags),
                                      lifetime=lifetime or float(element.max_cpu_time), interval=interval,
                                      pilot_args=list(pilot_arg), ca_file=config.ca_file)
            wms = PilotWMSClient(server_url, tokens, config=config, retry_seconds=30)
            wms.stop_event = stop
            directors.append(SiteDirector(wms, backend, options, tokens=tokens))
    except DCSError as exc:
        typer.echo(f"error[{exc.code}]: {exc.detail}", err=True)
        raise typer.Exit(1) from None

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=d.run, args=(stop,), name=f"director-{d.options.ce}", daemon=True)
               for d in directors]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(5)
    for d in directors:  # stop our pilots, record how they ended if the server still answers
        d.backend.close()
        try:
            d.update_pilots()
        except Exception:  # noqa: BLE001 - shutting down: the server may be gone already
            pass


def register(app: typer.Typer) -> None:
    app.add_typer(pilot_app, name="pilot")
    app.add_typer(ce_app, name="ce")
    app.command("director", help="Run site directors for computing elements (pilots only where jobs wait).")(director)
