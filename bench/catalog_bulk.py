"""Catalog bulk registration: in-process on SQLite vs a plain executemany of the same rows; and via REST.

Each file has one replica and three metadata values. Prints JSON lines (see DESIGN.md §6).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


from junodcs.catalog.guids import TimeOrderedGuids
from junodcs.catalog.logic import Catalog, StorageElementInfo, now
from junodcs.db.engine import create_engine
from junodcs.db.migrate import upgrade

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
BATCH = 10_000
PER_DIR = 1000


def entries(start: int, n: int, root: str) -> list[dict]:
    return [{"lfn": f"{root}/d{i // PER_DIR}/f{i}.root", "size": 1000 + i, "checksum": f"{i & 0xffffffff:08x}",
             "se": "IHEP-EOS", "metadata": {"run": i // 100, "type": "rec", "quality": 0.5}}
            for i in range(start, start + n)]


def fresh(tmp: Path, name: str) -> Catalog:
    engine = create_engine(f"sqlite:///{tmp / name}")
    upgrade(engine)
    cat = Catalog(engine, storage_elements=[StorageElementInfo("IHEP-EOS", "https://eos:8443")])
    cat.define_field("run", "int")
    cat.define_field("type", "string")
    cat.define_field("quality", "float")
    return cat


def ours(tmp: Path) -> tuple[float, float]:
    cat = fresh(tmp, "ours.db")
    batches = [entries(s, min(BATCH, N - s), "/juno/bench") for s in range(0, N, BATCH)]
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in batches:
        results = cat.register(batch)
        assert all(r["ok"] for r in results), results[:3]
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert cat.usage("/juno/bench")["files"] == N
    return N / elapsed, N / cpu


def baseline(tmp: Path) -> tuple[float, float]:
    """The same rows into the same tables and indexes with plain executemany (ids precomputed; GUIDs from the
    generator the catalog uses for files registered without one)."""
    cat = fresh(tmp, "base.db")
    fields = cat.fields()
    stamp = now().isoformat(" ") + ".000000"
    ndirs = (N + PER_DIR - 1) // PER_DIR
    for d in range(ndirs):
        cat.mkdir(f"/juno/base/d{d}")
    raw = cat.engine.raw_connection()
    cur = raw.cursor()
    dir_ids = {p: i for i, p in cur.execute("select id, path from cat_dirs").fetchall()}
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, N, BATCH):
        batch = entries(s, min(BATCH, N - s), "/juno/base")
        frows, rrows, irows, srows, flrows = [], [], [], [], []
        guids = TimeOrderedGuids(len(batch))
        for k, e in enumerate(batch):
            fid = s + k + 1
            d, name = e["lfn"].rsplit("/", 1)
            frows.append((fid, dir_ids[d], name, e["size"], e["checksum"], guids[k], "u", "g", 0o644,
                          "AprioriGood", stamp, stamp))
            rrows.append((fid, "IHEP-EOS", "AprioriGood", stamp))
            irows.append((fid, fields["run"].id, e["metadata"]["run"]))
            srows.append((fid, fields["type"].id, "rec"))
            flrows.append((fid, fields["quality"].id, 0.5))
        cur.executemany("insert into cat_files (id, dir_id, name, size, checksum, guid, owner, grp, mode, status, "
                        "created_at, modified_at) values (?,?,?,?,?,?,?,?,?,?,?,?)", frows)
        cur.executemany("insert into cat_replicas (file_id, se, status, created_at) values (?,?,?,?)", rrows)
        cur.executemany("insert into cat_fmeta_int (file_id, field_id, value) values (?,?,?)", irows)
        cur.executemany("insert into cat_fmeta_string (file_id, field_id, value) values (?,?,?)", srows)
        cur.executemany("insert into cat_fmeta_float (file_id, field_id, value) values (?,?,?)", flrows)
        raw.commit()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    raw.close()
    return N / elapsed, N / cpu


def rest(tmp: Path, name: str) -> float:
    """Through the REST API (in-process ASGI client), with a token minted by the server's own issuer."""
    from fastapi.testclient import TestClient

    from junodcs.core.gridconfig import example_grid_path, load_grid_config
    from junodcs.server.app import ServerOptions, create_app

    engine = create_engine(f"sqlite:///{tmp / name}")
    app = create_app(load_grid_config(example_grid_path()), engine,
                     ServerOptions(public_url="http://bench", systems=("auth", "catalog")))
    cat = Catalog(engine)
    for field, type_ in (("run", "int"), ("type", "string"), ("quality", "float")):
        cat.define_field(field, type_)
    from junodcs.auth.scope_policy import policy_scopes

    registry = app.state.registry
    membership = registry.membership("zhangxm", "juno_admin")
    token, _ = app.state.token_issuer.issue_access_token(
        username="zhangxm", group=membership.group,
        scopes=policy_scopes(registry.vo, "zhangxm", membership.properties))
    batches = [entries(s, min(BATCH, N - s), "/juno/rest") for s in range(0, N, BATCH)]
    with TestClient(app, base_url="http://bench") as client:
        t0 = time.perf_counter()
        for batch in batches:
            answer = client.post("/api/v1/catalog/files", json={"entries": batch},
                                 headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200 and answer.json()["failed"] == 0, answer.text[:300]
        elapsed = time.perf_counter() - t0
    engine.dispose()
    return N / elapsed


ROUNDS = 3


def main() -> None:
    """Interleaved rounds (baseline, in-process, REST; fresh databases each) so that all three see the same
    load on a shared machine; medians reported, with every round's value. `cpu_value` / `baseline_cpu_value`:
    files per second of this process's CPU time (SQLite runs in-process), a view less at the mercy of other
    jobs on the machine than the wall-clock `value`."""
    bases: list[tuple[float, float]] = []
    mines: list[tuple[float, float]] = []
    apis: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            round_dir = Path(tmp) / f"r{r}"
            round_dir.mkdir()
            bases.append(baseline(round_dir))
            mines.append(ours(round_dir))
            apis.append(rest(round_dir, "rest.db"))
    base, mine, api = (statistics.median(v[0] for v in bases), statistics.median(v[0] for v in mines),
                       statistics.median(apis))
    base_cpu, mine_cpu = statistics.median(v[1] for v in bases), statistics.median(v[1] for v in mines)
    print(json.dumps({"bench": "catalog_bulk_register_sqlite", "value": round(mine), "unit": "files/s",
                      "baseline": "plain executemany, same rows/tables/indexes", "baseline_value": round(base),
                      "ratio": round(mine / base, 3), "files": N, "rounds": [round(v[0]) for v in mines],
                      "baseline_rounds": [round(v[0]) for v in bases],
                      "round_ratios": [round(m[0] / b[0], 3) for m, b in zip(mines, bases, strict=True)],
                      "cpu_value": round(mine_cpu), "baseline_cpu_value": round(base_cpu),
                      "cpu_ratio": round(mine_cpu / base_cpu, 3)}))
    print(json.dumps({"bench": "catalog_bulk_register_rest", "value": round(api), "unit": "files/s",
                      "baseline": "in-process register", "baseline_value": round(mine),
                      "ratio": round(api / mine, 3), "files": N, "rounds": [round(v) for v in apis]}))


if __name__ == "__main__":
    main()
