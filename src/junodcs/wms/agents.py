"""Background loops of the workload management system: optimizers, stalled and Completing jobs, sandbox
cleaning.

Each loop is safe in several copies (optimizers claim jobs with leases; the stalled-job pass and the cleaner
only apply guarded transitions), so `dcs agent run` can start as many as the load needs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from junodcs.wms.logic import WMS
from junodcs.wms.optimizers import Optimizer, ReplicaResolver

log = logging.getLogger(__name__)


def loop(name: str, once: Callable[[], Any], interval: float, stop: threading.Event) -> None:
    """Run `once` every `interval` seconds until `stop` is set; at once again when it found work."""
    while not stop.is_set():
        try:
            worked = once()
        except Exception:  # an agent logs and keeps going: the next pass retries
            log.exception("agent %s failed; retrying in %.0f s", name, interval)
            worked = None
        if not worked:
            stop.wait(interval)


def optimizer_agent(wms: WMS, resolver: ReplicaResolver | None, stop: threading.Event,
                    interval: float = 2.0) -> None:
    optimizer = Optimizer(wms, resolver)
    loop(optimizer.name, optimizer.run_once, interval, stop)


def stalled_agent(wms: WMS, stop: threading.Event, interval: float | None = None) -> None:
    """Job state housekeeping: stalled jobs, and Completing jobs whose failover requests have ended."""
    from junodcs.wms.completing import RMSTracker, settle_completing

    period = interval or max(10.0, wms.config.heartbeat_period / 2)
    tracker = RMSTracker(wms.engine)

    def once() -> bool:
        wms.check_stalled()
        settle_completing(wms, tracker)
        return False

    loop("stalled", once, period, stop)


def sandbox_cleaner(wms: WMS, stop: threading.Event, interval: float = 3600.0) -> None:
    loop("sandbox-cleaner", lambda: bool(wms.clean_sandboxes()) and False, interval, stop)


def resolver_for(app_state: Any) -> ReplicaResolver:
    """The catalog in-process when this server mounts it, else its REST client."""
    options = getattr(app_state, "options", None)
    from junodcs.wms.optimizers import CatalogClientResolver, CatalogLogicResolver

    if options is not None and "catalog" in options.systems:
        from junodcs.catalog.logic import Catalog

        return CatalogLogicResolver(Catalog(app_state.engine, vo=app_state.grid.vo))
    from junodcs.catalog.client import CatalogClient

    return CatalogClientResolver(CatalogClient(getattr(app_state, "catalog_url", None)))


# -- entry points of the agent registry (junodcs.server.agents) ----------------------------------------


def run_optimizer(state: Any, stop: threading.Event) -> None:
    from junodcs.wms.logic import wms_for_state

    optimizer_agent(wms_for_state(state), resolver_for(state), stop)


def run_stalled(state: Any, stop: threading.Event) -> None:
    from junodcs.wms.logic import wms_for_state

    stalled_agent(wms_for_state(state), stop)


def run_sandbox_cleaner(state: Any, stop: threading.Event) -> None:
    from junodcs.wms.logic import wms_for_state

    sandbox_cleaner(wms_for_state(state), stop)
