"""SE authorisation: WLCG/SciTokens scope mapping and macaroons the SE issues itself."""

from __future__ import annotations

import time

import httpx
import pytest
from test_storage_support import LocalIssuer, issuer, se, write_file  # noqa: F401

from junodcs.storage.server.auth import Activity, TokenPrincipal, token_scopes
from junodcs.storage.server.macaroons import Macaroon, MacaroonAuthority, parse_duration
from junodcs.storage.server.run import BackgroundSE


def call(se: BackgroundSE, method: str, path: str, token: str | None = None, **kwargs: object) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[arg-type]
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{se.url}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_scope_mapping_unit() -> None:
    p = TokenPrincipal(token_scopes({"scope": "storage.read:/raw storage.create:/user/a openid"}), "/juno")
    assert p.allows(Activity.DOWNLOAD, "/juno/raw/f") and p.allows(Activity.LIST, "/juno/raw")
    assert not p.allows(Activity.DOWNLOAD, "/juno/rawdata/f")  # whole path components only
    assert not p.allows(Activity.DOWNLOAD, "/other/raw/f")  # outside the VO prefix
    assert p.allows(Activity.UPLOAD, "/juno/user/a/f", creating=True)
    assert not p.allows(Activity.UPLOAD, "/juno/user/a/f", creating=False)  # create cannot overwrite
    assert not p.allows(Activity.DELETE, "/juno/user/a/f")
    assert p.allows(Activity.READ_METADATA, "/juno/user/a/f")  # every storage scope allows stat
    sci = TokenPrincipal(token_scopes({"scope": "read:/ write:/out"}), "/juno")
    assert sci.allows(Activity.DOWNLOAD, "/juno/x") and sci.allows(Activity.DELETE, "/juno/out/f")
    assert not sci.allows(Activity.UPLOAD, "/juno/in/f", creating=True)


