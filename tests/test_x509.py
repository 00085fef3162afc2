"""Project CA, certificates, RFC 3820 proxies and proxy files."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID
from pkiutil import PKI, ZHANG_DN, make_pki

from junodcs.auth import x509 as X
from junodcs.core.errors import ConfigError, InvalidInput
from junodcs.core.gridconfig import GridConfig


@pytest.fixture
def pki(grid: GridConfig, tmp_path: Path) -> PKI:
    return make_pki(grid, tmp_path / "pki")


@pytest.mark.parametrize(
    "dn",
    [
        ZHANG_DN,
        "/DC=org/DC=terena/DC=tcs/C=IT/O=INFN/CN=Alice Rossi alice@infn.it",
        "/C=CN/O=JUNO/OU=Host/CN=host/pilot.ihep.ac.cn",
        "/C=CN/O=JUNO/CN=Bob/emailAddress=bob@ihep.ac.cn",
    ],
)
def test_dn_round_trip(dn: str) -> None:
    assert X.name_to_dn(X.dn_to_name(dn)) == dn


def test_dn_parsing_keeps_order_and_types() -> None:
    name = X.dn_to_name("/C=CN/O=JUNO/CN=host/x.org")
    assert [a.oid for a in name] == [NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host/x.org"


@pytest.mark.parametrize("bad", ["C=CN/O=JUNO", "/C=CHN/O=JUNO", "/XX=1/CN=a", "/CN="])
def test_bad_dns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        X.dn_to_name(bad)


def test_subject_hash_is_openssls(pki: PKI) -> None:
    crypto = pytest.importorskip("OpenSSL.crypto", reason="pyOpenSSL not installed")

    for dn in (pki.ca.dn, "/C=CN/O=JUNO/OU=IHEP/CN=Xiaomei   Zhang ", "/DC=org/DC=Example/CN=UPPER lower"):
        cert = pki.ca.issue_user(dn).cert if dn != pki.ca.dn else pki.ca.cert
        legacy = crypto.X509.from_cryptography(cert)
        assert X.subject_hash(cert.subject) == f"{legacy.subject_name_hash():08x}"


def test_ca_layout(pki: PKI) -> None:
    ca = pki.ca
    assert ca.cert.signature_hash_algorithm is not None and ca.cert.signature_hash_algorithm.name == "sha256"
    assert ca.cert.public_key().key_size >= 2048  # type: ignore[union-attr]
    assert ca.cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca  # type: ignore[attr-defined]
    files = sorted(p.name for p in ca.trust_dir.iterdir())
    assert files == [f"{ca.hash}.0", f"{ca.hash}.namespaces", f"{ca.hash}.signing_policy"]
    assert f"access_id_CA      X509         '{ca.dn}'" in (ca.trust_dir / f"{ca.hash}.signing_policy").read_text()
    assert f'TO Issuer "{ca.dn}"' in (ca.trust_dir / f"{ca.hash}.namespaces").read_text()
    assert stat.S_IMODE((ca.root / "ca.key").stat().st_mode) == 0o600


def test_ca_init_refuses_to_replace_without_force(pki: PKI) -> None:
    with pytest.raises(ConfigError) as error:
        X.CertificateAuthority.init(pki.ca.root, bits=2048)
    assert error.value.code == "ca-exists"
    replaced = X.CertificateAuthority.init(pki.ca.root, bits=2048, force=True)
    assert replaced.cert != pki.ca.cert
    assert X.CertificateAuthority.load(pki.ca.root).cert == replaced.cert


def test_ca_lives_under_the_data_dir(dcs_home: Path) -> None:
    ca = X.CertificateAuthority.init(bits=2048)
    assert ca.root == dcs_home / "ca"


def test_user_and_host_certificates(pki: PKI) -> None:
    user = pki.user()
    assert user.dn == ZHANG_DN and user.cert.issuer == pki.ca.cert.subject
    user.cert.verify_directly_issued_by(pki.ca.cert)
    assert not user.cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca  # type: ignore[attr-defined]
    host = pki.ca.issue_host("127.0.0.1", alt_names=("localhost",))
    san = host.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_proxy_structure(pki: PKI) -> None:
    user = pki.user()
    proxy = X.create_proxy(user, lifetime=dt.timedelta(hours=3))
    cert = proxy.cert
    last = list(cert.subject.rdns)[-1]
    assert x509.Name(list(cert.subject.rdns)[:-1]) == user.cert.subject
    assert next(iter(last)).oid == NameOID.COMMON_NAME and next(iter(last)).value == str(cert.serial_number)
    assert cert.issuer == user.cert.subject
    assert cert.public_key().public_numbers() != user.cert.public_key().public_numbers()  # type: ignore[union-attr]
    usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert usage.critical and usage.value.digital_signature  # type: ignore[attr-defined]
    info = X.proxy_cert_info(cert)
    assert info is not None and info[1] is True
    assert info[0].policy_oid == "1.3.6.1.5.5.7.21.1" and info[0].path_length is None
    assert dt.timedelta(hours=3) <= cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=3, minutes=6)
    cert.verify_directly_issued_by(user.cert)
    assert proxy.identity == ZHANG_DN


def test_limited_proxy_and_path_length(pki: PKI) -> None:
    user = pki.user()
    limited = X.create_proxy(user, policy=X.ProxyPolicy.LIMITED, path_length=0)
    info = X.proxy_cert_info(limited.cert)
    assert info is not None and info[0].policy is X.ProxyPolicy.LIMITED and info[0].path_length == 0
    with pytest.raises(InvalidInput):
        X.create_proxy(limited)


def test_proxy_never_outlives_its_issuer(pki: PKI) -> None:
    user = pki.ca.issue_user(ZHANG_DN, days=1)
    proxy = X.create_proxy(user, lifetime=dt.timedelta(days=30))
    assert proxy.cert.not_valid_after_utc == user.cert.not_valid_after_utc
    assert proxy.cert.not_valid_before_utc >= user.cert.not_valid_before_utc


def test_proxy_file(pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = X.create_proxy(pki.user())
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "x509up"))
    path = X.write_proxy(proxy)
    assert path == tmp_path / "x509up"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    blocks = [line for line in text.splitlines() if line.startswith("-----BEGIN")]
    assert blocks == ["-----BEGIN CERTIFICATE-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----"]
    loaded = X.load_proxy()
    assert loaded.cert == proxy.cert and loaded.chain == proxy.chain
    monkeypatch.delenv("X509_USER_PROXY")
    assert X.default_proxy_path() == Path(f"/tmp/x509up_u{__import__('os').getuid()}")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_accepts_our_proxy(pki: PKI, tmp_path: Path) -> None:
    user = pki.user()
    proxy = X.create_proxy(X.create_proxy(user))  # a proxy of a proxy
    path = X.write_proxy(proxy, tmp_path / "proxy.pem")
    result = subprocess.run(
        ["openssl", "verify", "-CApath", str(pki.ca.trust_dir), "-allow_proxy_certs", "-untrusted", str(path), str(path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    hashed = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca.cert_path)],
                            capture_output=True, text=True, check=True)
    assert hashed.stdout.strip() == pki.ca.hash
