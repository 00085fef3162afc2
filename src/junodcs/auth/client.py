"""Client side of the identity system: the token store, automatic refresh, bearer-token discovery.

`dcs login` stores, per server, the access and refresh tokens in `<config dir>/tokens.json` (mode 600,
replaced atomically). `current_access_token` (called by every `BaseClient` request) returns the access
token and, when it has less than two minutes left, refreshes it first (refresh grant, or a new
client-credentials grant for robot logins). A file lock serialises refreshes across processes: with
rotating refresh tokens, two processes refreshing at once would look like token theft and revoke the
session.

The access token is also written where WLCG tools look for one (bearer-token discovery):
`$BEARER_TOKEN_FILE` if set, else `$XDG_RUNTIME_DIR/bt_u<uid>` if that directory exists, else
`/tmp/bt_u<uid>`, so gfal2, davix and XRootD use the same identity as `dcs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from junodcs.core.client import BaseClient, ClientConfig, raise_for_problem
from junodcs.core.errors import DCSError, RemoteError, ServiceUnavailable, Unauthenticated
from junodcs.core.paths import config_dir, write_private_file

REFRESH_MARGIN = 120.0
"""Refresh when the access token has less than this many seconds left."""

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


# -- token store --------------------------------------------------------------------------------------


def token_store_path() -> Path:
    return config_dir() / "tokens.json"


def _key(server_url: str) -> str:
    return server_url.rstrip("/")


def load_store() -> dict[str, Any]:
    path = token_store_path()
    if not path.exists():
        return {"servers": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DCSError(f"{path}: unreadable token store ({exc}); run `dcs logout` and log in again",
                       code="token-store-invalid") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        return {"servers": {}}
    return data


def save_store(store: dict[str, Any]) -> None:
    write_private_file(token_store_path(), json.dumps(store, indent=2) + "\n")


def stored_session(server_url: str) -> dict[str, Any] | None:
    return load_store()["servers"].get(_key(server_url))


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Exclusive lock across processes around read-refresh-write of the token store."""
    import fcntl

    from junodcs.core.paths import ensure_private_dir

    ensure_private_dir(config_dir())
    fd = os.open(config_dir() / ".tokens.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- bearer-token discovery ---------------------------------------------------------------------------


def bearer_token_path() -> Path:
    """Where WLCG bearer-token discovery will look for our token (the first writable choice)."""
    explicit = os.environ.get("BEARER_TOKEN_FILE")
    if explicit:
        return Path(explicit)
    uid = os.getuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / f"bt_u{uid}"
    return Path("/tmp") / f"bt_u{uid}"


def write_token_file(path: Path, token: str) -> None:
    """Write `token` with mode 600 and atomically, without touching the directory (it may be /tmp):
    the temporary file is created exclusively and never follows a symlink."""
    import secrets

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def discover_bearer_token() -> str | None:
    """Explicit WLCG discovery variables only: `$BEARER_TOKEN`, then `$BEARER_TOKEN_FILE` (a job's
    token). The default file locations are not read here: they may hold another grid's token."""
    value = os.environ.get("BEARER_TOKEN", "").strip()
    if value:
        return value
    path = os.environ.get("BEARER_TOKEN_FILE")
    if path and Path(path).is_file():
        return Path(path).read_text().strip() or None
    return None


# -- the token endpoint -------------------------------------------------------------------------------


def _oauth_post(url: str, data: dict[str, Any], config: ClientConfig, auth: tuple[str, str] | None = None) -> Any:
    import httpx

    try:
        response = httpx.post(url, data=data, auth=auth, verify=config.verify(), timeout=30.0)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"cannot reach {url}: {exc}", code="server-unreachable") from None
    if response.is_success:
        return response.json() if response.content else None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and "error" in body:
        raise RemoteError(response.status_code, str(body["error"]), str(body.get("error_description") or body["error"]))
    raise_for_problem(response)
    return None


def discover(server_url: str, config: ClientConfig) -> dict[str, Any]:
    import httpx

    url = _key(server_url) + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, verify=config.verify(), timeout=30.0)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"cannot reach {server_url}: {exc}", code="server-unreachable") from None
    raise_for_problem(response)
    return response.json()


def _expires_at(response: dict[str, Any]) -> float:
    return time.time() + float(response.get("expires_in", 0))


def new_session(server_url: str, response: dict[str, Any], metadata: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "server_url": _key(server_url),
        "access_token": response["access_token"],
        "expires_at": _expires_at(response),
        "refresh_token": response.get("refresh_token"),
        "scope": response.get("scope", ""),
        "token_endpoint": metadata["token_endpoint"],
        "revocation_endpoint": metadata.get("revocation_endpoint"),
        "issuer": metadata.get("issuer"),
        **extra,
    }


def save_session(server_url: str, session: dict[str, Any], *, bearer_file: bool = True) -> dict[str, Any]:
    """Store `session` for `server_url` and publish its access token for bearer-token discovery."""
    if bearer_file:
        path = bearer_token_path()
        write_token_file(path, session["access_token"])
        session["bearer_token_file"] = str(path)
    store = load_store()
    store["servers"][_key(server_url)] = session
    save_store(store)
    return session