def test_jwt_scopes_on_the_wire(se: BackgroundSE, issuer: LocalIssuer) -> None:
    write_file(se.config.root / "juno/raw/f", 100)
    reader = issuer.token("storage.read:/raw")
    assert call(se, "GET", "/juno/raw/f", reader).status_code == 200
    assert call(se, "PUT", "/juno/raw/g", reader, content=b"x").status_code == 403
    assert call(se, "GET", "/juno/other", reader).status_code == 403
    creator = issuer.token("storage.create:/user")
    assert call(se, "PUT", "/juno/user/f", creator, content=b"1").status_code == 201
    assert call(se, "PUT", "/juno/user/f", creator, content=b"2").status_code == 403  # no overwrite
    assert call(se, "DELETE", "/juno/user/f", creator).status_code == 403
    assert call(se, "MKCOL", "/juno/user/d", creator).status_code == 201
    modifier = issuer.token("storage.modify:/user")
    assert call(se, "PUT", "/juno/user/f", modifier, content=b"2").status_code == 204
    assert call(se, "DELETE", "/juno/user/f", modifier).status_code == 204
    sci = issuer.token("read:/raw write:/sci", profile="scitokens")
    assert call(se, "GET", "/juno/raw/f", sci).status_code == 200
    assert call(se, "PUT", "/juno/sci/f", sci, content=b"s").status_code == 201
    assert call(se, "GET", "/juno/raw/f", issuer.token("storage.read:/", lifetime=-120)).status_code == 401
    assert call(se, "GET", "/juno/raw/f", LocalIssuer().token("storage.read:/")).status_code == 401  # wrong key
    assert call(se, "GET", "/juno/raw/f", "garbage").status_code == 401
    r = call(se, "GET", "/juno/raw/f", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401 and r.json()["code"] == "invalid-token"


def issue(se: BackgroundSE, path: str, token: str, caveats: list[str], validity: str = "PT30M") -> httpx.Response:
    return call(se, "POST", path, token, json={"caveats": caveats, "validity": validity},
                headers={"Content-Type": "application/macaroon-request"})


def test_macaroon_issue_use_and_caveats(se: BackgroundSE, issuer: LocalIssuer) -> None:
    write_file(se.config.root / "juno/data/f", 50)
    write_file(se.config.root / "juno/other/g", 50)
    jwt_token = issuer.token("storage.read:/ storage.modify:/data")
    r = issue(se, "/juno/data", jwt_token, ["activity:DOWNLOAD,LIST"])
    assert r.status_code == 200, r.text
    body = r.json()
    macaroon = body["macaroon"]
    assert body["uri"]["targetWithMacaroon"].endswith(f"/juno/data?authz={macaroon}")
    assert call(se, "GET", "/juno/data/f", macaroon).status_code == 200
    assert httpx.get(f"{se.url}/juno/data/f?authz={macaroon}").status_code == 200
    assert call(se, "PROPFIND", "/juno/data", macaroon, headers={"Depth": "1"}).status_code == 207
    assert call(se, "PUT", "/juno/data/new", macaroon, content=b"x").status_code == 403  # wrong activity
    assert call(se, "GET", "/juno/other/g", macaroon).status_code == 403  # wrong path
    # write macaroon, only what the issuing credential allows
    r = issue(se, "/juno/data", jwt_token, ["activity:UPLOAD,DELETE"])
    assert r.status_code == 200
    writer = r.json()["macaroon"]
    assert call(se, "PUT", "/juno/data/new", writer, content=b"x").status_code == 201
    assert issue(se, "/juno/other", jwt_token, ["activity:UPLOAD"]).status_code == 403
    # expired, tampered, attenuated
    expired = issue(se, "/juno/data", jwt_token, ["activity:DOWNLOAD", "before:2000-01-01T00:00:00Z"]).json()
    r = call(se, "GET", "/juno/data/f", expired["macaroon"])
    assert r.status_code == 401 and r.json()["code"] == "token-expired"
    parsed = Macaroon.deserialize(macaroon)
    widened = Macaroon(parsed.location, parsed.identifier, ("activity:DOWNLOAD,UPLOAD", *parsed.caveats[1:]),
                       parsed.signature)
    assert call(se, "GET", "/juno/data/f", widened.serialize()).status_code == 401
    narrowed = parsed.add_caveat("path:/juno/data/nothing-here").serialize()
    assert call(se, "GET", "/juno/data/f", narrowed).status_code == 403
    # bad requests
    assert issue(se, "/juno/data", jwt_token, ["activity:FLY"]).status_code == 400
    assert issue(se, "/juno/data", jwt_token, ["colour:blue"]).status_code == 400
    assert issue(se, "/juno/data", jwt_token, [], validity="soon").status_code == 400
    assert call(se, "POST", "/juno/data", None, json={"caveats": []},
                headers={"Content-Type": "application/macaroon-request"}).status_code == 401
    assert call(se, "POST", "/juno/data/f", jwt_token, content=b"x").status_code == 405  # never the file


def test_macaroon_expiry_in_time() -> None:
    authority = MacaroonAuthority(b"k" * 32, "SE")
    macaroon, _ = authority.mint(subject="a", caveats=["activity:DOWNLOAD"], validity=parse_duration("PT1S"))
    assert authority.verify(macaroon.serialize()).activities == frozenset({"DOWNLOAD"})
    time.sleep(1.1)
    with pytest.raises(Exception, match="expired"):
        authority.verify(macaroon.serialize())
    assert parse_duration("P1DT2H30M").total_seconds() == 86400 + 9000


def test_job_sandboxes_are_out_of_reach_of_vo_wide_rights(se: BackgroundSE, issuer: LocalIssuer) -> None:
    """`<vo>/sandbox` holds other users' job sandboxes: a member's `storage.read:/` (every login token) or
    any scope outside the area does not reach it; the WMS's area token and per-file tokens do."""
    write_file(se.config.root / "juno/sandbox/ab/abc.tar.gz", 10)
    write_file(se.config.root / "juno/raw/f", 10)
    member = issuer.token("storage.read:/ storage.modify:/ storage.create:/sandbox/cd/other.tar.gz")
    assert call(se, "GET", "/juno/raw/f", member).status_code == 200
    for method in ("GET", "HEAD", "DELETE", "PROPFIND"):
        assert call(se, method, "/juno/sandbox/ab/abc.tar.gz", member).status_code == 403, method
    assert call(se, "PUT", "/juno/sandbox/ab/abc.tar.gz", member, content=b"evil").status_code == 403
    assert call(se, "GET", "/juno/sandbox/ab/abc.tar.gz", issuer.token("storage.read:/sandbox/ab/abc.tar.gz")
                ).status_code == 200
    assert call(se, "GET", "/juno/sandbox/ab/abc.tar.gz", issuer.token("storage.read:/sandbox")).status_code == 200
    assert (se.config.root / "juno/sandbox/ab/abc.tar.gz").stat().st_size == 10


def test_job_sandboxes_for_certificates_and_anonymous_readers() -> None:
    from junodcs.core.errors import DCSError
    from junodcs.core.gridconfig import Property
    from junodcs.storage.server.auth import AnonymousPrincipal, Authorizer, X509Principal

    auth = Authorizer(vo_prefix="/juno", anonymous_read=True, verify_token=None, macaroons=None)
    user = X509Principal("/DC=cn/CN=alice", "alice", "juno_user", frozenset({Property.NORMAL_USER}), "juno")
    admin = X509Principal("/DC=cn/CN=root", "root", "dcs_admin", frozenset({Property.SERVICE_ADMINISTRATOR}), "juno")
    auth.require(user, Activity.DOWNLOAD, "/juno/raw/f")
    auth.require(admin, Activity.DOWNLOAD, "/juno/sandbox/ab/abc.tar.gz")
    for who in (user, AnonymousPrincipal(read=True)):
        with pytest.raises(DCSError):
            auth.require(who, Activity.DOWNLOAD, "/juno/sandbox/ab/abc.tar.gz")
