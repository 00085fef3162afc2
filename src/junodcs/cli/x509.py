"""`dcs ca`, `dcs cert`, `dcs proxy`: the project CA, certificates and VOMS proxies of a local grid.

What `voms-proxy-init` and a grid CA do elsewhere: `dcs ca init` creates the CA (and the local VOMS
server identity with its `.lsc`), `dcs cert issue` gives users and hosts certificates, `dcs proxy init`
makes an RFC 3820 proxy with VOMS attributes that the registry allows, `dcs proxy info` shows it like
`voms-proxy-info -all`. Imports stay light here; the crypto is loaded inside the commands.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_fields, print_json

ca_app = typer.Typer(help="The project certification authority.", no_args_is_help=True)
cert_app = typer.Typer(help="Issue user and host certificates from the project CA.", no_args_is_help=True)
proxy_app = typer.Typer(help="RFC 3820 proxies with VOMS attributes.", no_args_is_help=True)

GRID_OPTION = typer.Option(None, "--grid", "-g", help="grid.yaml (default: $DCS_GRID_CONFIG, $DCS_HOME/grid.yaml, "
                                                      "then the JUNO example).")


def _grid(path: Path | None) -> Any:
    from junodcs.cli.server import grid_config_path
    from junodcs.core.gridconfig import load_grid_config

    return load_grid_config(grid_config_path(path))


def parse_valid(value: str) -> Any:
    """`HH:MM` (as voms-proxy-init -valid) -> timedelta."""
    import datetime as dt

    from junodcs.core.errors import InvalidInput

    match = re.fullmatch(r"(\d{1,4}):([0-5]\d)", value.strip())
    if not match:
        raise InvalidInput(f"--valid {value!r}: expected HH:MM, e.g. 12:00", code="invalid-input")
    delta = dt.timedelta(hours=int(match.group(1)), minutes=int(match.group(2)))
    if delta.total_seconds() <= 0:
        raise InvalidInput("--valid must be longer than 00:00", code="invalid-input")
    return delta


def _format_left(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# -- dcs ca -----------------------------------------------------------------------------------------------


@ca_app.command("init")
@handle_errors
def ca_init(
    force: bool = typer.Option(False, "--force", help="Replace an existing CA (every certificate it issued dies)."),
    grid: Path | None = GRID_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Create the project CA, its trust directory and the local VOMS server identity."""
    from junodcs.auth.voms import VOMSServer
    from junodcs.auth.x509 import CertificateAuthority

    config = _grid(grid)
    ca = CertificateAuthority.init(force=force)
    voms = VOMSServer.ensure(ca, config)
    info = {
        "ca": ca.dn,
        "certificate": str(ca.cert_path),
        "trust_dir": str(ca.trust_dir),
        "hash": ca.hash,
        "voms_server": voms.dn,
        "voms_uri": f"{voms.host}:{voms.port}",
        "vomsdir": str(voms.vomsdir),
    }
    if json_out:
        print_json(info)
        return
    print_fields(info, title="project CA")
    typer.echo(f"\nexport X509_CERT_DIR={ca.trust_dir} X509_VOMS_DIR={voms.vomsdir}")


# -- dcs cert ---------------------------------------------------------------------------------------------


