"""WLCG-profile access tokens: the issuer (signing keys, JWKS, minting) and the verifier.

The issuer signs with ES256 keys kept in the database (see `auth.db`), so every server process against
one database signs with and publishes the same keys. `rotate()` starts a new key; the old one stops
signing at once but stays in the JWKS until every token it signed has expired, so rotation never logs
anyone out. Keys older than `key_lifetime` (6 months, the WLCG guidance) are rotated automatically.

The verifier is what every server (central services, storage elements) runs on each request, so it is
written for the warm path: one split, two small JSON decodes, one signature check, plain comparisons.
It follows the validation pipeline of the WLCG profile: RS256/ES256 only (never `none` or HMAC), `kid`
required, `iss` must be ours or explicitly trusted, keys of a foreign issuer come from its OpenID
discovery document and JWKS (cached; refreshed on an unknown `kid` with a cooldown so that junk tokens
cannot make us hammer the issuer), `exp`/`nbf`/`iat` with 60 s leeway, an audience of ours or the
WLCG "any" audience, and `wlcg.ver` major 1 (or SciTokens `ver: scitoken:2.0`).

Every failure is an `Unauthenticated` with a stable code: `token-expired`, `token-not-yet-valid`,
`bad-signature`, `wrong-audience`, `unknown-issuer`, `invalid-token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import Engine

from junodcs.auth import db
from junodcs.auth.registry import Registry, subject_for
from junodcs.core.errors import Unauthenticated

log = logging.getLogger(__name__)

WLCG_ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
SCITOKENS_ANY_AUDIENCES = ("ANY",)
WLCG_VERSION = "1.0"
ALLOWED_ALGORITHMS = ("ES256", "RS256")
DEFAULT_LEEWAY = 60.0

_ALGORITHMS = {"ES256": ECAlgorithm(ECAlgorithm.SHA256), "RS256": RSAAlgorithm(RSAAlgorithm.SHA256)}


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{name} must be positive")
    return seconds


@dataclass(frozen=True)
class TokenLifetimes:
    """Lifetimes (seconds); AARC-G081 defaults, overridable with `DCS_TOKEN_*` variables."""

    access: float = 3600.0
    refresh: float = 30 * 86400.0
    signing_key: float = 180 * 86400.0

    @classmethod
    def from_env(cls) -> TokenLifetimes:
        return cls(
            access=_env_seconds("DCS_TOKEN_ACCESS_LIFETIME", cls.access),
            refresh=_env_seconds("DCS_TOKEN_REFRESH_LIFETIME", cls.refresh),
            signing_key=_env_seconds("DCS_TOKEN_KEY_LIFETIME", cls.signing_key),
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def public_jwk(public_key: Any, kid: str, algorithm: str) -> dict[str, Any]:
    """JWK of a public key, with `kid`, `alg` and `use` (what JWKS consumers such as XRootD expect)."""
    jwk: dict[str, Any] = _ALGORITHMS[algorithm].to_jwk(public_key, as_dict=True)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return jwk


def _generate_key(algorithm: str) -> Any:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}; use ES256 or RS256")


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    algorithm: str
    private_key: Any
    created_at: float


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key usable for one issuer and `kid`, with when it stops being trusted (None: no end)."""

    kid: str
    algorithm: str
    key: Any
    not_after: float | None = None


