"""`dcs agent`: run one background agent as its own process (scale out), or list them."""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_json, print_table
from junodcs.cli.server import GRID_OPTION

agent_app = typer.Typer(help="Background agents: list them, run one as its own process.", no_args_is_help=True)


@agent_app.command("ls")
@handle_errors
def list_agents(json: bool = JSON_OPTION) -> None:
    """The agents this version knows, with the system each belongs to."""
    from junodcs.server.agents import AGENTS

    rows = [{"name": s.name, "system": s.system, "description": s.description} for s in AGENTS.values()]
    if json:
        print_json(rows)
    else:
        print_table(rows, [("name", "Agent"), ("system", "System"), ("description", "What it does")])


@agent_app.command("run")
@handle_errors
def run(
    name: str = typer.Argument(..., help="Agent name (see `dcs agent ls`)."),
    grid: Path | None = GRID_OPTION,
    public_url: str = typer.Option(..., "--public-url", help="URL of the central server (the token issuer)."),
    database_url: str | None = typer.Option(None, "--database-url", envvar="DCS_DATABASE_URL"),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Run agent NAME against the central database until SIGTERM or Ctrl-C. Safe in several copies."""
    import logging
    import signal

    from junodcs.cli.server import grid_config_path
    from junodcs.core.gridconfig import load_grid_config
    from junodcs.db.engine import create_engine
    from junodcs.server.agents import AGENTS, AgentRunner, resolve_agent_names
    from junodcs.server.app import SYSTEMS, ServerOptions, create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = resolve_agent_names(name, SYSTEMS)
    config = load_grid_config(grid_config_path(grid))
    app = create_app(config, create_engine(database_url), ServerOptions(public_url=public_url))
    runner = AgentRunner(app.state, names).start()
    signal.signal(signal.SIGTERM, lambda *_: runner.stop_event.set())
    try:
        while not runner.stop_event.wait(1.0):
            if not any(thread.is_alive() for thread in runner.threads):
                break
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
    typer.echo(f"agent {', '.join(names)} ({AGENTS[names[0]].system}) stopped")


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
