"""Background agents: one registry, run inside `dcs server` or alone with `dcs agent run NAME`.

An agent is a loop over claimed work (leases, `FOR UPDATE SKIP LOCKED`), so any number of copies may run
against one database and a killed one loses nothing. Each entry names a function `run(state, stop)`
that loops until the `threading.Event` is set; `state` is the application state of a server built for
the same grid and database (engine, grid, registry, token issuer), so an agent process sees exactly
what the server sees.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSpec:
    name: str
    system: str
    target: str
    """`module:function` with signature `function(state, stop: threading.Event) -> None`."""
    description: str

    def load(self) -> Callable[[Any, threading.Event], None]:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec("wms-optimizer", "wms", "junodcs.wms.agents:run_optimizer",
                  "checks Received jobs: input data, candidate sites, task queues"),
        AgentSpec("wms-stalled", "wms", "junodcs.wms.agents:run_stalled",
                  "marks jobs without heartbeats Stalled, then Failed, and reschedules them"),
        AgentSpec("wms-sandbox-cleaner", "wms", "junodcs.wms.agents:run_sandbox_cleaner",
                  "removes sandboxes no job uses any more"),
        AgentSpec("transfer-worker", "transfer", "junodcs.transfer.agents:run_worker",
                  "claims queued transfers with leases and runs them (HTTP-TPC), stages, archives, optimizes links"),
        AgentSpec("rms-executor", "rms", "junodcs.rms.agents:run_executor", "claims due requests with leases and runs their operations in order"),
    )
}


def agents_of(systems: Iterable[str]) -> tuple[str, ...]:
    mounted = set(systems)
    return tuple(name for name, spec in AGENTS.items() if spec.system in mounted)


def resolve_agent_names(value: str | None, systems: Iterable[str]) -> tuple[str, ...]:
    """`--agents` of `dcs server`: None or "all" = every agent of the mounted systems, "none" = none."""
    if value is None or value == "all":
        return agents_of(systems)
    if value == "none":
        return ()
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [name for name in names if name not in AGENTS]
    if unknown:
        from junodcs.core.errors import InvalidInput

        raise InvalidInput(f"unknown agents {', '.join(unknown)}; known: {', '.join(AGENTS)}", code="unknown-agent")
    return names


class AgentRunner:
    """Runs agents in threads of the current process and stops them together."""

    def __init__(self, state: Any, names: Iterable[str]) -> None:
        self.state = state
        self.names = tuple(names)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> AgentRunner:
        for name in self.names:
            run = AGENTS[name].load()
            thread = threading.Thread(target=self._guard, args=(name, run), name=f"agent-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        if self.names:
            log.info("agents running: %s", ", ".join(self.names))
        return self

    def _guard(self, name: str, run: Callable[[Any, threading.Event], None]) -> None:
        try:
            run(self.state, self.stop_event)
        except Exception:  # an agent that dies is logged; the others go on
            log.exception("agent %s stopped with an error", name)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout)
