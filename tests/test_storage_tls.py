"""SE over HTTPS with the project CA: client certificates and VOMS proxies (path rule by group property),
tokens of a real central server (discovery + JWKS over HTTPS), and gfal2/davix over davs://."""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pkiutil import PKI, ZHANG_DN, make_pki
from test_storage_support import make_se  # noqa: F401

from junodcs.auth.registry import Registry
from junodcs.auth.x509 import Credential, write_proxy
from junodcs.core.gridconfig import GridConfig, Property
from junodcs.storage.server.auth import Activity, grid_identity_allows
from junodcs.storage.server.config import SEConfig, X509Settings
from junodcs.storage.server.run import BackgroundSE, TLSFiles, free_port

ALICE_DN = "/C=IT/O=JUNO/OU=CNAF/CN=Alice Rossi"
PAYLOAD = os.urandom(2_000_000)
ADLER = f"{zlib.adler32(PAYLOAD) & 0xFFFFFFFF:08x}"


def test_grid_identity_rule() -> None:
    user = frozenset({Property.NORMAL_USER})
    prod = user | {Property.PRODUCTION_MANAGEMENT}

    def may(props: frozenset[Property], activity: Activity, path: str, username: str = "alice") -> bool:
        return grid_identity_allows(vo="juno", username=username, properties=props, activity=activity, path=path)

    assert may(user, Activity.DOWNLOAD, "/juno/raw/f") and may(user, Activity.LIST, "/juno")
    assert not may(user, Activity.DOWNLOAD, "/other/f") and not may(user, Activity.DOWNLOAD, "/junox/f")
    assert may(user, Activity.UPLOAD, "/juno/user/a/alice/f") and may(user, Activity.DELETE, "/juno/user/a/alice")
    assert not may(user, Activity.UPLOAD, "/juno/user/a/alicex/f") and not may(user, Activity.UPLOAD, "/juno/user/a/f")
    assert not may(user, Activity.UPLOAD, "/juno/production/f") and not may(user, Activity.UPDATE_METADATA, "/juno/raw/f")
    assert may(prod, Activity.UPLOAD, "/juno/production/f") and may(prod, Activity.UPDATE_METADATA, "/juno/production/f")
    assert not may(prod, Activity.UPLOAD, "/juno/raw/f")
    # the directories leading to one's area may be created (mkdir -p), not replaced, moved or written
    assert grid_identity_allows(vo="juno", username="alice", properties=user, activity=Activity.MANAGE,
                                path="/juno/user/a", creating=True)
    assert not may(user, Activity.MANAGE, "/juno/user/a") and not may(user, Activity.UPLOAD, "/juno/user/a")
    assert not grid_identity_allows(vo="juno", username="alice", properties=user, activity=Activity.MANAGE,
                                    path="/juno/raw", creating=True)
    for admin in (Property.FILE_CATALOG_ADMINISTRATOR, Property.SERVICE_ADMINISTRATOR):
        assert may(frozenset({admin}), Activity.DELETE, "/juno/raw/f") and may(frozenset({admin}), Activity.MANAGE, "/")
    assert not may(frozenset({Property.PILOT}), Activity.DOWNLOAD, "/juno/raw/f")


# -- a TLS SE with X.509 -----------------------------------------------------------------------------


@pytest.fixture
def pki(grid: GridConfig, tmp_path: Path) -> PKI:
    return make_pki(grid, tmp_path / "pki")


def tls_se(root: Path, pki: PKI, name: str = "TLS-DISK", **options: object) -> BackgroundSE:
    cert, key = pki.ca.host_credential("127.0.0.1", alt_names=("localhost",))
    x509 = X509Settings(ca_dir=pki.ca.trust_dir, vomsdir=pki.voms.vomsdir, registry=Registry(pki.grid))
    config = SEConfig(name=name, root=root, x509=x509, macaroon_secret=secrets.token_bytes(32), marker_interval=0.2,
                      remote_ca_dir=pki.ca.trust_dir, **options)  # type: ignore[arg-type]
    return BackgroundSE(config, tls=TLSFiles(cert=cert, key=key, ca_dir=pki.ca.trust_dir))


@pytest.fixture
def se(tmp_path: Path, pki: PKI) -> Iterator[BackgroundSE]:
    with tls_se(tmp_path / "se1", pki) as server:
        yield server


def pem_file(credential: Credential, path: Path) -> Path:
    return write_proxy(credential, path)  # cert + key + chain in one file, what httpx/curl/gfal read


