"""The RMS end to end on PostgreSQL and MariaDB: a central server on the server database with real SEs, a
transfer worker and two request executors at once (claims with SKIP LOCKED); every request is done once,
each file copied once and registered once. (SQLite runs the same flow in test_rms_service.py.)"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from authutil import bound_socket, make_app, serve
from dmutil import DISK_SES, Grid
from transferutil import start_se, token, worker

from junodcs.core.gridconfig import example_grid_path, load_grid_config
from junodcs.rms.agents import executor_from_app_state
from junodcs.rms.client import RequestClient
from junodcs.rms.logic import Settings
from junodcs.storage.server.run import free_port


@contextmanager
def grid_on(database_url: str, tmp: Path) -> Iterator[Grid]:
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    sock, central = bound_socket()
    ses = {name: start_se(None, name, free_port(), central, tmp / "se" / name) for name in list(DISK_SES)[:2]}
    engine = create_engine(database_url)
    try:
        data = yaml.safe_load(example_grid_path().read_text())
        for site in data["sites"]:
            for se_data in site.get("storage_elements", []):
                if se_data["name"] in ses:
                    se_data["url"] = ses[se_data["name"]].url
        grid_yaml = tmp / "grid.yaml"
        grid_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
        upgrade(engine)
        app = make_app(load_grid_config(grid_yaml), engine, url=central)
        app.state.rms_settings = Settings(lease=3.0, max_attempts=5, retry_delay=0.3, max_retry_delay=1.0, poll=0.2)
        with serve(app, sock):
            yield Grid(central, app, ses, grid_yaml)
    finally:
        engine.dispose()
        for se in ses.values():
            se.stop()


def test_replicate_and_register_two_executors(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite: see test_rms_service.py")
    from junodcs.dm import DataManager

    with grid_on(database_url, tmp_path) as grid, worker(grid):
        lfns = [f"/juno/test/rmsdb/{i}.dat" for i in range(4)]
        with DataManager(grid.url, token=token(grid)) as dm:
            for lfn in lfns:
                local = tmp_path / Path(lfn).name
                local.write_bytes(os.urandom(50_000))
                dm.put(local, lfn, "IHEP-EOS").raise_for()
        stop = threading.Event()
        executors = [executor_from_app_state(grid.app.state, poll=0.05, name=f"ex{i}") for i in range(2)]
        threads = [threading.Thread(target=e.loop, args=(stop,), daemon=True) for e in executors]
        for t in threads:
            t.start()
        try:
            with RequestClient(grid.url, token=token(grid)) as rms:
                ids = [rms.replicate([lfn], "CNAF-STORM", name=f"db-{i}") for i, lfn in enumerate(lfns)]
                found = [rms.wait(i, timeout=90, interval=0.2) for i in ids]
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert [f["status"] for f in found] == ["Done"] * 4, found
        from junodcs.transfer import db as tdb

        with grid.app.state.engine.connect() as conn:
            metas = [json.loads(m) for m in conn.execute(sa.select(tdb.files.c.file_metadata)).scalars() if m]
        assert sorted(m["request_id"] for m in metas) == sorted(ids)  # one copy per request
        with DataManager(grid.url, token=token(grid)) as dm:
            reps = dm.catalog.replicas(lfns)
        assert all(sorted(r["se"] for r in reps[lfn]) == ["CNAF-STORM", "IHEP-EOS"] for lfn in lfns)
        for lfn in lfns:
            assert grid.se_file("CNAF-STORM", lfn).read_bytes() == grid.se_file("IHEP-EOS", lfn).read_bytes()
