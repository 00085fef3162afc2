"""Frontier server without a cache: requests/s for a 1 KB payload by hash (BLOBzip5), SQLite, one server
process (`dcs cond serve-frontier`), 16 concurrent keep-alive clients (aiohttp) for a few seconds.
Baseline: the issue's target of 500 requests/s. Also reported: the server's CPU seconds over the run and
requests per server CPU second (its capacity on one core, independent of what else loads the machine). Usage: `python bench/conditions_frontier.py [seconds]`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditions_common import load, start_frontier  # noqa: E402

from junodcs.conditions import frontier  # noqa: E402
from junodcs.conditions.logic import Conditions  # noqa: E402
from junodcs.db.engine import create_engine  # noqa: E402

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
CONCURRENCY = 16
TARGET = 500.0


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process used so far: its cost per request, whatever else
    runs on the machine (the load generator shares the cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_test(url: str) -> tuple[float, int, int]:
    import aiohttp

    done = 0
    errors = 0
    stop = time.monotonic() + SECONDS

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.monotonic() < stop:
            async with session.get(url) as response:
                body = await response.read()
                if response.status != 200 or b'error="0"' not in body:
                    errors += 1
                done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        start = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        elapsed = time.monotonic() - start
    return done / elapsed, errors, done


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'cond.db'}"
        load(db_url, types=1, size=1024)
        engine = create_engine(db_url)
        digest = Conditions(engine).resolve("GT-BENCH", "Calib.Type00", 10).payload_hash
        engine.dispose()
        process, server = start_frontier(db_url, Path(tmp))
        try:
            url = server + "?" + frontier.request_path(
                [f"SELECT hash, data FROM cond_payloads WHERE hash = '{digest}'"], ttl="forever")
            cpu_before = process_cpu(process.pid)
            rate, errors, done = asyncio.run(load_test(url))
            server_cpu = process_cpu(process.pid) - cpu_before
        finally:
            process.terminate()
            process.wait(timeout=20)
    print(json.dumps({"bench": "conditions_frontier_1KB_no_cache", "value": round(rate, 1), "unit": "req/s",
                      "baseline": "target_500_req_s", "baseline_value": TARGET, "ratio": round(rate / TARGET, 2),
                      "errors": errors, "requests": done, "server_cpu_s": round(server_cpu, 2),
                      "requests_per_server_cpu_second": round(done / server_cpu, 1) if server_cpu else None,
                      "load_average_1min": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
