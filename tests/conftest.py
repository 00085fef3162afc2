"""Shared fixtures.

Every test gets its own `DCS_HOME` so nothing touches the user's real configuration. Database-backed
tests run on SQLite always and, when `.ci/run` sets `DCS_TEST_POSTGRES_URL` / `DCS_TEST_MARIADB_URL`,
also on PostgreSQL and MariaDB, each in a fresh database created for the test session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from junodcs.core.gridconfig import GridConfig, example_grid_path, load_grid_config

SERVER_DATABASES = {"postgresql": "DCS_TEST_POSTGRES_URL", "mariadb": "DCS_TEST_MARIADB_URL"}


@pytest.fixture(autouse=True)
def dcs_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dcs-home"
    home.mkdir()
    monkeypatch.setenv("DCS_HOME", str(home))
    for variable in ("DCS_SERVER_URL", "DCS_DATABASE_URL", "DCS_GRID_CONFIG", "BEARER_TOKEN", "BEARER_TOKEN_FILE",
                     "X509_USER_PROXY", "X509_CERT_DIR", "X509_VOMS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    (tmp_path / "runtime").mkdir()
    return home


@pytest.fixture(scope="session")
def grid() -> GridConfig:
    return load_grid_config(example_grid_path())


def _server_database(kind: str) -> Iterator[str]:
    """Create a throw-away database on the server named by the environment; drop it afterwards."""
    from junodcs.db.engine import create_engine, normalize_url

    base = os.environ.get(SERVER_DATABASES[kind])
    if not base:
        pytest.skip(f"{SERVER_DATABASES[kind]} not set (.ci/run sets it to the local {kind} server)")
    name = f"dcs_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    isolation = "AUTOCOMMIT"
    with admin.connect().execution_options(isolation_level=isolation) as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(normalize_url(base)).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect().execution_options(isolation_level=isolation) as connection:
            if kind == "postgresql":
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One URL per back end; server back ends skip cleanly when not configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _server_database(request.param)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    engine = create_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'test.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


# -- tiers -------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier runs in CI (`DCS_TEST_TIER=all`, set by .ci/run), not on every local edit."""
    if os.environ.get("DCS_TEST_TIER") == "all":
        return
    skip_slow = pytest.mark.skip(reason="slow tier: set DCS_TEST_TIER=all to run it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (`DCS_REQUIRE_INTEROP=1`) an interop or server-database test may not skip for a missing tool:
    CI installs them all, so such a skip means the installation broke and must fail the run."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("DCS_REQUIRE_INTEROP") or not report.skipped:
        return
    if "slow" in item.keywords and os.environ.get("DCS_TEST_TIER") != "all":
        return
    callspec = getattr(item, "callspec", None)
    # a server-database test skips in setup when its URL is missing (the `database_url` fixture); a
    # test that chooses in its body to run one case on SQLite only is not a missing installation
    server_db = (callspec is not None and callspec.params.get("database_url") in SERVER_DATABASES
                 and report.when == "setup")
    if "interop" in item.keywords or server_db:
        report.outcome = "failed"
        report.longrepr = f"required in CI but skipped: {report.longrepr}"
