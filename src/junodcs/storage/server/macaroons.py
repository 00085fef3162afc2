"""Macaroons the SE issues itself (dCache/XRootD style), as a small HMAC-SHA256 chain.

A macaroon is an identifier plus a list of caveats, signed as a chain: `sig0 = HMAC(secret, id)`,
`sig_i = HMAC(sig_{i-1}, caveat_i)`. Only the SE knows the secret, so only it can mint or verify one;
but anyone holding a macaroon can *narrow* it by appending a caveat and extending the chain, never
widen it (removing a caveat would need the previous signature, which is not in the token). Every
caveat must hold for a request to pass; an unknown caveat fails closed.

Caveats understood: `activity:A,B,...` (the activities of `auth.Activity`), `path:/abs/path` (the request
path must be it or lie below it), `before:<ISO 8601 UTC>`. Wire form: `dcsmac.` + base64url(JSON).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from junodcs.core.errors import Unauthenticated
from junodcs.storage.server.paths import BadRequest

PREFIX = "dcsmac."
MAX_VALIDITY = timedelta(days=7)
DEFAULT_VALIDITY = timedelta(hours=1)

_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """ISO 8601 duration as gfal2 and dCache send it (`PT30M`, `PT1H`, `P1DT2H`)."""
    match = _DURATION.match(text.strip().upper())
    if not match or text.strip().upper() in ("P", "PT"):
        raise BadRequest(f"validity {text!r} is not an ISO 8601 duration such as PT30M", code="bad-validity")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(**parts)


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Macaroon:
    location: str
    identifier: str
    caveats: tuple[str, ...]
    signature: bytes

    def serialize(self) -> str:
        body = {"l": self.location, "i": self.identifier, "c": list(self.caveats), "s": self.signature.hex()}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def deserialize(cls, token: str) -> Macaroon:
        if not token.startswith(PREFIX):
            raise Unauthenticated("not a macaroon of this storage element", code="invalid-token")
        text = token[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            body = json.loads(raw)
            caveats = tuple(str(c) for c in body["c"])
            return cls(str(body["l"]), str(body["i"]), caveats, bytes.fromhex(body["s"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise Unauthenticated("malformed macaroon", code="invalid-token") from None

    def add_caveat(self, caveat: str) -> Macaroon:
        """Narrow this macaroon (what a holder may do without the secret)."""
        return Macaroon(self.location, self.identifier, (*self.caveats, caveat), _sign(self.signature, caveat))


@dataclass(frozen=True, slots=True)
class MacaroonGrant:
    """What a verified macaroon allows: activities (None = no activity caveat), path prefixes, expiry."""

    identifier: str
    activities: frozenset[str] | None
    paths: tuple[str, ...]
    expires: datetime | None
    subject: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class MacaroonAuthority:
    def __init__(self, secret: bytes, location: str) -> None:
        if len(secret) < 32:
            raise ValueError("the macaroon secret must have at least 32 bytes")
        self._root_key = hashlib.sha256(b"junodcs-macaroon-v1" + secret).digest()
        self.location = location

    def mint(self, *, subject: str | None, caveats: list[str], validity: timedelta,
             now: datetime | None = None) -> tuple[Macaroon, datetime]:
        now = now or datetime.now(UTC)
        validity = min(validity, MAX_VALIDITY)
        expires = (now + validity).replace(microsecond=0)
        identifier = f"{secrets.token_hex(12)};sub={subject or '-'}"
        macaroon = Macaroon(self.location, identifier, (), _sign(self._root_key, identifier))
        for caveat in caveats:
            check_caveat_syntax(caveat)
            macaroon = macaroon.add_caveat(caveat)
        macaroon = macaroon.add_caveat(f"before:{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return macaroon, expires

    def verify(self, token: str, *, now: datetime | None = None) -> MacaroonGrant:
        macaroon = Macaroon.deserialize(token)
        signature = _sign(self._root_key, macaroon.identifier)
        for caveat in macaroon.caveats:
            signature = _sign(signature, caveat)
        if not hmac.compare_digest(signature, macaroon.signature):
            raise Unauthenticated("macaroon signature is invalid", code="bad-signature")
        now = now or datetime.now(UTC)
        activities: frozenset[str] | None = None
        paths: list[str] = []
        expires: datetime | None = None
        for caveat in macaroon.caveats:
            kind, _, value = caveat.partition(":")
            if kind == "activity":
                wanted = frozenset(a.strip().upper() for a in value.split(",") if a.strip())
                activities = wanted if activities is None else activities & wanted
            elif kind == "path":
                paths.append(value)
            elif kind == "before":
                moment = _parse_time(value)
                expires = moment if expires is None else min(expires, moment)
            else:
                raise Unauthenticated(f"macaroon has an unknown caveat {kind!r}", code="invalid-token")
        if expires is None:
            raise Unauthenticated("macaroon has no expiry", code="invalid-token")
        if now >= expires:
            raise Unauthenticated("macaroon has expired", code="token-expired")
        subject = macaroon.identifier.partition(";sub=")[2] or None
        return MacaroonGrant(macaroon.identifier, activities, tuple(paths), expires,
                             None if subject == "-" else subject)


def check_caveat_syntax(caveat: str) -> None:
    kind, sep, value = caveat.partition(":")
    if not sep or kind not in ("activity", "path", "before"):
        raise BadRequest(f"unsupported caveat {caveat!r} (activity:, path:, before:)", code="bad-caveat")
    if kind == "path" and not value.startswith("/"):
        raise BadRequest(f"path caveat {caveat!r} must be absolute", code="bad-caveat")
    if kind == "before":
        try:
            _parse_time(value)
        except Unauthenticated:
            raise BadRequest(f"before caveat {caveat!r} is not an ISO 8601 time", code="bad-caveat") from None


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Unauthenticated(f"bad time in macaroon caveat: {value!r}", code="invalid-token") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
