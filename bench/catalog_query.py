"""Catalog reads on a 1,000,000-file catalog (SQLite, in-process): a metadata query that returns 1,000 files
(median) and stat of one LFN (p99), each against hand-written SQL on the same tables in the same run.

The catalog is built by plain executemany into the real schema (1,000 directories of 1,000 files, each file
with one replica and the metadata `run` (int, 1,000 files per value) and `type` (string)). Prints JSON lines
(see DESIGN.md §6). Usage: `python bench/catalog_query.py [files]`.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from junodcs.catalog.logic import Catalog, StorageElementInfo, now, path_hash
from junodcs.db.engine import create_engine
from junodcs.db.migrate import upgrade

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
PER_DIR = 1000
PER_RUN = 1000
QUERIES = 30
STATS = 3000


def build(tmp: Path) -> Catalog:
    engine = create_engine(f"sqlite:///{tmp / 'query.db'}")
    upgrade(engine)
    cat = Catalog(engine, storage_elements=[StorageElementInfo("IHEP-EOS", "https://eos:8443")])
    cat.define_field("run", "int")
    cat.define_field("type", "string")
    fields = cat.fields()
    ndirs = (N + PER_DIR - 1) // PER_DIR
    cat.mkdir("/juno/q")
    stamp = now().isoformat(" ") + ".000000"
    raw = engine.raw_connection()
    cur = raw.cursor()
    root_id = cur.execute("select id from cat_dirs where path = '/juno/q'").fetchone()[0]
    cur.executemany("insert into cat_dirs (id, parent_id, name, path, path_hash, depth, owner, grp, mode, created_at, "
                    "modified_at) values (?,?,?,?,?,?,?,?,?,?,?)",
                    [(root_id + 1 + d, root_id, f"d{d}", f"/juno/q/d{d}", path_hash(f"/juno/q/d{d}"), 3, "dcs",
                      "dcs_admin", 0o755, stamp, stamp) for d in range(ndirs)])
    step = 50_000
    for s in range(0, N, step):
        ids = range(s + 1, min(s + step, N) + 1)
        cur.executemany("insert into cat_files (id, dir_id, name, size, checksum, guid, owner, grp, mode, status, "
                        "created_at, modified_at) values (?,?,?,?,?,?,?,?,?,?,?,?)",
                        [(i, root_id + 1 + (i - 1) // PER_DIR, f"f{i - 1}.root", 1000 + i, f"{i:08x}",
                          str(uuid.uuid4()).upper(), "dcs", "dcs_admin", 0o644, "AprioriGood", stamp, stamp)
                         for i in ids])
        cur.executemany("insert into cat_replicas (file_id, se, status, created_at) values (?,?,?,?)",
                        [(i, "IHEP-EOS", "AprioriGood", stamp) for i in ids])
        # runs are spread over directories: file i belongs to run (i * 7919) % (N / PER_RUN)
        cur.executemany("insert into cat_fmeta_int (file_id, field_id, value) values (?,?,?)",
                        [(i, fields["run"].id, (i * 7919) % (N // PER_RUN)) for i in ids])
        cur.executemany("insert into cat_fmeta_string (file_id, field_id, value) values (?,?,?)",
                        [(i, fields["type"].id, "rec" if i % 2 else "raw") for i in ids])
        raw.commit()
    cur.execute("ANALYZE")
    raw.commit()
    raw.close()
    return cat


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p99_ms(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99) - 1] * 1000


def main() -> None:
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cat = build(Path(tmp))
        built = time.perf_counter() - t0
        print(json.dumps({"bench": "catalog_query_build", "value": round(N / built), "unit": "files/s",
                          "baseline": None, "baseline_value": None, "ratio": None, "files": N}), flush=True)
        runs = random.sample(range(N // PER_RUN), QUERIES)
        fid = cat.field("run").id
        raw = cat.engine.raw_connection()
        cur = raw.cursor()
        hand = ("select f.id, f.name, f.size, f.checksum, f.guid, f.status, f.owner, f.grp, f.created_at, d.path "
                "from cat_fmeta_int m join cat_files f on f.id = m.file_id join cat_dirs d on d.id = f.dir_id "
                "where m.field_id = ? and m.value = ? order by f.id")
        ours_q, base_q = [], []
        for run in runs:  # interleaved, so both see the same machine load
            t = time.perf_counter()
            found = list(cat.find({"run": run}, "/juno"))
            ours_q.append(time.perf_counter() - t)
            assert len(found) == PER_RUN, len(found)
            t = time.perf_counter()
            rows = cur.execute(hand, (fid, run)).fetchall()
            base_q.append(time.perf_counter() - t)
            assert len(rows) == PER_RUN
        ours, base = median_ms(ours_q), median_ms(base_q)
        print(json.dumps({"bench": "catalog_query_1000_of_1M_median", "value": round(ours, 3), "unit": "ms",
                          "baseline": "hand-written SQL join, fetchall (sqlite3)", "baseline_value": round(base, 3),
                          "ratio": round(ours / base, 3), "files": N, "repeats": QUERIES,
                          "min": round(min(ours_q) * 1000, 3), "max": round(max(ours_q) * 1000, 3)}), flush=True)
        lfns = [f"/juno/q/d{(i - 1) // PER_DIR}/f{i - 1}.root" for i in random.sample(range(1, N + 1), STATS)]
        stat_sql = ("select f.* from cat_files f join cat_dirs d on d.id = f.dir_id "
                    "where d.path_hash = ? and f.name = ?")
        ours_s, base_s = [], []
        for lfn in lfns:
            t = time.perf_counter()
            info = cat.stat(lfn)
            ours_s.append(time.perf_counter() - t)
            assert info["type"] == "file"
            directory, name = lfn.rsplit("/", 1)
            t = time.perf_counter()
            row = cur.execute(stat_sql, (path_hash(directory), name)).fetchone()
            base_s.append(time.perf_counter() - t)
            assert row is not None
        raw.close()
        ours, base = p99_ms(ours_s), p99_ms(base_s)
        print(json.dumps({"bench": "catalog_stat_p99", "value": round(ours, 3), "unit": "ms",
                          "baseline": "hand-written SQL (sqlite3), p99", "baseline_value": round(base, 3),
                          "ratio": round(ours / base, 3), "files": N, "repeats": STATS,
                          "median": round(median_ms(ours_s), 3)}), flush=True)


if __name__ == "__main__":
    main()
