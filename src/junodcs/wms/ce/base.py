"""The interface every CE backend implements (what DIRAC's `ComputingElement` offers a SiteDirector)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

PILOT_FINAL = ("Done", "Failed", "Aborted")


@dataclass
class PilotLaunch:
    """One pilot to start: its ID and the pilot's own arguments (after `dcs pilot`)."""

    pilot_id: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class PilotState:
    status: str
    """Submitted, Running, Done, Failed or Aborted."""
    reason: str = ""


class CEBackend(ABC):
    kind = "base"

    def __init__(self, name: str, *, slots: int, memory_mb: int, workdir: Path | str) -> None:
        self.name = name
        self.slots = slots
        self.memory_mb = memory_mb
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def log_path(self, pilot_id: str) -> Path:
        return self.workdir / "pilots" / f"{pilot_id}.log"

    @abstractmethod
    def submit(self, launches: list[PilotLaunch]) -> list[str]:
        """Start pilots; returns each one's batch reference (same order)."""

    @abstractmethod
    def status(self, references: list[str]) -> dict[str, PilotState]:
        """Current state of pilots by reference (an unknown reference: Aborted)."""

    @abstractmethod
    def active(self) -> int:
        """Pilots of ours queued or running at this CE (what counts against the slots)."""

    def output(self, reference: str, pilot_id: str) -> str:
        try:
            return self.log_path(pilot_id).read_text(errors="replace")
        except OSError:
            return ""

    @abstractmethod
    def cancel(self, references: list[str]) -> None:
        """Remove pilots from the batch system."""

    def close(self) -> None:
        """Stop whatever the backend runs itself (local pilots)."""
