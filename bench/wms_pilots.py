"""Trivial jobs through junodcs pilots, against running the same payloads directly, in the same run.

1. Local CE with 2 slots: N trivial jobs (`/bin/true`, default 1000) submitted in one bulk, run by the pilots a
   site director starts (real pilot processes talking HTTP to a real central server on loopback, SQLite),
   from the first pilot submission until the last job is Done. Baseline: `xargs -P2` running the same N
   payloads. Reported: jobs per minute (ratio = ours / baseline) and the per-job overhead
   (T_pilots - T_xargs) x slots / N.
2. HTCondor (when a pool from `.ci/setup-htcondor.sh` answers): M trivial jobs (default 200) through pilots
   submitted by the site director to the pool, against `condor_submit` of the same M payloads as M batch jobs.
   Value: seconds, ratio = ours / condor_submit (goal <= 1.0: pilots that run several jobs beat one batch job
   per payload).

Usage: `python bench/wms_pilots.py [N] [M]` (M = 0 skips HTCondor). Prints JSON lines.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
M = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def emit(name: str, value: float, unit: str, baseline: str, baseline_value: float, **extra: object) -> None:
    print(json.dumps({"bench": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
                      "baseline_value": round(baseline_value, 3), "ratio": round(value / baseline_value, 3), **extra}),
          flush=True)


class Central:
    """A central server (auth, config, wms) on loopback in this process, with the optimizer in a thread."""

    def __init__(self, home: Path) -> None:
        import uvicorn

        from junodcs.auth.logic import TokenService
        from junodcs.core.gridconfig import example_grid_path, load_grid_config
        from junodcs.db.engine import create_engine
        from junodcs.db.migrate import upgrade
        from junodcs.server.app import ServerOptions, create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.engine = create_engine(f"sqlite:///{home / 'central.db'}")
        upgrade(self.engine)
        self.app = create_app(load_grid_config(example_grid_path()), self.engine, ServerOptions(
            public_url=self.url, systems=("auth", "config", "wms")))
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off"))
        threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)
        s = self.app.state
        row, secret = TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry).create_client(
            owner="pilot", group="juno_pilot", scopes=None)
        self.client_id, self.secret = row.client_id, secret

    def user(self) -> object:
        from junodcs.auth.scope_policy import policy_scopes
        from junodcs.wms.client import WMSClient

        registry = self.app.state.registry
        membership = registry.membership("alice")
        token, _ = self.app.state.token_issuer.issue_access_token(
            username="alice", group=membership.group, scopes=policy_scopes(registry.vo, "alice", membership.properties))
        return WMSClient(self.url, token=token)

    def submit_waiting(self, count: int, site: str) -> list[int]:
        from junodcs.wms.logic import wms_for_state
        from junodcs.wms.optimizers import Optimizer

        ids = self.user().submit([{"Executable": "/bin/true", "Parameters": count, "Arguments": "%s",
                                   "Site": site, "CPUTime": 300}])
        optimizer = Optimizer(wms_for_state(self.app.state))
        while optimizer.run_once(limit=20_000):
            pass
        return ids

    def wait_done(self, ids: list[int], timeout: float) -> float:
        from sqlalchemy import func, select

        from junodcs.wms import db

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                left = conn.execute(select(func.count()).select_from(db.jobs).where(
                    db.jobs.c.id.in_(ids), db.jobs.c.status.not_in(("Done", "Failed")))).scalar_one()
                failed = conn.execute(select(func.count()).select_from(db.jobs).where(
                    db.jobs.c.id.in_(ids), db.jobs.c.status == "Failed")).scalar_one()
            if not left:
                if failed:
                    raise SystemExit(f"{failed} jobs failed")
                return time.monotonic()
            time.sleep(0.05)
        raise SystemExit(f"jobs not done after {timeout} s")

    def tokens(self) -> object:
        from junodcs.wms.pilot.pilot import TokenSource

        return TokenSource(self.url, client_id=self.client_id, client_secret=self.secret)

    def director(self, backend: object, site: str, ce: str, memory: int) -> object:
        from junodcs.wms.director import DirectorOptions, SiteDirector
        from junodcs.wms.pilot.pilot import PilotWMSClient

        options = DirectorOptions(server_url=self.url, site=site, ce=ce, memory_mb=memory, platform="el9",
                                  lifetime=3600, interval=0.2, pilot_args=["--log-level", "warning"])
        return SiteDirector(PilotWMSClient(self.url, self.tokens()), backend, options, tokens=self.tokens())


def run_pilots(central: Central, director: object, ids: list[int], timeout: float) -> float:
    stop = threading.Event()
    started = time.monotonic()
    thread = threading.Thread(target=director.run, args=(stop,), daemon=True)  # type: ignore[attr-defined]
    thread.start()
    finished = central.wait_done(ids, timeout)
    stop.set()
    thread.join(10)
    return finished - started


def local_bench(home: Path) -> None:
    from junodcs.wms.ce.local import LocalCE

    central = Central(home / "local")
    ids = central.submit_waiting(N, "GRID.CNAF.it")
    backend = LocalCE("ce.cnaf.infn.it", slots=2, memory_mb=3000, workdir=home / "local" / "ce")
    director = central.director(backend, "GRID.CNAF.it", "ce.cnaf.infn.it", 3000)
    try:
        ours = run_pilots(central, director, ids, timeout=max(600, N))
    finally:
        director.drain(30)  # type: ignore[attr-defined]
        backend.close()
    started = time.monotonic()
    subprocess.run(["xargs", "-P2", "-n1", "/bin/true"], input="\n".join(["x"] * N), text=True, check=True)
    baseline = time.monotonic() - started
    emit("local CE 2 slots: trivial jobs through pilots", N / ours * 60, "jobs/min", "xargs -P2, same payloads",
         N / baseline * 60, jobs=N, seconds=round(ours, 2), baseline_seconds=round(baseline, 2),
         pilots=director.submitted)  # type: ignore[attr-defined]
    overhead = (ours - baseline) * 2 / N
    print(json.dumps({"bench": "local CE 2 slots: per-job overhead", "value": round(overhead, 4), "unit": "s/job",
                      "baseline": "goal", "baseline_value": 0.2, "ratio": round(overhead / 0.2, 3)}), flush=True)


def condor_bench(home: Path) -> None:
    from junodcs.wms.ce.htcondor import HTCondorCE, htcondor_module, pool_settings

    try:
        h = htcondor_module()
        h.Collector("127.0.0.1:9618").locate(h.DaemonType.Schedd)
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"bench": "htcondor", "skipped": f"no pool ({exc}); run .ci/setup-htcondor.sh"}))
        return
    settings = pool_settings()
    root, shared = Path(settings["HTCONDOR_ROOT"]), Path(settings["HTCONDOR_SHARED"])
    # baseline first: M batch jobs of the same payload, submitted with condor_submit by the pool's user
    work = shared / f"bench-{os.getpid()}"
    work.mkdir(mode=0o1777)
    work.chmod(0o1777)
    (work / "jobs.sub").write_text(
        "executable = /bin/true\nshould_transfer_files = NO\nrequest_memory = 100\nrequest_cpus = 1\n"
        f"log = {work}/jobs.log\noutput = {work}/out.$(Process)\nerror = {work}/err.$(Process)\n"
        f"initialdir = {work}\nqueue {M}\n")
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"}  # the pool's own config inside
    started = time.monotonic()
    submitted = subprocess.run(["chroot", str(root), "su", "tester", "-c", f"condor_submit {work}/jobs.sub"],
                               capture_output=True, text=True, check=True, env=env)
    cluster = submitted.stdout.strip().rsplit(" ", 1)[-1].rstrip(".")
    subprocess.run(["chroot", str(root), "su", "tester", "-c", f"condor_wait -wait {max(900, M * 5)} {work}/jobs.log"],
                   capture_output=True, text=True, check=True, env=env)
    baseline = time.monotonic() - started
    central = Central(home / "condor")
    ids = central.submit_waiting(M, "GRID.IN2P3.fr")
    backend = HTCondorCE("ce.in2p3.fr", slots=2, memory_mb=500, workdir=home / "condor" / "ce")
    director = central.director(backend, "GRID.IN2P3.fr", "ce.in2p3.fr", 500)
    try:
        ours = run_pilots(central, director, ids, timeout=max(900, M * 5))
    finally:
        director.drain(60)  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    emit("htcondor: trivial jobs through pilots", ours, "s", f"condor_submit of {M} jobs (cluster {cluster})",
         baseline, jobs=M, pilots=director.submitted)  # type: ignore[attr-defined]


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-pilots-") as tmp:
        home = Path(tmp)
        os.environ["DCS_HOME"] = str(home / "home")
        if N:
            local_bench(home)
        if M:
            condor_bench(home)


if __name__ == "__main__":
    main()
