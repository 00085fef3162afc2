"""`dcs demo`: a scripted tour of a local JUNO grid."""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import console, handle_errors


@handle_errors
def demo(
    grid: Path | None = typer.Argument(None, help="grid.yaml (default: the JUNO example)."),
    home: Path | None = typer.Option(None, help="DCS_HOME to use (default: a temporary folder, removed after)."),
    keep: bool = typer.Option(False, help="Keep the temporary DCS_HOME for inspection."),
) -> None:
    """Start a local JUNO grid, run a tour of real commands against it, and stop it again."""
    from junodcs.cli.server import grid_config_path
    from junodcs.grid.demo import run_demo

    run_demo(grid_config_path(grid).resolve(), home=home, keep=keep, console=console())


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
