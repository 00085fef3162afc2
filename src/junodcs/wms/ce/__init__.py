"""Computing-element backends: where site directors start pilots (`local`, `htcondor`, `slurm`)."""

from __future__ import annotations

from typing import Any

from junodcs.wms.ce.base import CEBackend, PilotLaunch


def backend_for(ce: Any, *, workdir: Any, **kwargs: Any) -> CEBackend:
    """The backend of a grid.yaml computing element (`type: local|htcondor|slurm`, `options` for the backend)."""
    kind = getattr(ce.type, "value", ce.type)
    if kind == "local":
        from junodcs.wms.ce.local import LocalCE

        return LocalCE(ce.name, slots=ce.slots, memory_mb=int(ce.memory_per_slot), workdir=workdir, **kwargs)
    if kind == "htcondor":
        from junodcs.wms.ce.htcondor import HTCondorCE

        return HTCondorCE(ce.name, slots=ce.slots, memory_mb=int(ce.memory_per_slot), workdir=workdir,
                          options=dict(ce.options), **kwargs)
    if kind == "slurm":
        from junodcs.wms.ce.slurm import SlurmCE

        return SlurmCE(ce.name, slots=ce.slots, memory_mb=int(ce.memory_per_slot), workdir=workdir,
                       options=dict(ce.options), **kwargs)
    raise ValueError(f"computing element {ce.name}: unknown type {kind!r}")


__all__ = ["CEBackend", "PilotLaunch", "backend_for"]
