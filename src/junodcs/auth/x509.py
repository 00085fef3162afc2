"""X.509 for the grid: the project CA, user and host certificates, RFC 3820 proxies, proxy files.

A local grid needs what a real one gets from IGTF CAs and `voms-proxy-init`: a CA that grid tools trust
through an `X509_CERT_DIR`-style hashed directory (`<subject hash>.0`, `.signing_policy`, `.namespaces`),
user certificates with the DNs of the registry, host certificates for the servers (with the loopback
names in subjectAltName so TLS clients verify them), and RFC 3820 proxies in the classic proxy file
format (proxy certificate, its unencrypted key, then the chain), which curl, gfal2, dCache and the VOMS
clients read. The OIDs and formats are the public ones (RFC 3820, RFC 5280, Globus signing policies,
EUGridPMA namespaces); validation lives in `junodcs.auth.proxy`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from junodcs.core.errors import ConfigError, InvalidInput, NotFound
from junodcs.core.paths import data_dir, ensure_private_dir, write_private_file

# -- OIDs (RFC 3820, Globus, VOMS) ----------------------------------------------------------------------

OID_PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
"""RFC 3820 proxyCertInfo; always critical in a proxy."""
OID_PPL_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
OID_PPL_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
OID_PPL_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
"""Globus "limited proxy" policy language: services refuse job submission with such a proxy."""
OID_VOMS_AC_SEQUENCE = ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
"""Proxy extension carrying the VOMS attribute certificates (SEQUENCE OF AttributeCertificate)."""

DEFAULT_CA_DN = "/C=CN/O=JUNO/CN=JUNO DCS Project CA"
DEFAULT_KEY_BITS = 2048
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Proxies and certificates start this much in the past so that a peer with a slow clock accepts them."""


class ProxyPolicy(StrEnum):
    """RFC 3820 policy languages a proxy can carry (what it may do on behalf of its issuer)."""

    INHERIT_ALL = "inheritAll"
    LIMITED = "limited"
    INDEPENDENT = "independent"

    @property
    def oid(self) -> str:
        return {
            ProxyPolicy.INHERIT_ALL: OID_PPL_INHERIT_ALL,
            ProxyPolicy.LIMITED: OID_PPL_LIMITED,
            ProxyPolicy.INDEPENDENT: OID_PPL_INDEPENDENT,
        }[self]

    @classmethod
    def from_oid(cls, oid: str) -> ProxyPolicy | None:
        for policy in cls:
            if policy.oid == oid:
                return policy
        return None


# -- DNs: OpenSSL slash form <-> cryptography Name ---------------------------------------------------------

_SHORT_NAMES: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "street": NameOID.STREET_ADDRESS,
    "title": NameOID.TITLE,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "name": ObjectIdentifier("2.5.4.41"),
    "dnQualifier": NameOID.DN_QUALIFIER,
    "pseudonym": NameOID.PSEUDONYM,
}
_OID_SHORT = {oid.dotted_string: short for short, oid in _SHORT_NAMES.items()}
_ALIASES = {"E": "emailAddress", "EMAIL": "emailAddress", "EMAILADDRESS": "emailAddress", "USERID": "UID"}
# A new component starts at a "/" followed by "key=": CNs such as "host/pilot.example.org" keep their "/".
_COMPONENT_RE = re.compile(r"/(?=[A-Za-z][A-Za-z0-9.]*=)")


def dn_to_name(dn: str) -> x509.Name:
    """`/C=CN/O=JUNO/CN=Alice` -> `x509.Name`, in the same (most significant first) order."""
    text = dn.strip()
    if not text.startswith("/") or "=" not in text:
        raise InvalidInput(f"{dn!r} is not a DN in the slash form, e.g. /C=CN/O=JUNO/CN=Alice", code="invalid-dn")
    rdns: list[x509.RelativeDistinguishedName] = []
    for component in _COMPONENT_RE.split(text[1:]):
        key, sep, value = component.partition("=")
        if not sep or not value:
            raise InvalidInput(f"{dn!r}: component {component!r} is not key=value", code="invalid-dn")
        key = _ALIASES.get(key.upper(), key)
        oid = _SHORT_NAMES.get(key) or _SHORT_NAMES.get(key.upper())
        if oid is None:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)+", key):
                raise InvalidInput(f"{dn!r}: unknown attribute {key!r}", code="invalid-dn")
            oid = ObjectIdentifier(key)
        if oid == NameOID.COUNTRY_NAME and len(value) != 2:
            raise InvalidInput(f"{dn!r}: C= must be a two-letter country code", code="invalid-dn")
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]))
    return x509.Name(rdns)


