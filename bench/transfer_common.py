"""Shared set-up of the transfer benchmarks: a throw-away central database with a token issuer, storage
elements each in its own process, and the transfer service over that database.

Why separate processes: an SE in a thread of the benchmark process shares the GIL with the transfer
worker (and with the baseline's client threads), so the benchmark would measure GIL contention instead
of the transfer path. In production every SE is its own server anyway (`dcs se serve`).

The SE processes verify the bench's tokens with keys read from the same SQLite database, as `dcs
server` and the SEs of a local grid do. Link shaping, when asked for, is the local grid's
(`junodcs.transfer.shaping.LinkShaper`, what `dcs se serve --grid` installs): a token bucket per peer
on the data path of the SE that moves the bytes (the destination of a pull).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ISSUER_URL = "http://127.0.0.1:1"
SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_se(name: str, root: str, port: int, db_url: str, rates: Mapping[str, float] | None,
              marker_interval: float) -> None:
    """Child process: one SE verifying the bench issuer's tokens, optionally shaping its peers."""
    import logging
    import threading

    logging.basicConfig(level=logging.WARNING)
    parent = os.getppid()

    def orphan_watch() -> None:  # the bench was killed: do not outlive it
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()
    from junodcs.auth.registry import Registry
    from junodcs.auth.tokens import TokenIssuer, TokenVerifier
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.db.engine import create_engine
    from junodcs.storage.server.config import SEConfig
    from junodcs.storage.server.run import serve
    from junodcs.transfer.shaping import LinkShaper

    grid = load_grid_config(example_grid_path())
    issuer = TokenIssuer(create_engine(db_url), issuer=ISSUER_URL, registry=Registry(grid))
    verifier = TokenVerifier(audiences=(f"http://127.0.0.1:{port}",), local_issuer=issuer, trusted_issuers=())
    shaper = LinkShaper(rates) if rates else None
    config = SEConfig(name=name, root=Path(root), vo_prefix="/juno", verify_token=verifier.verify,
                      macaroon_secret=secrets.token_bytes(32), marker_interval=marker_interval, shaper=shaper)
    serve(config, host="127.0.0.1", port=port)


@dataclass
class SEProcess:
    name: str
    port: int
    root: Path
    process: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def peer(self) -> str:
        """How shaping names this SE (`host:port`)."""
        return f"127.0.0.1:{self.port}"


@dataclass
class Bench:
    """Everything a transfer benchmark needs; `close()` stops the SEs and removes the files."""

    tmp: Path
    engine: Any
    issuer: Any
    registry: Any
    token: str
    ses: dict[str, SEProcess] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def credentials(self) -> Any:
        from junodcs.transfer.agents import Credentials

        return Credentials(self.issuer, self.registry)

    def start_se(self, name: str, *, port: int | None = None, rates: Mapping[str, float] | None = None,
                 marker_interval: float = 1.0) -> SEProcess:
        port = port or free_port()
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_serve_se, args=(name, str(root), port, str(self.engine.url), dict(rates or {}),
                                                   marker_interval), daemon=True, name=f"se-{name}")
        proc.start()
        se = SEProcess(name, port, root, proc)
        self.ses[name] = se
        _wait_port(port, proc)
        return se

    def service(self, **settings: Any) -> Any:
        from junodcs.transfer.logic import Settings, TransferService

        return TransferService(self.engine, settings=Settings(**settings), se_names={})

    def submitter(self) -> Any:
        from junodcs.transfer.logic import Submitter

        return Submitter("boris", "juno_data", "juno", "/C=RU/O=JUNO/OU=JINR/CN=Boris Ivanov")

    def close(self) -> None:
        for se in self.ses.values():
            se.process.terminate()
        for se in self.ses.values():
            se.process.join(10)
            if se.process.is_alive():
                se.process.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_port(port: int, proc: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"SE process on port {port} exited with {proc.exitcode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"SE on port {port} did not start within {timeout:.0f} s")


@contextmanager
def bench_environment(prefix: str) -> Iterator[Bench]:
    """Temporary directory, migrated SQLite database, token issuer, a token for boris/juno_data."""
    from junodcs.auth.registry import Registry
    from junodcs.auth.tokens import TokenIssuer
    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.db.engine import create_engine
    from junodcs.db.migrate import upgrade
    from junodcs.transfer.agents import Credentials

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    grid = load_grid_config(example_grid_path())
    engine = create_engine(f"sqlite:///{tmp / 'central.db'}")
    upgrade(engine)
    registry = Registry(grid)
    issuer = TokenIssuer(engine, issuer=ISSUER_URL, registry=registry)
    token = Credentials(issuer, registry).minted("boris", "juno_data")  # creates the signing key first
    assert token is not None
    bench = Bench(tmp, engine, issuer, registry, token)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield bench
    finally:
        bench.close()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through bench_environment, which stops the SEs and cleans up


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def upload(http: Any, url: str, data: bytes, token: str) -> None:
    """PUT with the Digest the SE checks, so the SE knows the file's adler32 from the start."""
    r = http.put(url, content=data, headers={"Authorization": f"Bearer {token}",
                                             "Digest": f"adler32={adler32_hex(data)}"})
    r.raise_for_status()


def seed_sources(http: Any, se: SEProcess, directory: str, n: int, data: bytes, token: str) -> None:
    """`n` source files `<directory>/<i>` on `se` with the same content: the first is uploaded (the SE records
    its checksums), the others are hard links to it in the SE's root, so they share its inode and its
    checksum attribute. One physical copy instead of `n`: 10,000 sources of 1 MiB fit on a memory file
    system beside their copies, and seeding takes a second instead of a minute. Where the file system has
    no user xattrs (checksums in per-path sidecar files) every file is uploaded."""
    upload(http, f"{se.url}{directory}/0", data, token)
    first = next((p for p in se.root.rglob("0") if p.parent.name == Path(directory).name), None)
    try:
        if first is None:
            raise OSError("uploaded source not found under the SE's root")
        os.getxattr(first, "user.junodcs.checksums")
    except OSError:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: upload(http, f"{se.url}{directory}/{i}", data, token), range(1, n)))
        return
    for i in range(1, n):
        os.link(first, first.with_name(str(i)))


def write_ceiling(directory: Path, files: int = 3000, size: int = 1 << 20) -> float:
    """Files of `size` per second that one process writes into `directory` (64 KiB pieces, as a socket hands
    them over), measured over the last third of `files`: by then the kernel writes back dirty pages, which
    on a virtual disk caps what any SE's destination can store (seen here: ~300 MiB/s with a whole core in
    the kernel, against ~1,400 MiB/s while the page cache absorbs the writes)."""
    target = Path(tempfile.mkdtemp(prefix="write-ceiling-", dir=directory))
    parts = [os.urandom(65536) for _ in range(size // 65536)]
    try:
        start = None
        for i in range(files):
            if i == files * 2 // 3:
                start = time.perf_counter()
            fd = os.open(target / str(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.writev(fd, parts)
            finally:
                os.close(fd)
        assert start is not None
        return (files - files * 2 // 3) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def random_block(size: int) -> bytes:
    return os.urandom(size)
