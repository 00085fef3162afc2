"""Transfer service throughput: N transfers of 1 MiB between two local SEs, files per second, against a plain
loop of concurrent COPY (HTTP-TPC pull) requests at the same concurrency, in the same run.

The service path is the whole thing: submit (jobs of 500 files) -> claim under leases with the per-link
limit -> HTTP-TPC pull with markers -> checksums compared at both ends -> batched state updates and job
state. The baseline sends only the COPY requests (threads, one keep-alive client). Both SEs run as their own
processes (`transfer_common`), as they do in a grid, so neither side shares the bench's GIL with them.

    .venv/bin/python bench/transfer_throughput.py [--files 10000] [--concurrency 32] [--verify both|none]

Prints one JSON line per measurement (bench, value, unit, baseline, baseline_value, ratio). Disk: one source
file (the others are hard links to it) plus one set of copies at a time (the baseline's copies are removed
before the service runs). The files go under $TMPDIR: on a virtual disk the kernel's write-back caps what the
destination SE can store, so the line also gives `write_ceiling_1MiB_files_per_s`, what one bare process
writes there sustained, measured in the same run. `TMPDIR=/dev/shm` measures the transfer path without that
ceiling (10,000 copies of 1 MiB need 10 GiB of memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_common import adler32_hex, bench_environment, random_block, seed_sources, write_ceiling  # noqa: E402

SIZE = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--verify", default="both", choices=["both", "none"])
    parser.add_argument("--time-limit", type=float, default=300.0, help="stop the service run after this long")
    parser.add_argument("--skip-baseline", action="store_true", help="iterate on the service path only")
    args = parser.parse_args()

    import httpx

    from junodcs.storage.markers import MarkerParser
    from junodcs.transfer.agents import TransferWorker, WorkerOptions
    from junodcs.transfer.models import LinkConfig

    with bench_environment("bench-transfer-") as env:
        a, b = env.start_se("A"), env.start_se("B")
        n = args.files
        data = random_block(SIZE)
        http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        print(f"# {n} source files of 1 MiB (hard links to one upload)", file=sys.stderr)
        seed_sources(http, a, "/juno/bench/src", n, data, env.token)

        def copy(i: int) -> None:
            headers = {**env.auth, "Source": f"{a.url}/juno/bench/src/{i}",
                       "TransferHeaderAuthorization": env.auth["Authorization"], "Credential": "none",
                       "Overwrite": "T"}
            markers = MarkerParser()
            with http.stream("COPY", f"{b.url}/juno/bench/base/{i}", headers=headers) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    markers.feed(line)
            if markers.outcome != "success":
                raise RuntimeError(markers.message)

        baseline = baseline_cpu_ms = None
        if not args.skip_baseline:
            print(f"# baseline: {n} COPY requests at concurrency {args.concurrency}", file=sys.stderr)
            t0, cpu0 = time.perf_counter(), _cpu()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(copy, range(n)))
            baseline = n / (time.perf_counter() - t0)
            baseline_cpu_ms = (_cpu() - cpu0) * 1000 / n
            for base in b.root.rglob("base"):
                shutil.rmtree(base, ignore_errors=True)

        service = env.service(lease=120.0)
        service.set_link(LinkConfig(source=a.url, destination=b.url, min_active=args.concurrency,
                                    max_active=2 * args.concurrency))
        me = env.submitter()
        checksum = f"ADLER32:{adler32_hex(data)}"
        print(f"# service: {n} transfers, concurrency {args.concurrency}, verify {args.verify}", file=sys.stderr)
        t0, cpu0 = time.perf_counter(), _cpu()
        job_ids = []
        for start in range(0, n, 500):
            files = [{"sources": [f"{a.url}/juno/bench/src/{i}"], "destinations": [f"{b.url}/juno/bench/dst/{i}"],
                      "checksum": checksum, "filesize": SIZE} for i in range(start, min(n, start + 500))]
            job_ids.append(service.submit({"files": files, "params": {"verify_checksum": args.verify, "retry": 1}},
                                          me))
        worker = TransferWorker(service, env.credentials(), WorkerOptions(concurrency=args.concurrency, poll=0.05,
                                                                          optimizer=False, stager=False)).start()
        deadline = time.monotonic() + args.time_limit
        while time.monotonic() < deadline:
            if worker.completed >= n and _settled(service, job_ids):  # retried files report more than once
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu_ms = (_cpu() - cpu0) * 1000 / n
        worker.stop()
        states: Counter[str] = Counter(service.job(j)["job_state"] for j in job_ids)
        files = [f for j in job_ids for f in service.files(j)]
        finished = sum(1 for f in files if f["file_state"] == "FINISHED")
        for reason, count in Counter(f["reason"] for f in files if f["file_state"] != "FINISHED").items():
            print(f"# not finished ({count}): {reason}", file=sys.stderr)
        rate = finished / elapsed
        for dst in b.root.rglob("dst"):  # room for the ceiling's files, and no write-back left to compete with
            shutil.rmtree(dst, ignore_errors=True)
        ceiling = None if args.skip_baseline else write_ceiling(env.tmp)
        print(json.dumps({"bench": f"transfer_service_1MiB_files_per_s_verify_{args.verify}", "value": round(rate, 1),
                          "unit": "files/s", "baseline": "concurrent_COPY_loop",
                          "baseline_value": round(baseline, 1) if baseline else None,
                          "ratio": round(rate / baseline, 3) if baseline else None, "files": n, "finished": finished,
                          "concurrency": args.concurrency, "jobs": dict(states), "root": str(env.tmp.parent),
                          # what one process can write there, sustained: no SE stores faster on this disk
                          "write_ceiling_1MiB_files_per_s": round(ceiling, 1) if ceiling else None,
                          # CPU of this process (the worker, or the COPY loop) per file: the SEs share the cores
                          "cpu_ms_per_file": round(cpu_ms, 2),
                          "baseline_cpu_ms_per_file": round(baseline_cpu_ms, 2) if baseline_cpu_ms else None}))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settled(service: object, job_ids: list[str]) -> bool:
    return all(service.job(j)["job_state"] in ("FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED")  # type: ignore[attr-defined]
               for j in job_ids)


if __name__ == "__main__":
    main()