class TokenIssuer:
    """Mints access tokens for registry users and publishes the public keys (JWKS).

    The signing key is read from the database at most every `key_cache_seconds`, so a rotation made by
    another process is picked up quickly; a retired key's publication window covers that delay.
    """

    def __init__(
        self,
        engine: Engine,
        issuer: str,
        registry: Registry,
        *,
        algorithm: str = "ES256",
        lifetimes: TokenLifetimes | None = None,
        default_audience: str | None = None,
        clock: Callable[[], float] = time.time,
        key_cache_seconds: float = 60.0,
    ) -> None:
        if algorithm not in ALLOWED_ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {algorithm!r}; use ES256 or RS256")
        self.engine = engine
        self.issuer = issuer.rstrip("/")
        self.registry = registry
        self.algorithm = algorithm
        self.lifetimes = lifetimes or TokenLifetimes.from_env()
        self.default_audience = default_audience or os.environ.get("DCS_TOKEN_AUDIENCE") or WLCG_ANY_AUDIENCE
        self.clock = clock
        self.key_cache_seconds = key_cache_seconds
        self._lock = threading.Lock()
        self._signing: _SigningKey | None = None
        self._signing_loaded = 0.0

    # -- keys --------------------------------------------------------------------------------------

    @property
    def publication_grace(self) -> float:
        """How long a retired key stays published: the longest token it may have signed, plus the delay
        before other processes notice the rotation, plus the verifiers' clock leeway."""
        return self.lifetimes.access + self.key_cache_seconds + DEFAULT_LEEWAY

    def _load_signing_key(self, row: db.SigningKeyRow) -> _SigningKey:
        private = serialization.load_pem_private_key(row.private_key_pem.encode(), password=None)
        return _SigningKey(row.kid, row.algorithm, private, row.created_at.timestamp())

    def _new_key_row(self, conn: Any, now: float) -> _SigningKey:
        private = _generate_key(self.algorithm)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # kid: a short fingerprint of the public key plus the creation time, unique and recognisable.
        kid = f"{time.strftime('%Y%m%d', time.gmtime(now))}-{hashlib.sha256(der).hexdigest()[:16]}"
        db.insert_signing_key(conn, kid, self.algorithm, pem, _utc(now))
        return _SigningKey(kid, self.algorithm, private, now)

    def signing_key(self) -> _SigningKey:
        """The key to sign with: created on first use, rotated when older than the key lifetime."""
        now = self.clock()
        current = self._signing
        if current is not None and now - self._signing_loaded < self.key_cache_seconds:
            return current
        with self._lock:
            if self._signing is not None and now - self._signing_loaded < self.key_cache_seconds:
                return self._signing
            with self.engine.begin() as conn:
                row = db.active_signing_key(conn)
                if row is None:
                    key = self._new_key_row(conn, now)
                else:
                    key = self._load_signing_key(row) if self._signing is None or self._signing.kid != row.kid \
                        else self._signing
            if now - key.created_at > self.lifetimes.signing_key:
                log.info("signing key %s is older than %.0f days: rotating", key.kid,
                         self.lifetimes.signing_key / 86400)
                key = self._rotate_locked(now)
            self._signing = key
            self._signing_loaded = now
            return key

    def _rotate_locked(self, now: float) -> _SigningKey:
        with self.engine.begin() as conn:
            key = self._new_key_row(conn, now)
            db.retire_signing_keys(conn, key.kid, _utc(now), _utc(now + self.publication_grace))
            db.purge_unpublished_keys(conn, _utc(now))
        return key

    def rotate(self) -> str:
        """Start signing with a new key; older keys stay published until their tokens have expired."""
        now = self.clock()
        with self._lock:
            key = self._rotate_locked(now)
            self._signing = key
            self._signing_loaded = now
        log.info("rotated the token signing key: new kid %s", key.kid)
        return key.kid

    def published_keys(self) -> list[VerificationKey]:
        """Public keys currently published (newest first), straight from the database."""
        now = self.clock()
        with self.engine.connect() as conn:
            rows = db.published_signing_keys(conn, _utc(now))
        keys = []
        for row in rows:
            private = serialization.load_pem_private_key(row.private_key_pem.encode(), password=None)
            not_after = row.publish_until.timestamp() if row.publish_until else None
            keys.append(VerificationKey(row.kid, row.algorithm, private.public_key(), not_after))
        return keys

    def jwks(self) -> dict[str, Any]:
        """The JWK Set served at `/oauth2/jwks`; makes sure a signing key exists first."""
        self.signing_key()
        return {"keys": [public_jwk(k.key, k.kid, k.algorithm) for k in self.published_keys()]}

    # -- tokens ------------------------------------------------------------------------------------

    def access_claims(
        self,
        *,
        username: str,
        group: str,
        scopes: Iterable[str],
        audience: str | Iterable[str] | None = None,
        client_id: str | None = None,
        lifetime: float | None = None,
        not_after: float | None = None,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        """WLCG Common JWT profile claims, plus `dcs.group` and (for client grants) `client_id`."""
        now = float(issued_at if issued_at is not None else self.clock())
        exp = now + (lifetime if lifetime is not None else self.lifetimes.access)
        if not_after is not None:
            exp = min(exp, not_after)
        if audience is None:
            aud: str | list[str] = self.default_audience
        elif isinstance(audience, str):
            aud = audience
        else:
            auds = list(dict.fromkeys(audience))
            aud = auds[0] if len(auds) == 1 else auds
        iat = int(now)
        claims: dict[str, Any] = {
            "wlcg.ver": WLCG_VERSION,
            "iss": self.issuer,
            "sub": subject_for(self.registry.vo, username),
            "aud": aud,
            "iat": iat,
            "nbf": iat,
            "exp": int(exp),
            "jti": str(uuid.uuid4()),
            "scope": " ".join(scopes),
            "wlcg.groups": self.registry.wlcg_groups(group),
            "dcs.group": group,
            "preferred_username": username,
        }
        if client_id is not None:
            claims["client_id"] = client_id
        return claims

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.signing_key()
        header = {"alg": key.algorithm, "typ": "JWT", "kid": key.kid}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = _ALGORITHMS[key.algorithm].sign(signing_input.encode("ascii"), key.private_key)
        return signing_input + "." + _b64url(signature)

    def issue_access_token(self, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        """Sign `access_claims(**kwargs)`; returns the token and its claims."""
        claims = self.access_claims(**kwargs)
        return self.sign(claims), claims


# -- verification -------------------------------------------------------------------------------------


def _fail(code: str, detail: str) -> Unauthenticated:
    return Unauthenticated(detail, code=code)


def _is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or bool(host and host.startswith("127."))


def check_issuer_url(url: str) -> None:
    """WLCG: issuers and key URLs are HTTPS; plain HTTP is allowed only on loopback (local grids)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return
    raise ValueError(f"{url}: issuer and JWKS URLs must be https:// (http:// only on loopback)")


def _key_from_jwk(jwk: dict[str, Any]) -> VerificationKey | None:
    kid = jwk.get("kid")
    if not isinstance(kid, str) or jwk.get("use", "sig") != "sig":
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "EC" and jwk.get("crv") == "P-256" and alg in (None, "ES256"):
        return VerificationKey(kid, "ES256", ECAlgorithm.from_jwk(jwk))
    if kty == "RSA" and alg in (None, "RS256"):
        return VerificationKey(kid, "RS256", RSAAlgorithm.from_jwk(jwk))
    return None


@dataclass
class _IssuerCache:
    keys: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float = 0.0
    attempted_at: float = -1e18
    jwks_uri: str | None = None


class TokenVerifier:
    """Verifies bearer tokens of our issuer (keys read from the database) and of trusted issuers
    (OpenID discovery + JWKS over HTTPS). `verify` returns the claims or raises `Unauthenticated`."""

    def __init__(
        self,
        audiences: tuple[str, ...],
        local_issuer: TokenIssuer | None,
        trusted_issuers: tuple[str, ...],
        verify_tls: Any = True,
        *,
        leeway: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        refresh_cooldown: float = 30.0,
        local_refresh_cooldown: float = 2.0,
        local_cache_seconds: float = 300.0,
        cache_refresh: float = 6 * 3600.0,
        cache_expiry: float = 2 * 86400.0,
        http_timeout: float = 10.0,
        verified_cache_size: int = 8192,
    ) -> None:
        self.audiences = frozenset(a.rstrip("/") for a in audiences if a) | {WLCG_ANY_AUDIENCE}
        self.local_issuer = local_issuer
        self.local_issuer_url = local_issuer.issuer if local_issuer else None
        self.trusted_issuers = frozenset(i.rstrip("/") for i in trusted_issuers)
        for issuer in self.trusted_issuers:
            check_issuer_url(issuer)
        self.verify_tls = verify_tls
        self.leeway = leeway
        self.clock = clock
        self.refresh_cooldown = refresh_cooldown
        self.local_refresh_cooldown = local_refresh_cooldown
        self.local_cache_seconds = local_cache_seconds
        self.cache_refresh = cache_refresh
        self.cache_expiry = cache_expiry
        self.http_timeout = http_timeout
        self._local = _IssuerCache()
        self._remote: dict[str, _IssuerCache] = {i: _IssuerCache() for i in self.trusted_issuers}
        self._lock = threading.Lock()
        # token -> (claims, key): a client sends the same token for its whole life, so after the first
        # check only the time claims and the key's publication are re-checked. Exact string match: a
        # token that differs in any byte is verified from scratch.
        self.verified_cache_size = verified_cache_size
        self._verified: dict[str, tuple[dict[str, Any], VerificationKey]] = {}

    # -- keys --------------------------------------------------------------------------------------

    def _local_key(self, kid: str, now: float) -> VerificationKey | None:
        cache = self._local
        key = cache.keys.get(kid)
        stale = now - cache.fetched_at >= self.local_cache_seconds
        if (key is None or stale) and now - cache.attempted_at >= self.local_refresh_cooldown:
            with self._lock:
                if (kid not in cache.keys or now - cache.fetched_at >= self.local_cache_seconds) and (
                    now - cache.attempted_at >= self.local_refresh_cooldown
                ):
                    assert self.local_issuer is not None
                    cache.attempted_at = now
                    cache.keys = {k.kid: k for k in self.local_issuer.published_keys()}
                    cache.fetched_at = now
            key = cache.keys.get(kid)
        if key is not None and key.not_after is not None and now >= key.not_after:
            return None
        return key

    def _key_for(self, issuer: str, kid: str, now: float) -> VerificationKey | None:
        if issuer == self.local_issuer_url:
            return self._local_key(kid, now)
        if issuer in self.trusted_issuers:
            return self._remote_key(issuer, kid, now)
        raise _fail("unknown-issuer", f"tokens of issuer {issuer!r} are not accepted here")

    def _remote_key(self, issuer: str, kid: str, now: float) -> VerificationKey | None:
        cache = self._remote[issuer]
        key = cache.keys.get(kid)
        stale = now - cache.fetched_at >= self.cache_refresh
        if (key is None or stale) and now - cache.attempted_at >= self.refresh_cooldown:
            with self._lock:
                if (kid not in cache.keys or now - cache.fetched_at >= self.cache_refresh) and (
                    now - cache.attempted_at >= self.refresh_cooldown
                ):
                    cache.attempted_at = now
                    try:
                        self._fetch_remote(issuer, cache, now)
                    except Exception as exc:  # noqa: BLE001 - any network/format problem: keep old keys
                        log.warning("cannot refresh the keys of issuer %s: %s", issuer, exc)
            key = cache.keys.get(kid)
        if key is not None and now - cache.fetched_at >= self.cache_expiry:
            return None
        return key

    def _fetch_remote(self, issuer: str, cache: _IssuerCache, now: float) -> None:
        import httpx

        with httpx.Client(verify=self.verify_tls, timeout=self.http_timeout, follow_redirects=False) as http:
            if cache.jwks_uri is None:
                response = http.get(issuer + "/.well-known/openid-configuration")
                response.raise_for_status()
                metadata = response.json()
                if str(metadata.get("issuer", "")).rstrip("/") != issuer:
                    raise ValueError(f"discovery document names issuer {metadata.get('issuer')!r}")
                jwks_uri = str(metadata["jwks_uri"])
                check_issuer_url(jwks_uri)
                cache.jwks_uri = jwks_uri
            response = http.get(cache.jwks_uri)
            response.raise_for_status()
            document = response.json()
        keys = {}
        for jwk in document.get("keys", []):
            try:
                key = _key_from_jwk(jwk)
            except Exception:  # noqa: BLE001 - one malformed key must not hide the others
                key = None
            if key is not None:
                keys[key.kid] = key
        cache.keys = keys
        cache.fetched_at = now

    def invalidate_local_keys(self) -> None:
        """Forget the local keys (after a rotation in this process)."""
        with self._lock:
            self._local = _IssuerCache()

    # -- verification ------------------------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            claims, key = cached
            now = self.clock()
            # Still the very key object we verified with (not refreshed away, not past publication)?
            if self._key_for(claims["iss"].rstrip("/"), key.kid, now) is key:
                self._check_times(claims, now)
                return dict(claims)
            self._verified.pop(token, None)
        claims, key = self._verify_fully(token)
        if self.verified_cache_size > 0:
            if len(self._verified) >= self.verified_cache_size:
                # drop the oldest eighth (dicts keep insertion order): cheap, amortised eviction
                for old in list(self._verified)[: max(1, self.verified_cache_size // 8)]:
                    self._verified.pop(old, None)
            self._verified[token] = (claims, key)
        return dict(claims)

    def _verify_fully(self, token: str) -> tuple[dict[str, Any], VerificationKey]:
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail("invalid-token", "not a JWT (expected three dot-separated parts)")
        header_b64, payload_b64, signature_b64 = parts
        try:
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(signature_b64)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _fail("invalid-token", "malformed JWT: cannot decode its parts") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _fail("invalid-token", "malformed JWT: header and payload must be JSON objects")

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise _fail("invalid-token", f"algorithm {alg!r} is not accepted (only RS256 and ES256)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _fail("invalid-token", "the token header has no key id (kid)")
        issuer = claims.get("iss")
        if not isinstance(issuer, str):
            raise _fail("invalid-token", "the token has no issuer (iss)")
        issuer = issuer.rstrip("/")

        now = self.clock()
        key = self._key_for(issuer, kid, now)
        if key is None:
            raise _fail("bad-signature", f"issuer {issuer} publishes no key {kid!r}")
        if key.algorithm != alg:
            raise _fail("bad-signature", f"key {kid!r} is an {key.algorithm} key, the token says {alg}")
        signing_input = (header_b64 + "." + payload_b64).encode("ascii")
        try:
            valid = _ALGORITHMS[alg].verify(signing_input, key.key, signature)
        except Exception:  # noqa: BLE001 - a malformed signature is just an invalid one
            valid = False
        if not valid:
            raise _fail("bad-signature", f"signature does not verify with key {kid!r} of {issuer}")

        self._check_claims(claims, now)
        return claims, key

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        leeway = self.leeway
        exp = claims["exp"]
        if now >= exp + leeway:
            raise _fail("token-expired", f"the token expired at {_utc(exp).isoformat()}")
        nbf = claims.get("nbf", claims["iat"])
        if not isinstance(nbf, (int, float)):
            raise _fail("invalid-token", "the token's 'nbf' claim is not a number")
        if now + leeway < nbf or now + leeway < claims["iat"]:
            start = _utc(max(nbf, claims["iat"])).isoformat()
            raise _fail("token-not-yet-valid", f"the token is not valid before {start}")

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        for name in ("exp", "iat"):
            if not isinstance(claims.get(name), (int, float)) or isinstance(claims.get(name), bool):
                raise _fail("invalid-token", f"the token has no numeric {name!r} claim")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _fail("invalid-token", "the token has no subject (sub)")
        self._check_times(claims, now)

        version = claims.get("wlcg.ver")
        scitoken = claims.get("ver") == "scitoken:2.0"
        if version is not None:
            if not isinstance(version, str) or version.split(".", 1)[0] != "1":
                raise _fail("invalid-token", f"unsupported WLCG profile version {version!r} (major 1 expected)")
            if not isinstance(claims.get("jti"), str):
                raise _fail("invalid-token", "the token has no token id (jti)")
        elif not scitoken:
            raise _fail("invalid-token", "the token names no profile ('wlcg.ver' 1.x or 'ver' scitoken:2.0)")

        aud = claims.get("aud")
        if aud is None:
            raise _fail("wrong-audience", "the token has no audience (aud)")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list):
            raise _fail("invalid-token", "the 'aud' claim must be a string or a list")
        accepted = self.audiences
        for value in audiences:
            if isinstance(value, str) and (
                value.rstrip("/") in accepted or (scitoken and value in SCITOKENS_ANY_AUDIENCES)
            ):
                return
        raise _fail("wrong-audience", f"the token is for {aud!r}, not for this service")
