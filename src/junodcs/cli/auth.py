"""`dcs login`, `dcs logout`, `dcs whoami`, `dcs token` and `dcs auth ...`: identity from the command line.

Log in once with a VOMS proxy (or, for robots, OAuth client credentials); every later command sends
the stored access token, refreshed automatically. Imports here stay light so `dcs --help` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from junodcs.cli.output import JSON_OPTION, handle_errors, print_fields, print_json, print_table

auth_app = typer.Typer(help="Identity administration: OAuth clients, signing keys, registry.", no_args_is_help=True)
client_app = typer.Typer(help="OAuth clients (robots using the client-credentials grant).", no_args_is_help=True)
keys_app = typer.Typer(help="Token signing keys.", no_args_is_help=True)

SERVER_OPTION = typer.Option(None, "--server", help="Server URL (default: the configured one, or $DCS_SERVER_URL).")


def _default_proxy() -> Path:
    import os

    return Path(os.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}")


def _server(server: str | None) -> str:
    from junodcs.core.client import ClientConfig

    return (server or ClientConfig.load().require_server()).rstrip("/")


def _expiry(expires_at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@handle_errors
def login(
    proxy: Path | None = typer.Option(
        None, "--proxy", help="X509 proxy file (default: $X509_USER_PROXY or /tmp/x509up_u<uid>)."
    ),
    group: str | None = typer.Option(None, "--group", help="Group to act in (default: the proxy's primary FQAN)."),
    client_id: str | None = typer.Option(None, "--client-id", help="Log in as an OAuth client (robot)."),
    client_secret_file: Path | None = typer.Option(None, "--client-secret-file", help="File holding the secret."),
    server: str | None = SERVER_OPTION,
) -> None:
    """Get tokens from the server: with a VOMS proxy (TLS client authentication) or client credentials."""
    from junodcs.auth.client import AuthClient, new_session, save_session
    from junodcs.core.client import BaseClient
    from junodcs.core.errors import DCSError, InvalidInput

    url = _server(server)
    if client_id is not None:
        if client_secret_file is None:
            raise InvalidInput("--client-id needs --client-secret-file", code="missing-option")
        try:
            secret = client_secret_file.read_text().strip()
        except OSError as exc:
            raise DCSError(f"{client_secret_file}: {exc.strerror or exc}", code="secret-unreadable") from None
        with AuthClient(url, authenticate=False) as client:
            metadata = client.metadata()
            response = client.client_credentials(client_id, secret)
        session = new_session(
            url, response, metadata, client_id=client_id,
            client_secret_file=str(client_secret_file.resolve()), username=None, group=None,
        )
    else:
        proxy_file = proxy or _default_proxy()
        if not proxy_file.is_file():
            raise DCSError(
                f"no proxy at {proxy_file}: create one (e.g. `voms-proxy-init --voms juno`), pass --proxy, "
                "or log in with --client-id",
                code="no-proxy",
            )
        with AuthClient(url, authenticate=False) as client:
            metadata = client.metadata()
        with BaseClient(url, cert=str(proxy_file), authenticate=False) as tls_client:
            response = tls_client.post("/api/v1/auth/login", json={"group": group} if group else {})
        session = new_session(url, response, metadata, username=response.get("username"), group=response.get("group"))
    session = save_session(url, session)
    who = session.get("username") or client_id
    group_text = f" (group {session['group']})" if session.get("group") else ""
    typer.echo(f"logged in to {url} as {who}{group_text}; access token valid until {_expiry(session['expires_at'])}")
    typer.echo(f"bearer token for gfal2/davix/xrootd: {session['bearer_token_file']}")


@handle_errors
def logout(server: str | None = SERVER_OPTION) -> None:
    """Revoke the refresh token at the server and delete the stored tokens."""
    from junodcs.auth.client import AuthClient, forget_session, stored_session
    from junodcs.core.errors import DCSError

    url = _server(server)
    session = stored_session(url)
    if session is None:
        typer.echo(f"not logged in to {url}")
        return
    warning = None
    if session.get("refresh_token"):
        try:
            with AuthClient(url, authenticate=False) as client:
                client.revoke(session["refresh_token"], session.get("revocation_endpoint"))
        except DCSError as exc:
            warning = f"could not revoke at the server ({exc.code}: {exc.detail}); tokens deleted locally"
    forget_session(url)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"logged out of {url}")


@handle_errors
def whoami(server: str | None = SERVER_OPTION, json: bool = JSON_OPTION) -> None:
    """Who the server thinks you are: user, group, properties, token scopes."""
    from junodcs.auth.client import AuthClient

    with AuthClient(server) as client:
        info = client.whoami()
    if json:
        print_json(info)
    else:
        print_fields({k: v for k, v in info.items() if v not in (None, [], "")})


@handle_errors
def token(
    scope: list[str] | None = typer.Option(None, "--scope", help="Narrow to these scopes (repeatable)."),
    audience: list[str] | None = typer.Option(None, "--audience", help="Audience of the new token (repeatable)."),
    decode: bool = typer.Option(False, "--decode", help="Print the token's claims as JSON instead of the token."),
    server: str | None = SERVER_OPTION,
) -> None:
    """Print an access token (for curl, gfal2...); with --scope/--audience a narrowed one (token exchange)."""
    from junodcs.auth.client import AuthClient, current_access_token
    from junodcs.core.client import ClientConfig
    from junodcs.core.errors import Unauthenticated

    url = _server(server)
    current = current_access_token(url, ClientConfig.load())
    if current is None:
        raise Unauthenticated(f"not logged in to {url}: run `dcs login`", code="not-logged-in")
    if scope or audience:
        with AuthClient(url, authenticate=False) as client:
            current = client.exchange(current, scope or None, audience or None)["access_token"]
    if decode:
        import jwt

        from junodcs.cli.output import print_json

        print_json({"header": jwt.get_unverified_header(current),
                    "claims": jwt.decode(current, options={"verify_signature": False})})
        return
    typer.echo(current)


# -- dcs auth -----------------------------------------------------------------------------------------


@client_app.command("create")
@handle_errors
def client_create(
    owner: str = typer.Option(..., "--owner", help="Registry user the client acts for."),
    group: str = typer.Option(..., "--group", help="Group the client acts in."),
    scope: list[str] | None = typer.Option(None, "--scope", help="Allowed scope (repeatable; default: policy)."),
    description: str = typer.Option("", "--description"),
    secret_file: Path | None = typer.Option(None, "--secret-file", help="Write the secret here (mode 600)."),
    json: bool = JSON_OPTION,
) -> None:
    """Register an OAuth client; its secret is shown once (or written to --secret-file)."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        created = client.create_client(owner, group, scope or None, description)
    if secret_file is not None:
        from junodcs.auth.client import write_token_file

        write_token_file(secret_file.resolve(), created["client_secret"])
    if json:
        print_json(created)
        return
    shown = dict(created)
    if secret_file is not None:
        shown["client_secret"] = f"written to {secret_file}"
    print_fields(shown, title="OAuth client created (the secret is not shown again)")


