"""HTTP-TPC between our SE and a real XRootD server (XrdHttp + libXrdHttpTPC, TLS), both directions, pull and
push, adler32 agreeing on both ends (reference/components.md, "Storage clients and a foreign SE")."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pkiutil import PKI, make_pki
from test_storage_support import LocalIssuer
from test_storage_tls import tls_se

from junodcs.core.gridconfig import GridConfig
from junodcs.storage.server.run import free_port

pytestmark = pytest.mark.interop

PAYLOAD = os.urandom(6_000_000)
ADLER = f"{zlib.adler32(PAYLOAD) & 0xFFFFFFFF:08x}"


class XRootD:
    """One xrootd as `nobody` on 127.0.0.1 ports (it binds all interfaces: we only ever use 127.0.0.1)."""

    def __init__(self, pki: PKI) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xrootd-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "data" / "juno").mkdir(parents=True)
        shutil.copytree(pki.ca.trust_dir, self.dir / "certificates")
        cert, key = pki.ca.host_credential("127.0.0.1", alt_names=("localhost",))
        shutil.copy(cert, self.dir / "host.pem")
        shutil.copy(key, self.dir / "host.key")
        self.port, root_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        (self.dir / "xrootd.cfg").write_text(
            f"all.export /juno\noss.localroot {self.dir}/data\nxrd.port {root_port}\n"
            f"xrd.protocol XrdHttp:{self.port} libXrdHttp.so\nhttp.exthandler xrdtpc libXrdHttpTPC.so\n"
            f"xrootd.chksum adler32\nxrd.tls {self.dir}/host.pem {self.dir}/host.key\n"
            f"xrd.tlsca certdir {self.dir}/certificates\n")
        subprocess.run(["chown", "-R", "nobody", str(self.dir)], check=True)
        os.chmod(self.dir / "host.key", 0o600)
        self.proc = subprocess.Popen(
            ["runuser", "-u", "nobody", "--", "xrootd", "-c", str(self.dir / "xrootd.cfg"),
             "-l", str(self.dir / "xrootd.log"), "-n", "junotest"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)

    def wait(self, http: httpx.Client) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                http.get(f"{self.url}/juno/")
                return
            except httpx.HTTPError:
                assert self.proc.poll() is None, self.log()
                assert time.monotonic() < deadline, "xrootd did not come up: " + self.log()
                time.sleep(0.1)

    def log(self) -> str:
        logs = list(self.dir.glob("**/xrootd.log*"))
        return logs[0].read_text()[-2000:] if logs else "(no log)"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pki(grid: GridConfig, tmp_path: Path) -> PKI:
    return make_pki(grid, tmp_path / "pki")


@pytest.fixture
def xrootd(pki: PKI) -> Iterator[XRootD]:
    if shutil.which("xrootd") is None or shutil.which("runuser") is None:
        pytest.skip("xrootd not installed (Debian: xrootd-server xrootd-client xrootd-client-http-plugins; "
                    ".ci/run installs them)")
    server = XRootD(pki)
    try:
        yield server
    finally:
        server.stop()


def copy(http: httpx.Client, url: str, headers: dict[str, str]) -> str:
    """Send a COPY, read the marker stream to its end, return the final line."""
    with http.stream("COPY", url, headers={"Credential": "none", **headers}, timeout=60) as response:
        body = response.read().decode()
    assert response.status_code in (201, 202), f"{response.status_code}: {body}"
    lines = [line for line in body.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def adler_of(http: httpx.Client, url: str, headers: dict[str, str] | None = None) -> str:
    response = http.head(url, headers={"Want-Digest": "adler32", **(headers or {})})
    assert response.status_code == 200, f"HEAD {url}: {response.status_code}"
    digest = response.headers.get("Digest", "")
    assert digest.lower().startswith("adler32="), digest
    return digest.split("=", 1)[1].lower().zfill(8)


def test_http_tpc_both_directions_with_xrootd(xrootd: XRootD, pki: PKI, tmp_path: Path) -> None:
    issuer = LocalIssuer()
    token = issuer.token("storage.read:/ storage.modify:/", lifetime=600)
    bearer = f"Bearer {token}"
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca.cert_path)), timeout=30)
    xrootd.wait(http)
    with tls_se(tmp_path / "se", pki, name="OURS", verify_token=issuer.verify) as se:  # type: BackgroundSE
        ours = f"{se.url}/juno/x/src.bin"
        assert http.put(ours, content=PAYLOAD, headers={"Authorization": bearer}).status_code == 201
        # XRootD pulls from us (our token forwarded through TransferHeaderAuthorization)
        final = copy(http, f"{xrootd.url}/juno/pulled.bin", {"Source": ours, "TransferHeaderAuthorization": bearer})
        assert final.startswith("success"), final + xrootd.log()
        assert (xrootd.dir / "data/juno/pulled.bin").read_bytes() == PAYLOAD
        assert adler_of(http, f"{xrootd.url}/juno/pulled.bin") == ADLER
        # we pull from XRootD (our checksum verification needs its adler32 Digest)
        final = copy(http, f"{se.url}/juno/x/from-xrootd.bin", {"Authorization": bearer,
                                                                "Source": f"{xrootd.url}/juno/pulled.bin"})
        assert final.startswith("success"), final
        assert (se.config.root / "juno/x/from-xrootd.bin").read_bytes() == PAYLOAD
        assert adler_of(http, f"{se.url}/juno/x/from-xrootd.bin", {"Authorization": bearer}) == ADLER
        # we push to XRootD
        final = copy(http, ours, {"Authorization": bearer, "Destination": f"{xrootd.url}/juno/pushed.bin"})
        assert final.startswith("success"), final
        assert adler_of(http, f"{xrootd.url}/juno/pushed.bin") == ADLER
        # XRootD pushes to us
        final = copy(http, f"{xrootd.url}/juno/pushed.bin", {"Destination": f"{se.url}/juno/x/pushed-by-xrootd.bin",
                                                              "TransferHeaderAuthorization": bearer})
        assert final.startswith("success"), final + xrootd.log()
        assert (se.config.root / "juno/x/pushed-by-xrootd.bin").read_bytes() == PAYLOAD
        # without our token XRootD's pull is refused by us and nothing is left on our side
        final = copy(http, f"{se.url}/juno/x/never.bin", {"Source": f"{xrootd.url}/juno/missing.bin",
                                                          "Authorization": bearer})
        assert final.startswith("failure") and "404" in final, final
        assert not (se.config.root / "juno/x/never.bin").exists()
        final = copy(http, f"{xrootd.url}/juno/denied.bin", {"Source": ours})
        assert final.startswith("failure") and "401" in final, final
