"""Helpers of the transfer tests: the data-manager test grid (central server + three real SEs on loopback)
with a transfer worker of the test's own, tokens, files on SEs and waiting for jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import secrets

import yaml
from authutil import bound_socket, full_token, make_app, serve
from dmutil import DISK_SES, Grid, adler

from junodcs.core.gridconfig import example_grid_path, load_grid_config
from junodcs.storage.server.config import SEConfig
from junodcs.storage.server.run import BackgroundSE, free_port

from junodcs.transfer.agents import Credentials, TransferWorker, WorkerOptions
from junodcs.transfer.logic import Settings, TransferService
from junodcs.transfer.router import service_for

def start_se(grid_or_tmp: Any, name: str, port: int, central: str, root: Path, shaper: Any = None) -> BackgroundSE:
    from junodcs.auth.tokens import TokenVerifier

    verifier = TokenVerifier(audiences=(f"http://127.0.0.1:{port}",), local_issuer=None, trusted_issuers=(central,))
    config = SEConfig(name=name, root=root, vo_prefix="/juno", verify_token=verifier.verify,
                      macaroon_secret=secrets.token_bytes(32), marker_interval=0.2, io_block=256 << 10,
                      shaper=shaper)
    return BackgroundSE(config, port=port)


@contextmanager
def transfer_grid(tmp: Path, shaper: Any = None) -> Iterator[Grid]:
    """Central server + the three disk SEs of dmutil; `shaper(name) -> LinkShaper | None` shapes an SE.
    SEs can be stopped and started again on the same port and root (`restart_se`)."""
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    sock, central = bound_socket()
    ses: dict[str, BackgroundSE] = {}
    try:
        for name in DISK_SES:
            ses[name] = start_se(None, name, free_port(), central, tmp / "se" / name,
                                 shaper(name) if shaper else None)
        data = yaml.safe_load(example_grid_path().read_text())
        for site in data["sites"]:
            for se_data in site.get("storage_elements", []):
                if se_data["name"] in ses:
                    se_data["url"] = ses[se_data["name"]].url
        grid_yaml = tmp / "grid.yaml"
        grid_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
        engine = create_engine(f"sqlite:///{tmp / 'central.db'}")
        upgrade(engine)
        app = make_app(load_grid_config(grid_yaml), engine, url=central)
        with serve(app, sock):
            g = Grid(central, app, ses, grid_yaml)
            g.database_url = f"sqlite:///{tmp / 'central.db'}"  # type: ignore[attr-defined]
            yield g
        engine.dispose()
    finally:
        for se in ses.values():
            se.stop()


def restart_se(grid: Grid, name: str, shaper: Any = None) -> None:
    old = grid.ses[name]
    grid.ses[name] = start_se(None, name, old.port, grid.url, old.config.root, shaper)


FAST = Settings(default_retry=2, default_retry_delay=1, lease=3.0, stall_timeout=20.0, optimizer_window=60.0)


def service(grid: Grid) -> TransferService:
    grid.app.state.transfer_settings = FAST
    svc = service_for(grid.app.state)
    svc.settings = FAST
    return svc


@contextmanager
def worker(grid: Grid, **options: Any) -> Iterator[TransferWorker]:
    opts = WorkerOptions(**{"concurrency": 8, "poll": 0.1, "optimizer_interval": 3600, "stage_interval": 0.3,
                            **options})
    w = TransferWorker(service(grid), Credentials(grid.app.state.token_issuer, grid.app.state.registry), opts)
    grid.app.state.transfer_worker = w
    w.start()
    try:
        yield w
    finally:
        w.stop()
        grid.app.state.transfer_worker = None


def token(grid: Grid, user: str = "boris", group: str = "juno_data") -> str:
    return full_token(grid.app, user, group)


def headers(grid: Grid, user: str = "boris", group: str = "juno_data") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(grid, user, group)}"}


def put_file(grid: Grid, se: str, lfn: str, size: int = 200_000, data: bytes | None = None) -> tuple[str, bytes]:
    """Write a file on an SE through its HTTP interface (so the SE knows its checksum); returns its URL."""
    from junodcs.storage.client import StorageClient

    data = data if data is not None else os.urandom(size)
    url = f"{grid.ses[se].url}{lfn}"
    tmp = Path(grid.ses[se].config.root).parent / f"upload-{os.getpid()}-{time.monotonic_ns()}"
    tmp.write_bytes(data)
    try:
        with StorageClient(token(grid)) as client:
            client.put(tmp, url)
    finally:
        tmp.unlink()
    return url, data


def url(grid: Grid, se: str, lfn: str) -> str:
    return f"{grid.ses[se].url}{lfn}"


def wait_job(svc: TransferService, job_id: str, timeout: float = 60.0,
             states: tuple[str, ...] = ("FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED")) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = svc.job(job_id)
        if job["job_state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['job_state']}: {svc.files(job_id)}")
        time.sleep(0.1)


__all__ = ["adler", "headers", "put_file", "service", "token", "url", "wait_job", "worker"]
