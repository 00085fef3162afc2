"""The HTTP client base every `<system>/client.py` builds on, and the client configuration file.

The client configuration (`<config dir>/client.json`) says which server to talk to and which CA to
trust; `dcs grid up` writes it for the local grid, `DCS_SERVER_URL` overrides the server. Requests carry
the caller's access token (refreshed on the fly by `junodcs.auth.client`), and a problem+json answer
becomes a `RemoteError` with the server's `code`, so the CLI prints the server's reason, not a stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError, RemoteError, ServiceUnavailable
from junodcs.core.paths import config_dir, write_private_file


@dataclass
class ClientConfig:
    server_url: str | None = None
    ca_file: str | None = None
    """PEM bundle of the CAs that sign the servers' host certificates (the project CA for a local grid)."""
    ca_dir: str | None = None
    """Hashed CA directory (X509_CERT_DIR layout) for tools such as gfal2, davix, voms-proxy-*."""
    vomsdir: str | None = None
    grid_config: str | None = None
    default_group: str | None = None

    @staticmethod
    def path() -> Path:
        return config_dir() / "client.json"

    @classmethod
    def load(cls) -> ClientConfig:
        path = cls.path()
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DCSError(f"{path}: unreadable client configuration ({exc})", code="client-config-invalid")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = cls(**known)
        if os.environ.get("DCS_SERVER_URL"):
            config.server_url = os.environ["DCS_SERVER_URL"]
        return config

    def save(self) -> None:
        write_private_file(self.path(), json.dumps(asdict(self), indent=2) + "\n")

    def require_server(self) -> str:
        if not self.server_url:
            raise DCSError(
                "no server configured: start a local grid with `dcs grid up`, or set DCS_SERVER_URL",
                code="no-server",
            )
        return self.server_url.rstrip("/")

    def verify(self) -> Any:
        """What httpx's `verify=` needs: the configured CA bundle, else the system trust store."""
        if self.ca_file:
            import ssl

            context = ssl.create_default_context(cafile=self.ca_file)
            return context
        return True


def raise_for_problem(response: Any) -> None:
    """Turn an error answer into a `RemoteError` carrying the server's code and detail."""
    if response.is_success:
        return
    code, detail, extra = f"http-{response.status_code}", response.reason_phrase or "error", {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        detail = str(body.get("detail") or body.get("error_description") or body.get("error") or detail)
        extra = {k: v for k, v in body.items() if k in ("errors", "results")}
    raise RemoteError(response.status_code, code, detail, **extra)


class BaseClient:
    """Synchronous client for one system; `prefix` is the system's API path (`/api/v1/auth`)."""

    prefix: str = ""

    def __init__(
        self,
        server_url: str | None = None,
        *,
        token: str | None = None,
        config: ClientConfig | None = None,
        authenticate: bool = True,
        timeout: float = 30.0,
        cert: str | None = None,
    ) -> None:
        import httpx

        self.config = config or ClientConfig.load()
        self.server_url = (server_url or self.config.require_server()).rstrip("/")
        self._token = token
        self._authenticate = authenticate
        verify = self.config.verify()
        if cert is not None:
            import ssl

            if not isinstance(verify, ssl.SSLContext):
                verify = ssl.create_default_context()
            verify.load_cert_chain(cert)
        self.http = httpx.Client(base_url=self.server_url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        if not self._authenticate:
            return {}
        token = self._token
        if token is None:
            from junodcs.auth.client import current_access_token

            token = current_access_token(self.server_url, self.config)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, self.prefix + path, headers=headers, **kwargs)
        except httpx.ConnectError as exc:
            raise ServiceUnavailable(f"cannot reach {self.server_url}: {exc}", code="server-unreachable") from None
        except httpx.TimeoutException:
            raise ServiceUnavailable(f"{self.server_url} did not answer in time", code="server-timeout") from None
        raise_for_problem(response)
        if response.status_code == 204 or not response.content:
            return None
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.content

    def stream_lines(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The objects of a newline-delimited JSON answer, as they arrive (long listings, bulk results)."""
        import httpx

        try:
            with self.http.stream(method, self.prefix + path, headers=self._headers(), **kwargs) as response:
                if not response.is_success:
                    response.read()
                    raise_for_problem(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.ConnectError as exc:
            raise ServiceUnavailable(f"cannot reach {self.server_url}: {exc}", code="server-unreachable") from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)
