"""`dcs`: the junodcs command line.

Start-up must stay fast (`dcs --help` well under 0.3 s). Two rules keep it so: command modules import
only typer at the top and load FastAPI, SQLAlchemy, cryptography and friends inside the commands that
need them; and a command module is imported only when its command runs. `COMMANDS` below names, for
every top-level command, the modules that build it and the line `dcs --help` shows for it.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

#: top-level command -> (modules whose `register(app)` builds it, one-line help). Some modules add
#: subcommands to another module's group (`dm put` to `dcs dm`, `site ban` to `dcs site`): list both.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "server": (("junodcs.cli.server",), "Run the central server: token issuer, registry and every system's API."),
    "agent": (("junodcs.cli.agent",), "Background agents: list them, run one as its own process."),
    "db": (("junodcs.cli.db",), "Database schema: upgrade and inspect migrations."),
    "grid": (("junodcs.cli.grid",), "Run a local grid on loopback: up, down, status."),
    "demo": (("junodcs.cli.demo",), "Start a local JUNO grid, tour it with real commands, and stop it."),
    "ca": (("junodcs.cli.x509",), "The project certification authority."),
    "cert": (("junodcs.cli.x509",), "Issue user and host certificates from the project CA."),
    "proxy": (("junodcs.cli.x509",), "RFC 3820 proxies with VOMS attributes."),
    "login": (("junodcs.cli.auth",), "Get tokens with a VOMS proxy (TLS client authentication) or client credentials."),
    "logout": (("junodcs.cli.auth",), "Revoke the refresh token and delete the stored tokens."),
    "whoami": (("junodcs.cli.auth",), "Who the server thinks you are: user, group, properties, token scopes."),
    "token": (("junodcs.cli.auth",), "Print an access token; with --scope/--audience a narrowed one (token exchange)."),
    "auth": (("junodcs.cli.auth",), "Identity administration: OAuth clients, signing keys, registry."),
    "site": (("junodcs.cli.site", "junodcs.cli.job"), "Sites: tiers, computing and storage elements; ban, allow."),
    "job": (("junodcs.cli.job",), "Jobs: submit (JDL or JSON), status, logging, output, kill, reschedule, select."),
    "pilot": (("junodcs.cli.pilot",), "Pilots: run one on a worker node; ls, show, logs."),
    "ce": (("junodcs.cli.pilot",), "Computing elements: their slots, waiting jobs and pilots."),
    "director": (("junodcs.cli.pilot",), "Run site directors for computing elements (pilots only where jobs wait)."),
    "dm": (("junodcs.cli.catalog", "junodcs.cli.dm"), "Data management: files, replicas, metadata, datasets."),
    "se": (("junodcs.cli.se", "junodcs.cli.dm"), "Storage elements: list them, run one (WebDAV + HTTP-TPC)."),
    "transfer": (("junodcs.cli.transfer",), "Transfers between storage elements (FTS3-compatible service)."),
    "request": (("junodcs.cli.request",), "Requests of data operations (request management system)."),
    "cond": (("junodcs.cli.cond",), "Condition data: payloads, tags, IOVs, global tags, Frontier."),
}


class LazyCommands(TyperGroup):
    """The root group: lists `COMMANDS` from the table, imports a command's modules only to run it."""

    _loaded: dict[str, Any] = {}
    _registered: set[str] = set()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self._loaded:
            holder = typer.Typer()
            for module in COMMANDS[cmd_name][0]:
                if module not in self._registered:
                    importlib.import_module(module).register(holder)
                    self._registered.add(module)
            for name, command in typer.main.get_group(holder).commands.items():
                self._loaded.setdefault(name, command)
        return self._loaded.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


app = typer.Typer(
    name="dcs",
    cls=LazyCommands,
    help="JUNO distributed computing: jobs, data, transfers, conditions and identity on one grid.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from junodcs import __version__

        typer.echo(f"junodcs {__version__}")
        raise typer.Exit()


def main() -> None:
    app(prog_name="dcs")