@cert_app.command("issue")
@handle_errors
def cert_issue(
    user: str | None = typer.Option(None, "--user", help="Registry user name (DN from grid.yaml) or a new name."),
    host: str | None = typer.Option(None, "--host", help="Host name; localhost and 127.0.0.1 are added as SANs."),
    out: Path | None = typer.Option(None, "--out", help="Directory for the files (default: under the CA)."),
    days: int = typer.Option(365, help="Validity in days."),
    grid: Path | None = GRID_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Issue a user certificate (usercert.pem/userkey.pem) or a host certificate (hostcert.pem/hostkey.pem)."""
    from junodcs.auth.x509 import CertificateAuthority
    from junodcs.core.errors import InvalidInput

    if (user is None) == (host is None):
        raise InvalidInput("give exactly one of --user NAME or --host NAME", code="invalid-input")
    ca = CertificateAuthority.load()
    if user is not None:
        registered = _grid(grid).registry.users.get(user)
        dn = registered.dn if registered is not None and registered.dn else f"/C=CN/O=JUNO/CN={user}"
        credential = ca.issue_user(dn, days=days, email=registered.email if registered is not None else None)
        folder = out or ca.issued_dir("users", user)
        cert_path, key_path = folder / "usercert.pem", folder / "userkey.pem"
    else:
        assert host is not None
        credential = ca.issue_host(host, alt_names=("localhost", "127.0.0.1", "::1"), days=days)
        folder = out or ca.issued_dir("hosts", host)
        cert_path, key_path = folder / "hostcert.pem", folder / "hostkey.pem"
    credential.write(cert_path, key_path)
    info = {"subject": credential.dn, "issuer": ca.dn, "certificate": str(cert_path), "key": str(key_path),
            "not_after": credential.not_after.isoformat()}
    if json_out:
        print_json(info)
    else:
        print_fields(info, title="certificate issued")


# -- dcs proxy --------------------------------------------------------------------------------------------


def _user_credential_paths(cert: Path | None, key: Path | None) -> tuple[Path, Path]:
    import os

    from junodcs.core.errors import NotFound

    cert = cert or Path(os.environ.get("X509_USER_CERT") or Path.home() / ".globus" / "usercert.pem")
    key = key or Path(os.environ.get("X509_USER_KEY") or cert.with_name("userkey.pem"))
    if not cert.is_file():
        raise NotFound(f"no user certificate at {cert}: pass --cert/--key or issue one with "
                       "`dcs cert issue --user NAME`", code="no-user-cert")
    return cert, key


@proxy_app.command("init")
@handle_errors
def proxy_init(
    voms: str | None = typer.Option(None, "--voms", help="VO[:FQAN], e.g. juno or juno:/juno/Role=production."),
    valid: str = typer.Option("12:00", "--valid", help="Lifetime HH:MM."),
    cert: Path | None = typer.Option(None, "--cert", help="User certificate (default: $X509_USER_CERT, "
                                                          "~/.globus/usercert.pem)."),
    key: Path | None = typer.Option(None, "--key", help="User key (default: $X509_USER_KEY, next to the cert)."),
    out: Path | None = typer.Option(None, "--out", help="Proxy file (default: $X509_USER_PROXY, /tmp/x509up_u<uid>)."),
    limited: bool = typer.Option(False, "--limited", help="Make a limited proxy."),
    grid: Path | None = GRID_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Create a proxy; with --voms, attach VOMS attributes signed by the local VOMS server."""
    from junodcs.auth.registry import Registry
    from junodcs.auth.voms import VOMSServer, fqans_for, parse_voms_option
    from junodcs.auth.x509 import CertificateAuthority, ProxyPolicy, create_proxy, load_credential, write_proxy
    from junodcs.core.errors import Forbidden, InvalidInput

    lifetime = parse_valid(valid)
    cert_path, key_path = _user_credential_paths(cert, key)
    user = load_credential(cert_path, key_path)
    acs: tuple[bytes, ...] = ()
    if voms is not None:
        config = _grid(grid)
        vo, requested = parse_voms_option(voms)
        if vo != config.vo:
            raise InvalidInput(f"VO {vo!r} is not served by this grid (its VO is {config.vo!r})", code="wrong-vo")
        registry = Registry(config)
        username = registry.username_for_dn(user.identity)
        if username is None:
            raise Forbidden(f"{user.identity} is not a member of VO {vo} (not in the registry)", code="unknown-user")
        fqans = fqans_for(registry, username, requested)
        server = VOMSServer.ensure(CertificateAuthority.load(), config)
        acs = (server.issue(user.eec, fqans, lifetime=lifetime),)
    proxy = create_proxy(user, lifetime=lifetime, policy=ProxyPolicy.LIMITED if limited else ProxyPolicy.INHERIT_ALL,
                         voms_acs=acs)
    path = write_proxy(proxy, out)
    if json_out:
        print_json(proxy_description(path))
    else:
        typer.echo(f"Your proxy {path} is valid until {proxy.not_after:%a %b %d %H:%M:%S %Y} UTC")


def proxy_description(path: Path) -> dict[str, Any]:
    """What voms-proxy-info -all shows, as a dict (AC fields are shown as read, not verified)."""
    from junodcs.auth.voms import acs_from_certificate
    from junodcs.auth.x509 import is_proxy, load_proxy, name_to_dn, proxy_cert_info, utcnow

    credential = load_proxy(path)
    now = utcnow()
    info = proxy_cert_info(credential.cert)
    kind = "end entity certificate"
    if info is not None:
        policy = info[0].policy
        kind = "RFC3820 compliant impersonation proxy" if policy is None or policy.value == "inheritAll" else (
            f"RFC3820 compliant {policy.value} proxy")
    key_size = getattr(credential.cert.public_key(), "key_size", None)
    description: dict[str, Any] = {
        "subject": credential.dn,
        "issuer": name_to_dn(credential.cert.issuer),
        "identity": credential.identity,
        "type": kind,
        "strength": f"{key_size} bits" if key_size else None,
        "path": str(path),
        "timeleft": _format_left((credential.not_after - now).total_seconds()),
        "not_after": credential.not_after.isoformat(),
        "proxy": is_proxy(credential.cert),
        "voms": [],
    }
    for ac in (acs_from_certificate(credential.cert) if is_proxy(credential.cert) else []):
        description["voms"].append({
            "vo": ac.vo,
            "subject": credential.identity,
            "issuer": ac.issuer_dn,
            "attributes": list(ac.fqans),
            "timeleft": _format_left((ac.not_after - now).total_seconds()),
            "uri": ac.uri,
            "not_after": ac.not_after.isoformat(),
        })
    return description


@proxy_app.command("info")
@handle_errors
def proxy_info(
    file: Path | None = typer.Option(None, "--file", "-f", help="Proxy file (default: $X509_USER_PROXY, "
                                                                "/tmp/x509up_u<uid>)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Show a proxy: subject, identity, type, strength, time left, VO and FQANs."""
    from junodcs.auth.x509 import default_proxy_path

    description = proxy_description(file or default_proxy_path())
    if json_out:
        print_json(description)
        return
    print_fields({k: description[k] for k in ("subject", "issuer", "identity", "type", "strength", "path",
                                               "timeleft")})
    for ac in description["voms"]:
        typer.echo(f"=== VO {ac['vo']} extension information ===")
        print_fields({"VO": ac["vo"], "subject": ac["subject"], "issuer": ac["issuer"],
                      "attribute": ac["attributes"], "timeleft": ac["timeleft"], "uri": ac["uri"]})


@proxy_app.command("destroy")
@handle_errors
def proxy_destroy(
    file: Path | None = typer.Option(None, "--file", "-f", help="Proxy file (default: $X509_USER_PROXY, "
                                                                "/tmp/x509up_u<uid>)."),
) -> None:
    """Delete the proxy file."""
    from junodcs.auth.x509 import default_proxy_path
    from junodcs.core.errors import NotFound

    path = file or default_proxy_path()
    if not path.exists():
        raise NotFound(f"no proxy at {path}", code="no-proxy")
    path.unlink()
    typer.echo(f"removed {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(ca_app, name="ca")
    app.add_typer(cert_app, name="cert")
    app.add_typer(proxy_app, name="proxy")
