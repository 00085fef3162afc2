"""Sandboxes on a storage element: a real central server and a real SE on loopback, grid.yaml naming the
sandbox SE. Uploads land on the SE once per content; pilots read the input sandbox and write the output
sandbox straight on the SE with tokens scoped to that one file; the cleaner removes the archives from the SE
once every job using them has ended and the retention has passed, and says so clearly afterwards."""

from __future__ import annotations

import io
import tarfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from wms_pilotutil import pilot_grid, run_directors

SE = "IHEP-EOS"


def _files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _on_se(tmp: Path, digest: str) -> list[Path]:
    return sorted((tmp / "se" / SE).rglob(f"{digest}.tar.gz"))


def test_sandboxes_live_on_the_se_pilots_use_it_directly_and_the_cleaner_removes_them(tmp_path: Path) -> None:
    from junodcs.core.errors import DCSError
    from junodcs.storage.client import StorageClient
    from junodcs.wms.logic import WMSConfig, now
    from junodcs.wms.sandbox import SESandboxStore, pack

    script = tmp_path / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello $DCS_JOB_ID arg=$1"\necho "made by $1" > out.txt\n')
    config = WMSConfig(heartbeat_period=1, stalled_periods=4, failed_periods=8, matched_timeout=60,
                       sandbox_grace=3600, sandbox_retention=2 * 86400)
    with pilot_grid(tmp_path, ses=(SE,), sandbox_se=SE, wms_config=config) as grid:
        store = grid.wms.sandbox_store
        assert isinstance(store, SESandboxStore) and store.se == SE
        alice = grid.user_client("alice")
        archive = pack([script])
        first = alice.upload_sandbox(archive)
        again = alice.upload_sandbox(archive)
        assert first == again
        digest = first["hash"]
        stored = _on_se(tmp_path, digest)
        assert len(stored) == 1 and stored[0].read_bytes() == archive, "one copy on the SE, named by sha256"
        assert stored[0].parent.name == digest[:2]
        assert not (grid.tmp / "sandboxes").exists()

        # one shared sandbox for a parametric bulk
        ids = alice.submit([{"Executable": "hello.sh", "Arguments": "%s", "Parameters": 3, "InputSandbox": [first["ref"]],
                             "OutputSandbox": ["out.txt"], "Site": "GRID.IHEP.cn", "CPUTime": 300}])
        assert grid.wms.sandbox_references([digest])[digest] == {"jobs": 3, "active": 3}
        director = grid.director("ce.ihep.ac.cn")
        stop = threading.Event()
        threads = run_directors([director], stop)
        try:
            done = grid.wait_for(ids, {"Done", "Failed"}, timeout=90)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            director.drain(20)
            director.backend.close()
        assert {v["status"] for v in done.values()} == {"Done"}, done
        files = _files(alice.output_sandbox(ids[2]))
        assert files["std.out"] == f"hello {ids[2]} arg=2\n".encode() and files["out.txt"] == b"made by 2\n"
        with grid.wms.engine.connect() as conn:
            from sqlalchemy import select

            from junodcs.wms import db

            out_digests = dict(conn.execute(select(db.jobs.c.id, db.jobs.c.output_sandbox)
                                            .where(db.jobs.c.id.in_(ids))).all())
        assert len(set(out_digests.values())) == 3
        for out in out_digests.values():
            assert len(_on_se(tmp_path, out)) == 1, "the pilot put the output sandbox on the SE"
        assert grid.wms.sandbox_references([digest])[digest] == {"jobs": 3, "active": 0}

        # the pilot's tokens reach one file only: read for the input, create-only for an output
        job = ids[0]
        access = grid.wms.input_sandbox_access(job, 1, None)
        assert access["url"] == store.url(digest)
        with StorageClient(access["token"]) as storage:
            storage.get(access["url"], tmp_path / "got.tar.gz")
            assert (tmp_path / "got.tar.gz").read_bytes() == archive
            with pytest.raises(DCSError) as denied:
                storage.get(store.url(out_digests[job]), tmp_path / "other.tar.gz")
            assert denied.value.status in (401, 403)
        write = grid.wms.output_sandbox_access(job, 1, None, out_digests[job], 10)
        assert write["exists"] is False, "size differs: not the same content"
        (tmp_path / "evil").write_bytes(b"overwrite attempt")
        with StorageClient(write["token"]) as storage, pytest.raises(DCSError):
            storage.put(tmp_path / "evil", write["url"], overwrite=True)
        assert _on_se(tmp_path, out_digests[job])[0].read_bytes() != b"overwrite attempt"

        # cleaner: nothing while the retention runs, everything of these jobs after it
        assert grid.wms.clean_sandboxes(now() + timedelta(days=1)) == []
        removed = grid.wms.clean_sandboxes(now() + timedelta(days=3))
        assert set(removed) == {digest, *out_digests.values()}
        assert _on_se(tmp_path, digest) == [] and all(_on_se(tmp_path, o) == [] for o in out_digests.values())
        with pytest.raises(DCSError) as gone:
            alice.output_sandbox(ids[0])
        assert gone.value.code == "sandbox-removed" and "removed by the sandbox cleaner" in gone.value.detail


