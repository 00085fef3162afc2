"""Catalog logic on SQLite, PostgreSQL and MariaDB (the `engine` fixture)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from junodcs.catalog import db
from junodcs.catalog.logic import Caller, Catalog, StorageElementInfo
from junodcs.core.errors import DCSError

SES = [StorageElementInfo("IHEP-EOS", "https://eos.ihep.ac.cn:8443"), StorageElementInfo("CNAF-DISK", None)]


@pytest.fixture
def cat(engine: Engine) -> Catalog:
    c = Catalog(engine, storage_elements=SES)
    c.define_field("run", "int")
    c.define_field("type", "string")
    c.define_field("quality", "float")
    c.define_field("taken", "date")
    c.define_field("energy", "float", "dir")
    return c


def files(n: int, base: str = "/juno/production/mc", **extra: object) -> list[dict]:
    return [
        {"lfn": f"{base}/r{i % 3}/f{i}.root", "size": 100 + i, "checksum": f"{i:x}", "se": "IHEP-EOS",
         "metadata": {"run": i, "type": "rec" if i % 2 else "raw"}, **extra}
        for i in range(n)
    ]


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(DCSError) as info:
        call()
    return info.value.code


def test_register_stat_replicas_and_usage(cat: Catalog) -> None:
    results = cat.register(files(12))
    assert all(r["ok"] for r in results)
    info = cat.stat("/juno/production/mc/r1/f4.root")
    assert info["size"] == 104 and info["checksum"] == "00000004" and info["status"] == "AprioriGood"
    assert cat.stat("/juno/production/mc")["type"] == "directory"
    reps = cat.replicas(["/juno/production/mc/r1/f4.root"])["/juno/production/mc/r1/f4.root"]
    assert reps == [{"se": "IHEP-EOS", "url": "https://eos.ihep.ac.cn:8443/juno/production/mc/r1/f4.root",
                     "status": "AprioriGood"}]
    total = sum(100 + i for i in range(12))
    assert cat.usage("/juno")["files"] == 12 and cat.usage("/juno")["bytes"] == total
    assert cat.usage("/juno/production/mc/r0")["files"] == 4
    cat.add_replicas([{"lfn": "/juno/production/mc/r1/f4.root", "se": "CNAF-DISK"}])
    assert cat.usage("/juno")["per_se"] == {"CNAF-DISK": {"files": 1, "bytes": 104},
                                            "IHEP-EOS": {"files": 12, "bytes": total}}


def test_bad_entries_do_not_poison_the_batch(cat: Catalog, engine: Engine) -> None:
    cat.register(files(1))
    batch = [
        {"lfn": "/juno/production/mc/ok.root", "size": 1, "checksum": "1", "se": "IHEP-EOS"},
        {"lfn": "relative/x", "size": 1, "checksum": "1"},
        {"lfn": "/juno/a/../b", "size": 1, "checksum": "1"},
        {"lfn": "/juno/a\x00b", "size": 1, "checksum": "1"},
        {"lfn": "/juno/" + "x" * 2000, "size": 1, "checksum": "1"},
        {"lfn": "/juno/production/mc/r0/f0.root", "size": 1, "checksum": "1"},
        {"lfn": "/juno/production/mc/bad.root", "size": 1, "checksum": "zz"},
        {"lfn": "/juno/production/mc/t.root", "size": 1, "checksum": "1", "metadata": {"run": "abc"}},
        {"lfn": "/juno/production/mc/u.root", "size": 1, "checksum": "1", "metadata": {"nope": 1}},
        {"lfn": "/juno/production/mc/s.root", "size": 1, "checksum": "1", "se": "NO-SUCH-SE"},
    ]
    results = cat.register(batch)
    assert [r["ok"] for r in results] == [True] + [False] * 9
    assert [r["code"] for r in results[1:]] == [
        "invalid-lfn", "invalid-lfn", "invalid-lfn", "invalid-lfn", "already-exists", "invalid-checksum",
        "metadata-type-mismatch", "unknown-metadata-field", "unknown-se"]
    assert cat.usage("/juno")["files"] == 2
    # all-or-nothing: nothing is written, not even the directories
    assert code_of(lambda: cat.register([{"lfn": "/juno/new/dir/a", "size": 1, "checksum": "1"},
                                         {"lfn": "bad", "size": 1, "checksum": "1"}], all_or_nothing=True)) == "bulk-failed"
    assert code_of(lambda: cat.stat("/juno/new")) == "no-such-path"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.files)).scalar() == 2


def test_too_many_entries(cat: Catalog) -> None:
    assert code_of(lambda: cat.register([{}] * 10_001)) == "too-many-entries"


def test_last_replica_and_removal(cat: Catalog) -> None:
    cat.register(files(3))
    lfn = "/juno/production/mc/r1/f1.root"
    assert code_of(lambda: cat.remove_replica(lfn, "IHEP-EOS")) == "last-replica"
    cat.add_replicas([{"lfn": lfn, "se": "CNAF-DISK"}])
    assert code_of(lambda: cat.add_replicas([{"lfn": lfn, "se": "CNAF-DISK"}], all_or_nothing=True)) == "bulk-failed"
    cat.remove_replica(lfn, "IHEP-EOS")
    assert [r["se"] for r in cat.replicas([lfn])[lfn]] == ["CNAF-DISK"]
    assert cat.usage("/juno")["per_se"]["IHEP-EOS"]["files"] == 2
    assert code_of(lambda: cat.remove("/juno/production/mc")) == "directory-not-empty"
    cat.remove(lfn)
    assert cat.usage("/juno")["files"] == 2 and "CNAF-DISK" not in cat.usage("/juno")["per_se"]
    out = cat.remove("/juno/production", recursive=True)
    assert out["removed_files"] == 2
    assert cat.usage("/juno") == {"lfn": "/juno", "files": 0, "bytes": 0, "per_se": {}}


def test_move_file_and_directory_keeps_usage_exact(cat: Catalog) -> None:
    cat.register(files(6))
    cat.move("/juno/production/mc/r0/f0.root", "/juno/production/other/f0.root")
    assert cat.usage("/juno/production/other")["files"] == 1
    assert cat.usage("/juno/production/mc")["files"] == 5
    cat.move("/juno/production/mc", "/juno/production/archive/mc2024")
    assert cat.stat("/juno/production/archive/mc2024/r1/f1.root")["size"] == 101
    assert code_of(lambda: cat.stat("/juno/production/mc/r1/f1.root")) == "no-such-path"
    assert cat.usage("/juno/production/archive")["files"] == 5
    assert cat.usage("/juno/production")["files"] == 6
    assert code_of(lambda: cat.move("/juno/production/archive", "/juno/production/archive/x")) == "invalid-move"
    assert code_of(lambda: cat.move("/juno/production/other", "/juno/production/archive")) == "already-exists"
    # metadata queries follow the move
    assert {f["lfn"] for f in cat.find("run=1")} == {"/juno/production/archive/mc2024/r1/f1.root"}


def test_ls_pages_with_a_cursor_and_streams(cat: Catalog) -> None:
    cat.register([{"lfn": f"/juno/big/f{i:03d}", "size": i, "checksum": "1"} for i in range(25)])
    cat.mkdir("/juno/big/sub1")
    cat.mkdir("/juno/big/sub2")
    seen, cursor = [], None
    while True:
        page = cat.ls("/juno/big", cursor=cursor, limit=7)
        seen += [e["name"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ["sub1", "sub2"] + [f"f{i:03d}" for i in range(25)]
    assert [e["name"] for e in cat.iter_ls("/juno/big", batch=4)] == seen
    assert code_of(lambda: cat.ls("/juno/big", cursor="garbage")) == "invalid-cursor"
    assert code_of(lambda: cat.ls("/juno/big/f001")) == "not-a-directory"


def test_metadata_queries(cat: Catalog) -> None:
    cat.register(files(20))
    cat.register([{"lfn": "/juno/raw/x.dat", "size": 5000, "checksum": "1", "replicas": ["CNAF-DISK"],
                   "metadata": {"quality": 0.5, "taken": "2024-05-01T10:00:00"}}])
    cat.set_metadata([{"path": "/juno/production/mc/r1", "metadata": {"energy": 2.5}},
                      {"path": "/juno/production/mc", "metadata": {"energy": 1.0}}])

    def q(query: object, path: str | None = None) -> set[str]:
        return {f["lfn"].rsplit("/", 1)[-1] for f in cat.find(query, path)}

    assert q("run>=17") == {"f17.root", "f18.root", "f19.root"}
    assert q("run>=10 run<13 type=rec") == {"f11.root"}
    assert q({"run": [1, 2, 3]}) == {"f1.root", "f2.root", "f3.root"}
    assert q("run=1,2,3 type!=raw") == {"f1.root", "f3.root"}
    assert q({"run": {"nin": list(range(1, 20))}}) == {"f0.root"}
    assert q("exists:quality") == {"x.dat"}
    assert len(q("missing:quality")) == 20
    assert q("se=CNAF-DISK") == {"x.dat"}
    assert len(q("se!=CNAF-DISK")) == 20
    assert q("size>4000") == {"x.dat"}
    assert q("name=f1?.root run<12") == {"f10.root", "f11.root"}
    assert q("taken>=2024-01-01") == {"x.dat"}
    assert q("created>=2000-01-01 owner=dcs size<101") == {"f0.root"}
    # directory metadata is inherited, nearer values override
    assert q("energy>2") == {f"f{i}.root" for i in range(20) if i % 3 == 1}
    assert len(q("energy=1.0")) == 20 - len(q("energy>2"))
    assert q("run<3", "/juno/production/mc/r2") == {"f2.root"}
    assert cat.count("type=rec") == {"files": 10, "bytes": sum(100 + i for i in range(20) if i % 2)}
    meta = cat.get_metadata("/juno/production/mc/r1/f4.root")
    assert meta["metadata"] == {"run": 4, "type": "raw", "energy": 2.5}
    assert meta["inherited_from"] == {"energy": "/juno/production/mc/r1"}
    for bad, code in [("run>>3", "metadata-type-mismatch"), ("nonsense", "invalid-query"), ("nope=1", "unknown-metadata-field"),
                      ("run>abc", "metadata-type-mismatch"), ({"run": {"like": 3}}, "invalid-query"), ("run=", "invalid-query")]:
        assert code_of(lambda bad=bad: list(cat.find(bad))) == code, bad
    # metadata set on the wrong level / with the wrong type is refused per entry
    res = cat.set_metadata([{"path": "/juno/production/mc", "metadata": {"run": 1}},
                            {"path": "/juno/production/mc/r0/f0.root", "metadata": {"run": "x"}},
                            {"path": "/juno/production/mc/r0/f0.root", "metadata": {"run": 99}}])
    assert [r.get("code") for r in res] == ["metadata-level-mismatch", "metadata-type-mismatch", None]
    assert q("run=99") == {"f0.root"}


def test_define_field_rules(cat: Catalog) -> None:
    assert cat.define_field("run", "int")["created"] is False
    assert code_of(lambda: cat.define_field("run", "float")) == "already-exists"
    assert code_of(lambda: cat.define_field("size", "int")) == "reserved-field-name"
    assert code_of(lambda: cat.define_field("x", "blob")) == "invalid-field-type"


def test_provenance(cat: Catalog) -> None:
    cat.register([{"lfn": "/juno/p/raw", "size": 1, "checksum": "1"},
                  {"lfn": "/juno/p/calib", "size": 1, "checksum": "1", "ancestors": ["/juno/p/raw"]},
                  {"lfn": "/juno/p/rec", "size": 1, "checksum": "1", "ancestors": ["/juno/p/calib"]}])
    assert cat.provenance("/juno/p/rec", "up", depth=5) == [{"lfn": "/juno/p/calib", "depth": 1},
                                                           {"lfn": "/juno/p/raw", "depth": 2}]
    assert cat.provenance("/juno/p/raw", "down", depth=1) == [{"lfn": "/juno/p/calib", "depth": 1}]
    assert code_of(lambda: cat.add_ancestors("/juno/p/raw", ["/juno/p/rec"])) == "ancestry-cycle"


def test_datasets(cat: Catalog) -> None:
    cat.register(files(10))
    cat.create_dataset("mc/rec", "type=rec run>=4")
    assert cat.show_dataset("mc/rec")["files"] == 3
    frozen = cat.freeze_dataset("mc/rec")
    assert frozen["status"] == "Frozen" and frozen["files"] == 3 and frozen["bytes"] == 105 + 107 + 109
    assert len(frozen["content_hash"]) == 64
    cat.register([{"lfn": "/juno/production/mc/new.root", "size": 1, "checksum": "1", "metadata": {"run": 50, "type": "rec"}}])
    assert len(list(cat.dataset_files("mc/rec"))) == 3  # snapshot does not move
    assert code_of(lambda: cat.freeze_dataset("mc/rec")) == "dataset-frozen"
    cat.release_dataset("mc/rec")
    assert len(list(cat.dataset_files("mc/rec"))) == 4
    assert cat.freeze_dataset("mc/rec")["content_hash"] != frozen["content_hash"]
    assert [d["name"] for d in cat.list_datasets()] == ["mc/rec"]
    assert code_of(lambda: cat.create_dataset("mc/rec", "run=1")) == "already-exists"
    cat.remove_dataset("mc/rec")
    assert code_of(lambda: cat.show_dataset("mc/rec")) == "no-such-dataset"


def test_generated_guids_are_time_ordered_uuid7_and_given_ones_kept(cat: Catalog) -> None:
    import time
    import uuid

    cat.register(files(6))
    given = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    cat.register([{"lfn": "/juno/production/given.root", "size": 1, "checksum": "1", "guid": given}])
    guids = [cat.stat(f"/juno/production/mc/r{i % 3}/f{i}.root")["guid"] for i in range(6)]
    assert all(uuid.UUID(g).version == 7 and g == str(uuid.UUID(g)).upper() for g in guids)
    assert guids == sorted(guids) and len(set(guids)) == 6  # one call: consecutive keys in entry order
    time.sleep(0.002)  # a later millisecond: GUIDs of later calls sort after
    later = cat.register([{"lfn": "/juno/production/later.root", "size": 1, "checksum": "1"}])
    assert later[0]["ok"] and cat.stat("/juno/production/later.root")["guid"] > guids[-1]
    assert cat.stat("/juno/production/given.root")["guid"] == given.upper()
    assert {f["lfn"] for f in cat.find({"guid": given})} == {"/juno/production/given.root"}


@pytest.mark.parametrize("batch", [1, 4, 5, 12, 13])
def test_find_pages_cover_every_match_once(cat: Catalog, batch: int) -> None:
    cat.register(files(12))
    stats = {f"/juno/production/mc/r{i % 3}/f{i}.root": cat.stat(f"/juno/production/mc/r{i % 3}/f{i}.root")
             for i in range(12)}
    found = list(cat.find("run>=0", batch=batch))
    assert sorted(f["lfn"] for f in found) == sorted(stats)
    for f in found:  # rows read raw from the driver agree with stat on every back end
        s = stats[f["lfn"]]
        assert (f["size"], f["checksum"], f["guid"], f["created_at"]) == (s["size"], s["checksum"], s["guid"],
                                                                          s["created_at"])
    assert len(list(cat.find("run>=0", batch=batch, limit=7))) == 7
    assert [f["lfn"] for f in cat.find("run>=0", batch=batch, limit=12)] == [f["lfn"] for f in found]


def test_bulk_registration_pauses_the_collector_only_for_the_call(cat: Catalog) -> None:
    import gc
    import threading

    from junodcs.catalog.gcpause import collector_paused

    seen: list[bool] = []
    original = cat._register

    def spy(*args: object) -> object:
        seen.append(gc.isenabled())
        return original(*args)  # type: ignore[arg-type]

    cat._register = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    assert all(r["ok"] for r in cat.register(files(3)))
    assert seen == [False] and gc.isenabled()
    # a failing call restores it too; overlapping pauses (two threads) end with the collector back on
    assert code_of(lambda: cat.register("not a list")) == "invalid-input"  # type: ignore[arg-type]
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with collector_paused():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(5)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other pause is still on
    release.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # never enables a collector someone else turned off
    finally:
        gc.enable()


def test_file_and_replica_status(cat: Catalog) -> None:
    lfn = "/juno/production/mc/r1/f1.root"
    cat.register(files(2))
    assert cat.set_file_status(lfn, "Trash") == {"lfn": lfn, "status": "Trash"}
    assert cat.stat(lfn)["status"] == "Trash" and cat.stat("/juno/production/mc/r0/f0.root")["status"] == "AprioriGood"
    cat.set_replica_status(lfn, "IHEP-EOS", "Problematic")
    assert cat.replicas([lfn])[lfn][0]["status"] == "Problematic"
    assert code_of(lambda: cat.set_file_status(lfn, "Problematic")) == "invalid-status"  # a replica status only
    assert code_of(lambda: cat.set_file_status("/juno/production/mc/nope", "Trash")) == "no-such-path"
    reader = Caller("alice", "juno_user", authorize=lambda action, path, node: action == "read")
    assert code_of(lambda: cat.set_file_status(lfn, "AprioriGood", reader)) == "permission-denied"
    assert cat.stat(lfn)["status"] == "Trash"
