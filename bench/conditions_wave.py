"""A job wave reading conditions: CLIENTS jobs, each its own process (as jobs on worker nodes are), start
together at a barrier and read the same 50 payloads (100 KB) for one run of a global tag on MariaDB:

(a) through a site Squid in front of the Frontier server, with the project's `FrontierClient` (the
    cache warmed by the first job of the site, as a real site's first job does);
(b) with straight MariaDB queries from each process: its own connection, and the same statements the
    Frontier server runs for a job (global tag, its tag map, the tags' lock flags, the IOVs, the 50
    payload blobs).

Reports, per arm: the median (and p90) per-job latency from the wave's release (the barrier opening) to
the job having all its payloads, and the ratio direct / Squid; the median from each job's own start;
the makespan; the CPU spent per job by the jobs and by the services (Squid + Frontier server, MariaDB;
MariaDB's counter also includes other users of the server). And the share of the Squid wave's HTTP
requests that reached MariaDB, against the number of HTTP requests the jobs made, with Squid's result
codes. The MariaDB server is shared (other tests use it), so its global `Com_select` counter also counts
their queries: the Frontier server therefore connects as a user of its own, read-only, and the queries
that reached MariaDB are that user's `SELECT_COMMANDS` (MariaDB's user statistics, switched on for the
bench and restored); the global `Com_select` delta is reported beside it. Every job's data is checked against
the payload hashes after its clock stopped.

Also reported: the median of SEQUENTIAL jobs run one at a time per arm (the cost of one job without a
wave). Both arms run CLIENTS processes at once on the same machine: on a 2-core machine they contend for CPU in
both arms (client decoding and Squid in one, client drivers and MariaDB in the other), and the latency of
each arm is dominated by that contention. MariaDB's `max_connections` is raised for the direct arm if
it is below CLIENTS + 10 (and restored afterwards). Needs MariaDB (`DCS_BENCH_MARIADB_URL`, default
the local server) and Squid.

Usage: `python bench/conditions_wave.py [clients]`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditions_common import free_port, load, mariadb_database, start_frontier  # noqa: E402

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from junodcs.conditions.client import FrontierClient  # noqa: E402
from junodcs.conditions.squid import initialize, squid_binary, squid_spec, wait_ready  # noqa: E402
from junodcs.db.engine import create_engine, normalize_url  # noqa: E402

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
TYPES, SIZE, RUN, GT = 50, 100_000, 1000, "GT-BENCH"
Job = Callable[..., dict[str, bytes]]
SEQUENTIAL = 10
"""Jobs run one after the other (no wave) per arm, for the per-job cost without contention."""
DIRECT_QUERIES = 4 + TYPES
"""Statements a direct job runs: global tag, tag map, lock flags, IOVs, one per payload."""


@dataclass
class Wave:
    latencies: list[float]
    """Per-job seconds from the wave's release (the barrier opening) to having all its payloads: a job
    that the saturated CPU lets start late is still waiting for its conditions."""
    own: list[float]
    """Per-job seconds from the job's own first instruction after the barrier to the end."""
    makespan: float
    """Seconds from the release to the last job's end."""


def _worker(job: Job, args: Sequence[Any], expected: dict[str, str], barrier: Any, results: Any) -> None:
    """One job (a forked process): wait for the others, read, report (latency, start, end, error)."""
    try:
        barrier.wait(timeout=600)
    except Exception as exc:  # noqa: BLE001
        results.put((0.0, 0.0, 0.0, f"barrier: {exc!r}"))
        return
    started_at, start = time.time(), time.perf_counter()
    error = None
    try:
        got = job(*args)
    except BaseException as exc:  # noqa: BLE001
        got, error = {}, repr(exc)
    latency = time.perf_counter() - start
    ended_at = time.time()
    if error is None:  # checked after the clock stopped, the same for both arms
        bad = [t for t, digest in expected.items() if hashlib.sha256(got.get(t, b"")).hexdigest() != digest]
        if bad or len(got) != len(expected):
            error = f"wrong data for {bad[:3]} ({len(got)} payloads)"
    results.put((latency, started_at, ended_at, error))


def wave(job: Job, args: Sequence[Any], expected: dict[str, str]) -> Wave:
    """Run CLIENTS forked processes of `job` released together by a barrier."""
    ctx = multiprocessing.get_context("fork")
    released = ctx.Value("d", 0.0)

    def release() -> None:  # run by one process as the barrier opens
        released.value = time.time()

    barrier = ctx.Barrier(CLIENTS, action=release)
    results = ctx.Queue()
    processes = [ctx.Process(target=_worker, args=(job, args, expected, barrier, results), daemon=True)
                 for _ in range(CLIENTS)]
    gc.collect()
    gc.freeze()  # as pre-forking servers do: the jobs' garbage collections leave the inherited heap alone
    for process in processes:
        process.start()
    gc.unfreeze()
    rows = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [row[3] for row in rows if row[3]]
    if errors:
        raise RuntimeError(f"{len(errors)} of {CLIENTS} jobs failed: {errors[0]}")
    return Wave(latencies=[row[2] - released.value for row in rows], own=[row[0] for row in rows],
                makespan=max(row[2] for row in rows) - released.value)


