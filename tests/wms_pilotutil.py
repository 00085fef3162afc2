"""A small real grid for the pilot tests: a central server (auth, config, catalog, wms) on loopback with fast
WMS timers, optional real SEs, the optimizer and stalled-job passes in a thread, a pilot robot client and a
user client, and helpers to run site directors with real pilot processes."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from authutil import bound_socket
from junodcs.core.gridconfig import example_grid_path, load_grid_config
from junodcs.server.app import ServerOptions, create_app

#: CE -> memory per slot in these tests (small, so memory limits are reached with little RAM)
MEMORY = {"ce.ihep.ac.cn": 250, "ce.cnaf.infn.it": 250, "ce.jinr.ru": 1200}


@dataclass
class PilotGrid:
    url: str
    app: Any
    tmp: Path
    grid_yaml: Path
    pilot_client: str
    pilot_secret: Path
    ses: dict[str, Any] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    served: Any = None
    make_app: Any = None

    def stop_server(self) -> None:
        """Stop the central server (its port stays reserved for the restart)."""
        self.served.current.stop()

    def start_server(self) -> None:
        """A new server process' worth: a new application on the same database and port."""
        self.app = self.make_app()
        self.served.restart(self.app)

    @property
    def wms(self) -> Any:
        from junodcs.wms.logic import wms_for_state

        return wms_for_state(self.app.state)

    def user_client(self, username: str = "alice", group: str | None = None) -> Any:
        from authutil import full_token
        from junodcs.wms.client import WMSClient

        return WMSClient(self.url, token=full_token(self.app, username, group))

    def pilot_token(self) -> str:
        from authutil import full_token

        return full_token(self.app, "pilot", "juno_pilot")

    def tokens(self) -> Any:
        from junodcs.wms.pilot.pilot import TokenSource

        return TokenSource(self.url, client_id=self.pilot_client, client_secret=self.pilot_secret.read_text().strip())

    def pilot_wms(self) -> Any:
        from junodcs.wms.pilot.pilot import PilotWMSClient

        return PilotWMSClient(self.url, self.tokens(), retry_seconds=30)

    def director(self, ce: str, *, slots: int | None = None, pilot_args: list[str] | None = None,
                 interval: float = 0.3, lifetime: float = 3600.0) -> Any:
        from junodcs.wms.ce.local import LocalCE
        from junodcs.wms.director import DirectorOptions, SiteDirector

        config = load_grid_config(self.grid_yaml)
        site, element = next((s, e) for s in config.sites for e in s.computing_elements if e.name == ce)
        backend = LocalCE(ce, slots=slots or element.slots, memory_mb=int(element.memory_per_slot),
                          workdir=self.tmp / "ce" / ce)
        options = DirectorOptions(server_url=self.url, site=site.name, ce=ce, memory_mb=int(element.memory_per_slot),
                                  platform=element.platform, tags=list(element.tags), lifetime=lifetime,
                                  interval=interval,
                                  pilot_args=["--poll", "0.1", "--grace", "1", "--log-level", "info",
                                              *(pilot_args or [])])
        return SiteDirector(self.pilot_wms(), backend, options, tokens=self.tokens())

    def wait_for(self, job_ids: list[int], statuses: set[str], timeout: float = 60.0,
                 client: Any = None) -> dict[int, dict[str, Any]]:
        admin = client or self.user_client("zhangxm", "juno_admin")
        deadline = time.monotonic() + timeout
        while True:
            found = {int(k): v for k, v in admin.status(job_ids).items()}
            if len(found) == len(job_ids) and all(v["status"] in statuses for v in found.values()):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not {statuses} after {timeout} s: "
                                     + str({k: (v["status"], v.get("minor_status")) for k, v in found.items()}))
            time.sleep(0.2)


def _background(grid: PilotGrid) -> None:
    from junodcs.wms.agents import resolver_for
    from junodcs.wms.optimizers import Optimizer

    optimizer = Optimizer(grid.wms, resolver_for(grid.app.state))
    while not grid.stop.wait(0.2):
        try:
            optimizer.run_once()
            grid.wms.check_stalled()
        except Exception:  # noqa: BLE001 - a concurrent change: the next pass retries
            pass


