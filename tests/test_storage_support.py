"""Shared helpers for the storage tests: SEs on free loopback ports, tokens signed with a local key."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from junodcs.core.errors import Unauthenticated
from junodcs.storage.server.config import SEConfig
from junodcs.storage.server.run import BackgroundSE

ISSUER = "https://issuer.test"


class LocalIssuer:
    """An ES256 signer plus the `verify_token` hook an SE takes (stands in for auth.tokens.TokenVerifier)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public = self.key.public_key()

    def token(self, scope: str, *, lifetime: int = 600, sub: str = "alice", profile: str = "wlcg") -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "sub": sub, "aud": "https://wlcg.cern.ch/jwt/v1/any",
                                  "iat": now, "nbf": now, "exp": now + lifetime, "scope": scope,
                                  "jti": secrets.token_hex(8)}
        claims["wlcg.ver" if profile == "wlcg" else "ver"] = "1.0" if profile == "wlcg" else "scitoken:2.0"
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "k1"})

    def verify(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(token, self.public, algorithms=["ES256"], issuer=ISSUER,
                              options={"verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", code="token-expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}", code="invalid-token") from None


def make_se(root: Path, issuer: LocalIssuer, name: str = "TEST-DISK", **overrides: Any) -> BackgroundSE:
    options: dict[str, Any] = {"verify_token": issuer.verify, "macaroon_secret": secrets.token_bytes(32),
                               "marker_interval": 0.2, "io_block": 1 << 20}
    options.update(overrides)
    tls = options.pop("tls", None)
    return BackgroundSE(SEConfig(name=name, root=root, **options), tls=tls)


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture
def se(tmp_path: Path, issuer: LocalIssuer) -> Iterator[BackgroundSE]:
    with make_se(tmp_path / "se1", issuer) as server:
        yield server


@pytest.fixture
def se2(tmp_path: Path, issuer: LocalIssuer) -> Iterator[BackgroundSE]:
    with make_se(tmp_path / "se2", issuer, name="TEST2-DISK") as server:
        yield server


def write_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def leftovers(root: Path) -> list[str]:
    """Anything the SE keeps for itself that a failed operation might have left behind."""
    return [str(p) for p in root.rglob(".dcs-*")]