def name_to_dn(name: x509.Name) -> str:
    """`x509.Name` -> OpenSSL slash form, as `openssl x509 -subject -nameopt compat` and grid tools print it."""
    parts = []
    for rdn in name.rdns:
        for attribute in rdn:
            short = _OID_SHORT.get(attribute.oid.dotted_string, attribute.oid.dotted_string)
            value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
            parts.append(f"/{short}={value}")
    return "".join(parts)


# -- OpenSSL subject hash (X509_NAME_hash, the name of files in X509_CERT_DIR) -------------------------------


def _canonical_value(value: str) -> str:
    # OpenSSL's canonical form: trimmed, internal whitespace runs collapsed to one space, ASCII lower-cased.
    collapsed = re.sub(r"[ \t\n\r\f\v]+", " ", value.strip(" \t\n\r\f\v"))
    return "".join(c.lower() if c.isascii() else c for c in collapsed)


def subject_hash(name: x509.Name) -> str:
    """The 8-hex-digit hash OpenSSL uses to find a CA in a hashed directory (`openssl x509 -hash`).

    SHA-1 over the concatenated DER of the name's RDN sets, each string value re-encoded as a
    canonical UTF8String; the first four digest bytes read little-endian.
    """
    encoded = b""
    for rdn in name.rdns:
        items = []
        for attribute in rdn:
            value = attribute.value
            if isinstance(value, str):
                inner: asn1.Asn1Value = asn1.UTF8String(_canonical_value(value))
            else:  # BitString-valued attributes are copied as they are
                inner = asn1.OctetBitString(value)
            items.append(asn1.ObjectIdentifier(attribute.oid.dotted_string).dump() + inner.dump())
        members = sorted(b"\x30" + _der_length(len(i)) + i for i in items)
        body = b"".join(members)
        encoded += b"\x31" + _der_length(len(body)) + body
    digest = hashlib.sha1(encoded).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


# -- credentials ----------------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key(bits: int = DEFAULT_KEY_BITS) -> rsa.RSAPrivateKey:
    if bits < 2048:
        raise InvalidInput("RSA keys shorter than 2048 bits are not accepted on the grid", code="weak-key")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: CertificateIssuerPrivateKeyTypes, *, traditional: bool = True) -> bytes:
    """Unencrypted PEM; the traditional `RSA PRIVATE KEY` form by default, which every grid tool reads."""
    fmt = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Credential:
    """A certificate, its private key and the certificates above it (without the trust anchor)."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = field(default=())

    @property
    def dn(self) -> str:
        return name_to_dn(self.cert.subject)

    @property
    def eec(self) -> x509.Certificate:
        """The end-entity certificate: the first certificate in the chain that is no proxy."""
        return next((c for c in (self.cert, *self.chain) if not is_proxy(c)), self.cert)

    @property
    def identity(self) -> str:
        return name_to_dn(self.eec.subject)

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def proxy_pem(self) -> bytes:
        """The proxy file format: certificate, unencrypted key, then the chain."""
        return cert_pem(self.cert) + key_pem(self.key) + b"".join(cert_pem(c) for c in self.chain)

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Certificate (+ chain) world-readable, key mode 600: the layout of usercert.pem/userkey.pem."""
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert_pem(self.cert) + b"".join(cert_pem(c) for c in self.chain))
        write_private_file(key_path, key_pem(self.key))


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    return list(x509.load_pem_x509_certificates(data)) if b"-----BEGIN CERTIFICATE-----" in data else []