def grid_yaml(tmp: Path, se_urls: dict[str, str] | None = None, sandbox_se: str | None = None) -> Path:
    data = yaml.safe_load(example_grid_path().read_text())
    if sandbox_se:
        data.setdefault("servers", {})["sandbox_se"] = sandbox_se
    for site in data["sites"]:
        for ce in site.get("computing_elements", []):
            if ce["name"] in MEMORY:
                ce["memory_per_slot"] = MEMORY[ce["name"]]
        for se in site.get("storage_elements", []) or []:
            if se_urls and se["name"] in se_urls:
                se["url"] = se_urls[se["name"]]
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def pilot_grid(tmp: Path, *, ses: tuple[str, ...] = (), heartbeat: int = 1, background: bool = True,
               database_url: str | None = None, sock: Any = None,
               dead_ses: tuple[str, ...] = (), sandbox_se: str | None = None,
               wms_config: Any = None,
               systems: tuple[str, ...] = ("auth", "config", "catalog", "wms")) -> Iterator[PilotGrid]:
    """`ses` are started for real; `dead_ses` get the URL of a closed port (an SE that is down); `sandbox_se`
    keeps job sandboxes on that SE (else on the central server's disk)."""
    from junodcs.auth.logic import TokenService
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade
    from junodcs.wms.logic import WMSConfig

    if sock is None:
        sock, central = bound_socket()
    else:
        central = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with ExitStack() as stack:
        started: dict[str, Any] = {}
        if ses:
            from junodcs.auth.tokens import TokenVerifier
            from junodcs.storage.server.config import SEConfig
            from junodcs.storage.server.run import BackgroundSE, free_port

            for name in ses:
                port = free_port()
                verifier = TokenVerifier(audiences=(f"http://127.0.0.1:{port}",), local_issuer=None,
                                         trusted_issuers=(central,))
                config = SEConfig(name=name, root=tmp / "se" / name, vo_prefix="/juno", verify_token=verifier.verify,
                                  macaroon_secret=secrets.token_bytes(32), marker_interval=0.2, io_block=1 << 20)
                started[name] = stack.enter_context(BackgroundSE(config, port=port))
        path = grid_yaml(tmp, {**{n: se.url for n, se in started.items()},
                               **{n: "http://127.0.0.1:9" for n in dead_ses}}, sandbox_se)
        engine = create_engine(database_url or f"sqlite:///{tmp / 'central.db'}")
        upgrade(engine)
        stack.callback(engine.dispose)
        config = wms_config or WMSConfig(heartbeat_period=heartbeat, stalled_periods=4, failed_periods=8,
                                         matched_timeout=60)

        def make() -> Any:
            return create_app(load_grid_config(path), engine, ServerOptions(
                public_url=central, systems=systems, extra_state={"wms_config": config}))

        app = make()
        served = Served(app, sock)
        stack.callback(lambda: served.current.stop())
        s = app.state
        row, secret = TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry).create_client(
            owner="pilot", group="juno_pilot", scopes=None)
        secret_file = tmp / "pilot.secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        grid = PilotGrid(central, app, tmp, path, row.client_id, secret_file, started)
        grid.served = served
        grid.make_app = make
        if background:
            thread = threading.Thread(target=_background, args=(grid,), daemon=True)
            thread.start()
            stack.callback(thread.join, 5)
            stack.callback(grid.stop.set)
        yield grid


class _Server:
    def __init__(self, app: Any, sock: Any) -> None:
        import uvicorn

        self.sock = sock
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=10)
        self.sock.close()


class Served:
    """A uvicorn server in a thread that can be stopped and started again on the same port."""

    def __init__(self, app: Any, sock: Any) -> None:
        self.port = sock.getsockname()[1]
        self.current = _Server(app, sock)

    def restart(self, app: Any) -> None:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.current = _Server(app, sock)


def run_directors(directors: list[Any], stop: threading.Event) -> list[threading.Thread]:
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in directors]
    for thread in threads:
        thread.start()
    return threads