def _refresh(session: dict[str, Any], config: ClientConfig) -> dict[str, Any]:
    if session.get("refresh_token"):
        response = _oauth_post(
            session["token_endpoint"],
            {"grant_type": "refresh_token", "refresh_token": session["refresh_token"]},
            config,
        )
    elif session.get("client_id") and session.get("client_secret_file"):
        secret = Path(session["client_secret_file"]).read_text().strip()
        response = _oauth_post(
            session["token_endpoint"],
            {"grant_type": "client_credentials", **({"scope": session["scope"]} if session.get("scope") else {})},
            config,
            auth=(session["client_id"], secret),
        )
    else:
        raise Unauthenticated("the session cannot be renewed; run `dcs login`", code="login-expired")
    updated = dict(session)
    updated.update(
        access_token=response["access_token"],
        expires_at=_expires_at(response),
        refresh_token=response.get("refresh_token", session.get("refresh_token")),
        scope=response.get("scope", session.get("scope", "")),
    )
    return updated


def current_access_token(server_url: str, config: ClientConfig | None = None) -> str | None:
    """The access token to send to `server_url`, refreshed when it has < 2 min left; None when not
    logged in (then `$BEARER_TOKEN` / `$BEARER_TOKEN_FILE`, if set, e.g. inside a grid job)."""
    session = stored_session(server_url)
    if session is None:
        return discover_bearer_token()
    if float(session.get("expires_at", 0)) - time.time() >= REFRESH_MARGIN:
        return str(session["access_token"])
    config = config or ClientConfig.load()
    with store_lock():
        session = stored_session(server_url)  # another process may have refreshed meanwhile
        if session is None:
            return None
        remaining = float(session.get("expires_at", 0)) - time.time()
        if remaining >= REFRESH_MARGIN:
            return str(session["access_token"])
        try:
            updated = _refresh(session, config)
        except ServiceUnavailable:
            if remaining > 0:
                return str(session["access_token"])  # still valid: let the request try
            raise
        except RemoteError as exc:
            raise Unauthenticated(
                f"your login to {server_url} can no longer be renewed ({exc.code}: {exc.detail}); run `dcs login`",
                code="login-expired",
            ) from None
        bearer = updated.get("bearer_token_file")
        if bearer:
            try:
                write_token_file(Path(bearer), updated["access_token"])
            except OSError:
                pass  # the store is what matters to us; the bearer file is a courtesy to other tools
        store = load_store()
        store["servers"][_key(server_url)] = updated
        save_store(store)
        return str(updated["access_token"])


def forget_session(server_url: str) -> dict[str, Any] | None:
    """Remove the stored session (and its bearer-token file, if it still holds our token)."""
    with store_lock():
        store = load_store()
        session = store["servers"].pop(_key(server_url), None)
        save_store(store)
    if session and session.get("bearer_token_file"):
        path = Path(session["bearer_token_file"])
        with contextlib.suppress(OSError):
            if path.read_text().strip() == session.get("access_token"):
                path.unlink()
    return session


# -- the API client -----------------------------------------------------------------------------------


class AuthClient(BaseClient):
    """`/api/v1/auth` plus the OAuth endpoints (discovery, token, revocation) of the same server."""

    prefix = "/api/v1/auth"

    def metadata(self) -> dict[str, Any]:
        return discover(self.server_url, self.config)

    def whoami(self) -> dict[str, Any]:
        return self.get("/whoami")

    def login_with_certificate(
        self, group: str | None = None, scope: str | None = None, audience: list[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if group:
            body["group"] = group
        if scope:
            body["scope"] = scope
        if audience:
            body["audience"] = audience
        return self.post("/login", json=body)

    def client_credentials(self, client_id: str, secret: str, scope: str | None = None) -> dict[str, Any]:
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        return _oauth_post(self.metadata()["token_endpoint"], data, self.config, auth=(client_id, secret))

    def exchange(self, subject_token: str, scopes: list[str] | None = None, audience: list[str] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        if scopes:
            data["scope"] = " ".join(scopes)
        if audience:
            data["audience"] = audience
        return _oauth_post(self.metadata()["token_endpoint"], data, self.config)

    def revoke(self, token: str, endpoint: str | None = None) -> None:
        url = endpoint or self.metadata()["revocation_endpoint"]
        _oauth_post(url, {"token": token, "token_type_hint": "refresh_token"}, self.config)

    def groups(self) -> list[dict[str, Any]]:
        return self.get("/registry/groups")

    def users(self) -> list[dict[str, Any]]:
        return self.get("/registry/users")

    def user(self, username: str) -> dict[str, Any]:
        return self.get(f"/registry/users/{username}")

    def create_client(
        self, owner: str, group: str, scopes: list[str] | None = None, description: str = ""
    ) -> dict[str, Any]:
        return self.post("/clients", json={"owner": owner, "group": group, "scopes": scopes or [],
                                           "description": description})

    def list_clients(self) -> list[dict[str, Any]]:
        return self.get("/clients")

    def delete_client(self, client_id: str) -> None:
        self.delete(f"/clients/{client_id}")

    def rotate_keys(self) -> dict[str, Any]:
        return self.post("/keys/rotate")
