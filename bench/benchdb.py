"""The databases a WMS bench runs on: SQLite in a scratch directory always, and PostgreSQL in a throw-away
database when `DCS_BENCH_POSTGRES_URL` (or the tests' `DCS_TEST_POSTGRES_URL`) names a server."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable

from sqlalchemy import text


def on_each_database(run: Callable[[str, str], None], stem: str) -> None:
    """`run(label, url)` for SQLite, then for PostgreSQL when a server is configured (dropped afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", f"sqlite:///{tmp}/{stem}.db")
    server = os.environ.get("DCS_BENCH_POSTGRES_URL") or os.environ.get("DCS_TEST_POSTGRES_URL")
    if not server:
        return
    from sqlalchemy.engine import make_url

    from junodcs.db.engine import create_engine, normalize_url

    name = f"dcs_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        run("postgresql", make_url(normalize_url(server)).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
