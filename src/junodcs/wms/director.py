"""The site director: one loop per computing element that keeps it supplied with pilots, and no more.

Every `interval` seconds, for its CE (DIRAC's SiteDirector, one queue):

1. polls the CE for the pilots it submitted; a pilot the batch system reports ended gets its final state
   (Done, Failed, or Aborted when the batch system killed or lost it) and its output stored in the WMS,
   so `dcs pilot logs` shows it; a pilot that died holding a job makes that job Stalled -> Failed ->
   rescheduled at once (the WMS does it when the pilot record turns final);
2. asks the WMS how many waiting jobs a pilot of this CE could match now (the matcher's own fit rule over
   the task queues: site, CE, platform, tags, memory, cores, CPU time) and how many of this CE's pilots are
   still idle (submitted, or running without a job yet);
3. submits min(free slots, waiting jobs - idle pilots, `max_per_cycle`) pilots, registering each
   (Submitted, with the batch reference) before it can start: no useless pilots, never more than the
   CE's slots.

The pilots authenticate with a token file the director keeps fresh (from the robot client's credentials),
so no long-lived secret goes to worker nodes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from junodcs.core.errors import DCSError
from junodcs.wms.ce.base import PILOT_FINAL, CEBackend, PilotLaunch

log = logging.getLogger("junodcs.director")


@dataclass
class DirectorOptions:
    server_url: str
    site: str
    ce: str
    memory_mb: int
    cores: int = 1
    platform: str | None = None
    tags: list[str] = field(default_factory=list)
    lifetime: float = 86400.0
    interval: float = 2.0
    max_per_cycle: int = 100
    pilot_args: list[str] = field(default_factory=list)
    """Extra arguments for every pilot (e.g. --max-wall, --grace, --poll)."""
    ca_file: str | None = None


class SiteDirector:
    def __init__(self, wms: Any, backend: CEBackend, options: DirectorOptions, *, tokens: Any) -> None:
        self.wms = wms
        self.backend = backend
        self.options = options
        self.tokens = tokens
        self.tracked: dict[str, str] = {}
        """reference -> pilot id of the pilots not yet final"""
        self.submitted = 0
        self.token_file = backend.workdir / "pilot.token"
        self._token_written = 0.0

    # -- token for the pilots --------------------------------------------------------------------------

    def refresh_token_file(self) -> Path:
        token = self.tokens.token()
        if not self.token_file.exists() or self.token_file.read_text().strip() != token:
            tmp = self.token_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            prepare = getattr(self.backend, "prepare_token_file", None)
            if prepare is not None:
                prepare(tmp)
            os.replace(tmp, self.token_file)
        return self.token_file

    # -- one cycle -------------------------------------------------------------------------------------

    def pilot_args(self, pilot_id: str) -> list[str]:
        o = self.options
        args = ["--server", o.server_url, "--site", o.site, "--ce", o.ce, "--pilot-id", pilot_id,
                "--token-file", str(self.backend.pilot_path(self.token_file)) if hasattr(self.backend, "pilot_path")
                else str(self.token_file),
                "--memory-mb", str(o.memory_mb), "--cores", str(o.cores), "--lifetime", str(o.lifetime),
                "--workdir", str(self.backend.pilot_workdir(pilot_id)) if hasattr(self.backend, "pilot_workdir")
                else str(self.backend.workdir / "work" / pilot_id)]
        if o.platform:
            args += ["--platform", o.platform]
        for tag in o.tags:
            args += ["--tag", tag]
        if o.ca_file:
            args += ["--ca-file", str(self.backend.pilot_path(Path(o.ca_file))) if hasattr(self.backend, "pilot_path")
                     else o.ca_file]
        return args + list(o.pilot_args)

    def update_pilots(self) -> list[dict[str, Any]]:
        ended = []
        if not self.tracked:
            return ended
        states = self.backend.status(list(self.tracked))
        for reference, state in states.items():
            if state.status not in PILOT_FINAL:
                continue
            pilot_id = self.tracked.pop(reference)
            output = self.backend.output(reference, pilot_id)
            try:
                if output:
                    self.wms.store_pilot_output(pilot_id, output)
                self.wms.pilot_status(pilot_id, state.status, state.reason or None, source="Director")
            except DCSError as exc:
                log.warning("pilot %s: final state not recorded (%s); retried next cycle", pilot_id, exc)
                self.tracked[reference] = pilot_id
                continue
            forget = getattr(self.backend, "forget", None)
            if forget is not None:
                forget(reference)
            ended.append({"pilot_id": pilot_id, "reference": reference, "status": state.status,
                          "reason": state.reason})
        return ended

    def cycle(self) -> dict[str, Any]:
        o = self.options
        ended = self.update_pilots()
        info = self.wms.ce_waiting(o.site, o.ce)
        pilots = info["pilots"]
        idle = info.get("idle_pilots", pilots.get("Submitted", 0))
        free = max(0, self.backend.slots - self.backend.active())
        wanted = max(0, min(free, info["waiting_jobs"] - idle, o.max_per_cycle))
        submitted: list[str] = []
        if wanted:
            self.refresh_token_file()
            launches = [PilotLaunch(f"{o.ce}.{uuid.uuid4().hex[:12]}", []) for _ in range(wanted)]
            for launch in launches:
                launch.args = self.pilot_args(launch.pilot_id)
            self.wms.register_pilots([{"pilot_id": launch.pilot_id, "site": o.site, "ce": o.ce}
                                      for launch in launches])
            try:
                references = self.backend.submit(launches)
            except Exception as exc:
                log.exception("%s: pilot submission failed", o.ce)
                for launch in launches:
                    self.wms.pilot_status(launch.pilot_id, "Aborted", f"submission failed: {exc}"[:255],
                                          source="Director")
                raise
            for launch, reference in zip(launches, references, strict=True):
                self.tracked[reference] = launch.pilot_id
                self._set_reference(launch.pilot_id, reference)
                submitted.append(launch.pilot_id)
            self.submitted += len(submitted)
            log.info("%s: %d waiting jobs, %d idle pilots, %d free slots: submitted %d pilots", o.ce,
                     info["waiting_jobs"], idle, free, len(submitted))
        elif self.tracked:
            self.refresh_token_file()
        return {"ce": o.ce, "waiting_jobs": info["waiting_jobs"], "idle_pilots": idle, "free_slots": free,
                "submitted": submitted, "ended": ended}

    def _set_reference(self, pilot_id: str, reference: str) -> None:
        try:
            self.wms.post(f"/pilots/{pilot_id}/reference", json={"reference": reference})
        except DCSError:
            pass

    def run(self, stop: threading.Event) -> None:
        log.info("site director for %s (%s, %s, %d slots of %d MB) started", self.options.ce, self.options.site,
                 self.backend.kind, self.backend.slots, self.backend.memory_mb)
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:  # noqa: BLE001 - a director logs and keeps going
                log.exception("%s: director cycle failed", self.options.ce)
            stop.wait(self.options.interval)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every pilot ended and record them (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.tracked and time.monotonic() < deadline:
            self.update_pilots()
            time.sleep(0.2)
