"""`dcs dm` catalog commands against a real server on a loopback port, logged in with client credentials:
`--json` outputs and one-line errors (`error[code]: ...`, exit 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from authutil import bound_socket, make_app, serve
from junodcs.auth.logic import TokenService


@pytest.fixture
def logged_in(grid, sqlite_engine, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    sock, url = bound_socket()
    app = make_app(grid, sqlite_engine, url=url)
    with serve(app, sock):
        s = app.state
        row, secret = TokenService(s.engine, s.token_issuer, s.token_verifier, s.registry).create_client(
            owner="zhangxm", group="juno_admin", scopes=None)
        secret_file = tmp_path / "secret"
        secret_file.write_text(secret + "\n")
        monkeypatch.setenv("DCS_SERVER_URL", url)
        code, _, err = dcs("login", "--client-id", row.client_id, "--client-secret-file", str(secret_file))
        assert code == 0, err
        yield app


def dcs(*args: str) -> tuple[int, str, str]:
    from junodcs.cli.main import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ok_json(*args: str) -> Any:
    code, out, err = dcs(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def fails(*args: str) -> str:
    """The command exits 1 with exactly one `error[code]: ...` line on stderr; returns the code."""
    code, _, err = dcs(*args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error["), (code, err)
    return lines[0][len("error["):lines[0].index("]")]


def test_dm_catalog_commands(logged_in) -> None:  # type: ignore[no-untyped-def]
    app = logged_in
    code, out, err = dcs("dm", "mkdir", "/juno/production/mc/r1")
    assert code == 0 and out.strip() == "/juno/production/mc/r1 created", err
    assert dcs("dm", "mkdir", "/juno/production/mc/r1")[1].strip() == "/juno/production/mc/r1 exists"
    code, out, err = dcs("dm", "meta", "define", "run", "int")
    assert code == 0 and "file field run (int) defined" in out, err
    assert dcs("dm", "meta", "define", "energy", "float", "--dir")[0] == 0
    # files registered through the catalog's bulk API (the CLI reads them back)
    from junodcs.catalog.logic import Catalog

    Catalog(app.state.engine).register([
        {"lfn": f"/juno/production/mc/r1/f{i}.root", "size": 10 + i, "checksum": "1", "metadata": {"run": i}}
        for i in range(5)])

    listing = ok_json("dm", "ls", "/juno/production/mc/r1")
    assert [e["name"] for e in listing] == [f"f{i}.root" for i in range(5)]
    assert all(e["type"] == "file" for e in listing)
    info = ok_json("dm", "stat", "/juno/production/mc/r1/f3.root")
    assert info["size"] == 13 and info["checksum"] == "00000001" and info["checksum_type"] == "adler32"
    assert ok_json("dm", "stat", "/juno/production/mc")["type"] == "directory"

    code, out, err = dcs("dm", "find", "run>=3", "--json")
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert [f["lfn"] for f in found] == ["/juno/production/mc/r1/f3.root", "/juno/production/mc/r1/f4.root"]
    code, out, _ = dcs("dm", "find", "run=1,2", "--path", "/juno/production")
    assert code == 0 and out.split() == ["/juno/production/mc/r1/f1.root", "/juno/production/mc/r1/f2.root"]

    code, out, err = dcs("dm", "meta", "set", "/juno/production/mc", "energy=1.5")
    assert code == 0, err
    meta = ok_json("dm", "meta", "get", "/juno/production/mc/r1/f2.root")
    assert meta["metadata"] == {"run": 2, "energy": 1.5}
    assert meta["inherited_from"] == {"energy": "/juno/production/mc"}

    code, out, err = dcs("dm", "dataset", "create", "late", "run>=3")
    assert code == 0 and "dataset late created (Dynamic)" in out, err
    assert ok_json("dm", "dataset", "show", "late")["files"] == 2
    code, out, err = dcs("dm", "dataset", "freeze", "late")
    assert code == 0 and "Frozen, 2 files" in out, err
    assert [d["name"] for d in ok_json("dm", "dataset", "ls")] == ["late"]
    code, out, _ = dcs("dm", "dataset", "files", "late", "--json")
    assert [json.loads(line)["lfn"] for line in out.splitlines()] == [
        "/juno/production/mc/r1/f3.root", "/juno/production/mc/r1/f4.root"]

    # one-line errors with the server's stable codes
    assert fails("dm", "stat", "/juno/production/nothing") == "no-such-path"
    assert fails("dm", "stat", "/juno/a/../b") == "invalid-lfn"
    assert fails("dm", "ls", "/juno/production/mc/r1/f1.root") == "not-a-directory"
    assert fails("dm", "find", "run>>3") in ("invalid-query", "metadata-type-mismatch")
    assert fails("dm", "find", "nosuchfield=1") == "unknown-metadata-field"
    assert fails("dm", "meta", "set", "/juno/production/mc/r1/f1.root", "run=abc") == "metadata-type-mismatch"
    assert fails("dm", "meta", "set", "/juno/production/mc/r1/f1.root", "run") == "invalid-input"
    assert fails("dm", "mkdir", "/juno/production/mc/r1/f1.root") == "already-exists"
    assert fails("dm", "dataset", "create", "late", "run>=1") == "already-exists"
    assert fails("dm", "dataset", "show", "nope") == "no-such-dataset"
