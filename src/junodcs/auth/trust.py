"""Trust anchors from a hashed CA directory and certificate path checks shared by proxies and VOMS.

OpenSSL's verifier knows nothing about VOMS and gives no reasons a user can act on, so the proxy
validator and the VOMS AC verifier walk chains themselves with `cryptography`: every link is checked
for issuer name and signature, every certificate for its validity window, every CA for its CA bit.
Failures are `Unauthenticated` errors with a stable code from `X509Failure`.
"""

from __future__ import annotations

import datetime as dt
import threading
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from junodcs.auth.x509 import load_pem_certificates, name_to_dn
from junodcs.core.errors import Unauthenticated

CLOCK_SKEW = dt.timedelta(minutes=5)


class X509Failure(StrEnum):
    """Stable codes of every reason a certificate, proxy or VOMS credential is refused."""

    INVALID_CERTIFICATE = "invalid-certificate"
    BROKEN_CHAIN = "broken-chain"
    UNTRUSTED_CA = "untrusted-ca"
    CERT_EXPIRED = "cert-expired"
    CERT_NOT_YET_VALID = "cert-not-yet-valid"
    PROXY_EXPIRED = "proxy-expired"
    PROXY_INVALID = "proxy-invalid"
    NOT_END_ENTITY = "not-end-entity"
    VOMS_INVALID = "voms-invalid"
    VOMS_EXPIRED = "voms-expired"
    VOMS_UNTRUSTED = "voms-untrusted"
    VOMS_HOLDER_MISMATCH = "voms-holder-mismatch"
    WRONG_VO = "wrong-vo"


def refuse(code: X509Failure, detail: str) -> Unauthenticated:
    return Unauthenticated(detail, code=code.value)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.ca)  # type: ignore[attr-defined]


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_signed_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    """Issuer name and signature of `child` against `parent`, or `broken-chain` naming both."""
    if child.issuer != parent.subject:
        raise refuse(X509Failure.BROKEN_CHAIN,
                     f"{name_to_dn(child.subject)} is issued by {name_to_dn(child.issuer)}, "
                     f"but the next certificate in the chain is {name_to_dn(parent.subject)}")
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        raise refuse(X509Failure.BROKEN_CHAIN,
                     f"the signature of {name_to_dn(child.subject)} does not verify with the key of "
                     f"{name_to_dn(parent.subject)}") from None


def check_validity(cert: x509.Certificate, now: dt.datetime, *, expired: X509Failure, what: str) -> None:
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        raise refuse(X509Failure.CERT_NOT_YET_VALID,
                     f"{what} {name_to_dn(cert.subject)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_valid_after_utc < now:
        raise refuse(expired, f"{what} {name_to_dn(cert.subject)} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


class TrustStore:
    """The CAs of an X509_CERT_DIR (`<hash>.N` files, also `*.pem`), reloaded when the directory changes."""

    def __init__(self, ca_dir: Path) -> None:
        self.ca_dir = Path(ca_dir)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}

    def _load(self) -> None:
        try:
            mtime = self.ca_dir.stat().st_mtime
        except OSError:
            raise refuse(X509Failure.UNTRUSTED_CA, f"trusted CA directory {self.ca_dir} is missing") from None
        if mtime == self._mtime:
            return
        found: dict[x509.Name, list[x509.Certificate]] = {}
        for path in sorted(self.ca_dir.iterdir()):
            suffix = path.suffix.lstrip(".")
            if not (suffix.isdigit() or suffix in ("pem", "crt")) or not path.is_file():
                continue
            try:
                certs = load_pem_certificates(path.read_bytes())
            except (OSError, ValueError):
                continue
            for cert in certs:
                if is_ca(cert) and cert not in found.get(cert.subject, []):
                    found.setdefault(cert.subject, []).append(cert)
        self._by_subject, self._mtime = found, mtime

    def issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        with self._lock:
            self._load()
            return list(self._by_subject.get(cert.issuer, []))

    def contains(self, cert: x509.Certificate) -> bool:
        with self._lock:
            self._load()
            return cert in self._by_subject.get(cert.subject, [])

    def verify_path(self, chain: list[x509.Certificate], now: dt.datetime, *, what: str = "certificate"
                    ) -> list[x509.Certificate]:
        """Verify `[end entity, intermediate CAs...]` (a trailing trusted root is allowed) up to a trust
        anchor of this store. Returns the full path including the anchor."""
        path = list(chain)
        if len(path) > 1 and self.contains(path[-1]) and is_self_signed(path[-1]):
            path.pop()  # the peer sent the root too (a verified TLS chain always ends with it)
        for index, cert in enumerate(path):
            check_validity(cert, now, expired=X509Failure.CERT_EXPIRED, what=what if index == 0 else "CA")
            if index > 0:
                if not is_ca(cert):
                    raise refuse(X509Failure.BROKEN_CHAIN, f"{name_to_dn(cert.subject)} signs certificates but is no CA")
                check_signed_by(path[index - 1], cert)
        top = path[-1]
        candidates = self.issuers_of(top)
        if not candidates:
            raise refuse(X509Failure.UNTRUSTED_CA,
                         f"{name_to_dn(top.issuer)}, the issuer of {name_to_dn(top.subject)}, is not a trusted CA")
        failure: Exception | None = None
        for anchor in candidates:
            try:
                check_signed_by(top, anchor)
                check_validity(anchor, now, expired=X509Failure.UNTRUSTED_CA, what="trusted CA")
            except Unauthenticated as exc:
                failure = exc
                continue
            return [*path, anchor]
        assert failure is not None
        raise failure
