"""gfal2 and davix, the clients FTS and users run, against our SEs (pull, push, streamed, checksums)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from test_storage_support import LocalIssuer, issuer, se, se2  # noqa: F401

from junodcs.storage.server.run import BackgroundSE

pytestmark = pytest.mark.interop

PAYLOAD = os.urandom(3_000_000)
ADLER = f"{zlib.adler32(PAYLOAD) & 0xFFFFFFFF:08x}"


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (Debian: davix gfal2 gfal2-plugin-http gfal2-plugin-file "
                    "python3-gfal2 gfal2-util-scripts python3-gfal2-util; .ci/run installs them)")


def run(args: list[str], token: str | None = None, timeout: float = 60) -> str:
    env = {**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3"}
    if token:
        env["BEARER_TOKEN"] = token
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(args[:2])}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def token(issuer: LocalIssuer) -> str:
    return issuer.token("storage.read:/ storage.modify:/", lifetime=600)


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    return path


def test_gfal_commands(se: BackgroundSE, se2: BackgroundSE, token: str, local_file: Path, tmp_path: Path) -> None:
    need("gfal-copy")
    base = f"{se.url}/juno/gfal"
    run(["gfal-mkdir", "-p", f"{base}/sub/dir"], token)
    assert (se.config.root / "juno/gfal/sub/dir").is_dir()
    run(["gfal-copy", "-f", "-K", "ADLER32", f"file://{local_file}", f"{base}/f.bin"], token)
    assert (se.config.root / "juno/gfal/f.bin").read_bytes() == PAYLOAD
    listing = run(["gfal-ls", "-l", base], token)
    assert "f.bin" in listing and "3000000" in listing and "sub" in listing
    stat = run(["gfal-stat", f"{base}/f.bin"], token)
    assert "Size: 3000000" in stat and "regular file" in stat
    assert run(["gfal-sum", f"{base}/f.bin", "ADLER32"], token).split()[-1] == ADLER
    for mode in ("pull", "push", "streamed"):
        run(["gfal-copy", "-f", "--copy-mode", mode, "-K", "ADLER32", f"{base}/f.bin",
             f"{se2.url}/juno/gfal/{mode}.bin"], token)
        assert (se2.config.root / f"juno/gfal/{mode}.bin").read_bytes() == PAYLOAD, mode
    run(["gfal-copy", "-f", "-K", "ADLER32", f"{base}/f.bin", f"file://{tmp_path}/back.bin"], token)
    assert (tmp_path / "back.bin").read_bytes() == PAYLOAD
    run(["gfal-rm", f"{base}/f.bin"], token)
    assert not (se.config.root / "juno/gfal/f.bin").exists()


def test_gfal_copy_refused_without_rights(se: BackgroundSE, issuer: LocalIssuer, local_file: Path) -> None:
    need("gfal-copy")
    env = {**os.environ, "GFAL_PYTHONBIN": "/usr/bin/python3", "BEARER_TOKEN": issuer.token("storage.read:/")}
    result = subprocess.run(["gfal-copy", "-f", f"file://{local_file}", f"{se.url}/juno/ro/f.bin"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert not (se.config.root / "juno/ro/f.bin").exists()


def test_gfal2_python_api_with_bearer_tokens(se: BackgroundSE, se2: BackgroundSE, token: str,
                                             local_file: Path) -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gfal2"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("python3-gfal2 not installed (.ci/run installs it)")
    script = f"""
import gfal2
ctx = gfal2.creat_context()
for prefix in ({se.url!r}, {se2.url!r}):
    ctx.cred_set(prefix, gfal2.cred_new("BEARER", {token!r}))
params = ctx.transfer_parameters()
params.overwrite = True
params.checksum_check = True
params.set_user_defined_checksum("ADLER32", {ADLER!r})
ctx.filecopy(params, "file://{local_file}", {se.url!r} + "/juno/api/f.bin")
ctx.set_opt_string("HTTP PLUGIN", "DEFAULT_COPY_MODE", "3rd pull")
ctx.set_opt_boolean("HTTP PLUGIN", "ENABLE_FALLBACK_TPC_COPY", False)
ctx.filecopy(params, {se.url!r} + "/juno/api/f.bin", {se2.url!r} + "/juno/api/pulled.bin")
print(ctx.checksum({se2.url!r} + "/juno/api/pulled.bin", "ADLER32"))
"""
    result = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == ADLER
    assert (se2.config.root / "juno/api/pulled.bin").read_bytes() == PAYLOAD


def test_davix_commands(se: BackgroundSE, se2: BackgroundSE, token: str, local_file: Path, tmp_path: Path) -> None:
    need("davix-put")
    auth = ["-H", f"Authorization: Bearer {token}"]
    tpc = [*auth, "-H", f"TransferHeaderAuthorization: Bearer {token}", "-H", "Credential: none"]
    run(["davix-put", *auth, str(local_file), f"{se.url}/juno/davix/f.bin"])
    assert (se.config.root / "juno/davix/f.bin").read_bytes() == PAYLOAD
    run(["davix-get", *auth, f"{se.url}/juno/davix/f.bin", str(tmp_path / "got.bin")])
    assert (tmp_path / "got.bin").read_bytes() == PAYLOAD
    assert "f.bin" in run(["davix-ls", "-l", *auth, f"{se.url}/juno/davix"])
    run(["davix-cp", *tpc, f"{se.url}/juno/davix/f.bin", f"{se2.url}/juno/davix/pushed.bin"])
    run(["davix-cp", "--copy-mode", "pull", *tpc, f"{se.url}/juno/davix/f.bin", f"{se2.url}/juno/davix/pulled.bin"])
    for name in ("pushed.bin", "pulled.bin"):
        assert (se2.config.root / "juno/davix" / name).read_bytes() == PAYLOAD
