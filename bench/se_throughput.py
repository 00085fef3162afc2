"""SE data path: GET, PUT and HTTP-TPC pull of 1 GiB on loopback, junodcs SE vs XRootD in the same run.

Client: curl (as in reference/components.md), or davix-put for PUT with `--put-client davix`. XRootD
(if `xrootd` is installed) runs as `nobody` with XrdHttp + the TPC handler and a throw-away TLS CA (its
TPC handler loads only with TLS). Without XRootD the baseline is the junodcs SE's own GET (sendfile).

The runs are interleaved (round 1: ours then XRootD, round 2: XRootD then ours, ...), because this
machine is shared: a batch of our runs followed by a batch of XRootD's once measured PUT at 0.25x when
another job happened to load the machine during our batch only. Besides wall-clock MB/s (best and
median of the rounds), each line gives the CPU seconds the server process(es) spent per GiB, which a busy
neighbour barely changes and which says how much each implementation needs the CPU it has to share.
Prints JSON lines {"bench", "value", "unit", "baseline", "baseline_value", "ratio", ...}; value = best
MB/s. Bounded (~2 min) and cleans up its files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = 1 << 30
RUNS = 3
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from junodcs.storage.server.macaroons import MacaroonAuthority  # noqa: E402
from junodcs.storage.server.run import free_port  # noqa: E402


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "1", url]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "failure" in result.stdout:
        raise RuntimeError(f"{args[:4]} failed: {result.stdout[-300:]} {result.stderr[-300:]}")
    return elapsed


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The server itself: XRootD runs under `runuser`, whose child it is."""
    pid = proc.pid
    for _ in range(3):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return pid
        if comm != "runuser":
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            return pid
        pid = int(children[0])
    return pid


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes and all their threads so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class JunoSE:
    def __init__(self, work: Path, name: str) -> None:
        self.root = work / name
        self.secret = work / f"{name}.secret"
        self.secret.write_bytes(secrets.token_bytes(32))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "junodcs", "se", "serve", "--name", name, "--root", str(self.root),
             "--port", str(self.port), "--macaroon-secret", str(self.secret), "--log-level", "warning"],
            env={**os.environ, "PYTHONPATH": str(SRC), "DCS_HOME": str(work / "home")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{self.url}/healthz")
        self.pid = self.proc.pid
        macaroon, _ = MacaroonAuthority(self.secret.read_bytes(), name).mint(
            subject="bench", caveats=[], validity=__import__("datetime").timedelta(hours=1))
        self.auth = ["-H", f"Authorization: Bearer {macaroon.serialize()}"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class XRootD:
    def __init__(self, work: Path, name: str, ca: object) -> None:
        self.dir = work / name
        (self.dir / "data" / "juno").mkdir(parents=True)
        cred = ca.issue_host("127.0.0.1", alt_names=("localhost",))  # type: ignore[attr-defined]
        (self.dir / "host.pem").write_bytes(_pem(cred)[0])
        (self.dir / "host.key").write_bytes(_pem(cred)[1])
        self.port, root_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "xrootd.cfg").write_text(
            f"all.export /juno\noss.localroot {self.dir}/data\nxrd.port {root_port}\n"
            f"xrd.protocol XrdHttp:{self.port} libXrdHttp.so\nhttp.exthandler xrdtpc libXrdHttpTPC.so\n"
            f"xrootd.chksum adler32\nxrd.tls {self.dir}/host.pem {self.dir}/host.key\n"
            f"xrd.tlsca certdir {ca.trust_dir}\n"  # type: ignore[attr-defined]
        )
        subprocess.run(["chown", "-R", "nobody", str(self.dir)], check=True)
        os.chmod(self.dir / "host.key", 0o600)
        self.proc = subprocess.Popen(["runuser", "-u", "nobody", "--", "xrootd", "-c", str(self.dir / "xrootd.cfg"),
                                      "-l", str(self.dir / "xrootd.log"), "-n", name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        wait_http(f"{self.url}/juno/")
        self.pid = server_pid(self.proc)
        self.auth: list[str] = []
        self.root = self.dir / "data"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _pem(cred: object) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    cert = cred.cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]
    key = cred.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,  # type: ignore[attr-defined]
                                 serialization.NoEncryption())
    return cert, key


Server = JunoSE | XRootD


class Pair:
    """Two servers of one implementation: PUT and GET go to `a`, TPC pulls from `a` into `b`."""

    def __init__(self, name: str, a: Server, b: Server, source: Path, put_client: str) -> None:
        self.name, self.a, self.b, self.source, self.put_client = name, a, b, source, put_client
        self.times: dict[str, list[float]] = {"put": [], "get": [], "tpc_pull": []}
        self.cpu: dict[str, list[float]] = {"put": [], "get": [], "tpc_pull": []}
        self.a_file = f"{a.url}/juno/bench/src.bin"
        self.a_local = a.root / "juno" / "bench" / "src.bin"
        for server in (a, b):
            for path in ("/juno", "/juno/bench"):
                subprocess.run(["curl", "-sf", *server.auth, "-X", "MKCOL", f"{server.url}{path}"],
                               capture_output=True)
        timed(["curl", "-sf", *a.auth, "-T", str(source), self.a_file])

    def _put_args(self, url: str) -> list[str]:
        if self.put_client == "davix":
            headers = ["-H", self.a.auth[1]] if self.a.auth else []
            return ["davix-put", *headers, str(self.source), url]
        return ["curl", "-sf", *self.a.auth, "-T", str(self.source), url]

    def warm(self) -> None:
        """Read the source file into the page cache: on a machine short of memory the file written
        first (ours) is evicted first, and a GET would then measure the disk, not the server."""
        with open(self.a_local, "rb", buffering=0) as handle:
            while handle.read(8 << 20):
                pass

    def _run(self, bench: str, args: list[str], pids: list[int]) -> None:
        before = cpu_seconds(pids)
        self.times[bench].append(timed(args))
        self.cpu[bench].append(cpu_seconds(pids) - before)

    def round(self, i: int) -> None:
        """One PUT, GET and TPC pull; the copies are deleted at once, so the disk holds few GiB files."""
        put_url = f"{self.a.url}/juno/bench/put{i}.bin"
        self._run("put", self._put_args(put_url), [self.a.pid])
        subprocess.run(["curl", "-sf", *self.a.auth, "-X", "DELETE", put_url], capture_output=True)
        self.warm()
        self._run("get", ["curl", "-sf", *self.a.auth, "-o", "/dev/null", self.a_file], [self.a.pid])
        pull_url = f"{self.b.url}/juno/bench/pull{i}.bin"
        self.warm()
        self._run("tpc_pull", ["curl", "-sf", *self.b.auth, "-X", "COPY", "-H", f"Source: {self.a_file}",
                               "-H", "Credential: none",
                               *(["-H", f"TransferHeader{self.a.auth[1]}"] if self.a.auth else []), pull_url],
                  [self.a.pid, self.b.pid])
        subprocess.run(["curl", "-sf", *self.b.auth, "-X", "DELETE", pull_url], capture_output=True)

    def rates(self, bench: str) -> list[float]:
        return [SIZE / t / 1e6 for t in self.times[bench]]


def summary(pair: Pair, bench: str) -> dict[str, object]:
    rates = pair.rates(bench)
    return {"best": round(max(rates), 1), "median": round(statistics.median(rates), 1),
            "runs": [round(r, 1) for r in rates],
            "cpu_s_per_GiB": round(statistics.median(pair.cpu[bench]) * (1 << 30) / SIZE, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--put-client", choices=("curl", "davix"), default="curl")
    args = parser.parse_args()
    if shutil.which("curl") is None or (args.put_client == "davix" and shutil.which("davix-put") is None):
        print(json.dumps({"bench": "se_throughput", "skipped": "curl (or davix-put) not installed"}))
        return
    work = Path(tempfile.mkdtemp(prefix="se-bench-", dir=os.environ.get("DCS_BENCH_DIR")))
    os.chmod(work, 0o755)
    servers: list[Server] = []
    try:
        source = work / "source.bin"
        block = os.urandom(64 << 20)
        with open(source, "wb") as handle:
            for _ in range(SIZE // len(block)):
                handle.write(block)
        os.chmod(source, 0o644)
        a, b = JunoSE(work, "BENCH-A"), JunoSE(work, "BENCH-B")
        servers += [a, b]
        pairs = [Pair("junodcs", a, b, source, args.put_client)]
        if shutil.which("xrootd"):
            from junodcs.auth.x509 import CertificateAuthority

            ca = CertificateAuthority.init(work / "ca", bits=2048)
            subprocess.run(["chmod", "-R", "a+rX", str(work / "ca")], check=True)
            xa, xb = XRootD(work, "xa", ca), XRootD(work, "xb", ca)
            servers += [xa, xb]
            pairs.append(Pair("xrootd", xa, xb, source, args.put_client))
        for i in range(args.runs):
            for pair in pairs if i % 2 == 0 else pairs[::-1]:
                pair.round(i)
        ours = pairs[0]
        for bench in ("put", "get", "tpc_pull"):
            mine = summary(ours, bench)
            if len(pairs) > 1:
                theirs, base_name = summary(pairs[1], bench), f"xrootd_{bench}"
            else:
                theirs, base_name = summary(ours, "get"), "junodcs_se_get"
            line = {"bench": f"se_{bench}_1GiB", "value": mine["best"], "unit": "MB/s", "baseline": base_name,
                    "baseline_value": theirs["best"], "ratio": round(float(mine["best"]) / float(theirs["best"]), 2),
                    "median": mine["median"], "baseline_median": theirs["median"],
                    "median_ratio": round(float(mine["median"]) / float(theirs["median"]), 2),
                    "runs": mine["runs"], "baseline_runs": theirs["runs"],
                    "cpu_s_per_GiB": mine["cpu_s_per_GiB"], "baseline_cpu_s_per_GiB": theirs["cpu_s_per_GiB"]}
            if bench == "put":
                line["client"] = "davix-put" if args.put_client == "davix" else "curl -T"
            print(json.dumps(line), flush=True)
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
