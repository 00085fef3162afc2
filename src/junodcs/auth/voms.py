"""VOMS attribute certificates: build, sign, parse and verify them, and the local VOMS server identity.

A VOMS AC (RFC 5755 AttributeCertificateV2) says "the VO's VOMS server asserts these FQANs for the
holder of this certificate" and rides in a proxy extension. Its structure follows what the VOMS server
and `voms-proxy-fake` produce, so that `voms-proxy-info`, LCMAPS, dCache, StoRM and XRootD read ours
and we read theirs:

- holder: baseCertificateID = issuer DN + serial of the user's end-entity certificate (EEC);
- issuer: v2Form with the VOMS server's DN; signature SHA-256 with RSA;
- attribute 1.3.6.1.4.1.8005.100.100.4: IetfAttrSyntax, policyAuthority URI `<vo>://<host>:<port>`,
  values = FQANs as OCTET STRINGs, primary first;
- extensions: noRevAvail, authorityKeyIdentifier, the VOMS server's certificate (100.100.10) so that
  relying parties need only the CA and the `.lsc` file, and AC targeting (critical) when targets are set.

Trust: `<vomsdir>/<vo>/<host>.lsc` lists the DN of the VOMS server certificate and of its CA(s), one
per line; the certificate carried in the AC must match one such list and chain to a trusted CA.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asn1crypto import cms, core
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from junodcs.auth.trust import CLOCK_SKEW, TrustStore, X509Failure, refuse
from junodcs.auth.x509 import (
    OID_VOMS_AC_SEQUENCE,
    CertificateAuthority,
    Credential,
    load_credential,
    name_to_dn,
    utcnow,
)
from junodcs.core.errors import Forbidden, InvalidInput, Unauthenticated
from junodcs.core.gridconfig import normalize_fqan
from junodcs.core.paths import data_dir

if TYPE_CHECKING:
    from junodcs.auth.registry import Registry
    from junodcs.core.gridconfig import GridConfig

OID_VOMS_FQANS = "1.3.6.1.4.1.8005.100.100.4"
OID_VOMS_CERTS = "1.3.6.1.4.1.8005.100.100.10"
OID_VOMS_TAGS = "1.3.6.1.4.1.8005.100.100.11"
OID_NO_REV_AVAIL = "2.5.29.56"
OID_TARGET_INFORMATION = "2.5.29.55"
LSC_NEXT_CHAIN = "------NEXT CHAIN------"
DEFAULT_VOMS_PORT = 15000


# -- ASN.1 schemas (RFC 5755 and the VOMS extensions), registered with asn1crypto ------------------------


class _Certificates(core.SequenceOf):
    _child_spec = ax.Certificate


class VOMSCertificates(core.Sequence):
    """Value of 1.3.6.1.4.1.8005.100.100.10: SEQUENCE { SEQUENCE OF Certificate }."""

    _fields = [("certificates", _Certificates)]


class _Target(core.Choice):
    _alternatives = [
        ("target_name", ax.GeneralName, {"explicit": 0}),
        ("target_group", ax.GeneralName, {"explicit": 1}),
    ]


class _Targets(core.SequenceOf):
    _child_spec = _Target


class TargetInformation(core.SequenceOf):
    """RFC 5755 targeting extension: SEQUENCE OF Targets."""

    _child_spec = _Targets


cms.AttCertAttributeType._map.setdefault(OID_VOMS_FQANS, "voms_fqans")
cms.AttCertAttribute._oid_specs.setdefault("voms_fqans", cms.SetOfIetfAttrSyntax)
for _oid, _name, _spec in (
    (OID_VOMS_CERTS, "voms_certificates", VOMSCertificates),
    (OID_NO_REV_AVAIL, "no_rev_avail", core.Null),
    (OID_TARGET_INFORMATION, "target_information", TargetInformation),
):
    ax.ExtensionId._map.setdefault(_oid, _name)
    ax.Extension._oid_specs.setdefault(_name, _spec)


# -- the parsed AC --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeCertificate:
    der: bytes
    vo: str
    fqans: tuple[str, ...]
    policy_authority: str
    """`<vo>://<host>:<port>` of the VOMS server that signed the AC."""
    issuer_dn: str
    holder_issuer_dn: str
    holder_serial: int
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    signer_certificates: tuple[x509.Certificate, ...]
    targets: tuple[str, ...]
    unknown_critical: tuple[str, ...]

    @property
    def uri(self) -> str:
        """`host:port`, as voms-proxy-info prints it."""
        return self.policy_authority.split("://", 1)[-1]

    @property
    def host(self) -> str:
        return self.uri.rsplit(":", 1)[0]

    @property
    def time_left(self) -> dt.timedelta:
        return max(self.not_after - utcnow(), dt.timedelta(0))


def _directory_name(names: ax.GeneralNames) -> ax.Name | None:
    for name in names:
        if name.name == "directory_name":
            return name.chosen  # type: ignore[no-any-return]
    return None


def _crypto_name(parsed: ax.Name) -> x509.Name:
    rdns = []
    for rdn in parsed.chosen:
        attributes = []
        for item in rdn:
            oid = x509.ObjectIdentifier(item["type"].dotted)
            value = item["value"].native
            attributes.append(x509.NameAttribute(oid, str(value)))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def parse_ac(der: bytes) -> AttributeCertificate:
    """Decode one DER AttributeCertificate; any structural problem is `voms-invalid`."""
    try:
        ac = cms.AttributeCertificateV2.load(der)
        info = ac["ac_info"]
        holder = info["holder"]["base_certificate_id"]
        if holder.native is None:
            raise ValueError("the holder has no baseCertificateID")
        holder_name = _directory_name(holder["issuer"])
        issuer = info["issuer"]
        issuer_names = issuer.chosen["issuer_name"] if issuer.name == "v2_form" else issuer.chosen
        issuer_name = _directory_name(issuer_names)
        if holder_name is None or issuer_name is None:
            raise ValueError("holder or issuer without a directory name")
        fqans: list[str] = []
        authority = ""
        for attribute in info["attributes"]:
            if attribute["type"].dotted != OID_VOMS_FQANS:
                continue
            for syntax in attribute["values"]:
                for general in syntax["policy_authority"] or []:
                    if general.name == "uniform_resource_identifier":
                        authority = str(general.native)
                for value in syntax["values"]:
                    fqans.append(value.chosen.native.decode() if value.name == "octets" else str(value.native))
        if not fqans or not authority:
            raise ValueError("no VOMS FQAN attribute")
        signers: list[x509.Certificate] = []
        targets: list[str] = []
        unknown_critical: list[str] = []
        for extension in info["extensions"] or []:
            oid = extension["extn_id"].dotted
            if oid == OID_VOMS_CERTS:
                for cert in extension["extn_value"].parsed["certificates"]:
                    signers.append(x509.load_der_x509_certificate(cert.dump()))
            elif oid == OID_TARGET_INFORMATION:
                for group in extension["extn_value"].parsed:
                    for target in group:
                        targets.append(str(target.chosen.native))
            elif extension["critical"].native and oid not in (OID_NO_REV_AVAIL, "2.5.29.35"):
                unknown_critical.append(oid)
        validity = info["att_cert_validity_period"]
        return AttributeCertificate(
            der=der,
            vo=authority.split("://", 1)[0],
            fqans=tuple(fqans),
            policy_authority=authority,
            issuer_dn=name_to_dn(_crypto_name(issuer_name)),
            holder_issuer_dn=name_to_dn(_crypto_name(holder_name)),
            holder_serial=int(holder["serial"].native),
            serial=int(info["serial_number"].native),
            not_before=validity["not_before_time"].native,
            not_after=validity["not_after_time"].native,
            signer_certificates=tuple(signers),
            targets=tuple(targets),
            unknown_critical=tuple(unknown_critical),
        )
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise refuse(X509Failure.VOMS_INVALID, f"unreadable VOMS attribute certificate: {exc}") from None


def acs_from_certificate(cert: x509.Certificate) -> list[AttributeCertificate]:
    """The ACs in a proxy's VOMS extension. The value is SEQUENCE { SEQUENCE OF AC } (one inner
    sequence per VOMS server contacted); a bare SEQUENCE OF AC is read too."""
    try:
        extension = cert.extensions.get_extension_for_oid(OID_VOMS_AC_SEQUENCE)
    except x509.ExtensionNotFound:
        return []
    raw = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
    try:
        outer = core.Sequence.load(raw)
        items = [outer[i] for i in range(len(outer))]
    except (ValueError, TypeError) as exc:
        raise refuse(X509Failure.VOMS_INVALID, f"unreadable VOMS extension: {exc}") from None
    found: list[AttributeCertificate] = []
    for item in items:
        der = item.dump()
        inner = core.Sequence.load(der)
        first = inner[0] if len(inner) else None
        first_der = first.dump() if first is not None else b""
        # An AC starts with its AttributeCertificateInfo, whose first field is the INTEGER version.
        looks_like_ac = first_der[:1] == b"\x30" and core.Sequence.load(first_der)[0].dump()[:1] == b"\x02"
        if looks_like_ac:
            found.append(parse_ac(der))
        else:
            found.extend(parse_ac(inner[i].dump()) for i in range(len(inner)))
    return found


# -- building and signing -------------------------------------------------------------------------------


def _general_names_dn(name: x509.Name) -> ax.GeneralNames:
    return ax.GeneralNames([ax.GeneralName(name="directory_name", value=ax.Name.load(name.public_bytes()))])


def build_ac(
    *,
    holder: x509.Certificate,
    fqans: tuple[str, ...],
    vo: str,
    host: str,
    port: int,
    signer: Credential,
    lifetime: dt.timedelta,
    targets: tuple[str, ...] = (),
    not_before: dt.datetime | None = None,
) -> bytes:
    """Sign an AC for `holder` (the user's EEC) with the VOMS server credential `signer`."""
    if not fqans:
        raise InvalidInput("an attribute certificate needs at least one FQAN", code="invalid-fqan")
    for fqan in fqans:
        if not fqan.startswith(f"/{vo}"):
            raise InvalidInput(f"FQAN {fqan} is not in VO {vo}", code="invalid-fqan")
    # Whole seconds: VOMS parsers read GeneralizedTime as YYYYMMDDHHMMSSZ and crash on fractions.
    start = (not_before or (utcnow() - CLOCK_SKEW)).replace(microsecond=0)
    end = min(utcnow() + lifetime, signer.cert.not_valid_after_utc).replace(microsecond=0)
    authority = f"{vo}://{host}:{port}"
    attribute = cms.AttCertAttribute({
        "type": OID_VOMS_FQANS,
        "values": [cms.IetfAttrSyntax({
            "policy_authority": ax.GeneralNames([
                ax.GeneralName(name="uniform_resource_identifier", value=authority)
            ]),
            "values": [cms.IetfAttrValue(name="octets", value=f.encode()) for f in fqans],
        })],
    })
    ski = x509.SubjectKeyIdentifier.from_public_key(signer.cert.public_key()).digest  # type: ignore[arg-type]
    extensions = [
        ax.Extension({"extn_id": OID_VOMS_CERTS, "critical": False,
                      "extn_value": VOMSCertificates({"certificates": [
                          ax.Certificate.load(signer.cert.public_bytes(serialization.Encoding.DER))]})}),
        ax.Extension({"extn_id": OID_NO_REV_AVAIL, "critical": False, "extn_value": core.Null()}),
        ax.Extension({"extn_id": "2.5.29.35", "critical": False,
                      "extn_value": ax.AuthorityKeyIdentifier({"key_identifier": ski})}),
    ]
    if targets:
        extensions.append(ax.Extension({
            "extn_id": OID_TARGET_INFORMATION, "critical": True,
            "extn_value": TargetInformation([_Targets([
                _Target(name="target_name", value=ax.GeneralName(name="uniform_resource_identifier", value=t))
                for t in targets])]),
        }))
    info = cms.AttributeCertificateInfoV2({
        "version": "v2",
        "holder": cms.Holder({"base_certificate_id": cms.IssuerSerial({
            "issuer": _general_names_dn(holder.issuer), "serial": holder.serial_number})}),
        "issuer": cms.AttCertIssuer(name="v2_form", value=cms.V2Form({
            "issuer_name": _general_names_dn(signer.cert.subject)})),
        "signature": {"algorithm": "sha256_rsa"},
        "serial_number": secrets.randbits(63),
        "att_cert_validity_period": {"not_before_time": start, "not_after_time": end},
        "attributes": [attribute],
        "extensions": extensions,
    })
    key = signer.key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput("the VOMS server key must be RSA", code="invalid-credential")
    signature = key.sign(info.dump(), padding.PKCS1v15(), hashes.SHA256())
    return cms.AttributeCertificateV2({
        "ac_info": info, "signature_algorithm": {"algorithm": "sha256_rsa"}, "signature": signature,
    }).dump()


# -- verification ---------------------------------------------------------------------------------------


def read_lsc(path: Path) -> list[tuple[str, ...]]:
    """DN chains of an .lsc file: server DN, then its CA(s); chains separated by NEXT CHAIN lines."""
    chains: list[tuple[str, ...]] = []
    current: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("------NEXT CHAIN"):
            if current:
                chains.append(tuple(current))
            current = []
            continue
        current.append(line)
    if current:
        chains.append(tuple(current))
    return chains


_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _check_signature(ac_der: bytes, signer: x509.Certificate) -> bool:
    ac = cms.AttributeCertificateV2.load(ac_der)
    algorithm = ac["signature_algorithm"]
    digest = _HASHES.get(algorithm.hash_algo)
    if digest is None:
        return False
    data = ac["ac_info"].dump()
    signature = ac["signature"].native
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm.signature_algo == "rsassa_pkcs1v15":
            key.verify(signature, data, padding.PKCS1v15(), digest())
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm.signature_algo == "ecdsa":
            key.verify(signature, data, ec.ECDSA(digest()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def verify_ac(
    ac: AttributeCertificate,
    *,
    eec: x509.Certificate,
    vomsdir: Path,
    trust: TrustStore,
    vo: str | None,
    now: dt.datetime | None = None,
) -> None:
    """Refuse (`Unauthenticated`) unless the AC is for `eec`, of `vo`, valid now, and signed by a VOMS
    server that the vomsdir's .lsc names and a trusted CA certified."""
    now = now or utcnow()
    if vo is not None and ac.vo != vo:
        raise refuse(X509Failure.WRONG_VO, f"the VOMS attributes are of VO {ac.vo!r}; this service serves VO {vo!r}")
    bad = [f for f in ac.fqans if normalize_fqan(f).split("/")[1:2] != [ac.vo]]
    if bad:
        raise refuse(X509Failure.VOMS_INVALID, f"FQAN {bad[0]} does not belong to VO {ac.vo}")
    if ac.unknown_critical:
        raise refuse(X509Failure.VOMS_INVALID, f"unsupported critical AC extension {ac.unknown_critical[0]}")
    # Holder binding. Real VOMS names the EEC's issuer; voms-proxy-fake names the EEC's subject. Both
    # come with the EEC's serial, which with either name identifies the user's certificate.
    if ac.holder_serial != eec.serial_number or ac.holder_issuer_dn not in (
        name_to_dn(eec.issuer), name_to_dn(eec.subject)
    ):
        raise refuse(X509Failure.VOMS_HOLDER_MISMATCH,
                     f"the VOMS attributes were issued for another certificate ({ac.holder_issuer_dn}, serial "
                     f"{ac.holder_serial:x}), not for {name_to_dn(eec.subject)}")
    if ac.not_before > now + CLOCK_SKEW:
        raise refuse(X509Failure.VOMS_INVALID, f"the VOMS attributes are not valid before {ac.not_before:%Y-%m-%d %H:%M:%S} UTC")
    if ac.not_after < now:
        raise refuse(X509Failure.VOMS_EXPIRED, f"the VOMS attributes of VO {ac.vo} expired at {ac.not_after:%Y-%m-%d %H:%M:%S} UTC")
    lsc = Path(vomsdir) / ac.vo / f"{ac.host}.lsc"
    if not lsc.is_file():
        raise refuse(X509Failure.VOMS_UNTRUSTED,
                     f"VOMS server {ac.host} of VO {ac.vo} is not trusted here (no {ac.vo}/{ac.host}.lsc in the vomsdir)")
    if not ac.signer_certificates:
        raise refuse(X509Failure.VOMS_INVALID, "the attribute certificate does not carry its VOMS server certificate")
    signer = ac.signer_certificates[0]
    if name_to_dn(signer.subject) != ac.issuer_dn:
        raise refuse(X509Failure.VOMS_INVALID, f"the AC issuer {ac.issuer_dn} is not the certificate it carries")
    try:
        path = trust.verify_path(list(ac.signer_certificates), now, what="VOMS server certificate")
    except Unauthenticated as exc:
        raise refuse(X509Failure.VOMS_UNTRUSTED, f"VOMS server certificate not trusted: {exc.detail}") from None
    dns = tuple(name_to_dn(c.subject) for c in path)
    if not any(dns[: len(chain)] == chain for chain in read_lsc(lsc)):
        raise refuse(X509Failure.VOMS_UNTRUSTED,
                     f"VOMS server {ac.issuer_dn} (CA {dns[1] if len(dns) > 1 else '?'}) is not the one "
                     f"{lsc.name} names for VO {ac.vo}")
    if not _check_signature(ac.der, signer):
        raise refuse(X509Failure.VOMS_INVALID, f"the signature of the VOMS attributes does not verify with {ac.issuer_dn}")


# -- FQAN selection (what a VOMS server would assert for a registry user) --------------------------------


def full_fqan(fqan: str) -> str:
    """`/juno/Role=production` -> `/juno/Role=production/Capability=NULL`, the form VOMS asserts."""
    normal = normalize_fqan(fqan)
    parts = normal.split("/")
    role = next((p for p in parts if p.startswith("Role=")), "Role=NULL")
    groups = "/".join(p for p in parts if p and not p.startswith(("Role=", "Capability=")))
    return f"/{groups}/{role}/Capability=NULL"


def fqans_for(registry: Registry, username: str, requested: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The FQANs the VOMS server grants `username`: the requested ones first (primary), then every group
    FQAN the user is a member of. A role the user's groups do not grant is refused, as VOMS does."""
    user = registry.user(username)
    granted: dict[str, str] = {}
    for group_name in user.groups:
        group = registry.grid.registry.groups[group_name]
        if group.voms_fqan:
            granted[normalize_fqan(group.voms_fqan)] = group_name
    vo_root = f"/{registry.vo}"
    out: list[str] = []
    for fqan in requested:
        normal = normalize_fqan(fqan)
        if normal.split("/")[1:2] != [registry.vo]:
            raise InvalidInput(f"FQAN {fqan} is not in VO {registry.vo}", code="invalid-fqan")
        if normal != vo_root and normal not in granted:
            raise Forbidden(f"user {username!r} holds no group or role {normal} in VO {registry.vo}",
                            code="fqan-not-allowed")
        if full_fqan(normal) not in out:
            out.append(full_fqan(normal))
    groups = [f for f in granted if "Role=" not in f]
    if vo_root not in groups:
        groups.insert(0, vo_root)
    for fqan in groups:
        if full_fqan(fqan) not in out:
            out.append(full_fqan(fqan))
    return tuple(out)


def parse_voms_option(value: str) -> tuple[str, tuple[str, ...]]:
    """`juno` or `juno:/juno/Role=production` (as for voms-proxy-init --voms) -> (vo, requested FQANs)."""
    vo, _, fqan = value.partition(":")
    if not vo:
        raise InvalidInput(f"--voms {value!r}: expected VO[:FQAN]", code="invalid-fqan")
    return vo, ((fqan,) if fqan else ())


# -- the local VOMS server identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class VOMSServer:
    """The VOMS server of a local grid: a host credential from the project CA plus its trust files."""

    vo: str
    host: str
    port: int
    credential: Credential
    vomsdir: Path

    @staticmethod
    def default_root() -> Path:
        return data_dir() / "voms"

    @staticmethod
    def default_vomsdir() -> Path:
        return data_dir() / "vomsdir"

    @classmethod
    def ensure(cls, ca: CertificateAuthority, grid: GridConfig, *, root: Path | None = None,
               vomsdir: Path | None = None) -> VOMSServer:
        """Load the VOMS identity, creating it (and the `.lsc` and `vomses` files) when missing or when
        it was issued by another CA."""
        configured = grid.voms[0] if grid.voms else None
        host = configured.host if configured else "localhost"
        port = configured.port if configured else DEFAULT_VOMS_PORT
        dn = (configured.dn if configured and configured.dn else None) or f"/C=CN/O=JUNO/OU=VOMS/CN={host}"
        root = root or cls.default_root()
        vomsdir = vomsdir or cls.default_vomsdir()
        cert_path, key_path = root / "hostcert.pem", root / "hostkey.pem"
        credential: Credential | None = None
        if cert_path.exists() and key_path.exists():
            credential = load_credential(cert_path, key_path)
            stale = (credential.cert.issuer != ca.cert.subject or name_to_dn(credential.cert.subject) != dn
                     or credential.not_after < utcnow() + dt.timedelta(days=1))
            if stale:
                credential = None
        if credential is None:
            credential = ca.issue_host(host, dn=dn, days=365)
            credential.write(cert_path, key_path)
        server = cls(vo=grid.vo, host=host, port=port, credential=credential, vomsdir=vomsdir)
        server.write_trust_files(ca)
        return server

    @property
    def dn(self) -> str:
        return name_to_dn(self.credential.cert.subject)

    @property
    def lsc_path(self) -> Path:
        return self.vomsdir / self.vo / f"{self.host}.lsc"

    def write_trust_files(self, ca: CertificateAuthority) -> None:
        self.lsc_path.parent.mkdir(parents=True, exist_ok=True)
        self.lsc_path.write_text(f"{self.dn}\n{ca.dn}\n")
        vomses = self.vomsdir.parent / "vomses"
        vomses.mkdir(parents=True, exist_ok=True)
        (vomses / f"{self.vo}-{self.host}").write_text(
            f'"{self.vo}" "{self.host}" "{self.port}" "{self.dn}" "{self.vo}"\n'
        )

    def issue(self, holder: x509.Certificate, fqans: tuple[str, ...], *, lifetime: dt.timedelta,
              targets: tuple[str, ...] = ()) -> bytes:
        return build_ac(holder=holder, fqans=fqans, vo=self.vo, host=self.host, port=self.port,
                        signer=self.credential, lifetime=lifetime, targets=targets)


__all__ = [
    "AttributeCertificate",
    "VOMSServer",
    "acs_from_certificate",
    "build_ac",
    "fqans_for",
    "full_fqan",
    "parse_ac",
    "parse_voms_option",
    "read_lsc",
    "verify_ac",
]
