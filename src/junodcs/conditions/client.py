"""Clients: `FrontierClient` (what payloads inside jobs use: Frontier protocol through the site Squids
with failover) and `ConditionsClient` (the authenticated REST API, for `dcs cond` and managers).

Failover as Frontier's C client ("ClientRetryStrategy"): every proxy in order (each to every server),
then the servers directly (unless `failover_to_server=False`). On one path, a protocol error or an
unverifiable answer (bad XML, md5, record count, size, payload hash) is retried first with a soft
refresh (`Cache-Control: max-age=0`: the Squid revalidates) and then a hard one (`no-cache`); a
connection failure moves to the next path at once. An error payload that survives a hard refresh is
the server's own answer (a refused query, a missing table) and is raised without trying other paths.
When every path failed the error lists what each one said.

Settings, as the C client reads them: `FRONTIER_SERVER`, `FRONTIER_SERVER1..16` (a URL, or the
parenthesised connection string `(serverurl=http://h:8000/X/Frontier)(proxyurl=http://squid:3128)...`),
`FRONTIER_PROXY`, `FRONTIER_PROXY1..24`, `FRONTIER_ID`; without proxies there, the squids of the site the
job runs at (`DCS_SITE`, else `DIRACSITE`) from grid.yaml (`sites[].squids[].url`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from junodcs.conditions.frontier import FrontierError, Result, parse_response, request_path
from junodcs.conditions.transport import Transport, Unreachable
from junodcs.core.client import BaseClient
from junodcs.core.errors import DCSError, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

MAX_SERVERS = 16
MAX_PROXIES = 24
PAYLOAD_BATCH = 10


class FrontierQueryError(DCSError):
    """The server answered with an error payload (also after a hard refresh)."""

    status = 502
    code = "frontier-query-error"


class FrontierUnavailable(ServiceUnavailable):
    code = "frontier-unavailable"


def parse_connection_string(text: str) -> tuple[list[str], list[str]]:
    """`(serverurl=...)(proxyurl=...)...` -> (servers, proxies); a plain URL is one server."""
    if "(" not in text:
        return ([text.strip()] if text.strip() else []), []
    servers, proxies = [], []
    for key, value in re.findall(r"\(\s*(\w+)\s*=\s*([^)]*)\)", text):
        if key.lower() == "serverurl":
            servers.append(value.strip())
        elif key.lower() in ("proxyurl", "backupproxyurl"):
            proxies.append(value.strip())
    return servers, proxies


def site_proxies(grid: Any, site: str | None) -> list[str]:
    """The proxy URLs of `site`'s squids in grid.yaml (those with a URL), in their configured order."""
    for entry in getattr(grid, "sites", ()):
        if entry.name == site:
            return [squid.url for squid in entry.squids if squid.url]
    return []


def settings_from_env(environ: dict[str, str] | None = None, *, grid: Any = None,
                      site: str | None = None) -> tuple[list[str], list[str]]:
    env = os.environ if environ is None else environ
    servers: list[str] = []
    proxies: list[str] = []
    for key in ["FRONTIER_SERVER"] + [f"FRONTIER_SERVER{i}" for i in range(1, MAX_SERVERS + 1)]:
        if env.get(key):
            more_servers, more_proxies = parse_connection_string(env[key])
            servers += more_servers
            proxies += more_proxies
    for key in ["FRONTIER_PROXY"] + [f"FRONTIER_PROXY{i}" for i in range(1, MAX_PROXIES + 1)]:
        if env.get(key):
            proxies.append(env[key].strip())
    if not proxies:
        site = site or env.get("DCS_SITE") or env.get("DIRACSITE")
        if grid is None and site:
            grid = _load_grid(env)
        if grid is not None and site:
            proxies = site_proxies(grid, site)
    return servers[:MAX_SERVERS], proxies[:MAX_PROXIES]


def _load_grid(env: Any) -> Any:
    from junodcs.core.client import ClientConfig
    from junodcs.core.gridconfig import load_grid_config

    path = env.get("DCS_GRID_CONFIG") or ClientConfig.load().grid_config
    if not path:
        home = env.get("DCS_HOME")
        if home and os.path.exists(os.path.join(home, "grid.yaml")):
            path = os.path.join(home, "grid.yaml")
    return load_grid_config(path) if path else None


