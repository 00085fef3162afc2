"""X509/VOMS against the real VOMS clients and over real TLS.

(a) `voms-proxy-info2 -all` reads the VO and FQANs of a `dcs proxy init` proxy;
(b) a `voms-proxy-fake` proxy (VOMS host certificate from our CA, trusted through the .lsc) validates
    and maps to the registry group;
(c) the real server over HTTPS accepts both proxies as client certificates and refuses bad ones with a
    401 naming the reason.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pkiutil import ZHANG_DN, broken_chain_proxy, pems_of_file
from typer.testing import CliRunner

from junodcs.auth import voms as V
from junodcs.auth import x509 as X
from junodcs.auth.authenticate import identity_from_x509
from junodcs.auth.proxy import ProxyValidator
from junodcs.auth.registry import Registry
from junodcs.core.gridconfig import GridConfig

PRODUCTION = "/juno/Role=production/Capability=NULL"
MEMBER = "/juno/Role=NULL/Capability=NULL"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package voms-clients; .ci/run installs it)")
    return path


def dcs(*args: str) -> str:
    from junodcs.cli.main import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class LocalGrid:
    ca: X.CertificateAuthority
    voms: V.VOMSServer
    user_cert: Path
    user_key: Path


@pytest.fixture
def local_grid(dcs_home: Path, grid: GridConfig) -> LocalGrid:
    """`dcs ca init` + `dcs cert issue --user zhangxm`, as a user of a local grid runs them."""
    dcs("ca", "init")
    out = dcs_home / "zhangxm"
    dcs("cert", "issue", "--user", "zhangxm", "--out", str(out))
    ca = X.CertificateAuthority.load()
    return LocalGrid(ca=ca, voms=V.VOMSServer.ensure(ca, grid), user_cert=out / "usercert.pem",
                     user_key=out / "userkey.pem")


def dcs_proxy(grid_: LocalGrid, path: Path, voms: str = "juno:/juno/Role=production") -> Path:
    dcs("proxy", "init", "--voms", voms, "--cert", str(grid_.user_cert), "--key", str(grid_.user_key),
        "--out", str(path), "--valid", "02:00")
    return path


def fake_proxy(grid_: LocalGrid, path: Path, fqan: str = PRODUCTION, *, cert: Path | None = None,
               key: Path | None = None) -> Path:
    tool = need("voms-proxy-fake")
    voms_dir = grid_.voms.vomsdir.parent / "voms"
    result = subprocess.run(
        [tool, "-cert", str(cert or grid_.user_cert), "-key", str(key or grid_.user_key),
         "-certdir", str(grid_.ca.trust_dir), "-hostcert", str(voms_dir / "hostcert.pem"),
         "-hostkey", str(voms_dir / "hostkey.pem"), "-voms", "juno", "-uri", f"{grid_.voms.host}:{grid_.voms.port}",
         "-fqan", fqan, "-rfc", "-hours", "2", "-out", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return path


# -- (a) voms-proxy-info reads our proxy -----------------------------------------------------------------


@pytest.mark.interop
def test_voms_proxy_info_reads_dcs_proxy(local_grid: LocalGrid, tmp_path: Path) -> None:
    tool = need("voms-proxy-info2")
    proxy = dcs_proxy(local_grid, tmp_path / "x509up")
    env = {**os.environ, "X509_CERT_DIR": str(local_grid.ca.trust_dir), "X509_VOMS_DIR": str(local_grid.voms.vomsdir)}
    result = subprocess.run([tool, "-file", str(proxy), "-all"], capture_output=True, text=True, env=env,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split(":", 1) for line in result.stdout.splitlines() if ":" in line]
    fields = [(k.strip(), v.strip()) for k, v in lines]
    assert ("identity", ZHANG_DN) in fields
    assert ("type", "RFC compliant proxy") in fields
    assert ("VO", "juno") in fields
    assert [v for k, v in fields if k == "attribute"] == [PRODUCTION, MEMBER]
    assert ("issuer", local_grid.voms.dn) in fields
    assert ("uri", f"{local_grid.voms.host}:{local_grid.voms.port}") in fields
    ours = dcs("proxy", "info", "--file", str(proxy), "--json")
    assert '"/juno/Role=production/Capability=NULL"' in ours


# -- (b) we read voms-proxy-fake's proxy --------------------------------------------------------------------


@pytest.mark.interop
def test_voms_proxy_fake_validates_and_maps(local_grid: LocalGrid, tmp_path: Path, grid: GridConfig) -> None:
    proxy = fake_proxy(local_grid, tmp_path / "fake.pem")
    validator = ProxyValidator(ca_dir=local_grid.ca.trust_dir, vomsdir=local_grid.voms.vomsdir, vo="juno")
    credential = validator.validate(pems_of_file(proxy))
    assert credential.dn == ZHANG_DN and credential.vo == "juno" and credential.fqans == (PRODUCTION,)
    identity = identity_from_x509(credential, Registry(grid))
    assert identity.username == "zhangxm" and identity.group == "juno_production"
    # The .lsc is what makes it trusted.
    local_grid.voms.lsc_path.write_text(f"/C=CN/O=JUNO/OU=VOMS/CN=somebody else\n{local_grid.ca.dn}\n")
    fresh = ProxyValidator(ca_dir=local_grid.ca.trust_dir, vomsdir=local_grid.voms.vomsdir, vo="juno")
    with pytest.raises(Exception) as error:
        fresh.validate(pems_of_file(proxy))
    assert getattr(error.value, "code", None) == "voms-untrusted"


# -- (c) the server over TLS -------------------------------------------------------------------------------


@dataclass
class RunningServer:
    url: str
    ca_file: Path

    def get(self, proxy: Path | None, path: str = "/api/v1/config/sites") -> httpx.Response:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if proxy is not None:
            context.load_cert_chain(str(proxy))
        return httpx.get(self.url + path, verify=context, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tls_server(local_grid: LocalGrid, grid: GridConfig, dcs_home: Path) -> Iterator[RunningServer]:
    import uvicorn

    from junodcs.db.engine import create_engine
    from junodcs.server.app import ServerOptions, create_app
    from junodcs.server.tls import apply_tls, default_tls_files

    tls = default_tls_files(host="127.0.0.1")
    assert tls.ca_dir == local_grid.ca.trust_dir and tls.vomsdir == local_grid.voms.vomsdir
    port = free_port()
    options = ServerOptions(public_url=f"https://127.0.0.1:{port}", tls=True, extra_state={"tls_files": tls})
    engine = create_engine(f"sqlite:///{dcs_home / 'server.db'}")
    app = create_app(grid, engine, options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    apply_tls(config, tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield RunningServer(url=f"https://127.0.0.1:{port}", ca_file=local_grid.ca.cert_path)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.dispose()


def refusal(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["code"])


@pytest.mark.interop
def test_server_accepts_dcs_and_fake_proxies(tls_server: RunningServer, local_grid: LocalGrid, tmp_path: Path) -> None:
    need("voms-proxy-fake")
    for proxy in (dcs_proxy(local_grid, tmp_path / "dcs.pem"), fake_proxy(local_grid, tmp_path / "fake.pem")):
        response = tls_server.get(proxy)
        assert response.status_code == 200, response.text
        assert "GRID.IHEP.cn" in [site["name"] for site in response.json()]
    # Without a certificate the TLS handshake still succeeds (token clients), and the API asks for credentials.
    assert refusal(tls_server.get(None)) == "unauthenticated"


@pytest.mark.interop
def test_server_refuses_bad_proxies_with_the_reason(tls_server: RunningServer, local_grid: LocalGrid,
                                                    tmp_path: Path) -> None:
    user = X.load_credential(local_grid.user_cert, local_grid.user_key)
    fqans = (PRODUCTION,)
    voms = local_grid.voms

    def proxy_file(name: str, credential: X.Credential) -> Path:
        return X.write_proxy(credential, tmp_path / name)

    broken = proxy_file("broken.pem", broken_chain_proxy(user))
    assert refusal(tls_server.get(broken)) == "broken-chain"

    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    expired_ac = V.build_ac(holder=user.eec, fqans=fqans, vo="juno", host=voms.host, port=voms.port,
                            signer=voms.credential, lifetime=dt.timedelta(hours=-2), not_before=past)
    expired = proxy_file("expired-ac.pem", X.create_proxy(user, voms_acs=(expired_ac,)))
    assert refusal(tls_server.get(expired)) == "voms-expired"

    impostor = local_grid.ca.issue_host(voms.host, dn="/C=CN/O=JUNO/OU=Impostor/CN=voms.ihep.ac.cn")
    forged_ac = V.build_ac(holder=user.eec, fqans=fqans, vo="juno", host=voms.host, port=voms.port,
                           signer=impostor, lifetime=dt.timedelta(hours=1))
    forged = proxy_file("forged-ac.pem", X.create_proxy(user, voms_acs=(forged_ac,)))
    response = tls_server.get(forged)
    assert refusal(response) == "voms-untrusted" and "Impostor" in response.json()["detail"]

    dune_ac = V.build_ac(holder=user.eec, fqans=("/dune/Role=NULL/Capability=NULL",), vo="dune", host=voms.host,
                         port=voms.port, signer=voms.credential, lifetime=dt.timedelta(hours=1))
    dune = proxy_file("dune.pem", X.create_proxy(user, voms_acs=(dune_ac,)))
    assert refusal(tls_server.get(dune)) == "wrong-vo"

    stranger = local_grid.ca.issue_user("/C=CN/O=JUNO/CN=Nobody Known")
    unknown = proxy_file("unknown.pem", X.create_proxy(stranger))
    response = tls_server.get(unknown)
    assert refusal(response) == "unknown-user" and "Nobody Known" in response.json()["detail"]
