"""`dcs demo`: bring a local JUNO grid up, tour it with the real commands, and stop it.

The tour runs each `dcs` command as a user would type it (a subprocess against the running grid), prints
the command and what it answered, and fails loudly if a step fails. It works in a private DCS_HOME (a
temporary folder unless `--home` is given) and sets `X509_USER_CERT`, `X509_USER_PROXY` and
`BEARER_TOKEN_FILE` inside it,
so it never touches the user's own proxy, tokens or configuration. Later systems add their chapters to
`CHAPTERS`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError


class Tour:
    def __init__(self, home: Path, console: Any) -> None:
        self.home = home
        self.console = console
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DCS_", "X509_"))}
        self.env.update(
            DCS_HOME=str(home),
            X509_USER_PROXY=str(home / "x509up"),
            X509_USER_CERT=str(home / "globus" / "usercert.pem"),
            X509_USER_KEY=str(home / "globus" / "userkey.pem"),
            BEARER_TOKEN_FILE=str(home / "bearer-token"),
        )
        self.started = time.monotonic()

    def chapter(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    def say(self, text: str) -> None:
        self.console.print(text)

    def dcs(self, *args: str, show: bool = True, check: bool = True, echo: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        if echo:
            self.console.print(f"[bold cyan]$ {prefix + ' ' if prefix else ''}dcs {' '.join(args)}[/bold cyan]")
        result = subprocess.run(
            [sys.executable, "-m", "junodcs", *args], env={**self.env, **(env or {})}, capture_output=True,
            text=True, check=False,
        )
        output = (result.stdout + result.stderr).rstrip()
        if show and output:
            self.console.print(output, markup=False, highlight=False)
        if check and result.returncode != 0:
            raise DCSError(f"demo step `dcs {' '.join(args)}` failed:\n{output}", code="demo-failed")
        return result


Chapter = Callable[[Tour], None]


def identity_chapter(tour: Tour) -> None:
    tour.chapter("Identity: certificate, VOMS proxy, token")
    tour.say("A JUNO member holds an X509 certificate and a VOMS membership; the grid's CA issues one for the demo.")
    tour.dcs("cert", "issue", "--user", "zhangxm", "--out", str(tour.home / "globus"))
    tour.dcs("proxy", "init", "--voms", "juno:/juno/Role=production")
    tour.dcs("proxy", "info")
    tour.say("The proxy authenticates over TLS and is exchanged for a WLCG access token (+ refresh token).")
    tour.dcs("login")
    tour.dcs("whoami")
    tour.say("A narrowed token for another tool (token exchange, RFC 8693):")
    tour.dcs("token", "--scope", "storage.read:/raw", "--decode")


def sites_chapter(tour: Tour) -> None:
    tour.chapter("The JUNO sites")
    tour.dcs("site", "ls")


def data_chapter(tour: Tour) -> None:
    tour.chapter("Data: upload, HTTP-TPC replication, metadata, datasets")
    tour.say("A catalog administrator defines the metadata fields once (acting in the juno_admin group).")
    tour.dcs("login", "--group", "juno_admin")
    tour.dcs("dm", "meta", "define", "run", "int")
    tour.dcs("dm", "meta", "define", "step", "string", "--dir")
    tour.dcs("login")
    tour.say("The production manager uploads three detsim files to IHEP (adler32 verified by the SE) ...")
    outputs = tour.home / "outputs"
    outputs.mkdir(exist_ok=True)
    for run in (1001, 1002, 1003):
        (outputs / f"detsim-{run}.root").write_bytes(os.urandom(256 * 1024))
    directory = "/juno/production/demo/J23.1.0/detsim"
    tour.dcs("dm", "put", *(str(p) for p in sorted(outputs.iterdir())), directory + "/", "--se", "IHEP-EOS")
    tour.dcs("dm", "meta", "set", "/juno/production/demo", "step=detsim")
    for run in (1001, 1002, 1003):
        tour.dcs("dm", "meta", "set", f"{directory}/detsim-{run}.root", f"run={run}", show=False)
    tour.say("... and replicates them to CNAF and JINR by HTTP third-party copy (pull mode first).")
    lfns = [f"{directory}/detsim-{run}.root" for run in (1001, 1002, 1003)]
    tour.dcs("dm", "replicate", *lfns, "CNAF-STORM")
    tour.dcs("dm", "replicate", lfns[0], "JINR-DCACHE", "--mode", "push")
    tour.dcs("dm", "replicas", *lfns)
    tour.say("Directory metadata is inherited: a query on step (set on the directory) and run (on the files).")
    tour.dcs("dm", "find", "step=detsim", "run>=1002")
    tour.dcs("dm", "dataset", "create", "demo-detsim", "step=detsim")
    tour.dcs("dm", "dataset", "freeze", "demo-detsim")
    tour.dcs("dm", "dataset", "show", "demo-detsim")
    tour.dcs("dm", "usage", "/juno/production/demo")
    tour.dcs("se", "ls")


def conditions_chapter(tour: Tour) -> None:
    import json
    from concurrent.futures import ThreadPoolExecutor

    tour.chapter("Conditions: a global tag, read by a job wave through the site Squid")
    tour.say("A conditions manager uploads payloads, tags their intervals of validity and locks a global tag.")
    tour.dcs("login", "--group", "juno_admin")
    payloads = tour.home / "conditions"
    payloads.mkdir(exist_ok=True)
    hashes = {}
    for name, size in (("pmt-v1", 100_000), ("pmt-v2", 100_000), ("geometry", 20_000)):
        (payloads / name).write_bytes(os.urandom(size))
        kind = "Geometry.CD" if name == "geometry" else "Calib.PMT"
        hashes[name] = json.loads(tour.dcs("cond", "payload", "put", str(payloads / name), "-t", kind, "--json",
                                           show=False).stdout)["hash"]
        tour.say(f"payload {name} ({kind}): sha256 {hashes[name][:16]}...")
    tour.dcs("cond", "tag", "create", "PMT-2024-v1", "-t", "Calib.PMT")
    tour.dcs("cond", "iov", "add", "PMT-2024-v1", "--since", "1", "-p", hashes["pmt-v1"])
    tour.dcs("cond", "iov", "add", "PMT-2024-v1", "--since", "1002", "-p", hashes["pmt-v2"])
    tour.dcs("cond", "tag", "create", "Geometry-v1", "-t", "Geometry.CD")
    tour.dcs("cond", "iov", "add", "Geometry-v1", "--since", "1", "-p", hashes["geometry"])
    tour.dcs("cond", "tag", "lock", "PMT-2024-v1")
    tour.dcs("cond", "tag", "lock", "Geometry-v1")
    tour.dcs("cond", "gt", "create", "J23.1.0-GT")
    tour.dcs("cond", "gt", "add", "J23.1.0-GT", "PMT-2024-v1")
    tour.dcs("cond", "gt", "add", "J23.1.0-GT", "Geometry-v1")
    tour.dcs("cond", "gt", "lock", "J23.1.0-GT")
    tour.dcs("cond", "gt", "show", "J23.1.0-GT")
    tour.dcs("login")
    tour.say("Eight jobs at IHEP read the PMT calibration of run 1003 over the Frontier protocol, through\n"
             "their site's Squid (the proxy list comes from grid.yaml), as JUNO jobs do:")
    site = {"DCS_SITE": "GRID.IHEP.cn"}
    tour.dcs("cond", "get", "--frontier", "--gt", "J23.1.0-GT", "-t", "Calib.PMT", "--run", "1003", env=site)
    wave = ("cond", "get", "--frontier", "--gt", "J23.1.0-GT", "-t", "Calib.PMT", "--run", "1003", "--json")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: tour.dcs(*wave, show=False, echo=False, env=site), range(8)))
    served = {json.loads(a.stdout).get("payload_hash") for a in answers}
    tour.say(f"8 jobs read payload {', '.join(h[:16] + '...' for h in served if h)} (the one valid for run 1003)")
    _squid_report(tour, "GRID.IHEP.cn")


def _squid_report(tour: Tour, site: str) -> None:
    """How many of the site Squid's requests it answered from its cache (its access log says)."""
    from junodcs.conditions.squid import runtime_dir

    log = runtime_dir(tour.home, site) / "access.log"
    if not log.exists():
        tour.say("(no Squid at this site: the jobs read the Frontier server directly)")
        return
    lines = [line for line in log.read_text(errors="replace").splitlines() if "/Frontier" in line]
    hits = sum(1 for line in lines if "HIT" in line.split()[3])
    tour.say(f"Squid at {site}: {len(lines)} Frontier requests, {hits} answered from its cache, "
             f"{len(lines) - hits} went to the server")