@client_app.command("ls")
@handle_errors
def client_list(json: bool = JSON_OPTION) -> None:
    """List the OAuth clients."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        clients = client.list_clients()
    if json:
        print_json(clients)
        return
    print_table(
        clients,
        [("client_id", "Client"), ("owner", "Owner"), ("group", "Group"), ("scopes", "Scopes"),
         ("description", "Description"), ("created_at", "Created")],
        title=f"{len(clients)} OAuth clients",
    )


@client_app.command("rm")
@handle_errors
def client_remove(client_ids: list[str] = typer.Argument(..., help="Client ids to delete.")) -> None:
    """Delete OAuth clients (their access tokens expire normally)."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        for client_id in client_ids:
            client.delete_client(client_id)
            typer.echo(f"deleted {client_id}")


@keys_app.command("rotate")
@handle_errors
def keys_rotate(json: bool = JSON_OPTION) -> None:
    """Start signing with a new key; older keys stay published until their tokens expire."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        result = client.rotate_keys()
    if json:
        print_json(result)
    else:
        typer.echo(f"new signing key {result['kid']}; published: {', '.join(result['published'])}")


@auth_app.command("groups")
@handle_errors
def groups(json: bool = JSON_OPTION) -> None:
    """Registry groups with their properties and VOMS FQANs."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        rows = client.groups()
    if json:
        print_json(rows)
        return
    print_table(rows, [("name", "Group"), ("properties", "Properties"), ("voms_fqan", "VOMS FQAN")],
                title=f"{len(rows)} groups")


@auth_app.command("users")
@handle_errors
def users(json: bool = JSON_OPTION) -> None:
    """Registry users (all of them for a ServiceAdministrator, else your own entry)."""
    from junodcs.auth.client import AuthClient

    with AuthClient() as client:
        rows = client.users()
    if json:
        print_json(rows)
        return
    print_table(rows, [("username", "User"), ("dn", "DN"), ("groups", "Groups"), ("email", "E-mail")],
                title=f"{len(rows)} users")


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.command("token")(token)
    auth_app.add_typer(client_app, name="client")
    auth_app.add_typer(keys_app, name="keys")
    app.add_typer(auth_app, name="auth")