@dataclass
class Attempt:
    proxy: str | None
    server: str
    refresh: str | None
    outcome: str


@dataclass
class FrontierClient:
    servers: Sequence[str]
    proxies: Sequence[str] = ()
    zip_level: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    failover_to_server: bool = True
    frontier_id: str | None = None
    bad_proxy_seconds: float = 300.0
    """An unreachable proxy goes to the end of the list for this long (as the C client does)."""
    attempts: list[Attempt] = field(default_factory=list)
    """Every HTTP attempt made (for logs and tests)."""

    def __post_init__(self) -> None:
        if not self.servers:
            raise DCSError("no Frontier server: set FRONTIER_SERVER or give servers", code="no-frontier-server")
        self.servers = [s.rstrip("/") for s in self.servers]
        self._http: dict[str | None, Transport] = {}
        self._bad: dict[str, float] = {}
        if self.frontier_id is None:
            from junodcs import __version__

            self.frontier_id = os.environ.get("FRONTIER_ID") or (
                f"junodcs {__version__} {os.getpid()} {os.environ.get('USER', 'unknown')}")

    @classmethod
    def from_env(cls, *, grid: Any = None, site: str | None = None, **kwargs: Any) -> FrontierClient:
        servers, proxies = settings_from_env(grid=grid, site=site)
        if not servers:
            grid = grid if grid is not None else _load_grid(os.environ)
            if grid is not None and grid.servers.frontier:
                servers = [grid.servers.frontier.rstrip("/")]
        if not servers:
            from junodcs.core.client import ClientConfig

            config = ClientConfig.load()
            if config.server_url:
                servers = [config.server_url.rstrip("/") + "/Frontier"]
        return cls(servers=servers, proxies=proxies, **kwargs)

    def close(self) -> None:
        for http in self._http.values():
            http.close()
        self._http.clear()

    def __enter__(self) -> FrontierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transport(self, proxy: str | None) -> Transport:
        """One keep-alive transport per proxy (and one for the direct paths), reused for every request."""
        transport = self._http.get(proxy)
        if transport is None:
            transport = self._http[proxy] = Transport(proxy, connect_timeout=self.connect_timeout,
                                                      read_timeout=self.read_timeout)
        return transport

    def _paths(self) -> list[tuple[str | None, str]]:
        now = time.monotonic()
        proxies = sorted(self.proxies, key=lambda p: self._bad.get(p, 0.0) > now)  # stable: good ones first
        paths: list[tuple[str | None, str]] = [(p, s) for p in proxies for s in self.servers]
        if self.failover_to_server or not self.proxies:
            paths += [(None, s) for s in self.servers]
        return paths

    def query(self, sqls: Sequence[str], ttl: str = "long",
              verify: Any = None) -> list[Result]:
        """Run the statements as one transaction; `verify(results)` may raise `FrontierError` to reject an
        answer (e.g. a payload whose bytes do not match its hash), which counts as a protocol error."""
        encoding = f"BLOBzip{self.zip_level}" if self.zip_level else "BLOB"
        query = request_path(sqls, encoding=encoding, ttl=ttl)
        failures: list[str] = []
        for proxy, server in self._paths():
            where = f"{server} via {proxy}" if proxy else f"{server} (direct)"
            for refresh in (None, "soft", "hard"):
                headers = {"X-Frontier-Id": self.frontier_id or "junodcs", "Cache-Control": "max-stale=1"}
                if refresh == "soft":
                    headers["Cache-Control"] += ",max-age=0"
                elif refresh == "hard":
                    headers["Cache-Control"] += ",no-cache"
                    headers["Pragma"] = "no-cache"
                try:
                    response = self._transport(proxy).get(f"{server}?{query}", headers=headers)
                except Unreachable as exc:
                    kind = "ConnectError" if exc.connect else str(exc).split(":", 1)[0]
                    self.attempts.append(Attempt(proxy, server, refresh, f"unreachable: {kind}"))
                    failures.append(f"{where}: {exc}")
                    if proxy is not None and exc.connect:
                        self._bad[proxy] = time.monotonic() + self.bad_proxy_seconds
                    break
                if response.status_code != 200:
                    self.attempts.append(Attempt(proxy, server, refresh, f"http {response.status_code}"))
                    failures.append(f"{where}: HTTP {response.status_code}")
                    continue
                try:
                    results = parse_response(response.content, expected=len(sqls))
                    errors = [r for r in results if r.error]
                    if not errors and verify is not None:
                        verify(results)
                except FrontierError as exc:
                    self.attempts.append(Attempt(proxy, server, refresh, f"protocol error: {exc}"))
                    failures.append(f"{where}: {exc}")
                    continue
                if errors:
                    self.attempts.append(Attempt(proxy, server, refresh, "error payload"))
                    if refresh == "hard":
                        raise FrontierQueryError(errors[0].message or "error payload")
                    continue
                self.attempts.append(Attempt(proxy, server, refresh, "ok"))
                return results
        raise FrontierUnavailable("no Frontier path answered: " + "; ".join(failures[-8:]))

    # -- conditions on top of the protocol ------------------------------------------------------------
    def resolve(self, global_tag: str, payload_types: Iterable[str], run: int) -> dict[str, dict[str, Any]]:
        """payload type -> {tag, since, payload_hash} valid for `run` in `global_tag`."""
        types = list(dict.fromkeys(payload_types))
        gt, mapping = self.query([
            f"SELECT status FROM cond_global_tags WHERE name = ?:{_bind(global_tag)}",
            f"SELECT payload_type, tag_name FROM cond_global_tag_map WHERE global_tag = ?:{_bind(global_tag)}",
        ], ttl="short")
        if not gt.rows:
            raise NotFound(f"no global tag {global_tag}", code="global-tag-not-found")
        if gt.rows[0][0] == b"invalid":
            raise DCSError(f"global tag {global_tag} is invalid", code="global-tag-invalid")
        tags = {row[0].decode(): row[1].decode() for row in mapping.rows}
        missing = [t for t in types if t not in tags]
        if missing:
            raise NotFound(f"global tag {global_tag} has no tag for {missing[0]}", code="type-not-in-global-tag")
        wanted = sorted({tags[t] for t in types})
        (locks,) = self.query(
            ["SELECT name, locked FROM cond_tags WHERE name IN (" + ",".join("?" * len(wanted)) + "):"
             + ":".join(_bind(t) for t in wanted)], ttl="short")
        locked = {row[0].decode(): row[1] in (b"1", b"true", b"True") for row in locks.rows}
        found: dict[str, dict[str, Any]] = {}
        for ttl in ("long", "short"):  # locked tags never change: cache their IOVs long
            group = [t for t in wanted if locked.get(t, False) == (ttl == "long")]
            if not group:
                continue
            (iovs,) = self.query([
                "SELECT tag_name, since, id, payload_hash FROM cond_iovs WHERE tag_name IN ("
                + ",".join("?" * len(group)) + ") AND since <= ?:" + ":".join(_bind(t) for t in group)
                + f":{int(run)}"], ttl=ttl)
            best: dict[str, tuple[int, int, str]] = {}
            for tag_name, since, iov_id, payload_hash in iovs.rows:
                key = (int(since), int(iov_id), payload_hash.decode())
                tag = tag_name.decode()
                if tag not in best or key > best[tag]:
                    best[tag] = key  # greatest since, then the latest insertion
            for tag, (since, _, payload_hash) in best.items():
                found[tag] = {"tag": tag, "since": since, "payload_hash": payload_hash}
        answer = {}
        for payload_type in types:
            tag = tags[payload_type]
            if tag not in found:
                raise NotFound(f"tag {tag} has no IOV for run {run}", code="no-iov")
            answer[payload_type] = found[tag]
        return answer

    def payloads(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """Payload bytes by hash (`ttl=forever`: immutable), verified against their sha256. Requests go in
        sorted batches so that every job of a wave asks the Squid for the same URLs."""
        wanted = sorted(set(hashes))
        out: dict[str, bytes] = {}
        for start in range(0, len(wanted), PAYLOAD_BATCH):
            batch = wanted[start:start + PAYLOAD_BATCH]

            def verify(results: list[Result], batch: list[str] = batch) -> None:
                for digest, result in zip(batch, results, strict=True):
                    if result.rows and hashlib.sha256(result.rows[0][1] or b"").hexdigest() != digest:
                        raise FrontierError(f"payload {digest[:12]}... does not match its hash")

            results = self.query([f"SELECT hash, data, uri FROM cond_payloads WHERE hash = '{h}'" for h in batch],
                                 ttl="forever", verify=verify)
            for digest, result in zip(batch, results, strict=True):
                if not result.rows:
                    raise NotFound(f"no payload {digest}", code="payload-not-found")
                data = result.rows[0][1]
                if data is None:
                    raise DCSError(f"payload {digest} is stored at {result.rows[0][2].decode()}", code="payload-by-uri")
                out[digest] = data
        return out

    def get(self, global_tag: str, payload_type: str, run: int) -> bytes:
        resolved = self.resolve(global_tag, [payload_type], run)[payload_type]
        return self.payloads([resolved["payload_hash"]])[resolved["payload_hash"]]

    def get_many(self, global_tag: str, payload_types: Iterable[str], run: int) -> dict[str, bytes]:
        resolved = self.resolve(global_tag, payload_types, run)
        data = self.payloads(r["payload_hash"] for r in resolved.values())
        return {t: data[r["payload_hash"]] for t, r in resolved.items()}


def _bind(value: str) -> str:
    if ":" in value:
        raise DCSError(f"{value!r}: ':' cannot be sent as a Frontier bind value", code="invalid-input")
    return value


class ConditionsClient(BaseClient):
    prefix = "/api/v1/conditions"

    def put_payload(self, payload_type: str, data: bytes | None = None, *, uri: str | None = None,
                    hash: str | None = None, size: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"type": payload_type}
        if uri:
            params.update(uri=uri, hash=hash, size=size)
        return self.post("/payloads", params=params, content=data or b"",
                         headers={"Content-Type": "application/octet-stream"})

    def payload(self, hash: str) -> bytes:
        data = self.get(f"/payloads/{hash}")
        if hashlib.sha256(data).hexdigest() != hash:
            raise DCSError(f"payload {hash} arrived corrupted", code="checksum-mismatch")
        return data

    def payload_info(self, hash: str) -> dict[str, Any]:
        return self.get(f"/payloads/{hash}/info")

    def create_tag(self, name: str, payload_type: str, *, time_type: str = "run", description: str = "") -> Any:
        return self.post("/tags", json={"name": name, "payload_type": payload_type, "time_type": time_type,
                                        "description": description})

    def tags(self, payload_type: str | None = None) -> Any:
        return self.get("/tags", params={"payload_type": payload_type} if payload_type else None)

    def lock_tag(self, name: str) -> Any:
        return self.post(f"/tags/{name}/lock")

    def add_iovs(self, tag: str, iovs: list[dict[str, Any]]) -> Any:
        return self.post(f"/tags/{tag}/iovs", json={"iovs": iovs})

    def iovs(self, tag: str, *, effective: bool = False) -> Any:
        return self.get(f"/tags/{tag}/iovs", params={"effective": effective})

    def create_global_tag(self, name: str, description: str = "") -> Any:
        return self.post("/globaltags", json={"name": name, "description": description})

    def global_tags(self) -> Any:
        return self.get("/globaltags")

    def global_tag(self, name: str) -> Any:
        return self.get(f"/globaltags/{name}")

    def add_to_global_tag(self, name: str, tag: str, payload_type: str | None = None) -> Any:
        return self.post(f"/globaltags/{name}/tags", json={"tag": tag, "payload_type": payload_type})

    def set_global_tag_status(self, name: str, status: str) -> Any:
        return self.post(f"/globaltags/{name}/status", json={"status": status})

    def resolve(self, global_tag: str, payload_type: str, run: int) -> Any:
        return self.get(f"/{global_tag}/{payload_type}", params={"run": run})
