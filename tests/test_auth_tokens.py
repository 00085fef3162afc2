"""Token issuer and verifier: WLCG profile claims, JWKS, key rotation, every bad-token case."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from authutil import bearer, full_token, make_app
from junodcs.auth.registry import Registry, subject_for
from junodcs.auth.tokens import WLCG_ANY_AUDIENCE, TokenIssuer, TokenLifetimes, TokenVerifier
from junodcs.core.errors import Unauthenticated


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_discovery_and_jwks_verify_with_plain_pyjwt(grid, engine):
    app = make_app(grid, engine)
    client = TestClient(app)
    meta = client.get("/.well-known/openid-configuration").json()
    assert meta["issuer"] == "http://testserver"
    assert meta["jwks_uri"] == "http://testserver/oauth2/jwks"
    assert meta["token_endpoint"] == "http://testserver/oauth2/token"
    assert meta["revocation_endpoint"] == "http://testserver/oauth2/revoke"
    assert set(meta["grant_types_supported"]) == {
        "client_credentials", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"}
    assert "compute.create" in meta["scopes_supported"]
    assert client.get("/.well-known/oauth-authorization-server").json() == meta

    token = full_token(app, "alice")
    keys = client.get("/oauth2/jwks").json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and keys[0]["alg"] == "ES256"
    assert "d" not in keys[0], "the JWKS must never contain private key material"
    header = jwt.get_unverified_header(token)
    assert header["kid"] == keys[0]["kid"] and header["alg"] == "ES256"
    # an outside verifier (PyJWT alone, as a storage element would) accepts our token with our JWKS
    claims = jwt.decode(token, jwt.PyJWK(keys[0]).key, algorithms=["ES256"], audience=WLCG_ANY_AUDIENCE,
                        issuer="http://testserver")
    assert claims["sub"] == subject_for("juno", "alice")


def test_access_token_follows_the_wlcg_profile(grid, engine):
    app = make_app(grid, engine)
    issuer: TokenIssuer = app.state.token_issuer
    before = int(time.time())
    token, claims = issuer.issue_access_token(
        username="zhangxm", group="juno_production", scopes=("compute.read", "storage.modify:/juno/production"),
        client_id="robot-1",
    )
    verified = app.state.token_verifier.verify(token)
    assert verified == claims
    assert claims["iss"] == "http://testserver"
    assert claims["sub"] == subject_for("juno", "zhangxm")
    assert claims["wlcg.ver"] == "1.0"
    assert claims["aud"] == WLCG_ANY_AUDIENCE
    assert claims["scope"] == "compute.read storage.modify:/juno/production"
    assert claims["wlcg.groups"] == ["/juno", "/juno/production"]
    assert claims["dcs.group"] == "juno_production" and claims["client_id"] == "robot-1"
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 3600, "default access lifetime is 1 h"
    assert uuid.UUID(claims["jti"])
    _, other = issuer.issue_access_token(username="zhangxm", group="juno_user", scopes=("compute.read",))
    assert other["jti"] != claims["jti"]
    assert issuer.lifetimes.refresh == 30 * 86400


def test_lifetimes_are_configurable(grid, engine, monkeypatch):
    monkeypatch.setenv("DCS_TOKEN_ACCESS_LIFETIME", "900")
    monkeypatch.setenv("DCS_TOKEN_REFRESH_LIFETIME", "86400")
    app = make_app(grid, engine)
    _, claims = app.state.token_issuer.issue_access_token(username="alice", group="juno_user", scopes=())
    assert claims["exp"] - claims["iat"] == 900
    assert app.state.token_issuer.lifetimes.refresh == 86400


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_key_rotation_keeps_old_tokens_valid_until_the_key_leaves_the_jwks(grid, engine):
    clock = FakeClock()
    registry = Registry(grid)
    issuer = TokenIssuer(engine, "http://testserver", registry, clock=clock,
                         lifetimes=TokenLifetimes(access=3600))
    verifier = TokenVerifier(("http://testserver",), issuer, (), clock=clock, local_refresh_cooldown=0)
    old_token, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=("compute.read",))
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    assert verifier.verify(old_token)["sub"] == subject_for("juno", "alice")

    clock.now += 10
    new_kid = issuer.rotate()
    assert new_kid != old_kid
    new_token, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=("compute.read",))
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    # a verifier that cached only the old key learns the new one on first sight of its kid
    assert verifier.verify(new_token)["iss"] == "http://testserver"
    assert verifier.verify(old_token)
    assert {k["kid"] for k in issuer.jwks()["keys"]} == {old_kid, new_kid}

    # A second process (its own issuer object on the same database) also signs with the new key.
    other_process = TokenIssuer(engine, "http://testserver", registry, clock=clock)
    token3, _ = other_process.issue_access_token(username="alice", group="juno_user", scopes=())
    assert jwt.get_unverified_header(token3)["kid"] == new_kid

    # Past the publication window (longest token + key cache + leeway) the old key is gone.
    clock.now += issuer.publication_grace + 1
    assert {k["kid"] for k in issuer.jwks()["keys"]} == {new_kid}
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(old_token)
    assert info.value.code == "bad-signature"
    # and rotating again purges the private key of the unpublished key from the database
    issuer.rotate()
    from sqlalchemy import select

    from junodcs.auth.db import signing_keys

    with engine.connect() as conn:
        kids = set(conn.execute(select(signing_keys.c.kid)).scalars())
    assert old_kid not in kids and new_kid in kids


def test_signing_key_older_than_its_lifetime_is_rotated(grid, engine):
    clock = FakeClock()
    issuer = TokenIssuer(engine, "http://testserver", Registry(grid), clock=clock, key_cache_seconds=0,
                         lifetimes=TokenLifetimes(signing_key=1000))
    token1, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=())
    clock.now += 1001
    token2, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=())
    assert jwt.get_unverified_header(token1)["kid"] != jwt.get_unverified_header(token2)["kid"]


def _forged_cases(app):
    """(name, token, expected code) for every way a token can be wrong."""
    issuer: TokenIssuer = app.state.token_issuer
    now = time.time()
    cases = []
    expired, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(), issued_at=now - 7200)
    cases.append(("expired", expired, "token-expired"))
    early, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(), issued_at=now + 600)
    cases.append(("not-yet-valid", early, "token-not-yet-valid"))
    wrong_aud, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(),
                                             audience="https://elsewhere.example.org")
    cases.append(("wrong-audience", wrong_aud, "wrong-audience"))

    claims = issuer.access_claims(username="alice", group="juno_user", scopes=("compute.read",))
    kid = issuer.signing_key().kid
    impostor = ec.generate_private_key(ec.SECP256R1())
    cases.append(("same kid, other key",
                  jwt.encode(claims, impostor, algorithm="ES256", headers={"kid": kid}), "bad-signature"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases.append(("RS256 with our kid",
                  jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": kid}), "bad-signature"))
    header = {"alg": "ES256", "typ": "JWT", "kid": "no-such-key"}
    signed = issuer.sign(claims).split(".")
    cases.append(("unknown kid", ".".join([_b64(header), signed[1], signed[2]]), "bad-signature"))
    tampered = dict(claims, scope="storage.modify:/juno")
    cases.append(("tampered payload", ".".join([signed[0], _b64(tampered), signed[2]]), "bad-signature"))
    evil = dict(claims, iss="https://evil.example.org")
    cases.append(("unknown issuer", issuer.sign(evil), "unknown-issuer"))
    cases.append(("alg none", _b64({"alg": "none", "kid": kid}) + "." + _b64(claims) + ".", "invalid-token"))
    cases.append(("HS256", jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": kid}), "invalid-token"))
    cases.append(("no kid", jwt.encode(claims, issuer.signing_key().private_key, algorithm="ES256"), "invalid-token"))
    cases.append(("wlcg.ver 2", issuer.sign(dict(claims, **{"wlcg.ver": "2.0"})), "invalid-token"))
    no_profile = {k: v for k, v in claims.items() if k != "wlcg.ver"}
    cases.append(("no profile version", issuer.sign(no_profile), "invalid-token"))
    cases.append(("no exp", issuer.sign({k: v for k, v in claims.items() if k != "exp"}), "invalid-token"))
    cases.append(("garbage", "not.a.jwt", "invalid-token"))
    cases.append(("two parts", "abc.def", "invalid-token"))
    return cases


def test_every_bad_token_is_a_401_with_its_reason(grid, engine):
    app = make_app(grid, engine)
    client = TestClient(app)
    assert client.get("/api/v1/auth/whoami", headers=bearer(full_token(app, "alice"))).status_code == 200
    for name, token, code in _forged_cases(app):
        response = client.get("/api/v1/auth/whoami", headers=bearer(token))
        assert response.status_code == 401, name
        body = response.json()
        assert body["code"] == code, (name, body)
        assert body["detail"], name
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Bearer" in response.headers["www-authenticate"]


def test_leeway_and_scitokens_profile(grid, engine):
    app = make_app(grid, engine)
    issuer: TokenIssuer = app.state.token_issuer
    verifier: TokenVerifier = app.state.token_verifier
    now = time.time()
    # expired 30 s ago: inside the 60 s clock-skew leeway
    recent, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(), issued_at=now - 3630)
    assert verifier.verify(recent)
    # issued 30 s "in the future" (a fast clock elsewhere): accepted too
    fast, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(), issued_at=now + 30)
    assert verifier.verify(fast)
    claims = issuer.access_claims(username="alice", group="juno_user", scopes=("compute.read",))
    del claims["wlcg.ver"]
    claims.update(ver="scitoken:2.0", aud="ANY")
    assert verifier.verify(issuer.sign(claims))["ver"] == "scitoken:2.0"
    # "ANY" is a SciTokens audience, not a WLCG one
    wlcg = issuer.access_claims(username="alice", group="juno_user", scopes=(), audience="ANY")
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(issuer.sign(wlcg))
    assert info.value.code == "wrong-audience"
    # our own URL is one of our audiences, with or without trailing slash
    own, _ = issuer.issue_access_token(username="alice", group="juno_user", scopes=(),
                                       audience=["https://other.example", "http://testserver/"])
    assert verifier.verify(own)


def test_verified_token_cache_still_enforces_time_and_keys(grid, engine):
    clock = FakeClock()
    issuer = TokenIssuer(engine, "http://testserver", Registry(grid), clock=clock)
    verifier = TokenVerifier(("http://testserver",), issuer, (), clock=clock)
    token, claims = issuer.issue_access_token(username="alice", group="juno_user", scopes=("compute.read",))
    assert verifier.verify(token) == claims
    verified = verifier.verify(token)
    verified["scope"] = "storage.modify:/"  # callers mutating their copy must not poison the cache
    assert verifier.verify(token)["scope"] == "compute.read"
    assert token in verifier._verified
    clock.now += 3600 + 61
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    assert info.value.code == "token-expired"
