"""`dcs db`: schema migrations of the central database."""

from __future__ import annotations

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_json

db_app = typer.Typer(help="Database schema: upgrade and inspect migrations.", no_args_is_help=True)

URL_OPTION = typer.Option(
    None, "--url", envvar="DCS_DATABASE_URL", help="Database URL (sqlite:///..., postgresql://..., mysql://...)."
)


@db_app.command("upgrade")
@handle_errors
def upgrade(url: str = URL_OPTION, revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (the newest by default). Safe to run again."""
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import current_revision, upgrade as run_upgrade

    engine = create_engine(url)
    before = current_revision(engine)
    run_upgrade(engine, revision)
    after = current_revision(engine)
    typer.echo(f"database {engine.url.render_as_string(hide_password=True)}: {before or 'empty'} -> {after}")


@db_app.command("current")
@handle_errors
def current(url: str = URL_OPTION, json: bool = JSON_OPTION) -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import current_revision, head_revision

    engine = create_engine(url)
    info = {
        "database": engine.url.render_as_string(hide_password=True),
        "current": current_revision(engine),
        "head": head_revision(),
    }
    info["up_to_date"] = info["current"] == info["head"]
    if json:
        print_json(info)
    else:
        for key, value in info.items():
            typer.echo(f"{key:>10}: {value}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
