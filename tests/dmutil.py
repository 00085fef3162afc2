"""A small real grid on loopback for the data-manager tests: the central server (auth, config, catalog)
with a grid.yaml derived from the packaged one whose disk SEs have the URLs of three real SEs, and
IHEP-TAPE that of a real tape SE (WLCG Tape REST API, delays of a few tenths of a second), all trusting
the central server's tokens. Plus a consistency check of catalog against SEs."""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from authutil import bound_socket, make_app, serve
from junodcs.core.gridconfig import example_grid_path, load_grid_config
from junodcs.storage.server.config import SEConfig, TapeSettings
from junodcs.storage.server.run import BackgroundSE, free_port
from junodcs.storage.server.store import UPLOAD_PREFIX

#: SE -> site, as in the packaged grid.yaml
DISK_SES = {"IHEP-EOS": "GRID.IHEP.cn", "CNAF-STORM": "GRID.CNAF.it", "JINR-DCACHE": "GRID.JINR.ru"}
TAPE_SES = {"IHEP-TAPE": "GRID.IHEP.cn"}
#: short enough for tests, long enough to see every state: a written file is on TAPE only after ~0.8 s
TAPE_SETTINGS = TapeSettings(mount_delay=0.3, stage_delay=0.3, flush_delay=0.4, evict_delay=0.4,
                             default_pin=60.0)


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@dataclass
class Grid:
    url: str
    app: Any
    ses: dict[str, BackgroundSE]
    grid_yaml: Path
    client_id: str = ""
    secret_file: Path | None = None

    def se_file(self, se: str, lfn: str) -> Path:
        """Where an LFN's replica lives on disk on one of our SEs (SE path /juno, root = SE root)."""
        return self.ses[se].config.root / lfn.lstrip("/")


@contextmanager
def running_grid(tmp: Path) -> Iterator[Grid]:
    from junodcs.auth.logic import TokenService
    from junodcs.auth.tokens import TokenVerifier
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade

    sock, central = bound_socket()
    with ExitStack() as stack:
        ses: dict[str, BackgroundSE] = {}
        for name in [*DISK_SES, *TAPE_SES]:
            # The SE accepts the central server's tokens (what `dcs se serve --trust-issuer URL` builds).
            port = free_port()
            verifier = TokenVerifier(audiences=(f"http://127.0.0.1:{port}",), local_issuer=None,
                                     trusted_issuers=(central,))
            config = SEConfig(name=name, root=tmp / "se" / name, vo_prefix="/juno", verify_token=verifier.verify,
                              macaroon_secret=secrets.token_bytes(32), marker_interval=0.2, io_block=1 << 20,
                              tape=TAPE_SETTINGS if name in TAPE_SES else None)
            ses[name] = stack.enter_context(BackgroundSE(config, port=port))
        data = yaml.safe_load(example_grid_path().read_text())
        for site in data["sites"]:
            for se_data in site.get("storage_elements", []):
                if se_data["name"] in ses:
                    se_data["url"] = ses[se_data["name"]].url
        grid_yaml = tmp / "grid.yaml"
        grid_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
        engine = create_engine(f"sqlite:///{tmp / 'central.db'}")
        upgrade(engine)
        stack.callback(engine.dispose)
        app = make_app(load_grid_config(grid_yaml), engine, url=central)
        stack.enter_context(serve(app, sock))
        s = app.state
        row, secret = TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry).create_client(
            owner="boris", group="juno_data", scopes=None)
        secret_file = tmp / "client.secret"
        secret_file.write_text(secret + "\n")
        yield Grid(central, app, ses, grid_yaml, row.client_id, secret_file)


def dcs(*args: str) -> tuple[int, str, str]:
    from junodcs.cli.main import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def login(grid: Grid, monkeypatch: Any) -> None:
    monkeypatch.setenv("DCS_SERVER_URL", grid.url)
    code, out, err = dcs("login", "--client-id", grid.client_id,
                         "--client-secret-file", str(grid.secret_file))
    assert code == 0, err


def leftovers(grid: Grid) -> list[str]:
    """Upload temporaries on the SEs (the tape SE's own state database is not one)."""
    return [str(p) for se in grid.ses.values() for p in se.config.root.rglob(f"{UPLOAD_PREFIX}*")]


def assert_consistent(grid: Grid, top: str) -> None:
    """Catalog and SEs agree under `top`: every registered replica exists on its SE with the catalog's
    size and checksum, every file on an SE is registered there, and no upload temporary is left."""
    from junodcs.catalog.client import CatalogClient

    with CatalogClient() as catalog:
        registered: dict[str, dict[str, Any]] = {}
        stack = [top]
        while stack:
            path = stack.pop()
            try:
                entries = list(catalog.iter_ls(path))
            except Exception:  # noqa: BLE001 - top may not exist yet
                entries = []
            for entry in entries:
                child = f"{path.rstrip('/')}/{entry['name']}"
                if entry["type"] == "directory":
                    stack.append(child)
                else:
                    registered[child] = entry
        replicas = catalog.replicas(sorted(registered)) if registered else {}
    for lfn, reps in replicas.items():
        assert reps, f"{lfn} is registered without any replica"
        for rep in reps:
            if rep["se"] not in grid.ses:
                continue
            local = grid.se_file(rep["se"], lfn)
            assert local.is_file(), f"orphan replica: {lfn} registered at {rep['se']} but not there"
            data = local.read_bytes()
            assert len(data) == registered[lfn]["size"], f"{lfn} at {rep['se']}: size differs"
            assert adler(data) == registered[lfn]["checksum"], f"{lfn} at {rep['se']}: checksum differs"
    for name, se in grid.ses.items():
        base = se.config.root / top.lstrip("/")
        if not base.exists():
            continue
        for local in base.rglob("*"):
            if local.is_file() and not local.name.startswith(".dcs-"):
                lfn = "/" + str(local.relative_to(se.config.root))
                assert lfn in replicas and any(r["se"] == name for r in replicas[lfn]), \
                    f"dark data: {local} on {name} is not registered there"
    assert leftovers(grid) == []
