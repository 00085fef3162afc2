"""`dcs se serve`: run one storage element (WebDAV + HTTP-TPC) on a directory."""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import handle_errors

se_app = typer.Typer(help="Storage elements: run one (WebDAV + HTTP third-party copy).", no_args_is_help=True)


def _macaroon_secret(name: str, path: Path | None) -> bytes:
    """The SE's macaroon key: given file, else `<data dir>/se/<name>/macaroon.secret` (created, mode 600).
    Kept across restarts so that macaroons already handed out stay valid."""
    import secrets

    from junodcs.core.paths import data_dir, write_private_file

    path = path or data_dir() / "se" / name / "macaroon.secret"
    if not path.exists():
        write_private_file(path, secrets.token_bytes(32))
    return path.read_bytes()


@se_app.command("serve")
@handle_errors
def serve(
    name: str = typer.Option(..., "--name", help="SE name, e.g. IHEP-DISK."),
    root: Path = typer.Option(..., "--root", help="Directory holding the SE's files."),
    port: int = typer.Option(..., "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    vo_path: str = typer.Option("/juno", "--vo-path", help="Namespace prefix token scope paths are relative to."),
    anonymous_read: bool = typer.Option(False, "--anonymous-read", help="Allow reads without a credential."),
    trust_issuer: list[str] = typer.Option([], "--trust-issuer", help="Accept WLCG JWTs of this issuer (repeat)."),
    macaroon_secret: Path | None = typer.Option(None, "--macaroon-secret", help="File with 32+ random bytes."),
    md5: bool = typer.Option(False, "--md5", help="Also compute md5 inline on every upload."),
    public_url: str | None = typer.Option(None, "--public-url", help="URL clients use (macaroon answers)."),
    tls: bool = typer.Option(False, "--tls/--no-tls", help="Serve HTTPS (needed by davs:// and gfal2 TPC)."),
    cert: Path | None = typer.Option(None, "--cert", help="Host certificate (PEM)."),
    key: Path | None = typer.Option(None, "--key", help="Host key (PEM)."),
    ca_dir: Path | None = typer.Option(None, "--ca-dir", help="Trusted CA directory (X509_CERT_DIR layout)."),
    ca_file: Path | None = typer.Option(None, "--ca-file", help="Trusted CA bundle (PEM) for token issuers and TPC."),
    grid: Path | None = typer.Option(
        None, "--grid", help="grid.yaml whose registry maps certificate/proxy DNs and FQANs to users "
                             "and whose links shape third-party copies to their bandwidth (default: $DCS_GRID_CONFIG; "
                             "without one, client certificates are ignored)."),
    vomsdir: Path | None = typer.Option(None, "--vomsdir", help="VOMS trust (.lsc) directory (default: $X509_VOMS_DIR)."),
    tape: bool = typer.Option(False, "--tape", help="Tape SE: WLCG Tape REST API, files migrate to tape."),
    mount_delay: float = typer.Option(1.0, "--mount-delay", help="Tape: seconds to mount before a stage starts."),
    stage_delay: float = typer.Option(2.0, "--stage-delay", help="Tape: seconds to recall each file."),
    flush_delay: float = typer.Option(5.0, "--flush-delay", help="Tape: seconds after a write until on tape."),
    evict_delay: float = typer.Option(10.0, "--evict-delay",
                                      help="Tape: seconds a flushed file stays on disk unless pinned."),
    pin_lifetime: float = typer.Option(3600.0, "--pin-lifetime",
                                       help="Tape: disk lifetime of a staged file without diskLifetime."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
) -> None:
    """Serve DIR as storage element NAME until interrupted."""
    import logging
    import os
    import ssl

    from junodcs.core.errors import ConfigError
    from junodcs.storage.server.config import SEConfig
    from junodcs.storage.server.run import TLSFiles
    from junodcs.storage.server.run import serve as run_se

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if tls else "http"
    url = public_url or f"{scheme}://{host}:{port}"
    outbound: ssl.SSLContext | None = None
    if ca_file is not None or ca_dir is not None:
        outbound = ssl.create_default_context()  # system CAs (and $SSL_CERT_FILE) plus the given ones
        outbound.load_verify_locations(cafile=str(ca_file) if ca_file else None,
                                       capath=str(ca_dir) if ca_dir else None)
    verify_token = None
    if trust_issuer:
        from junodcs.auth.tokens import TokenVerifier

        verify_token = TokenVerifier(audiences=(url,), local_issuer=None, trusted_issuers=tuple(trust_issuer),
                                     verify_tls=outbound if outbound is not None else True).verify
    tls_files = None
    x509 = None
    shaper = None
    if tls:
        if cert is None or key is None:
            raise ConfigError("--tls needs --cert and --key", code="tls-files-missing")
        tls_files = TLSFiles(cert=cert, key=key, ca_dir=ca_dir)
        grid_path = grid or (Path(os.environ["DCS_GRID_CONFIG"]) if os.environ.get("DCS_GRID_CONFIG") else None)
        if grid_path is not None:
            if ca_dir is None:
                raise ConfigError("client certificates (--grid) need --ca-dir", code="tls-files-missing")
            from junodcs.auth.registry import Registry
            from junodcs.core.gridconfig import load_grid_config
            from junodcs.storage.server.config import X509Settings

            from junodcs.transfer.shaping import shaper_for

            vomsdir = vomsdir or (Path(os.environ["X509_VOMS_DIR"]) if os.environ.get("X509_VOMS_DIR") else None)
            grid_config = load_grid_config(grid_path)
            x509 = X509Settings(ca_dir=ca_dir, vomsdir=vomsdir, registry=Registry(grid_config))
            shaper = shaper_for(grid_config, name)
    elif grid is not None:
        raise ConfigError("--grid (client certificates) needs --tls", code="tls-files-missing")
    tape_settings = None
    if tape:
        from junodcs.storage.server.config import TapeSettings

        if min(mount_delay, stage_delay, flush_delay, evict_delay, pin_lifetime) < 0:
            raise ConfigError("tape delays must not be negative", code="bad-option")
        tape_settings = TapeSettings(mount_delay=mount_delay, stage_delay=stage_delay, flush_delay=flush_delay,
                                     evict_delay=evict_delay, default_pin=pin_lifetime)
    config = SEConfig(
        name=name, root=root, vo_prefix=vo_path, anonymous_read=anonymous_read, verify_token=verify_token,
        macaroon_secret=_macaroon_secret(name, macaroon_secret), public_url=url, md5_on_upload=md5,
        remote_ca_dir=ca_dir, outbound_ssl=outbound, tape=tape_settings, x509=x509, shaper=shaper,
    )
    logging.getLogger("junodcs.storage").info("SE %s serving %s at %s", name, root, url)
    run_se(config, host=host, port=port, tls=tls_files)


def register(app: typer.Typer) -> None:
    app.add_typer(se_app, name="se")
