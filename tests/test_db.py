"""Database layer: the same migrations on SQLite, PostgreSQL and MariaDB; SQLite in WAL mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from junodcs.db.engine import create_engine, default_database_url, normalize_url
from junodcs.db.metadata import load_all_tables
from junodcs.db.migrate import current_revision, downgrade, head_revision, upgrade


def test_default_database_lives_under_dcs_home(dcs_home: Path) -> None:
    assert default_database_url() == f"sqlite:///{dcs_home / 'junodcs.db'}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"),
        ("mariadb://root@h/x", "mysql+pymysql://root@h/x?charset=utf8mb4"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_plain_urls_get_their_driver(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_unsupported_backend() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        create_engine("oracle://scott@tiger/db")


def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_migrations_reach_head_and_match_the_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    metadata = load_all_tables()
    present = set(inspect(engine).get_table_names())
    missing = {name for name in metadata.tables} - present
    assert not missing, f"tables defined in code but not created by migrations: {missing}"
    upgrade(engine)  # running again changes nothing
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrations_downgrade_to_empty(database_url: str) -> None:
    engine = create_engine(database_url)
    upgrade(engine)
    downgrade(engine, "base")
    metadata = load_all_tables()
    assert not set(metadata.tables) & set(inspect(engine).get_table_names())
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()