def _quiet(tour: Tour, *args: str) -> subprocess.CompletedProcess[str]:
    """A `dcs` command whose output the tour reads but does not print (polling, JSON for summaries)."""
    result = subprocess.run([sys.executable, "-m", "junodcs", *args], env=tour.env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise DCSError(f"demo step `dcs {' '.join(args)}` failed:\n{result.stdout}{result.stderr}", code="demo-failed")
    return result


def _wait_jobs(tour: Tour, ids: list[int], timeout: float = 240.0) -> dict[str, Any]:
    """Poll `dcs job status --json` until every job is final (Done/Failed/Killed)."""
    import json as _json

    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = {}
        for start in range(0, len(ids), 200):
            chunk = [str(i) for i in ids[start:start + 200]]
            found.update(_json.loads(_quiet(tour, "job", "status", *chunk, "--json").stdout))
        if len(found) == len(ids) and all(j["status"] in ("Done", "Failed", "Killed") for j in found.values()):
            return found
        time.sleep(1.0)
    late = {k: v["status"] for k, v in found.items() if v["status"] not in ("Done", "Failed", "Killed")}
    raise DCSError(f"demo jobs not finished after {timeout:.0f} s: {late}", code="demo-failed")


def _ids(result: subprocess.CompletedProcess[str]) -> list[int]:
    import json as _json

    return [int(i) for i in _json.loads(result.stdout)["job_ids"]]


def jobs_chapter(tour: Tour) -> None:
    from collections import Counter

    tour.chapter("Jobs: pilots at every site, data-driven placement, memory-aware rescheduling")
    tour.say("Each site runs a site director with its local CE: it submits pilots only while waiting jobs can run\n"
             "there, within the CE's slots. The pilots ask the matcher for jobs, run them under a watchdog\n"
             "(heartbeats, CPU/wall/memory limits), upload outputs and report.")
    tour.dcs("ce", "ls")
    jobs = tour.home / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "wave.jdl").write_text(
        '[\n  JobName = "detsim-wave";\n  JobGroup = "demo-wave";\n  Executable = "/bin/sh";\n'
        '  Arguments = "-c \'echo detsim batch %s at $DCS_SITE; sleep 1\'";\n'
        '  Parameters = 50;\n  CPUTime = 3600;\n  OutputSandbox = {"std.out"};\n]\n')
    tour.say("A parametric JDL: 50 jobs in one bulk submission.")
    tour.say((jobs / "wave.jdl").read_text().rstrip())
    tour.say(f"$ dcs job submit {jobs / 'wave.jdl'}")
    wave = _ids(_quiet(tour, "job", "submit", str(jobs / "wave.jdl"), "--json"))
    tour.say(f"submitted jobs {wave[0]}..{wave[-1]}; waiting for the pilots to run them")
    found = _wait_jobs(tour, wave)
    by_site = Counter(j["site"] for j in found.values() if j["status"] == "Done")
    if sum(by_site.values()) != len(wave):
        raise DCSError(f"demo: {len(wave) - sum(by_site.values())} wave jobs did not finish Done", code="demo-failed")
    tour.say(f"{sum(by_site.values())} of {len(wave)} jobs Done, spread over {len(by_site)} sites: "
             + ", ".join(f"{site} {n}" for site, n in sorted(by_site.items())))
    tour.dcs("job", "status", str(wave[0]))
    tour.dcs("job", "get-output", str(wave[0]), "--dir", str(jobs / "out"))

    tour.say("Input data decides where a job runs: a file stored only at IN2P3 ...")
    data = jobs / "calib-input.dat"
    data.write_bytes(os.urandom(128 * 1024))
    lfn = "/juno/user/z/zhangxm/demo/calib-input.dat"
    tour.dcs("dm", "put", str(data), lfn, "--se", "IN2P3-DCACHE")
    (jobs / "calib.json").write_text(
        '{"JobName": "calib-from-in2p3", "Executable": "/bin/sh", "Arguments": '
        '"-c \'wc -c calib-input.dat > calib.txt; echo ran at $DCS_SITE\'", '
        f'"InputData": ["{lfn}"], "OutputData": ["calib.txt"], "OutputSE": ["IN2P3-DCACHE"], '
        '"OutputPath": "demo/calib", "CPUTime": 3600}\n')
    tour.say(f"$ dcs job submit {jobs / 'calib.json'}")
    (calib,) = _ids(_quiet(tour, "job", "submit", str(jobs / "calib.json"), "--json"))
    tour.say(f"JobID = {calib}")
    placed = _wait_jobs(tour, [calib])[str(calib)]
    if (placed["status"], placed["site"]) != ("Done", "GRID.IN2P3.fr"):
        raise DCSError(f"demo: the input-data job ended {placed['status']} at {placed['site']}", code="demo-failed")
    tour.say("... so the job ran there, read the local replica, and registered its output (adler32 checked):")
    tour.dcs("job", "status", str(calib))
    tour.dcs("dm", "replicas", "/juno/user/z/zhangxm/demo/calib/calib.txt")

    tour.say("Memory-aware rescheduling: a job that needs 3.2 GB but asks for nothing lands on a 3 GB slot at\n"
             "IHEP (JINR's two 16 GB slots are busy with reconstruction jobs). The watchdog stops it at the\n"
             "slot's limit, the WMS reschedules it with a larger MaxRAM, and only JINR offers that.")
    (jobs / "busy.json").write_text('{"JobName": "rec-jinr", "Executable": "sleep", "Arguments": "25", '
                                    '"Site": "GRID.JINR.ru", "Parameters": 2, "CPUTime": 3600}\n')
    busy = _ids(_quiet(tour, "job", "submit", str(jobs / "busy.json"), "--json"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        import json as _json

        states = _json.loads(_quiet(tour, "job", "status", *map(str, busy), "--json").stdout)
        if all(j["status"] == "Running" for j in states.values()):
            break
        time.sleep(0.5)
    payload = "import time; b = b'x' * (3200 << 20); time.sleep(2); print('muon simulation done with', len(b) >> 20, 'MB')"
    (jobs / "muon.json").write_text(
        '{"JobName": "muon-sim", "Executable": "python3", "Arguments": "-c \\"' + payload + '\\"", '
        '"Site": ["GRID.IHEP.cn", "GRID.JINR.ru"], "CPUTime": 3600}\n')
    tour.say(f"$ dcs job submit {jobs / 'muon.json'}")
    (muon,) = _ids(_quiet(tour, "job", "submit", str(jobs / "muon.json"), "--json"))
    tour.say(f"JobID = {muon}")
    ended = _wait_jobs(tour, [muon, *busy])[str(muon)]
    if (ended["status"], ended["site"]) != ("Done", "GRID.JINR.ru"):
        raise DCSError(f"demo: the memory-heavy job ended {ended['status']} at {ended['site']}", code="demo-failed")
    tour.dcs("job", "logging-info", str(muon))
    tour.dcs("job", "status", str(muon))
    tour.dcs("job", "peek", str(muon))
    tour.say("Pilots: each ran one or more jobs; the site directors stored their output.")
    import json as _json

    pilots = _json.loads(_quiet(tour, "pilot", "ls", "--json").stdout)
    states = Counter(p["status"] for p in pilots)
    tour.say(f"{len(pilots)} pilots: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
             + f"; {sum(p['jobs_matched'] for p in pilots)} matches")
    tour.dcs("pilot", "ls", "--site", "GRID.JINR.ru")
    ran = [p for p in pilots if p["site"] == "GRID.JINR.ru" and p["jobs_matched"]]
    if ran:
        tour.dcs("pilot", "logs", ran[0]["pilot_id"])


def transfers_chapter(tour: Tour) -> None:
    import json

    tour.chapter("Transfers: an asynchronous replication and the HTTP-TPC test matrix")
    tour.say("`--async` queues a ReplicateAndRegister request; the request agent hands the copy to the\n"
             "FTS3-compatible transfer service and registers the replica once the checksum is verified.")
    lfn = "/juno/production/demo/J23.1.0/detsim/detsim-1002.root"
    queued = json.loads(tour.dcs("dm", "replicate", lfn, "MSU-EOS", "--async", "--json").stdout)
    request_id = str(queued["request_id"])
    tour.say(f"request {request_id} queued")
    deadline = time.monotonic() + 120
    status = "?"
    while time.monotonic() < deadline:
        status = json.loads(tour.dcs("request", "show", request_id, "--json", show=False, echo=False).stdout)["status"]
        if status in ("Done", "Failed", "Canceled"):
            break
        time.sleep(1)
    tour.dcs("request", "show", request_id)
    if status != "Done":
        raise DCSError(f"request {request_id} ended {status}", code="demo-failed")
    tour.dcs("dm", "replicas", lfn)
    tour.dcs("transfer", "ls")
    tour.say("The test matrix copies a small file between every ordered pair of SEs in the three modes\n"
             "(stream, pull, push) and keeps the results, as JUNO's HTTP-TPC dashboard does:")
    tour.dcs("login", "--group", "juno_admin", show=False)
    tour.dcs("transfer", "test-matrix", "--size", "65536", "--se", "IHEP-EOS", "--se", "CNAF-STORM",
             "--se", "JINR-DCACHE")
    tour.dcs("transfer", "links")
    tour.dcs("login", show=False)


CHAPTERS: list[Chapter] = [
    identity_chapter, sites_chapter, data_chapter, transfers_chapter, conditions_chapter, jobs_chapter,
]


def run_demo(config_path: Path, *, home: Path | None, keep: bool, console: Any) -> None:
    from junodcs.core.paths import ensure_private_dir

    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="junodcs-demo-")) if home is None else home.resolve()
    ensure_private_dir(home)
    tour = Tour(home, console)
    console.print(f"[bold]junodcs demo[/bold] in {home}")
    tour.chapter("A local JUNO grid on loopback")
    try:
        tour.dcs("grid", "up", "--detach", str(config_path))
        for chapter in CHAPTERS:
            chapter(tour)
        tour.chapter("Grid processes")
        tour.dcs("grid", "status")
    finally:
        tour.dcs("grid", "down", check=False)
        if own_home and not keep:
            shutil.rmtree(home, ignore_errors=True)
    elapsed = time.monotonic() - tour.started
    console.print(f"[bold green]demo finished[/bold green] in {elapsed:.0f} s; nothing is left running")
    if keep or not own_home:
        console.print(f"state kept in {home} (DCS_HOME={home})")
