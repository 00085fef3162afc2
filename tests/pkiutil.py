"""A throw-away grid PKI for tests: project CA, local VOMS server, user certificates, proxies, forgeries."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from junodcs.auth.registry import Registry
from junodcs.auth.voms import VOMSServer, fqans_for
from junodcs.auth.x509 import CertificateAuthority, Credential, create_proxy, new_key
from junodcs.core.gridconfig import GridConfig

ZHANG_DN = "/C=CN/O=JUNO/OU=IHEP/CN=Xiaomei Zhang"


@dataclass
class PKI:
    ca: CertificateAuthority
    voms: VOMSServer
    grid: GridConfig

    @property
    def registry(self) -> Registry:
        return Registry(self.grid)

    def user(self, dn: str = ZHANG_DN) -> Credential:
        return self.ca.issue_user(dn)

    def voms_proxy(self, user: Credential, *requested: str, username: str = "zhangxm",
                   lifetime: dt.timedelta = dt.timedelta(hours=2)) -> Credential:
        fqans = fqans_for(self.registry, username, tuple(requested))
        ac = self.voms.issue(user.eec, fqans, lifetime=lifetime)
        return create_proxy(user, lifetime=lifetime, voms_acs=(ac,))


def make_pki(grid: GridConfig, root: Path) -> PKI:
    ca = CertificateAuthority.init(root / "ca", bits=2048)
    voms = VOMSServer.ensure(ca, grid, root=root / "voms", vomsdir=root / "vomsdir")
    return PKI(ca=ca, voms=voms, grid=grid)


def chain_pems(credential: Credential) -> list[str]:
    """What the TLS layer hands the validator: PEM strings, leaf first."""
    return [c.public_bytes(encoding=_pem()).decode() for c in (credential.cert, *credential.chain)]


def pems_of_file(path: Path) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", path.read_text(), re.S)


def _pem() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def resign(cert: x509.Certificate, key: object, **changes: object) -> x509.Certificate:
    """Copy of `cert` signed by another `key`, optionally with other validity dates or extensions."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(changes.get("subject", cert.subject))  # type: ignore[arg-type]
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(cert.serial_number)
        .not_valid_before(changes.get("not_before", cert.not_valid_before_utc))  # type: ignore[arg-type]
        .not_valid_after(changes.get("not_after", cert.not_valid_after_utc))  # type: ignore[arg-type]
    )
    critical_override = changes.get("critical", {})
    for extension in cert.extensions:
        critical = critical_override.get(extension.oid.dotted_string, extension.critical)  # type: ignore[union-attr]
        builder = builder.add_extension(extension.value, critical)
    return builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]


def broken_chain_proxy(user: Credential) -> Credential:
    """A proxy whose signature is made with a key that is not its issuer's."""
    proxy = create_proxy(user)
    return Credential(resign(proxy.cert, new_key()), proxy.key, proxy.chain)