# -- the two arms (run inside the job processes) -------------------------------------------------------


def squid_job(origin: str, proxy: str, types: list[str]) -> dict[str, bytes]:
    with FrontierClient(servers=[origin], proxies=[proxy]) as client:
        return client.get_many(GT, types, RUN)


def direct_job(url: str, types: list[str]) -> dict[str, bytes]:
    """What a job without Frontier does: its own connection to the conditions database and the
    statements the Frontier server would run for it."""
    import pymysql

    u = make_url(url)
    connection = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                                 database=u.database, autocommit=True)
    try:
        with connection.cursor() as c:
            c.execute("SELECT status FROM cond_global_tags WHERE name = %s", (GT,))
            (status,) = c.fetchone()
            if status == "invalid":
                raise RuntimeError("global tag invalid")
            c.execute("SELECT payload_type, tag_name FROM cond_global_tag_map WHERE global_tag = %s", (GT,))
            tags = dict(c.fetchall())
            wanted = sorted({tags[t] for t in types})
            marks = ",".join(["%s"] * len(wanted))
            c.execute(f"SELECT name, locked FROM cond_tags WHERE name IN ({marks})", wanted)
            c.fetchall()
            c.execute(f"SELECT tag_name, since, id, payload_hash FROM cond_iovs WHERE tag_name IN ({marks}) "
                      "AND since <= %s", [*wanted, RUN])
            best: dict[str, tuple[int, int, str]] = {}
            for tag, since, iov_id, digest in c.fetchall():
                if tag not in best or (since, iov_id) > best[tag][:2]:
                    best[tag] = (since, iov_id, digest)
            data: dict[str, bytes] = {}
            for digest in sorted({best[tags[t]][2] for t in types}):
                c.execute("SELECT hash, data, uri FROM cond_payloads WHERE hash = %s", (digest,))
                data[digest] = c.fetchone()[1]
            return {t: data[best[tags[t]][2]] for t in types}
    finally:
        connection.close()


# -- helpers -------------------------------------------------------------------------------------------


def status(engine: Any, name: str) -> int:
    with engine.connect() as c:
        return int(c.execute(text(f"SHOW GLOBAL STATUS LIKE '{name}'")).one()[1])


def squid_outcomes(log: Path) -> Counter[str]:
    """Squid result codes (TCP_MEM_HIT, TCP_MISS, ...) in the access log."""
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = re.search(r"\s(\w+)/\d{3}\s", line)
        if match:
            counts[match.group(1)] += 1
    return counts


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a local process so far, 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jobs_cpu() -> float:
    """CPU seconds of every finished (waited-for) child process so far: the jobs."""
    times = os.times()
    return times.children_user + times.children_system


