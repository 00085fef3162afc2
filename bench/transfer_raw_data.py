"""JUNO raw-data load: new files at 60 MB/s replicated to three destinations (180 MB/s out) on loopback for
5 minutes; is the transfer queue bounded? Reports the backlog (queued + active replicas) over time.

A producer writes one new raw file to the disk of the DAQ buffer SE every `size / rate` seconds (as the DAQ
writes its buffer disk; the SE computes the adler32 when first asked) and submits one job
copying it to the three destination SEs (FTS3: one file, three destinations, three transfers). A cleaner
frees the DAQ buffer and the destinations once a job is FINISHED, so the disk use stays bounded however long
the run (the destinations' own migration to tape is not what is measured here). File size: JUNO's DAQ
closes raw files by size; 200 MB by default keeps the per-file overheads realistic (1 GB-class files would
put only ~18 files through a 5-minute run on a 2-core box, too few to tell a bounded queue from a growing
one) while a 5-minute run still moves ~90 files and ~270 replicas.

The baseline is the offered load (180 MB/s out); the ratio is what was delivered over what was offered.
Bounded means the backlog in the last third of the run is on average no larger than in the middle third
plus one file's three replicas (a growing queue rises steadily instead).

    .venv/bin/python bench/transfer_raw_data.py [--duration 300] [--rate-mbps 60] [--file-mb 200]

Prints JSON lines: a backlog sample every `--sample` seconds ({"bench": "transfer_raw_data_backlog", "t",
"queued", "active", "backlog", "finished_replicas"}), then the result line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_common import bench_environment, random_block  # noqa: E402

DESTINATIONS = ("CNAF", "JINR", "IN2P3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--rate-mbps", type=float, default=60.0, help="new raw data, MB/s (1e6 bytes)")
    parser.add_argument("--file-mb", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--optimizer-interval", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=120.0, help="seconds allowed to empty the queue after")
    args = parser.parse_args()

    import httpx
    import sqlalchemy as sa

    from junodcs.transfer import db
    from junodcs.transfer.agents import TransferWorker, WorkerOptions

    size = args.file_mb * 1_000_000
    period = size / (args.rate_mbps * 1e6)
    with bench_environment("bench-rawdata-") as env:
        daq = env.start_se("DAQ")
        dests = [env.start_se(name) for name in DESTINATIONS]
        block = bytearray(random_block(size))
        (env.tmp / "daq-spool").mkdir()
        (daq.root / "juno" / "raw").mkdir(parents=True)
        service = env.service(lease=120.0)
        me = env.submitter()
        http = httpx.Client(timeout=120)
        worker = TransferWorker(service, env.credentials(), WorkerOptions(
            concurrency=args.concurrency, poll=0.2, optimizer_interval=args.optimizer_interval, stager=False)).start()
        stop_producing = threading.Event()
        stop_all = threading.Event()
        jobs: dict[str, int] = {}
        jobs_lock = threading.Lock()
        produced = [0]
        late = [0.0]

        def produce() -> None:
            start = time.monotonic()
            i = 0
            while not stop_producing.is_set():
                due = start + i * period
                wait = due - time.monotonic()
                if wait > 0 and stop_producing.wait(wait):
                    break
                late[0] = max(late[0], -wait)
                block[:8] = i.to_bytes(8, "big")  # a new file: different bytes, different checksum
                digest = f"{zlib.adler32(block) & 0xFFFFFFFF:08x}"
                name = f"/juno/raw/run{i:06d}.raw"
                # the DAQ writes its buffer disk, which the DAQ SE exports (written aside, then renamed in)
                spool = env.tmp / "daq-spool" / f"run{i:06d}.raw"
                spool.write_bytes(block)
                os.replace(spool, daq.root / name.lstrip("/"))
                job_id = service.submit({"files": [{"sources": [f"{daq.url}{name}"],
                                                    "destinations": [f"{d.url}{name}" for d in dests],
                                                    "checksum": f"ADLER32:{digest}", "filesize": size}],
                                         "params": {"verify_checksum": "both", "retry": 3, "retry_delay": 5}}, me)
                with jobs_lock:
                    jobs[job_id] = i
                produced[0] = i = i + 1

        def clean() -> None:  # free the buffer and the destinations of finished files (bounded disk)
            while not stop_all.wait(2.0):
                with env.engine.connect() as conn:
                    done = conn.execute(sa.select(db.jobs.c.job_id).where(db.jobs.c.job_state == "FINISHED")).scalars().all()
                for job_id in done:
                    with jobs_lock:
                        i = jobs.pop(job_id, None)
                    if i is None:
                        continue
                    name = f"/juno/raw/run{i:06d}.raw"
                    for se in (daq, *dests):
                        http.delete(f"{se.url}{name}", headers=env.auth)

        samples: list[dict[str, float]] = []
        t0 = time.monotonic()

        def sample() -> None:
            f = db.files
            while not stop_all.wait(args.sample):
                with env.engine.connect() as conn:
                    counts = dict(conn.execute(sa.select(f.c.file_state, sa.func.count()).group_by(f.c.file_state)).all())
                s = {"bench": "transfer_raw_data_backlog", "t": round(time.monotonic() - t0, 1),
                     "produced_files": produced[0], "queued": counts.get("SUBMITTED", 0),
                     "active": counts.get("READY", 0) + counts.get("ACTIVE", 0),
                     "finished_replicas": counts.get("FINISHED", 0), "failed_replicas": counts.get("FAILED", 0)}
                s["backlog"] = s["queued"] + s["active"]
                samples.append(s)
                print(json.dumps(s), flush=True)

        threads = [threading.Thread(target=fn, daemon=True) for fn in (produce, clean, sample)]
        for t in threads:
            t.start()
        stop_producing.wait(args.duration)
        stop_producing.set()
        threads[0].join()
        produce_end = time.monotonic()
        during = [s for s in samples if s["t"] <= args.duration]
        # drain: how long the replicas still queued at the end take
        drained_at = None
        while time.monotonic() - produce_end < args.drain:
            with env.engine.connect() as conn:
                left = conn.execute(sa.select(sa.func.count()).select_from(db.files).where(
                    db.files.c.file_state.in_(["SUBMITTED", "READY", "ACTIVE"]))).scalar()
            if not left:
                drained_at = time.monotonic() - produce_end
                break
            time.sleep(0.5)
        stop_all.set()
        for t in threads[1:]:
            t.join()
        worker.stop()
        with env.engine.connect() as conn:
            moved = conn.execute(sa.select(sa.func.sum(db.files.c.filesize)).where(
                db.files.c.file_state == "FINISHED", db.files.c.finish_time.is_not(None))).scalar() or 0
            failed = conn.execute(sa.select(sa.func.count()).select_from(db.files)
                                  .where(db.files.c.file_state == "FAILED")).scalar()
        offered = 3 * args.rate_mbps
        delivered = moved / 1e6 / (args.duration + (drained_at or 0.0))
        third = max(1, len(during) // 3)
        middle = [s["backlog"] for s in during[third:2 * third]] or [0]
        last = [s["backlog"] for s in during[2 * third:]] or [0]
        bounded = statistics.mean(last) <= statistics.mean(middle) + 3
        print(json.dumps({"bench": "transfer_raw_data_3x_replication", "value": round(delivered, 1), "unit": "MB/s",
                          "baseline": "offered_load_3x", "baseline_value": offered,
                          "ratio": round(delivered / offered, 3), "duration_s": args.duration,
                          "file_mb": args.file_mb, "files_produced": produced[0],
                          "replicas_finished": round(moved / size), "replicas_failed": failed,
                          "producer_max_late_s": round(late[0], 2),
                          "backlog_max": max((s["backlog"] for s in during), default=0),
                          "backlog_mean_middle_third": round(statistics.mean(middle), 1),
                          "backlog_mean_last_third": round(statistics.mean(last), 1),
                          "bounded": bounded, "drain_s": round(drained_at, 1) if drained_at is not None else None}))


if __name__ == "__main__":
    main()
