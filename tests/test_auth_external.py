"""Tokens of a trusted external issuer: OpenID discovery + JWKS over real loopback HTTP."""

from __future__ import annotations

import jwt
import pytest
from fastapi.testclient import TestClient

from authutil import bearer, bound_socket, full_token, make_app, serve, with_trusted_issuers
from junodcs.auth.registry import subject_for
from junodcs.auth.tokens import TokenVerifier
from junodcs.core.errors import Unauthenticated


@pytest.fixture
def external(grid, tmp_path):
    """A second junodcs server acting as the external issuer (its own database), on a real port."""
    from junodcs.db.engine import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'external.db'}")
    sock, url = bound_socket()
    app = make_app(grid, engine, url=url)
    with serve(app, sock):
        yield app, url
    engine.dispose()


def test_trusted_external_issuer_via_discovery(grid, engine, external):
    ext_app, ext_url = external
    app = make_app(with_trusted_issuers(grid, ext_url), engine)
    http = TestClient(app)
    token = full_token(ext_app, "boris", "juno_data")
    response = http.get("/api/v1/auth/whoami", headers=bearer(token))
    assert response.status_code == 200, response.text
    who = response.json()
    assert who["issuer"] == ext_url and who["username"] == "boris"
    # a foreign issuer does not choose our group: the user's default group applies
    assert who["group"] == "juno_user"

    # the external issuer rotates its key: an unknown kid makes us fetch the JWKS again
    verifier: TokenVerifier = app.state.token_verifier
    verifier.refresh_cooldown = 0
    ext_app.state.token_issuer.rotate()
    rotated = full_token(ext_app, "boris")
    assert jwt.get_unverified_header(rotated)["kid"] != jwt.get_unverified_header(token)["kid"]
    assert http.get("/api/v1/auth/whoami", headers=bearer(rotated)).status_code == 200

    # a token claiming the external issuer but signed by our key is refused
    forged_claims = app.state.token_issuer.access_claims(username="alice", group="juno_user", scopes=())
    forged_claims["iss"] = ext_url
    response = http.get("/api/v1/auth/whoami", headers=bearer(app.state.token_issuer.sign(forged_claims)))
    assert response.status_code == 401 and response.json()["code"] == "bad-signature"


def test_untrusted_issuer_and_cooldown(grid, engine, external):
    ext_app, ext_url = external
    # without trusting it, the same token is refused
    app = make_app(grid, engine)
    response = TestClient(app).get("/api/v1/auth/whoami", headers=bearer(full_token(ext_app, "alice")))
    assert response.status_code == 401 and response.json()["code"] == "unknown-issuer"

    fetches = []
    verifier = TokenVerifier(("http://testserver",), None, (ext_url,), refresh_cooldown=3600)
    original = verifier._fetch_remote
    verifier._fetch_remote = lambda *a: (fetches.append(1), original(*a))[1]  # count real fetches
    token = full_token(ext_app, "alice")
    assert verifier.verify(token)["sub"] == subject_for("juno", "alice")
    assert verifier.verify(token) and len(fetches) == 1, "warm cache: no second fetch"
    claims = dict(jwt.decode(token, options={"verify_signature": False}))
    header = {"alg": "ES256", "kid": "unknown-kid"}
    junk = jwt.encode(claims, ext_app.state.token_issuer.signing_key().private_key, algorithm="ES256",
                      headers=header)
    for _ in range(3):
        with pytest.raises(Unauthenticated) as info:
            verifier.verify(junk)
        assert info.value.code == "bad-signature"
    assert len(fetches) == 1, "unknown kids within the cooldown must not refetch the JWKS"


def test_issuer_urls_must_be_https_except_loopback():
    with pytest.raises(ValueError):
        TokenVerifier((), None, ("http://iam.example.org",))
    TokenVerifier((), None, ("https://iam.example.org", "http://127.0.0.1:8000"))
