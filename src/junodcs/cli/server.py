"""`dcs server`: the central server (all systems by default)."""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import handle_errors


def grid_config_path(value: Path | None) -> Path:
    """grid.yaml to use: the given one, `$DCS_GRID_CONFIG`, `$DCS_HOME/grid.yaml`, else the JUNO example."""
    import os

    from junodcs.core.gridconfig import example_grid_path
    from junodcs.core.paths import dcs_home

    if value is not None:
        return value
    if os.environ.get("DCS_GRID_CONFIG"):
        return Path(os.environ["DCS_GRID_CONFIG"])
    home = dcs_home()
    if home is not None and (home / "grid.yaml").exists():
        return home / "grid.yaml"
    return example_grid_path()


GRID_OPTION = typer.Option(
    None, "--grid", "-g", help="grid.yaml (default: $DCS_GRID_CONFIG, $DCS_HOME/grid.yaml, then the JUNO example)."
)


@handle_errors
def server(
    grid: Path | None = GRID_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8443, help="Port to listen on."),
    public_url: str | None = typer.Option(
        None, "--public-url", help="URL clients use (also the token issuer); default from host and port."
    ),
    systems: str | None = typer.Option(
        None, "--systems", help="Comma-separated systems to mount (default: all), e.g. auth,config."
    ),
    agents: str | None = typer.Option(
        None, "--agents", help="Agents to run in this process: all (default: those of the mounted systems), none, or a,b."
    ),
    database_url: str | None = typer.Option(None, "--database-url", envvar="DCS_DATABASE_URL"),
    tls: bool = typer.Option(False, "--tls/--no-tls", help="Serve HTTPS with client-certificate authentication."),
    cert: Path | None = typer.Option(None, help="Host certificate (PEM); default: the project CA's host cert."),
    key: Path | None = typer.Option(None, help="Host key (PEM)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="Trusted CA directory (default: the project CA)."),
    vomsdir: Path | None = typer.Option(None, "--vomsdir", help="VOMS .lsc directory (default: $X509_VOMS_DIR)."),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
) -> None:
    """Run the central server: token issuer, registry and every system's API on one port."""
    import logging

    from junodcs.core.gridconfig import load_grid_config
    from junodcs.server.app import SYSTEMS, ServerOptions
    from junodcs.server.run import serve

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_grid_config(grid_config_path(grid))
    scheme = "https" if tls else "http"
    url = public_url or config.servers.central or f"{scheme}://{host}:{port}"
    from junodcs.server.agents import resolve_agent_names

    mounted = tuple(systems.split(",")) if systems else tuple(SYSTEMS)
    options = ServerOptions(public_url=url, systems=mounted, agents=resolve_agent_names(agents, mounted))
    tls_files = None
    if tls:
        from junodcs.server.tls import default_tls_files

        tls_files = default_tls_files(cert=cert, key=key, ca_dir=ca_dir, vomsdir=vomsdir, host=host)
    serve(config, host=host, port=port, options=options, database_url=database_url, tls=tls_files, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("server")(server)
