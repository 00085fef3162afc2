"""Database engines for the three supported back ends.

SQLite (embedded default, a file under `DCS_HOME`, WAL mode so that readers never block the writer),
PostgreSQL (psycopg 3) and MariaDB/MySQL (PyMySQL). URLs may be given in their plain form
(`postgresql://...`, `mysql://...`): the driver is filled in here, so operators never need to know it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url

from junodcs.core.paths import data_dir


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'junodcs.db'}"


def database_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DCS_DATABASE_URL") or default_database_url()


def normalize_url(url: str) -> str:
    parsed = make_url(url)
    driver = parsed.drivername
    if driver in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif driver in ("mysql", "mariadb"):
        parsed = parsed.set(drivername="mysql+pymysql")
    if parsed.get_backend_name() == "mysql" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # reads through a memory map (no read() call per page) and a 64 MiB page cache per connection: indexed
    # lookups in large catalogs touch many pages that are already in the OS cache
    cursor.execute("PRAGMA mmap_size=1073741824")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def create_engine(url: str | None = None, *, echo: bool = False) -> Engine:
    url = normalize_url(database_url(url))
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa_create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=False
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend in ("postgresql", "mysql"):
        return sa_create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=3600)
    raise ValueError(f"unsupported database {backend!r}: use sqlite, postgresql or mysql/mariadb")
