"""The Frontier client through real Squids against a real Frontier server (plain HTTP, loopback):
hits come from the cache, a Squid stopped mid-wave fails over with no wrong data, a stopped server gives
one clear error after every path, open tags change after the short lifetime, locked data never."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from authutil import bound_socket, serve
from junodcs.conditions.client import FrontierClient, FrontierUnavailable
from junodcs.conditions.logic import Conditions
from junodcs.conditions.models import IOVCreate, TagCreate
from junodcs.conditions.router import FrontierSettings, create_frontier_app
from junodcs.conditions.squid import initialize, squid_binary, squid_spec, wait_ready

pytestmark = pytest.mark.interop
cleanup: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_squid_dirs() -> Iterator[None]:
    yield
    while cleanup:
        shutil.rmtree(cleanup.pop(), ignore_errors=True)
TYPES = [f"Calib.T{i}" for i in range(5)]


@pytest.fixture
def conditions(sqlite_engine: Engine) -> Conditions:
    cond = Conditions(sqlite_engine)
    cond.create_global_tag("GT", "", user="t")
    for payload_type in TYPES:
        info, _ = cond.put_payload(payload_type, f"{payload_type} v1 ".encode() * 2000, user="t")
        cond.create_tag(TagCreate(name=f"{payload_type}-v1", payload_type=payload_type), user="t")
        cond.add_iovs(f"{payload_type}-v1", [IOVCreate(since=1, payload_hash=info.hash)], user="t")
        cond.add_to_global_tag("GT", f"{payload_type}-v1")
    return cond


@contextlib.contextmanager
def frontier_server(grid: Any, engine: Engine, **settings: Any) -> Iterator[tuple[str, Any]]:
    app = create_frontier_app(grid, engine, FrontierSettings(validate_seconds=0, **settings))
    sock, url = bound_socket()
    with serve(app, sock):
        yield url + "/Frontier", app


@contextlib.contextmanager
def squid(tmp_path: Path, name: str, origin: str) -> Iterator[Any]:
    if squid_binary() is None:
        pytest.skip("squid not installed (apt-get install squid; .ci/run installs it)")
    sock, url = bound_socket()
    port = int(url.rsplit(":", 1)[1])
    sock.close()
    base = Path(tempfile.mkdtemp(prefix="dcs-squid-"))
    base.chmod(0o755)  # as root Squid runs as user proxy
    cleanup.append(base)
    spec = squid_spec(name, base / name, port, origin=origin)
    initialize(spec)
    process = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(spec)
        yield spec, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)


def expected(cond: Conditions) -> dict[str, bytes]:
    return {t: cond.payload_data(cond.resolve("GT", t, 10).payload_hash)[1] or b"" for t in TYPES}


def test_wave_through_squid_with_failover_and_server_down(grid, sqlite_engine, conditions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    want = expected(conditions)
    with contextlib.ExitStack() as stack:
        origin, app = stack.enter_context(frontier_server(grid, sqlite_engine))
        (s1, p1) = stack.enter_context(squid(tmp_path, "SITE-A", origin))
        (s2, p2) = stack.enter_context(squid(tmp_path, "SITE-B", origin))
        service_queries = lambda: app.state.frontier.queries if hasattr(app.state, "frontier") else 0  # noqa: E731

        # warm: the first job fills the cache; the next ones are served by Squid
        with FrontierClient(servers=[origin], proxies=[s1.url, s2.url]) as client:
            assert client.get_many("GT", TYPES, 10) == want
        warm = service_queries()
        with FrontierClient(servers=[origin], proxies=[s1.url, s2.url]) as client:
            assert client.get_many("GT", TYPES, 10) == want
        # the payloads (ttl=forever) and locked/long data are hits; only short-lived lookups may revalidate
        assert service_queries() - warm <= 3
        assert "TCP_MEM_HIT" in s1.access_log.read_text() or "TCP_HIT" in s1.access_log.read_text()

        # a wave; SITE-A's squid dies in the middle
        results: list[Any] = []
        failures: list[BaseException] = []

        def job() -> None:
            try:
                with FrontierClient(servers=[origin], proxies=[s1.url, s2.url], connect_timeout=2) as client:
                    for _ in range(3):
                        results.append((client.get_many("GT", TYPES, 10), [a.proxy for a in client.attempts]))
                        time.sleep(0.05)
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)

        threads = [threading.Thread(target=job) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        p1.terminate()
        p1.wait(timeout=20)
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        assert len(results) == 24 and all(r == want for r, _ in results)
        with FrontierClient(servers=[origin], proxies=[s1.url, s2.url], connect_timeout=2) as client:
            assert client.get_many("GT", TYPES, 10) == want
            assert client.attempts[0].proxy == s1.url and client.attempts[0].outcome.startswith("unreachable")
            assert all(a.proxy == s2.url for a in client.attempts[1:])

        # SITE-B gone too: straight to the server
        p2.terminate()
        p2.wait(timeout=20)
        with FrontierClient(servers=[origin], proxies=[s1.url, s2.url], connect_timeout=2) as client:
            assert client.get_many("GT", TYPES, 10) == want
            assert client.attempts[-1].proxy is None

    # the server stopped as well: one clear error naming every path
    with FrontierClient(servers=[origin], proxies=[s1.url, s2.url], connect_timeout=1) as client:
        with pytest.raises(FrontierUnavailable) as error:
            client.get("GT", TYPES[0], 10)
    message = str(error.value)
    assert s1.url in message and s2.url in message and "(direct)" in message


def test_server_down_behind_live_squid(grid, sqlite_engine, conditions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(contextlib.ExitStack())
        origin, _ = server.enter_context(frontier_server(grid, sqlite_engine, error_seconds=1))
        spec, _ = stack.enter_context(squid(tmp_path, "SITE-A", origin))
        server.close()  # the Frontier server stops; Squid lives (and has nothing cached)
        with FrontierClient(servers=[origin], proxies=[spec.url], connect_timeout=1) as client:
            with pytest.raises(FrontierUnavailable) as error:
                client.get("GT", TYPES[0], 10)
        assert "HTTP 50" in str(error.value) and "(direct)" in str(error.value)
        assert [a.refresh for a in client.attempts if a.proxy] == [None, "soft", "hard"]


def test_open_tag_changes_after_short_ttl_locked_never(grid, sqlite_engine, conditions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack:
        origin, app = stack.enter_context(frontier_server(grid, sqlite_engine, short_seconds=1))
        spec, _ = stack.enter_context(squid(tmp_path, "SITE-A", origin))
        client = stack.enter_context(FrontierClient(servers=[origin], proxies=[spec.url]))
        t = TYPES[0]
        time.sleep(1.0)  # answers about tables changed in the running second carry no Last-Modified
        old = client.get("GT", t, 10)
        new, _ = conditions.put_payload(t, b"v2 " * 3000, user="t")
        conditions.add_iovs(f"{t}-v1", [IOVCreate(since=1, payload_hash=new.hash)], user="t")
        time.sleep(2.1)  # Squid ages in whole seconds: max-age=1 is stale after 2 s
        assert client.get("GT", t, 10) == b"v2 " * 3000 != old
        # a 304 revalidation keeps unchanged short-lived answers cheap
        assert "TCP_REFRESH" in spec.access_log.read_text()

        # locked tag: answers are cached long; the payload by hash never changes
        conditions.lock_tag(f"{t}-v1")
        time.sleep(2.1)
        assert client.get("GT", t, 10) == b"v2 " * 3000
        before = app.state.frontier.queries
        with pytest.raises(Exception):
            conditions.add_iovs(f"{t}-v1", [IOVCreate(since=1, payload_hash=new.hash)], user="t")
        assert client.payloads([new.hash]) == {new.hash: b"v2 " * 3000}
        assert app.state.frontier.queries == before  # served from the cache


def test_generated_config_is_valid_for_squid(tmp_path: Path) -> None:
    """The config `dcs grid up` writes parses with the installed Squid and keeps a job wave's answers in
    memory: collapsed forwarding, a memory cache far above 50 x 100 KB payloads, objects of a payload
    batch (about 0.7 MB for ten 100 KB payloads) allowed in memory, no revalidation of misses."""
    binary = squid_binary()
    if binary is None:
        pytest.skip("squid not installed (apt-get install squid; .ci/run installs it)")
    base = Path(tempfile.mkdtemp(prefix="dcs-squid-"))
    base.chmod(0o755)
    cleanup.append(base)
    for mode in ("forward", "accel"):
        spec = squid_spec(f"SITE-{mode}", base / mode, 3128, origin="http://127.0.0.1:8000/Frontier", mode=mode)
        settings = dict(line.split(" ", 1) for line in spec.config.splitlines() if line and not line.startswith("#")
                        and line.split(" ", 1)[0] in ("collapsed_forwarding", "cache_mem", "memory_cache_mode",
                                                        "maximum_object_size_in_memory", "cache_miss_revalidate"))
        assert settings["collapsed_forwarding"] == "on" and settings["memory_cache_mode"] == "always"
        assert settings["cache_miss_revalidate"] == "off"
        assert int(settings["cache_mem"].split()[0]) * 1024 >= 50 * 100 * 10  # KB: ten waves' worth
        assert int(settings["maximum_object_size_in_memory"].split()[0]) >= 1024  # KB
        spec.directory.mkdir(parents=True)
        spec.conf_path.write_text(spec.config)
        parsed = subprocess.run([binary, "-k", "parse", "-f", str(spec.conf_path)], capture_output=True, text=True,
                                timeout=60)
        assert parsed.returncode == 0, parsed.stderr[-2000:]
        assert "FATAL" not in parsed.stderr and "ERROR" not in parsed.stderr, parsed.stderr[-2000:]
