"""Validate a client's X.509 chain (certificate or RFC 3820 proxy, with VOMS attributes) from scratch.

The TLS layer hands over the chain the peer presented; this module decides, on its own, whether it
proves an identity: each link's issuer and signature, each certificate's validity, the proxy rules of
RFC 3820 (subject = issuer + one CN, critical proxyCertInfo, no CA bit, path length, limited proxies
sign only limited proxies), a path from the end-entity certificate (EEC) to a CA of the trusted
directory, and the VOMS attribute certificate (signature, validity, VO, `.lsc` trust, holder). It does
not rely on the TLS layer having checked anything, so the storage element can use it as it is.

Servers see the same proxy on every request: a successful result is cached by the chain's fingerprint
until the earliest expiry of anything in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from junodcs.auth.trust import TrustStore, X509Failure, check_signed_by, check_validity, is_ca, refuse
from junodcs.auth.voms import AttributeCertificate, acs_from_certificate, verify_ac
from junodcs.auth.x509 import ProxyPolicy, name_to_dn, proxy_cert_info, utcnow

MAX_CHAIN_LENGTH = 16
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class X509Credential:
    """What a validated chain proves."""

    dn: str
    """Subject of the end-entity certificate, slash form: the identity."""
    fqans: tuple[str, ...]
    """VOMS FQANs, primary first; empty without VOMS attributes."""
    vo: str | None
    not_after: dt.datetime
    """When the first thing in the chain (a certificate or the AC) expires."""
    subject: str
    """Subject of the presented leaf (the proxy's own DN, or the EEC's for a plain certificate)."""
    issuer: str
    """CA that issued the end-entity certificate."""
    proxy_depth: int = 0
    limited: bool = False
    voms_issuer: str | None = None
    voms_uri: str | None = None

    @property
    def is_proxy(self) -> bool:
        return self.proxy_depth > 0


def parse_chain(chain_pem: list[str]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for pem in chain_pem:
        try:
            certs.extend(x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem))
        except ValueError as exc:
            raise refuse(X509Failure.INVALID_CERTIFICATE, f"unreadable client certificate: {exc}") from None
    if not certs:
        raise refuse(X509Failure.INVALID_CERTIFICATE, "empty client certificate chain")
    if len(certs) > MAX_CHAIN_LENGTH:
        raise refuse(X509Failure.INVALID_CERTIFICATE, f"client certificate chain longer than {MAX_CHAIN_LENGTH}")
    return certs


def fingerprint(certs: list[x509.Certificate]) -> str:
    digest = hashlib.sha256()
    for cert in certs:
        digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.hexdigest()


def _check_proxy(proxy: x509.Certificate, parent: x509.Certificate) -> tuple[ProxyPolicy, int | None]:
    """RFC 3820 section 3 rules for one proxy and the certificate that signed it."""
    info = proxy_cert_info(proxy)
    assert info is not None
    cert_info, critical = info
    subject = name_to_dn(proxy.subject)
    if not critical:
        raise refuse(X509Failure.PROXY_INVALID, f"proxy {subject}: proxyCertInfo must be critical")
    policy = cert_info.policy
    if policy is None:
        raise refuse(X509Failure.PROXY_INVALID, f"proxy {subject}: unknown proxy policy {cert_info.policy_oid}")
    if policy is ProxyPolicy.INDEPENDENT:
        raise refuse(X509Failure.PROXY_INVALID, f"proxy {subject} is independent: it carries no rights of its issuer")
    rdns = list(proxy.subject.rdns)
    last = rdns[-1] if rdns else None
    if (
        last is None
        or x509.Name(rdns[:-1]) != parent.subject
        or len(last) != 1
        or next(iter(last)).oid != NameOID.COMMON_NAME
    ):
        raise refuse(X509Failure.PROXY_INVALID,
                     f"proxy {subject}: its subject must be its issuer's subject plus one CN")
    if is_ca(proxy):
        raise refuse(X509Failure.PROXY_INVALID, f"proxy {subject} claims to be a CA")
    for oid in (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.ISSUER_ALTERNATIVE_NAME):
        try:
            proxy.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        raise refuse(X509Failure.PROXY_INVALID, f"proxy {subject} must not carry subject or issuer alternative names")
    try:
        usage = parent.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:  # type: ignore[attr-defined]
        raise refuse(X509Failure.PROXY_INVALID,
                     f"{name_to_dn(parent.subject)} may not sign proxies (no digitalSignature key usage)")
    return policy, cert_info.path_length


class ProxyValidator:
    """Validates client chains against a trusted CA directory and a vomsdir, for one VO."""

    def __init__(self, ca_dir: Path, vomsdir: Path | None = None, vo: str | None = None,
                 *, cache_size: int = CACHE_SIZE) -> None:
        self.trust = TrustStore(Path(ca_dir))
        self.vomsdir = Path(vomsdir) if vomsdir is not None else None
        self.vo = vo
        self._cache: OrderedDict[str, X509Credential] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def validate(self, chain_pem: list[str], *, now: dt.datetime | None = None) -> X509Credential:
        certs = parse_chain(chain_pem)
        key = fingerprint(certs)
        current = now or utcnow()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if cached.not_after > current:
                    self._cache.move_to_end(key)
                    return cached
                del self._cache[key]
        credential = self._validate(certs, current)
        with self._lock:
            self._cache[key] = credential
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return credential

    def _validate(self, certs: list[x509.Certificate], now: dt.datetime) -> X509Credential:
        proxies: list[x509.Certificate] = []
        for cert in certs:
            if proxy_cert_info(cert) is None:
                break
            proxies.append(cert)
        rest = certs[len(proxies):]
        if not rest:
            raise refuse(X509Failure.BROKEN_CHAIN, "the chain holds proxies only: the user certificate is missing")
        if any(proxy_cert_info(c) is not None for c in rest):
            raise refuse(X509Failure.BROKEN_CHAIN, "a proxy appears above the user certificate in the chain")
        eec = rest[0]
        if is_ca(eec):
            raise refuse(X509Failure.NOT_END_ENTITY, f"{name_to_dn(eec.subject)} is a CA certificate, not a user's")

        # Proxies, from the one the EEC signed down to the leaf.
        ordered = list(reversed(proxies))
        parents = [eec, *ordered[:-1]][: len(ordered)]
        limited = False
        remaining: int | None = None  # proxies still allowed below, from the tightest pCPathLenConstraint
        for proxy, parent in zip(ordered, parents, strict=True):
            check_signed_by(proxy, parent)
            check_validity(proxy, now, expired=X509Failure.PROXY_EXPIRED, what="proxy")
            policy, path_length = _check_proxy(proxy, parent)
            if limited and policy is not ProxyPolicy.LIMITED:
                raise refuse(X509Failure.PROXY_INVALID,
                             f"proxy {name_to_dn(proxy.subject)} was signed by a limited proxy but is not limited")
            limited = limited or policy is ProxyPolicy.LIMITED
            if remaining is not None:
                if remaining < 1:
                    raise refuse(X509Failure.PROXY_INVALID,
                                 f"proxy {name_to_dn(proxy.subject)} exceeds the proxy path length of its issuer")
                remaining -= 1
            if path_length is not None:
                remaining = path_length if remaining is None else min(remaining, path_length)

        path = self.trust.verify_path(rest, now, what="user certificate")

        acs = self._voms(ordered, eec, now)
        expiry = min(c.not_valid_after_utc for c in path + proxies)
        fqans: tuple[str, ...] = ()
        vo = voms_issuer = voms_uri = None
        if acs is not None:
            expiry = min(expiry, acs.not_after)
            fqans, vo, voms_issuer, voms_uri = acs.fqans, acs.vo, acs.issuer_dn, acs.uri
        return X509Credential(
            dn=name_to_dn(eec.subject),
            fqans=fqans,
            vo=vo,
            not_after=expiry,
            subject=name_to_dn(certs[0].subject),
            issuer=name_to_dn(eec.issuer),
            proxy_depth=len(proxies),
            limited=limited,
            voms_issuer=voms_issuer,
            voms_uri=voms_uri,
        )

    def _voms(self, ordered: list[x509.Certificate], eec: x509.Certificate, now: dt.datetime
              ) -> AttributeCertificate | None:
        """The AC in effect: the one nearest the leaf (a delegated proxy re-embeds or inherits it)."""
        for proxy in reversed(ordered):
            acs = acs_from_certificate(proxy)
            if not acs:
                continue
            if self.vomsdir is None:
                raise refuse(X509Failure.VOMS_UNTRUSTED, "this service has no vomsdir: it trusts no VOMS server")
            mine = [ac for ac in acs if self.vo is None or ac.vo == self.vo]
            if not mine:
                raise refuse(X509Failure.WRONG_VO,
                             f"the proxy carries VOMS attributes of VO {', '.join(sorted({a.vo for a in acs}))}; "
                             f"this service serves VO {self.vo!r}")
            verify_ac(mine[0], eec=eec, vomsdir=self.vomsdir, trust=self.trust, vo=self.vo, now=now)
            return mine[0]
        return None
