"""A link shaped to 100 MB/s and 5 GB of 100 MB files: the throughput the transfer service achieves over it,
as a fraction of the link, and the optimizer's number of active transfers over time.

The link is shaped the way the local grid shapes its links (`junodcs.transfer.shaping.LinkShaper`, what
`dcs se serve --grid` installs): the destination SE, which pulls the bytes, passes them through a token
bucket of 100 MB/s for the source SE. The baseline is the link's configured rate (the ceiling nothing can
beat); the ratio is the goal's ">= 90 % of the link". The optimizer runs every `--optimizer-interval`
seconds (FTS3's 60 s would not act once in a one-minute run), starting from FTS3's first decision for an
unconfigured link (the middle of the default range), and the worker's own concurrency caps it.

    .venv/bin/python bench/transfer_shaped_link.py [--files 50] [--size-mb 100] [--link-mbps 100]

Prints JSON lines: one sample per second ({"bench": "transfer_shaped_link_sample", "t", "active",
"optimizer_active", "finished", "mb_done"}), then the result line (bench, value, unit, baseline,
baseline_value, ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_common import bench_environment, random_block  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--link-mbps", type=float, default=100.0, help="link rate in MB/s (1e6 bytes)")
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads (caps the optimizer)")
    parser.add_argument("--optimizer-interval", type=float, default=5.0)
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args()

    import httpx
    import sqlalchemy as sa

    from junodcs.transfer import db
    from junodcs.transfer.agents import TransferWorker, WorkerOptions

    size = args.size_mb * 1_000_000
    rate = args.link_mbps * 1e6
    with bench_environment("bench-shaped-") as env:
        a = env.start_se("A")
        b = env.start_se("B", rates={a.peer: rate})
        block = random_block(size)
        digest = f"{zlib.adler32(block) & 0xFFFFFFFF:08x}"
        http = httpx.Client(timeout=120)
        print(f"# writing {args.files} files of {args.size_mb} MB to A", file=sys.stderr)
        for i in range(args.files):
            r = http.put(f"{a.url}/juno/raw/{i}", content=block,
                         headers={**env.auth, "Digest": f"adler32={digest}"})
            r.raise_for_status()
        service = env.service(lease=120.0)
        files = [{"sources": [f"{a.url}/juno/raw/{i}"], "destinations": [f"{b.url}/juno/raw/{i}"],
                  "checksum": f"ADLER32:{digest}", "filesize": size} for i in range(args.files)]
        print(f"# transferring {args.files * size / 1e9:.1f} GB over a {args.link_mbps:.0f} MB/s link",
              file=sys.stderr)
        t0 = time.monotonic()
        job_id = service.submit({"files": files, "params": {"verify_checksum": "both", "retry": 2}}, env.submitter())
        worker = TransferWorker(service, env.credentials(), WorkerOptions(
            concurrency=args.concurrency, poll=0.2, optimizer_interval=args.optimizer_interval, stager=False)).start()
        stop = threading.Event()
        samples: list[dict[str, float]] = []

        def sample() -> None:
            f = db.files
            while not stop.wait(1.0):
                with env.engine.connect() as conn:
                    counts = dict(conn.execute(sa.select(f.c.file_state, sa.func.count()).group_by(f.c.file_state)).all())
                    decided = conn.execute(sa.select(db.optimizer.c.active)).scalar()
                    moved = conn.execute(sa.select(sa.func.sum(f.c.filesize))
                                         .where(f.c.file_state == "FINISHED")).scalar() or 0
                s = {"bench": "transfer_shaped_link_sample", "t": round(time.monotonic() - t0, 1),
                     "active": counts.get("ACTIVE", 0) + counts.get("READY", 0), "optimizer_active": decided,
                     "queued": counts.get("SUBMITTED", 0), "finished": counts.get("FINISHED", 0),
                     "mb_done": round(moved / 1e6)}
                samples.append(s)
                print(json.dumps(s), flush=True)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = t0 + args.time_limit
        while time.monotonic() < deadline and service.job(job_id)["job_state"] not in (
                "FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED"):
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join()
        worker.stop()
        done = [f for f in service.files(job_id) if f["file_state"] == "FINISHED"]
        mbps = sum(f["filesize"] for f in done) / 1e6 / elapsed
        evolution = [{"t": e["datetime"], "active": e["active"], "rationale": e["rationale"]}
                     for e in reversed(service.optimizer_evolution())]
        print(json.dumps({"bench": "transfer_shaped_link_throughput", "value": round(mbps, 1), "unit": "MB/s",
                          "baseline": "shaped_link_rate", "baseline_value": args.link_mbps,
                          "ratio": round(mbps / args.link_mbps, 3), "files": args.files, "finished": len(done),
                          "file_mb": args.size_mb, "seconds": round(elapsed, 1),
                          "max_active": max((s["active"] for s in samples), default=0),
                          "optimizer_decisions": evolution}))


if __name__ == "__main__":
    main()