def load_credential(cert_path: Path, key_path: Path | None = None) -> Credential:
    """A certificate with its key (the key may be in the same file, as in a proxy file)."""
    try:
        raw = cert_path.read_bytes()
        key_raw = key_path.read_bytes() if key_path is not None else raw
    except OSError as exc:
        raise NotFound(f"cannot read credential: {exc}", code="credential-not-found") from None
    certs = load_pem_certificates(raw)
    if not certs:
        raise InvalidInput(f"{cert_path}: no PEM certificate in it", code="invalid-credential")
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"{key_path or cert_path}: cannot read an unencrypted private key ({exc})", code="invalid-credential"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput(f"{key_path or cert_path}: only RSA keys are supported", code="invalid-credential")
    if key.public_key().public_numbers() != certs[0].public_key().public_numbers():  # type: ignore[union-attr]
        raise InvalidInput(f"{key_path or cert_path}: the key does not match the certificate", code="key-mismatch")
    return Credential(cert=certs[0], key=key, chain=tuple(certs[1:]))


def is_proxy(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(OID_PROXY_CERT_INFO)
    except x509.ExtensionNotFound:
        return False
    return True


# -- the project CA -------------------------------------------------------------------------------------


def _builder(subject: x509.Name, issuer: x509.Name, public_key: rsa.RSAPublicKey, not_before: dt.datetime,
             not_after: dt.datetime, serial: int | None = None) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


class CertificateAuthority:
    """The project CA under `<data dir>/ca/`: key (600), certificate, and a hashed trust directory.

    Layout: `ca.pem`, `ca.key`, `certificates/` (what X509_CERT_DIR points at: `<hash>.0`,
    `<hash>.signing_policy`, `<hash>.namespaces`), `issued/users/<name>/`, `issued/hosts/<host>/`.
    """

    def __init__(self, root: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        self.root = root
        self.cert = cert
        self.key = key

    # -- where things are --------------------------------------------------------------------------

    @staticmethod
    def default_root() -> Path:
        return data_dir() / "ca"

    @property
    def cert_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def trust_dir(self) -> Path:
        """Hashed CA directory in the OpenSSL X509_CERT_DIR layout."""
        return self.root / "certificates"

    @property
    def dn(self) -> str:
        return name_to_dn(self.cert.subject)

    @property
    def hash(self) -> str:
        return subject_hash(self.cert.subject)

    # -- creating and loading ----------------------------------------------------------------------

    @classmethod
    def init(cls, root: Path | None = None, *, dn: str = DEFAULT_CA_DN, days: int = 3650, force: bool = False,
             bits: int = 4096) -> CertificateAuthority:
        """Create the self-signed root (RSA, SHA-256). Refuses to replace an existing CA unless `force`:
        replacing it invalidates every certificate and proxy it signed."""
        root = root or cls.default_root()
        if (root / "ca.pem").exists() and not force:
            raise ConfigError(f"a CA already exists in {root}; use --force to replace it", code="ca-exists")
        key = new_key(bits)
        name = dn_to_name(dn)
        now = utcnow()
        cert = (
            _builder(name, name, key.public_key(), now - CLOCK_SKEW, now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        ensure_private_dir(root)
        write_private_file(root / "ca.key", key_pem(key))
        (root / "ca.pem").write_bytes(cert_pem(cert))
        ca = cls(root, cert, key)
        ca.write_trust_dir()
        return ca

    @classmethod
    def load(cls, root: Path | None = None) -> CertificateAuthority:
        root = root or cls.default_root()
        if not (root / "ca.pem").exists():
            raise NotFound(f"no project CA in {root}; create it with `dcs ca init`", code="no-ca")
        credential = load_credential(root / "ca.pem", root / "ca.key")
        assert isinstance(credential.key, rsa.RSAPrivateKey)
        return cls(root, credential.cert, credential.key)

    @classmethod
    def load_or_init(cls, root: Path | None = None) -> CertificateAuthority:
        root = root or cls.default_root()
        return cls.load(root) if (root / "ca.pem").exists() else cls.init(root)

    def write_trust_dir(self) -> None:
        """`<hash>.0` plus the Globus signing policy and EUGridPMA namespaces files grid tools check."""
        trust = self.trust_dir
        trust.mkdir(parents=True, exist_ok=True)
        for old in trust.iterdir():
            if old.name.startswith(self.hash + "."):
                old.unlink()
        (trust / f"{self.hash}.0").write_bytes(cert_pem(self.cert))
        (trust / f"{self.hash}.signing_policy").write_text(
            f"# Signing policy of the junodcs project CA\n"
            f"access_id_CA      X509         '{self.dn}'\n"
            f"pos_rights        globus        CA:sign\n"
            f"cond_subjects     globus       '\"/*\"'\n"
        )
        (trust / f"{self.hash}.namespaces").write_text(
            f"# Namespaces of the junodcs project CA\n"
            f'TO Issuer "{self.dn}" \\\n'
            f'  PERMIT Subject ".*"\n'
        )

    # -- issuing -----------------------------------------------------------------------------------

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
        )
        return builder.sign(self.key, hashes.SHA256())

    def _validity(self, days: int) -> tuple[dt.datetime, dt.datetime]:
        now = utcnow()
        return now - CLOCK_SKEW, min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)

    def issue_user(self, dn: str, *, days: int = 365, email: str | None = None, bits: int = DEFAULT_KEY_BITS
                   ) -> Credential:
        """A user (end-entity) certificate for grid authentication: clientAuth, no CA bit."""
        key = new_key(bits)
        start, end = self._validity(days)
        builder = (
            _builder(dn_to_name(dn), self.cert.subject, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                              data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if email:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        return Credential(self._sign(builder), key)

    def issue_host(self, host: str, *, alt_names: tuple[str, ...] = (), days: int = 365, dn: str | None = None,
                   bits: int = DEFAULT_KEY_BITS) -> Credential:
        """A host certificate: serverAuth and clientAuth (services also call each other), SANs for the
        host and every alternative name; IP literals become IP SANs."""
        key = new_key(bits)
        start, end = self._validity(days)
        names: list[x509.GeneralName] = []
        for value in (host, *alt_names):
            try:
                general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
            except ValueError:
                general = x509.DNSName(value)
            if general not in names:
                names.append(general)
        builder = (
            _builder(dn_to_name(dn or f"/C=CN/O=JUNO/OU=Host/CN={host}"), self.cert.subject, key.public_key(),
                     start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )
        return Credential(self._sign(builder), key)

    def issued_dir(self, kind: str, name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return self.root / "issued" / kind / safe

    def host_credential(self, host: str, alt_names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
                        ) -> tuple[Path, Path]:
        """Cert and key files of `host`, issued on first use and re-issued when they expire within a day."""
        folder = self.issued_dir("hosts", host)
        cert_path, key_path = folder / "hostcert.pem", folder / "hostkey.pem"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if cert.issuer == self.cert.subject and cert.not_valid_after_utc > utcnow() + dt.timedelta(days=1):
                return cert_path, key_path
        self.issue_host(host, alt_names=alt_names).write(cert_path, key_path)
        return cert_path, key_path


# -- RFC 3820 proxies -----------------------------------------------------------------------------------


class _ProxyPolicyASN1(asn1.Sequence):
    _fields = [("policy_language", asn1.ObjectIdentifier), ("policy", asn1.OctetString, {"optional": True})]


class ProxyCertInfoASN1(asn1.Sequence):
    """RFC 3820 ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL, proxyPolicy }."""

    _fields = [
        ("path_len_constraint", asn1.Integer, {"optional": True}),
        ("proxy_policy", _ProxyPolicyASN1),
    ]


def proxy_cert_info_der(policy: ProxyPolicy, path_length: int | None = None) -> bytes:
    value: dict[str, object] = {"proxy_policy": {"policy_language": policy.oid}}
    if path_length is not None:
        value["path_len_constraint"] = path_length
    return ProxyCertInfoASN1(value).dump()


@dataclass(frozen=True)
class ProxyCertInfo:
    policy_oid: str
    path_length: int | None

    @property
    def policy(self) -> ProxyPolicy | None:
        return ProxyPolicy.from_oid(self.policy_oid)


def proxy_cert_info(cert: x509.Certificate) -> tuple[ProxyCertInfo, bool] | None:
    """The decoded proxyCertInfo of `cert` and whether it is marked critical; None for a non-proxy."""
    try:
        extension = cert.extensions.get_extension_for_oid(OID_PROXY_CERT_INFO)
    except x509.ExtensionNotFound:
        return None
    raw = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
    parsed = ProxyCertInfoASN1.load(raw)
    length = parsed["path_len_constraint"].native
    return ProxyCertInfo(parsed["proxy_policy"]["policy_language"].dotted, length), extension.critical


def create_proxy(
    issuer: Credential,
    *,
    lifetime: dt.timedelta = dt.timedelta(hours=12),
    policy: ProxyPolicy = ProxyPolicy.INHERIT_ALL,
    path_length: int | None = None,
    voms_acs: tuple[bytes, ...] = (),
    bits: int = DEFAULT_KEY_BITS,
) -> Credential:
    """Sign an RFC 3820 proxy with `issuer` (a user certificate or a previous proxy).

    Subject = issuer subject + `CN=<random serial>` (the serial is also the certificate serial), a new
    key, keyUsage critical, proxyCertInfo critical, validity inside the issuer's, and optionally the
    DER VOMS attribute certificates in the VOMS extension.
    """
    issuer_info = proxy_cert_info(issuer.cert)
    if issuer_info is not None and issuer_info[0].policy is ProxyPolicy.LIMITED and policy is not ProxyPolicy.LIMITED:
        raise InvalidInput("a limited proxy can only sign limited proxies", code="limited-proxy")
    now = utcnow()
    if issuer.cert.not_valid_after_utc <= now:
        raise InvalidInput(f"the issuing certificate {issuer.dn} has expired", code="credential-expired")
    key = new_key(bits)
    serial = secrets.randbelow(2**31 - 1) + 1
    subject = x509.Name([*issuer.cert.subject.rdns,
                         x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])])
    not_before = max(now - CLOCK_SKEW, issuer.cert.not_valid_before_utc)
    not_after = min(now + lifetime, issuer.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(OID_PROXY_CERT_INFO, proxy_cert_info_der(policy, path_length)), critical=True
        )
    )
    if voms_acs:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(OID_VOMS_AC_SEQUENCE, voms_ac_sequence_der(voms_acs)), critical=False
        )
    cert = builder.sign(issuer.key, hashes.SHA256())
    chain = (issuer.cert, *issuer.chain)
    return Credential(cert=cert, key=key, chain=chain)


def voms_ac_sequence_der(acs: tuple[bytes, ...]) -> bytes:
    """The VOMS proxy extension value, as the VOMS clients write it: SEQUENCE { SEQUENCE OF AC }."""
    body = b"".join(acs)
    inner = b"\x30" + _der_length(len(body)) + body
    return b"\x30" + _der_length(len(inner)) + inner


# -- proxy files ----------------------------------------------------------------------------------------


def default_proxy_path() -> Path:
    """`$X509_USER_PROXY`, else `/tmp/x509up_u<uid>`: where every grid tool looks."""
    value = os.environ.get("X509_USER_PROXY")
    return Path(value) if value else Path(f"/tmp/x509up_u{os.getuid()}")


def write_proxy(credential: Credential, path: Path | None = None) -> Path:
    path = path or default_proxy_path()
    write_private_file(path, credential.proxy_pem())
    return path


def load_proxy(path: Path | None = None) -> Credential:
    path = path or default_proxy_path()
    if not path.exists():
        raise NotFound(f"no proxy at {path}; create one with `dcs proxy init`", code="no-proxy")
    return load_credential(path)
