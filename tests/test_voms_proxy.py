"""VOMS attribute certificates and the standalone proxy validator."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from pkiutil import PKI, ZHANG_DN, broken_chain_proxy, chain_pems, make_pki, resign

from junodcs.auth import voms as V
from junodcs.auth import x509 as X
from junodcs.auth.authenticate import identity_from_x509
from junodcs.auth.proxy import ProxyValidator
from junodcs.core.errors import Forbidden, Unauthenticated
from junodcs.core.gridconfig import GridConfig


@pytest.fixture
def pki(grid: GridConfig, tmp_path: Path) -> PKI:
    return make_pki(grid, tmp_path / "pki")


@pytest.fixture
def validator(pki: PKI) -> ProxyValidator:
    return ProxyValidator(ca_dir=pki.ca.trust_dir, vomsdir=pki.voms.vomsdir, vo="juno")


def refused(validator: ProxyValidator, credential: X.Credential) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as error:
        validator.validate(chain_pems(credential))
    return error.value


# -- FQAN selection ---------------------------------------------------------------------------------------


def test_fqans_follow_the_registry(pki: PKI) -> None:
    registry = pki.registry
    assert V.fqans_for(registry, "zhangxm") == ("/juno/Role=NULL/Capability=NULL",)
    assert V.fqans_for(registry, "zhangxm", ("/juno/Role=production",)) == (
        "/juno/Role=production/Capability=NULL", "/juno/Role=NULL/Capability=NULL")
    with pytest.raises(Forbidden) as error:
        V.fqans_for(registry, "alice", ("/juno/Role=production",))
    assert error.value.code == "fqan-not-allowed"
    assert V.fqans_for(registry, "boris", ("/juno/Role=datamanager",))[0] == "/juno/Role=datamanager/Capability=NULL"
    assert V.parse_voms_option("juno:/juno/Role=production") == ("juno", ("/juno/Role=production",))
    assert V.parse_voms_option("juno") == ("juno", ())


# -- the AC itself ----------------------------------------------------------------------------------------


def test_ac_round_trip(pki: PKI) -> None:
    user = pki.user()
    der = pki.voms.issue(user.eec, ("/juno/Role=production/Capability=NULL",), lifetime=dt.timedelta(hours=1),
                         targets=("https://se.ihep.ac.cn",))
    ac = V.parse_ac(der)
    assert ac.vo == "juno" and ac.fqans == ("/juno/Role=production/Capability=NULL",)
    assert ac.policy_authority == "juno://voms.ihep.ac.cn:15008" and ac.uri == "voms.ihep.ac.cn:15008"
    assert ac.issuer_dn == pki.voms.dn
    assert ac.holder_issuer_dn == pki.ca.dn and ac.holder_serial == user.cert.serial_number
    assert ac.signer_certificates == (pki.voms.credential.cert,)
    assert ac.targets == ("https://se.ihep.ac.cn",)
    assert ac.not_before.microsecond == 0 and ac.not_after - ac.not_before <= dt.timedelta(hours=1, minutes=6)
    proxy = X.create_proxy(user, voms_acs=(der,))
    assert [a.der for a in V.acs_from_certificate(proxy.cert)] == [der]


def test_lsc_files(pki: PKI, tmp_path: Path) -> None:
    assert pki.voms.lsc_path.read_text().splitlines() == [pki.voms.dn, pki.ca.dn]
    lsc = tmp_path / "x.lsc"
    lsc.write_text("/CN=a\n/CN=ca1\n------NEXT CHAIN------\n/CN=a\n/CN=ca2\n")
    assert V.read_lsc(lsc) == [("/CN=a", "/CN=ca1"), ("/CN=a", "/CN=ca2")]
    vomses = pki.voms.vomsdir.parent / "vomses" / "juno-voms.ihep.ac.cn"
    assert vomses.read_text().split('"')[1::2] == ["juno", "voms.ihep.ac.cn", "15008", pki.voms.dn, "juno"]


# -- the validator: what passes ---------------------------------------------------------------------------


def test_voms_proxy_validates_and_maps_to_a_group(pki: PKI, validator: ProxyValidator) -> None:
    user = pki.user()
    proxy = pki.voms_proxy(user, "/juno/Role=production")
    credential = validator.validate(chain_pems(proxy))
    assert credential.dn == ZHANG_DN and credential.vo == "juno"
    assert credential.fqans == ("/juno/Role=production/Capability=NULL", "/juno/Role=NULL/Capability=NULL")
    assert credential.is_proxy and credential.subject == X.name_to_dn(proxy.cert.subject)
    assert credential.not_after <= proxy.not_after
    identity = identity_from_x509(credential, pki.registry)
    assert identity.username == "zhangxm" and identity.group == "juno_production"


def test_plain_certificate_and_proxy_chains(pki: PKI, validator: ProxyValidator) -> None:
    user = pki.user()
    plain = validator.validate(chain_pems(user))
    assert plain.dn == ZHANG_DN and plain.vo is None and plain.fqans == () and not plain.is_proxy
    second = X.create_proxy(pki.voms_proxy(user))
    credential = validator.validate(chain_pems(second))
    assert credential.proxy_depth == 2 and credential.vo == "juno"
    # A verified TLS chain ends with the trusted root: accepted too.
    with_root = [*chain_pems(second), pki.ca.cert_path.read_text()]
    assert validator.validate(with_root).dn == ZHANG_DN
    limited = validator.validate(chain_pems(X.create_proxy(user, policy=X.ProxyPolicy.LIMITED)))
    assert limited.limited


def test_results_are_cached_by_fingerprint(pki: PKI, validator: ProxyValidator, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = chain_pems(pki.voms_proxy(pki.user()))
    first = validator.validate(chain)
    calls: list[int] = []
    original = validator._validate
    monkeypatch.setattr(validator, "_validate", lambda *a: calls.append(1) or original(*a))
    assert validator.validate(chain) is first and calls == []
    later = first.not_after + dt.timedelta(seconds=1)
    with pytest.raises(Unauthenticated):  # expired entries are validated again, and now fail
        validator.validate(chain, now=later)
    assert calls == [1]


# -- the validator: what is refused, and why --------------------------------------------------------------


def test_broken_chain(pki: PKI, validator: ProxyValidator) -> None:
    assert refused(validator, broken_chain_proxy(pki.user())).code == "broken-chain"
    user, other = pki.user(), pki.user("/C=CN/O=JUNO/CN=Other")
    proxy = X.create_proxy(user)
    spliced = X.Credential(proxy.cert, proxy.key, (other.cert,))
    assert refused(validator, spliced).code == "broken-chain"
    assert refused(validator, X.Credential(proxy.cert, proxy.key, ())).code == "broken-chain"


def test_untrusted_ca(pki: PKI, validator: ProxyValidator, tmp_path: Path) -> None:
    rogue = X.CertificateAuthority.init(tmp_path / "rogue", dn=pki.ca.dn, bits=2048)
    error = refused(validator, X.create_proxy(rogue.issue_user(ZHANG_DN)))
    assert error.code == "broken-chain"  # same CA name, other key: the signature does not verify
    other = X.CertificateAuthority.init(tmp_path / "other", dn="/C=XX/O=Rogue/CN=CA", bits=2048)
    assert refused(validator, X.create_proxy(other.issue_user(ZHANG_DN))).code == "untrusted-ca"


def test_expired_proxy_and_certificate(pki: PKI, validator: ProxyValidator) -> None:
    user = pki.user()
    proxy = X.create_proxy(user)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = X.Credential(resign(proxy.cert, user.key, not_before=past - dt.timedelta(hours=2), not_after=past),
                           proxy.key, proxy.chain)
    error = refused(validator, expired)
    assert error.code == "proxy-expired" and "expired at" in error.detail
    old_user = X.Credential(resign(user.cert, pki.ca.key, not_before=past - dt.timedelta(days=1), not_after=past),
                            user.key)
    assert refused(validator, old_user).code == "cert-expired"


def test_proxy_rules(pki: PKI, validator: ProxyValidator) -> None:
    user = pki.user()
    proxy = X.create_proxy(user)
    non_critical = X.Credential(resign(proxy.cert, user.key, critical={"1.3.6.1.5.5.7.1.14": False}),
                                proxy.key, proxy.chain)
    assert "critical" in refused(validator, non_critical).detail
    bad_subject = X.Credential(
        resign(proxy.cert, user.key, subject=X.dn_to_name(ZHANG_DN + "/OU=x")), proxy.key, proxy.chain)
    assert refused(validator, bad_subject).code == "proxy-invalid"
    limited = X.create_proxy(user, policy=X.ProxyPolicy.LIMITED)
    assert validator.validate(chain_pems(X.create_proxy(limited, policy=X.ProxyPolicy.LIMITED))).limited
    # A full proxy signed by a limited one is refused (built by hand: create_proxy will not make it).
    full = X.create_proxy(user)
    forged = X.Credential(_reissued(full, limited), full.key, (limited.cert, *limited.chain))
    assert refused(validator, forged).code == "proxy-invalid"
    capped = X.create_proxy(user, path_length=0)
    assert refused(validator, X.create_proxy(capped)).code == "proxy-invalid"


def _reissued(proxy: X.Credential, issuer: X.Credential) -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes

    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*issuer.cert.subject.rdns, list(proxy.cert.subject.rdns)[-1]]))
        .issuer_name(issuer.cert.subject)
        .public_key(proxy.cert.public_key())  # type: ignore[arg-type]
        .serial_number(proxy.cert.serial_number)
        .not_valid_before(proxy.cert.not_valid_before_utc)
        .not_valid_after(proxy.cert.not_valid_after_utc)
    )
    for extension in proxy.cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]


def test_ca_certificate_is_no_identity(pki: PKI, validator: ProxyValidator) -> None:
    assert refused(validator, X.Credential(pki.ca.cert, pki.ca.key)).code == "not-end-entity"


def test_voms_failures(pki: PKI, validator: ProxyValidator, grid: GridConfig, tmp_path: Path) -> None:
    user = pki.user()
    fqans = ("/juno/Role=production/Capability=NULL",)

    def with_ac(der: bytes) -> X.Credential:
        return X.create_proxy(user, voms_acs=(der,))

    # Expired AC.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    expired = V.build_ac(holder=user.eec, fqans=fqans, vo="juno", host=pki.voms.host, port=pki.voms.port,
                         signer=pki.voms.credential, lifetime=dt.timedelta(hours=-2), not_before=past)
    assert refused(validator, with_ac(expired)).code == "voms-expired"
    # Forged: signed by a VOMS certificate of our CA that the .lsc does not name.
    impostor = pki.ca.issue_host(pki.voms.host, dn="/C=CN/O=JUNO/OU=Evil/CN=voms.ihep.ac.cn")
    forged = V.build_ac(holder=user.eec, fqans=fqans, vo="juno", host=pki.voms.host, port=pki.voms.port,
                        signer=impostor, lifetime=dt.timedelta(hours=1))
    error = refused(validator, with_ac(forged))
    assert error.code == "voms-untrusted" and "Evil" in error.detail
    # Another VO.
    other_vo = V.build_ac(holder=user.eec, fqans=("/dune",), vo="dune", host=pki.voms.host, port=pki.voms.port,
                          signer=pki.voms.credential, lifetime=dt.timedelta(hours=1))
    assert refused(validator, with_ac(other_vo)).code == "wrong-vo"
    # Issued for somebody else's certificate.
    stolen = pki.voms.issue(pki.user("/C=CN/O=JUNO/CN=Somebody").eec, fqans, lifetime=dt.timedelta(hours=1))
    assert refused(validator, with_ac(stolen)).code == "voms-holder-mismatch"
    # Tampered FQANs: the signature no longer verifies.
    good = pki.voms.issue(user.eec, fqans, lifetime=dt.timedelta(hours=1))
    tampered = good.replace(b"/juno/Role=production", b"/juno/Role=productioX")
    assert refused(validator, with_ac(tampered)).code == "voms-invalid"
    # No .lsc for the VOMS host.
    empty = tmp_path / "empty-vomsdir"
    empty.mkdir()
    strict = ProxyValidator(ca_dir=pki.ca.trust_dir, vomsdir=empty, vo="juno")
    assert refused(strict, with_ac(good)).code == "voms-untrusted"
    assert validator.validate(chain_pems(with_ac(good))).fqans == fqans


def test_unknown_dn_is_refused_by_the_registry(pki: PKI, validator: ProxyValidator) -> None:
    stranger = pki.user("/C=CN/O=JUNO/CN=Stranger")
    credential = validator.validate(chain_pems(X.create_proxy(stranger)))
    with pytest.raises(Unauthenticated) as error:
        identity_from_x509(credential, pki.registry)
    assert error.value.code == "unknown-user"
