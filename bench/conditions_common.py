"""Shared set-up of the conditions benches: a database with a global tag of N payload types, a Frontier
server process (`dcs cond serve-frontier`) and a Squid, all on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from junodcs.conditions.logic import Conditions
from junodcs.conditions.models import IOVCreate, TagCreate
from junodcs.db.engine import create_engine, normalize_url
from junodcs.db.migrate import upgrade


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mariadb_database(base: str) -> tuple[str, object]:
    """A throw-away database on the MariaDB server at `base`; returns (url, dropper)."""
    from sqlalchemy.engine import make_url

    name = f"dcs_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()

    return make_url(normalize_url(base)).set(database=name).render_as_string(hide_password=False), drop


def load(url: str, types: int, size: int, global_tag: str = "GT-BENCH") -> list[str]:
    engine = create_engine(url)
    upgrade(engine)
    cond = Conditions(engine)
    cond.create_global_tag(global_tag, "bench", user="bench")
    names = [f"Calib.Type{i:02d}" for i in range(types)]
    for i, name in enumerate(names):
        data = (os.urandom(size // 2) + bytes(size - size // 2))  # half random, half zeros
        info, _ = cond.put_payload(name, data, user="bench")
        cond.create_tag(TagCreate(name=f"{name}-v1", payload_type=name), user="bench")
        cond.add_iovs(f"{name}-v1", [IOVCreate(since=1, payload_hash=info.hash)], user="bench")
        cond.add_to_global_tag(global_tag, f"{name}-v1")
    engine.dispose()
    return names


def start_frontier(url: str, home: Path, short_ttl: int = 300) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "DCS_HOME": str(home), "DCS_FRONTIER_VALIDATE_SECONDS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "junodcs", "cond", "serve-frontier", "--port", str(port),
                                "--database-url", url, "--short-ttl", str(short_ttl)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("Frontier server did not start")
    return process, f"http://127.0.0.1:{port}/Frontier"