def local_mariadb() -> int | None:
    found = subprocess.run(["pidof", "mariadbd", "mysqld"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    if squid_binary() is None:
        emit(bench="conditions_wave", skipped="squid not installed")
        return
    base = os.environ.get("DCS_BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
    url, drop = mariadb_database(base)
    tmp = Path(tempfile.mkdtemp(prefix="dcs-squid-bench-"))
    tmp.chmod(0o755)  # as root, Squid runs as user proxy
    processes: list[subprocess.Popen[bytes]] = []
    admin = create_engine(url)
    max_connections = None
    reader = userstat = None
    try:
        types = load(url, TYPES, SIZE, GT)
        reader, reader_url = frontier_user(admin, url)
        server, origin = start_frontier(reader_url, tmp / "home")
        processes.append(server)
        spec = squid_spec("BENCH", tmp / "squid", free_port(), origin=origin)
        initialize(spec)
        processes.append(subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(spec)

        userstat = status_variable(admin, "userstat", number=False)
        set_global(admin, "userstat", "1")
        cold = user_selects(admin, reader)
        with FrontierClient(servers=[origin], proxies=[spec.url]) as client:  # the site's first job
            first = client.get_many(GT, types, RUN)
            requests_per_job = len(client.attempts)
        cold = user_selects(admin, reader) - cold  # what a job costs MariaDB without a cache
        expected = {t: hashlib.sha256(data).hexdigest() for t, data in first.items()}
        warm_log = Counter(squid_outcomes(spec.access_log))

        mariadbd = local_mariadb()
        services = (processes[0].pid, processes[1].pid)
        before, user_before = status(admin, "Com_select"), user_selects(admin, reader)
        cpu = jobs_cpu(), sum(process_cpu(pid) for pid in services), process_cpu(mariadbd)
        squid_wave = wave(squid_job, (origin, spec.url, types), expected)
        squid_cpu = (jobs_cpu() - cpu[0], sum(process_cpu(pid) for pid in services) - cpu[1],
                     process_cpu(mariadbd) - cpu[2])
        reached, everyone = user_selects(admin, reader) - user_before, status(admin, "Com_select") - before
        outcomes = squid_outcomes(spec.access_log) - warm_log
        requests = CLIENTS * requests_per_job

        max_connections = status_variable(admin, "max_connections")
        if max_connections < CLIENTS + 10:
            set_max_connections(admin, CLIENTS + 10)
        direct_url = make_url(normalize_url(url)).render_as_string(hide_password=False)
        cpu = jobs_cpu(), process_cpu(mariadbd)
        direct_wave = wave(direct_job, (direct_url, types), expected)
        direct_cpu = jobs_cpu() - cpu[0], process_cpu(mariadbd) - cpu[1]

        alone_squid = [timed(squid_job, origin, spec.url, types) for _ in range(SEQUENTIAL)]
        alone_direct = [timed(direct_job, direct_url, types) for _ in range(SEQUENTIAL)]
        s, d = statistics.median(squid_wave.latencies), statistics.median(direct_wave.latencies)
        emit(bench=f"conditions_wave_{CLIENTS}procs_x{TYPES}x100KB_squid_median_job_latency",
             value=round(s * 1000, 1), unit="ms", baseline="straight_mariadb_queries_median_job_latency",
             baseline_value=round(d * 1000, 1), ratio=round(d / s, 2), cpus=os.cpu_count(),
             squid_p90_ms=round(quantile(squid_wave.latencies, 0.9) * 1000, 1),
             direct_p90_ms=round(quantile(direct_wave.latencies, 0.9) * 1000, 1),
             squid_median_own_start_ms=round(statistics.median(squid_wave.own) * 1000, 1),
             direct_median_own_start_ms=round(statistics.median(direct_wave.own) * 1000, 1),
             squid_makespan_s=round(squid_wave.makespan, 2), direct_makespan_s=round(direct_wave.makespan, 2),
             squid_cpu_ms_per_job={"jobs": per_job(squid_cpu[0]), "squid_and_frontier": per_job(squid_cpu[1]),
                                   "mariadb": per_job(squid_cpu[2])},
             direct_cpu_ms_per_job={"jobs": per_job(direct_cpu[0]), "mariadb": per_job(direct_cpu[1])},
             load_average_1min=round(os.getloadavg()[0], 1))
        a, b = statistics.median(alone_squid), statistics.median(alone_direct)
        emit(bench="conditions_single_job_50x100KB_squid_median_latency", value=round(a * 1000, 1), unit="ms",
             baseline="straight_mariadb_queries_single_job", baseline_value=round(b * 1000, 1), ratio=round(b / a, 2),
             jobs=SEQUENTIAL, load_average_1min=round(os.getloadavg()[0], 1))
        emit(bench="conditions_wave_queries_reaching_mariadb", value=reached, unit="queries",
             baseline="wave_http_requests", baseline_value=requests, ratio=round(reached / requests, 4),
             server_wide_com_select_delta_all_users=everyone, first_job_queries_cold_cache=cold,
             direct_arm_queries=CLIENTS * DIRECT_QUERIES,
             squid_outcomes=dict(outcomes))
    finally:
        if max_connections is not None:
            set_max_connections(admin, max_connections)
        if userstat is not None:
            set_global(admin, "userstat", "1" if userstat == "ON" else "0")
        if reader is not None:
            with admin.connect() as c:
                c.execute(text(f"DROP USER IF EXISTS '{reader}'@'%'"))
        admin.dispose()
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=20)
        drop()  # type: ignore[operator]
        shutil.rmtree(tmp, ignore_errors=True)


def status_variable(engine: Any, name: str, number: bool = True) -> Any:
    with engine.connect() as c:
        value = c.execute(text(f"SHOW GLOBAL VARIABLES LIKE '{name}'")).one()[1]
    return int(value) if number else value


def set_global(engine: Any, name: str, value: str) -> None:
    with engine.connect() as c:
        c.execute(text(f"SET GLOBAL {name} = {value}"))


def frontier_user(engine: Any, url: str) -> tuple[str, str]:
    """A read-only MariaDB user of its own for the Frontier server (its statements can be counted)."""
    import secrets

    name, password = f"dcsfr_{secrets.token_hex(4)}", secrets.token_hex(12)
    database = make_url(url).database
    with engine.connect() as c:
        c.execute(text(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"))
        c.execute(text(f"GRANT SELECT ON {database}.* TO '{name}'@'%'"))
    return name, make_url(url).set(username=name, password=password).render_as_string(hide_password=False)


def user_selects(engine: Any, user: str) -> int:
    with engine.connect() as c:
        value = c.execute(text("SELECT select_commands FROM information_schema.user_statistics WHERE user = :u"),
                          {"u": user}).scalar()
    return int(value or 0)


def set_max_connections(engine: Any, value: int) -> None:
    with engine.connect() as c:
        c.execute(text(f"SET GLOBAL max_connections = {int(value)}"))


def timed(job: Job, *args: Any) -> float:
    start = time.perf_counter()
    job(*args)
    return time.perf_counter() - start


def per_job(seconds: float) -> float:
    return round(seconds / CLIENTS * 1000, 1)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    main()