def client(pki: PKI, credential: Credential | None, tmp_path: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if credential is not None:
        path = pem_file(credential, tmp_path / f"cred-{secrets.token_hex(4)}.pem")
        context.load_cert_chain(str(path))
    return httpx.Client(verify=context, timeout=10)


def test_proxies_and_certificates_on_the_wire(se: BackgroundSE, pki: PKI, tmp_path: Path) -> None:
    zhang = pki.user(ZHANG_DN)
    user_proxy = client(pki, pki.voms_proxy(zhang), tmp_path)  # primary FQAN /juno -> juno_user
    own = f"{se.url}/juno/user/z/zhangxm/f"
    assert user_proxy.put(own, content=b"mine").status_code == 201
    assert user_proxy.get(own).content == b"mine"
    refused = user_proxy.put(f"{se.url}/juno/production/f", content=b"x")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    prod_proxy = client(pki, pki.voms_proxy(zhang, "/juno/Role=production"), tmp_path)
    assert prod_proxy.put(f"{se.url}/juno/production/f", content=b"p").status_code == 201
    assert prod_proxy.put(f"{se.url}/juno/raw/f", content=b"r").status_code == 403
    admin_proxy = client(pki, pki.voms_proxy(zhang, "/juno/Role=admin"), tmp_path)
    assert admin_proxy.put(f"{se.url}/juno/raw/f", content=b"r").status_code == 201
    # a plain certificate (no proxy, no VOMS): the user's default group
    alice = client(pki, pki.user(ALICE_DN), tmp_path)
    assert alice.get(f"{se.url}/juno/raw/f").content == b"r"
    assert alice.put(f"{se.url}/juno/user/a/alice/g", content=b"a").status_code == 201
    assert alice.delete(f"{se.url}/juno/raw/f").status_code == 403
    # the SE issues macaroons to certificate holders, limited to what they may do (gfal2 asks for them)
    answer = alice.post(f"{se.url}/juno/user/a/alice/g", headers={"Content-Type": "application/macaroon-request"},
                        json={"caveats": ["activity:DOWNLOAD,UPLOAD"], "validity": "PT10M"})
    assert answer.status_code == 200, answer.text
    anonymous = client(pki, None, tmp_path)
    assert anonymous.get(f"{se.url}/juno/user/a/alice/g",
                         headers={"Authorization": f"Bearer {answer.json()['macaroon']}"}).content == b"a"
    assert anonymous.get(f"{se.url}/juno/raw/f").status_code == 401
    # unknown DN, foreign CA: 401 with the reason, never a silent anonymous
    stranger = client(pki, pki.user("/C=XX/O=Nowhere/CN=Mallory"), tmp_path)
    response = stranger.get(f"{se.url}/juno/raw/f")
    assert response.status_code == 401 and "not a registered member" in response.json()["detail"]
    other = make_pki(pki.grid, tmp_path / "other-pki")
    forged = client(pki, other.user(ZHANG_DN), tmp_path)
    assert forged.get(f"{se.url}/juno/raw/f").status_code == 401


# -- tokens of a real central server ---------------------------------------------------------------


@pytest.fixture
def central(grid: GridConfig, pki: PKI, tmp_path: Path) -> Iterator[tuple[object, str]]:
    """The central server (token issuer) on loopback HTTPS with a host certificate of the project CA."""
    import uvicorn

    from authutil import bound_socket, make_app
    from junodcs.db.engine import create_engine

    cert, key = pki.ca.host_credential("127.0.0.1", alt_names=("localhost",))
    sock, plain = bound_socket()
    url = plain.replace("http://", "https://")
    engine = create_engine(f"sqlite:///{tmp_path / 'central.db'}")
    app = make_app(grid, engine, url=url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           ssl_certfile=str(cert), ssl_keyfile=str(key)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "central server did not start"
        time.sleep(0.05)
    try:
        yield app, url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


def test_tokens_of_a_real_central_server(central: tuple[object, str], pki: PKI, tmp_path: Path) -> None:
    from authutil import full_token
    from junodcs.auth.tokens import TokenVerifier

    app, url = central
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    verifier = TokenVerifier((), None, (url,), verify_tls=context)
    # central tokens carry VO-relative scopes (`storage.read:/`): the SE's scope base is /juno (the default)
    with tls_se(tmp_path / "se", pki, verify_token=verifier.verify) as se:
        http = client(pki, None, tmp_path)
        alice = {"Authorization": "Bearer " + full_token(app, "alice")}  # type: ignore[arg-type]
        answer = http.put(f"{se.url}/juno/user/a/alice/t", content=b"tok", headers=alice)
        assert answer.status_code == 201, answer.text
        assert http.get(f"{se.url}/juno/user/a/alice/t", headers=alice).content == b"tok"
        assert http.put(f"{se.url}/juno/raw/t", content=b"x", headers=alice).status_code == 403
        prod = {"Authorization": "Bearer " + full_token(app, "zhangxm", "juno_production")}  # type: ignore[arg-type]
        assert http.put(f"{se.url}/juno/production/t", content=b"p", headers=prod).status_code == 201
        forged = app.state.token_issuer.access_claims(username="alice", group="juno_user",  # type: ignore[attr-defined]
                                                      scopes=("storage.modify:/",))
        forged["iss"] = "https://127.0.0.1:1"
        bad = {"Authorization": "Bearer " + app.state.token_issuer.sign(forged)}  # type: ignore[attr-defined]
        assert http.put(f"{se.url}/juno/raw/t", content=b"x", headers=bad).status_code == 401


def test_dcs_se_serve_with_new_flags(central: tuple[object, str], pki: PKI, grid: GridConfig,
                                     tmp_path: Path) -> None:
    """`dcs se serve --tls --trust-issuer URL --ca-file F --grid G --vomsdir V --tape ...` as a process."""
    from authutil import full_token
    from junodcs.core.gridconfig import example_grid_path

    app, url = central
    cert, key = pki.ca.host_credential("127.0.0.1", alt_names=("localhost",))
    port = free_port()
    se_url = f"https://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "junodcs", "se", "serve", "--name", "CLI-TAPE", "--root", str(tmp_path / "root"),
         "--port", str(port), "--vo-path", "/juno", "--tls", "--cert", str(cert), "--key", str(key),
         "--ca-dir", str(pki.ca.trust_dir), "--ca-file", str(pki.ca.cert_path), "--trust-issuer", url,
         "--grid", str(example_grid_path()), "--vomsdir", str(pki.voms.vomsdir), "--tape",
         "--flush-delay", "0", "--evict-delay", "0", "--mount-delay", "0", "--stage-delay", "0",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "SSL_CERT_FILE": "/nonexistent"})
    try:
        http = client(pki, None, tmp_path)
        deadline = time.monotonic() + 30
        while True:
            try:
                if http.get(f"{se_url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "SE did not start"
            time.sleep(0.1)
        token = {"Authorization": "Bearer " + full_token(app, "zhangxm", "juno_admin")}  # type: ignore[arg-type]
        assert http.put(f"{se_url}/juno/raw/c", content=b"cli", headers=token).status_code == 201
        info = http.post(f"{se_url}/api/v1/archiveinfo", json={"paths": ["/juno/raw/c"]}, headers=token).json()
        assert info == [{"path": "/juno/raw/c", "locality": "TAPE"}]
        proxy = client(pki, pki.voms_proxy(pki.user(ZHANG_DN), "/juno/Role=production"), tmp_path)
        assert proxy.get(f"{se_url}/juno/raw/c").status_code == 503  # on tape: stage first
        assert proxy.post(f"{se_url}/api/v1/stage", json={"files": [{"path": "/juno/raw/c"}]}).status_code == 403
        # storage.stage:/ comes with administrator (and production) groups, not with plain members
        member = {"Authorization": "Bearer " + full_token(app, "alice", "juno_user")}  # type: ignore[arg-type]
        assert http.post(f"{se_url}/api/v1/stage", json={"files": [{"path": "/juno/raw/c"}]},
                         headers=member).status_code == 403
        assert http.post(f"{se_url}/api/v1/stage", json={"files": [{"path": "/juno/raw/c"}]},
                         headers=token).status_code == 201
        admin = client(pki, pki.voms_proxy(pki.user(ZHANG_DN), "/juno/Role=admin"), tmp_path)
        staged = admin.post(f"{se_url}/api/v1/stage/", json={"files": [{"path": "/juno/raw/c"}]})
        assert staged.status_code == 201
        time.sleep(0.1)
        assert proxy.get(f"{se_url}/juno/raw/c").content == b"cli"
    finally:
        process.terminate()
        process.wait(10)


# -- gfal2 / davix over davs:// --------------------------------------------------------------------


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (.ci/run installs davix and gfal2)")


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3", **env})
    assert result.returncode == 0, f"{' '.join(args[:3])}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.interop
def test_gfal_and_davix_over_davs(se: BackgroundSE, pki: PKI, tmp_path: Path) -> None:
    need("gfal-copy")
    need("davix-get")
    local = tmp_path / "f.bin"
    local.write_bytes(PAYLOAD)
    davs = se.url.replace("https://", "davs://")
    trust = {"X509_CERT_DIR": str(pki.ca.trust_dir)}
    # X.509: a VOMS proxy is the client certificate; the path rule decides
    proxy = pem_file(pki.voms_proxy(pki.user(ZHANG_DN)), tmp_path / "x509up")
    with_proxy = {**trust, "X509_USER_PROXY": str(proxy)}
    area = f"{davs}/juno/user/z/zhangxm"
    # the proxy itself on every request (by default gfal2 trades it for a macaroon of the SE's, below)
    direct = ["-D", "HTTP PLUGIN:RETRIEVE_BEARER_TOKEN=false"]
    run(["gfal-mkdir", *direct, "-p", f"{area}/gfal"], with_proxy)
    run(["gfal-copy", *direct, "-f", "-K", "ADLER32", f"file://{local}", f"{area}/gfal/f.bin"], with_proxy)
    assert (se.config.root / "juno/user/z/zhangxm/gfal/f.bin").read_bytes() == PAYLOAD
    # default gfal2: a macaroon requested with the proxy (POST application/macaroon-request), then used
    run(["gfal-copy", "-f", "-K", "ADLER32", f"file://{local}", f"{area}/gfal/g.bin"], with_proxy)
    assert (se.config.root / "juno/user/z/zhangxm/gfal/g.bin").read_bytes() == PAYLOAD
    assert run(["gfal-sum", f"{area}/gfal/f.bin", "ADLER32"], with_proxy).split()[-1] == ADLER
    assert "f.bin" in run(["gfal-ls", f"{area}/gfal"], with_proxy)
    refused = subprocess.run(["gfal-copy", "-f", f"file://{local}", f"{davs}/juno/production/f.bin"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3", **with_proxy})
    assert refused.returncode != 0 and not (se.config.root / "juno/production/f.bin").exists()
    # davix with --capath and the proxy as client certificate
    run(["davix-get", "--capath", str(pki.ca.trust_dir), "--cert", str(proxy), "--key", str(proxy),
         f"{se.url}/juno/user/z/zhangxm/gfal/f.bin", str(tmp_path / "davix.bin")], {})
    assert (tmp_path / "davix.bin").read_bytes() == PAYLOAD


@pytest.mark.interop
def test_gfal_copy_over_davs_with_bearer_token(pki: PKI, tmp_path: Path) -> None:
    need("gfal-copy")
    from test_storage_support import LocalIssuer

    issuer = LocalIssuer()
    token = issuer.token("storage.read:/ storage.modify:/", lifetime=600)
    local = tmp_path / "f.bin"
    local.write_bytes(PAYLOAD)
    env = {"X509_CERT_DIR": str(pki.ca.trust_dir), "BEARER_TOKEN": token}
    with tls_se(tmp_path / "a", pki, name="TLS-A", verify_token=issuer.verify) as a, \
            tls_se(tmp_path / "b", pki, name="TLS-B", verify_token=issuer.verify) as b:
        src = a.url.replace("https://", "davs://") + "/juno/tok/f.bin"
        run(["gfal-copy", "-f", "-K", "ADLER32", f"file://{local}", src], env)
        for mode in ("pull", "push"):
            dst = b.url.replace("https://", "davs://") + f"/juno/tok/{mode}.bin"
            run(["gfal-copy", "-f", "--copy-mode", mode, "-K", "ADLER32", src, dst], env)
            assert (b.config.root / f"juno/tok/{mode}.bin").read_bytes() == PAYLOAD, mode
        run(["davix-get", "--capath", str(pki.ca.trust_dir), "-H", f"Authorization: Bearer {token}",
             a.url + "/juno/tok/f.bin", str(tmp_path / "back.bin")], {})
        assert (tmp_path / "back.bin").read_bytes() == PAYLOAD
        # without the CA, the TLS handshake fails: the trust directory is really used
        failed = subprocess.run(["gfal-ls", src], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3", "BEARER_TOKEN": token,
                                     "X509_CERT_DIR": str(tmp_path)})
        assert failed.returncode != 0