def test_sandbox_in_use_is_kept_unused_uploads_go_after_the_grace_and_cleaned_jobs_cannot_rerun(
        tmp_path: Path) -> None:
    from junodcs.wms.logic import now

    with pilot_grid(tmp_path, ses=(SE,), sandbox_se=SE, background=False) as grid:
        alice = grid.user_client("alice")
        used = alice.upload_sandbox(b"used archive bytes")
        unused = alice.upload_sandbox(b"never used archive")
        shared = alice.upload_sandbox(b"shared by two jobs")
        (job,) = alice.submit([{"Executable": "/bin/true", "InputSandbox": [used["ref"]]}])
        (kept, gone) = alice.submit([{"Executable": "/bin/true", "InputSandbox": [shared["ref"]]}] * 2)
        later = now() + timedelta(days=30)
        assert grid.wms.clean_sandboxes(later) == [unused["hash"]], "a Received job still needs its sandbox"
        assert len(_on_se(tmp_path, used["hash"])) == 1 and _on_se(tmp_path, unused["hash"]) == []
        alice.kill([job])
        removed = grid.wms.clean_sandboxes(later)
        assert removed == [used["hash"]], "every job of it ended long ago; the shared one still has a live job"
        assert _on_se(tmp_path, used["hash"]) == [] and len(_on_se(tmp_path, shared["hash"])) == 1
        refused = alice.reschedule([job])["failed"][str(job)]
        assert "input sandbox was removed" in refused and alice.job(job)["status"] == "Killed"
        # deleting the last live job removes its sandbox from the SE at once
        alice.delete_jobs([gone])
        assert len(_on_se(tmp_path, shared["hash"])) == 1
        alice.delete_jobs([kept])
        assert _on_se(tmp_path, shared["hash"]) == []


def test_a_sandbox_se_without_url_is_refused_clearly(tmp_path: Path) -> None:
    import yaml

    from junodcs.core.errors import DCSError
    from junodcs.core.gridconfig import example_grid_path, parse_grid_config
    from junodcs.wms.sandbox import store_for_grid

    data = yaml.safe_load(example_grid_path().read_text())
    data.setdefault("servers", {})["sandbox_se"] = SE
    grid = parse_grid_config(data)
    with pytest.raises(DCSError) as refused:
        store_for_grid(grid, lambda *a: "token", tmp_path / "local")
    assert refused.value.code == "no-sandbox-se-url" and SE in refused.value.detail


def test_an_output_sandbox_whose_bytes_do_not_match_its_name_is_refused_removed_and_put_again(
        tmp_path: Path) -> None:
    from junodcs.core.errors import DCSError
    from junodcs.storage.client import StorageClient
    from junodcs.wms.pilot.sandbox_io import store_output_sandbox

    with pilot_grid(tmp_path, ses=(SE,), sandbox_se=SE, background=False) as grid:
        alice = grid.user_client("alice")
        (job,) = alice.submit([{"Executable": "/bin/true"}])
        attempt = alice.job(job)["attempt"]
        pilot = grid.pilot_wms()
        output = b"the real output sandbox archive"
        import hashlib

        digest = hashlib.sha256(output).hexdigest()
        forged = tmp_path / "forged"
        forged.write_bytes(b"X" * len(output))  # same size, other bytes
        access = pilot.output_sandbox_access(job, attempt, digest, len(output))
        with StorageClient(access["token"]) as storage:
            storage.put(forged, access["url"], overwrite=False)
        assert pilot.output_sandbox_access(job, attempt, digest, len(output))["exists"] is True

        with pytest.raises(DCSError) as refused:
            pilot.register_output_sandbox(job, attempt, digest, len(output))
        assert refused.value.code == "sha256-mismatch" and "removed, upload it again" in refused.value.detail
        assert _on_se(tmp_path, digest) == [], "a file that lies about its content is not kept"
        assert alice.job(job).get("output_sandbox") is None

        # the job wrapper's path: it finds "exists", registers, is refused, uploads once more, and succeeds
        with StorageClient(access["token"]) as storage:
            storage.put(forged, access["url"], overwrite=False)
        assert store_output_sandbox(pilot, job, attempt, None, output)["hash"] == digest
        assert _on_se(tmp_path, digest)[0].read_bytes() == output
        assert alice.output_sandbox(job) == output
