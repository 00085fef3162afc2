"""The request executor (DIRAC's RequestExecutingAgent): claims due requests with leases and runs their
operations in order, with the owner's credentials. Safe in several copies: claims use `FOR UPDATE SKIP
LOCKED` off SQLite and every write is fenced by the claim, so a killed executor's request is taken again
when its lease lapses and resumes where the database says it is."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from junodcs.rms.handlers import HANDLERS, Context
from junodcs.rms.logic import Claim, RequestService, Settings, StaleClaim
from junodcs.rms.models import OperationType

log = logging.getLogger(__name__)

#: (owner, group) -> (data manager, transfer client), both closed by the executor after use
ServicesFactory = Callable[[str, str | None], tuple[Any, Any]]


def owner_services(server_url: str, mint: Callable[[str, str | None], str]) -> ServicesFactory:
    """Clients of the central server acting as the request's owner (a token minted for them)."""

    def factory(owner: str, group: str | None) -> tuple[Any, Any]:
        from junodcs.dm.manager import DataManager
        from junodcs.transfer.client import TransferClient

        token = mint(owner, group)
        return DataManager(server_url, token=token), TransferClient(server_url, token=token, timeout=60.0)

    return factory


def minter(issuer: Any, registry: Any, lifetime: float = 3600.0) -> Callable[[str, str | None], str]:
    """Tokens for request owners with the scopes the VO's policy gives them (what their login would give)."""
    cache: dict[tuple[str, str], tuple[str, float]] = {}
    lock = threading.Lock()

    def mint(owner: str, group: str | None) -> str:
        key = (owner, group or "")
        with lock:
            hit = cache.get(key)
            if hit and hit[1] > time.time() + 300:
                return hit[0]
        from junodcs.auth.scope_policy import policy_scopes

        membership = registry.membership(owner, group)
        scopes = policy_scopes(registry.vo, owner, membership.properties)
        token, claims = issuer.issue_access_token(username=owner, group=membership.group, scopes=scopes,
                                                  lifetime=lifetime)
        with lock:
            cache[key] = (token, float(claims["exp"]))
        return str(token)

    return mint


class RequestExecutor:
    def __init__(self, service: RequestService, services: ServicesFactory, *, name: str | None = None,
                 concurrency: int = 4, poll: float = 2.0) -> None:
        self.service = service
        self.services = services
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.concurrency = concurrency
        self.poll = poll
        self.wake = threading.Event()
        #: test hook: called as hook(stage, claim) at "claimed", "handled" (before the outcome is written),
        #: "operation-done"
        self.hook: Callable[[str, Claim], None] | None = None

    def run_once(self) -> int:
        """One cycle: claim due requests and execute them. Returns how many were claimed."""
        claims = self.service.claim(self.name)
        if not claims:
            return 0
        if len(claims) == 1 or self.concurrency <= 1:
            for claim in claims:
                self.execute(claim)
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(claims))) as pool:
                list(pool.map(self.execute, claims))
        return len(claims)

    def execute(self, claim: Claim) -> str | None:
        try:
            return self._execute(claim)
        except StaleClaim as exc:
            log.warning("%s", exc)
            return None
        except Exception:  # noqa: BLE001 - the lease lapses and another cycle tries again
            log.exception("request %s: executor error", claim.request_id)
            return None

    def _execute(self, claim: Claim) -> str:
        if self.hook:
            self.hook("claimed", claim)
        dm = transfer = None
        try:
            while True:
                current = self.service.current_operation(claim)
                if current is None:
                    break
                request, op, files = current
                if not files:
                    break
                if dm is None:
                    dm, transfer = self.services(request["owner"], request["owner_group"])
                ctx = Context(dm, transfer, self.service.settings, request)
                handler = HANDLERS[OperationType(op["type"])]
                outcome = handler(op, files, ctx)
                if self.hook:
                    self.hook("handled", claim)
                self.service.apply(claim, op["operation_id"], outcome)
                if self.hook:
                    self.hook("operation-done", claim)
                if not all(f.status == "Done" for f in outcome.files.values()) or len(outcome.files) < len(files):
                    break
            status = self.service.release(claim)
            log.info("request %s: %s", claim.request_id, status)
            return status
        finally:
            for client in (dm, transfer):
                if client is not None:
                    client.close()

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - database hiccup: next cycle
                log.exception("request executor cycle failed")
                busy = 0
            if not busy:
                self.wake.wait(self.poll)
                self.wake.clear()


def service_for(state: Any) -> RequestService:
    service = getattr(state, "rms_service", None)
    if service is None:
        settings = getattr(state, "rms_settings", None) or Settings.from_env()
        service = state.rms_service = RequestService(state.engine, settings)
    return service


def executor_from_app_state(state: Any, **options: Any) -> RequestExecutor:
    mint = minter(state.token_issuer, state.registry)
    return RequestExecutor(service_for(state), owner_services(state.public_url, mint), **options)


def run_executor(state: Any, stop: threading.Event) -> None:
    """Agent `rms-executor` (`dcs server` runs it; `dcs agent run rms-executor` alone)."""
    executor = executor_from_app_state(state, poll=float(os.environ.get("DCS_RMS_EXECUTOR_POLL", "2")))
    state.rms_executor = executor
    executor.loop(stop)
