"""`dcs grid`: a whole grid on loopback (central server, and each site's storage and computing elements)."""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import JSON_OPTION, console, handle_errors, print_json, print_table

grid_app = typer.Typer(help="Run a local grid on loopback: up, down, status.", no_args_is_help=True)

GRID_ARGUMENT = typer.Argument(
    None, help="grid.yaml to run (default: $DCS_GRID_CONFIG, $DCS_HOME/grid.yaml, then the JUNO example)."
)


@grid_app.command("up")
@handle_errors
def up(
    grid: Path | None = GRID_ARGUMENT,
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once the grid is up; stop it with `dcs grid down`."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for a detached grid to come up."),
) -> None:
    """Start the grid, print its URLs, and point `dcs` commands at it. Ctrl-C stops everything."""
    from junodcs.cli.server import grid_config_path

    from junodcs.core.gridconfig import load_grid_config

    path = grid_config_path(grid).resolve()
    load_grid_config(path)  # a bad file is refused before anything starts
    if detach:
        from junodcs.grid.detach import start_detached

        rows = start_detached(path, timeout=timeout)
        _print_processes(rows)
        typer.echo("grid is up in the background; `dcs grid status` to check it, `dcs grid down` to stop it")
        return

    from junodcs.grid.local import LocalGrid

    out = console()
    local = LocalGrid(path, report=lambda message: out.print(f"[dim]·[/dim] {message}"))
    try:
        local.up()  # Ctrl-C while starting: stopped and reported as interrupted
        try:
            out.print(f"[bold green]grid up[/bold green]: {local.central_url()}  (Ctrl-C or `dcs grid down` to stop)")
            local.wait()
        except KeyboardInterrupt:
            pass  # the grid was up: Ctrl-C is the normal way to stop it, before or inside wait()
    finally:
        local.down()
        out.print("grid stopped")


@grid_app.command("down")
@handle_errors
def down() -> None:
    """Stop the grid of this installation (DCS_HOME) and every process it started."""
    from junodcs.grid.local import stop_running_grid

    state = stop_running_grid()
    if state is None:
        typer.echo("no grid is running here")
        return
    typer.echo(f"stopped the grid of {state['grid_config']} ({len(state.get('processes', []))} processes)")


@grid_app.command("status")
@handle_errors
def status(json: bool = JSON_OPTION) -> None:
    """Every process of the grid with its URL and state; exits 1 when something is not running."""
    from junodcs.grid.local import grid_status

    rows = grid_status()
    if json:
        print_json(rows)
    elif not rows:
        typer.echo("no grid is running here (start one with `dcs grid up`)")
    else:
        _print_processes(rows)
    if not rows or any(row.get("state") != "running" for row in rows):
        raise typer.Exit(1)


def _print_processes(rows: list[dict[str, object]]) -> None:
    print_table(
        rows,
        [("name", "Process"), ("kind", "Kind"), ("site", "Site"), ("url", "URL"), ("pid", "PID"),
         ("state", "State")],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(grid_app, name="grid")
