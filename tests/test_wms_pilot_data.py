"""Input and output data through the job wrapper, with real SEs and the catalog: a job whose input sits at one
site runs there and reads the best replica; outputs are put and registered (adler32) with the job owner's token;
an output SE that is down makes the wrapper use a failover SE and leave a request for the RMS to finish."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import zlib
from pathlib import Path

from authutil import full_token
from wms_pilotutil import pilot_grid, run_directors


def test_input_data_site_output_data_and_failover(tmp_path: Path) -> None:
    from junodcs.dm.manager import DataManager

    data = b"juno detsim event data " * 4000
    source = tmp_path / "detsim-1.root"
    source.write_bytes(data)
    with pilot_grid(tmp_path, ses=("IHEP-EOS", "CNAF-STORM", "JINR-DCACHE"), dead_ses=("MSU-EOS",)) as grid:
        token = full_token(grid.app, "alice")
        with DataManager(grid.url, token=token) as dm:
            assert dm.put(source, "/juno/user/a/alice/in/detsim-1.root", "CNAF-STORM").ok
        alice = grid.user_client("alice")
        reader = "-c 'wc -c < detsim-1.root > result.txt; echo $DCS_SITE >> result.txt'"
        at_data, failover = alice.submit([
            {"Executable": "/bin/sh", "Arguments": reader, "InputData": ["/juno/user/a/alice/in/detsim-1.root"],
             "OutputData": ["result.txt"], "OutputSE": ["CNAF-STORM"], "OutputPath": "out/a", "CPUTime": 300},
            {"Executable": "/bin/sh", "Arguments": "-c 'echo precious > result.txt'", "Site": "GRID.IHEP.cn",
             "OutputData": ["result.txt"], "OutputSE": ["MSU-EOS"], "OutputPath": "out/b", "CPUTime": 300}])
        directors = [grid.director("ce.ihep.ac.cn"), grid.director("ce.cnaf.infn.it")]
        stop = threading.Event()
        threads = run_directors(directors, stop)
        try:
            done = grid.wait_for([at_data, failover], {"Done", "Failed", "Completing"}, timeout=90)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            for d in directors:
                d.drain(20)
                d.backend.close()
        assert done[at_data]["status"] == "Done", done
        assert alice.job(at_data)["site"] == "GRID.CNAF.it", "the job goes where its input data is"
        params = alice.parameters(at_data)["parameters"]
        assert json.loads(params["InputDataReplicas"]) == [{"lfn": "/juno/user/a/alice/in/detsim-1.root",
                                                            "se": "CNAF-STORM"}]
        lfn = "/juno/user/a/alice/out/a/result.txt"
        assert json.loads(params["UploadedOutputData"]) == [lfn]
        expected = f"{len(data)}\nGRID.CNAF.it\n".encode()
        with DataManager(grid.url, token=token) as dm:
            got = dm.get(lfn, tmp_path / "result-a.txt")
            assert got.ok and got.checksum == f"{zlib.adler32(expected) & 0xFFFFFFFF:08x}"
        assert (tmp_path / "result-a.txt").read_bytes() == expected
        assert got.source_se == "CNAF-STORM" or got.se == "CNAF-STORM"

        # failover: MSU-EOS is down; the output lands on the site's disk SE with a request to move it; this
        # server mounts no RMS, so the job waits in Completing and says the request is not submitted
        # (test_wms_completing runs the whole loop with the RMS)
        assert done[failover]["status"] == "Completing"
        assert done[failover]["minor_status"].startswith("Pending Requests: 1 output file(s) on failover SE IHEP-EOS")
        assert "NOT submitted" in done[failover]["minor_status"]
        params = alice.parameters(failover)["parameters"]
        request = json.loads(params["FailoverRequest"])
        lfn_b = "/juno/user/a/alice/out/b/result.txt"
        (replicate, remove) = request["Operations"]
        assert replicate["Type"] == "PutAndRegister" and replicate["LFN"] == lfn_b
        assert replicate["SourceSE"] == "IHEP-EOS" and replicate["TargetSE"] == ["MSU-EOS"]
        assert replicate["Checksum"] == f"{zlib.adler32(b'precious' + bytes([10])) & 0xFFFFFFFF:08x}"
        assert remove == {"Type": "RemoveReplica", "LFN": lfn_b, "TargetSE": ["IHEP-EOS"],
                          "After": "PutAndRegister"}
        with tarfile.open(fileobj=io.BytesIO(alice.output_sandbox(failover)), mode="r:*") as tar:
            trace = json.loads(tar.extractfile("failover_request.json").read())  # type: ignore[union-attr]
        assert trace == request
        with DataManager(grid.url, token=token) as dm:
            assert dm.get(lfn_b, tmp_path / "result-b.txt").ok
        assert (tmp_path / "result-b.txt").read_bytes() == b"precious\n"
