"""Security material of a local grid, made once per installation and reused on every start.

The grid's CA (host certificates, user certificates for the demo), a host certificate for loopback,
and the VOMS server identity whose `.lsc` trust file the central server reads.
"""

from __future__ import annotations

from pathlib import Path

from junodcs.core.gridconfig import GridConfig


def prepare_security(grid: GridConfig, *, host: str) -> dict[str, Path]:
    from junodcs.auth.voms import VOMSServer
    from junodcs.auth.x509 import CertificateAuthority

    ca = CertificateAuthority.load_or_init()
    ca.write_trust_dir()
    alt_names = tuple(n for n in ("localhost", "127.0.0.1", "::1") if n != host)
    host_cert, host_key = ca.host_credential(host, alt_names=alt_names)
    voms = VOMSServer.ensure(ca, grid)
    return {
        "ca_file": ca.cert_path,
        "ca_dir": ca.trust_dir,
        "vomsdir": voms.vomsdir,
        "host_cert": Path(host_cert),
        "host_key": Path(host_key),
    }
