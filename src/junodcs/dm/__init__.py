"""Data manager: put-and-register, get (best replica), replicate-and-register, remove (client side)."""

from junodcs.dm.manager import MODES, Attempt, DataManager, DataManagerError, Result
from junodcs.dm.ranking import Candidate, Links, SEInfo, rank_replicas

__all__ = ["MODES", "Attempt", "Candidate", "DataManager", "DataManagerError", "Links", "Result", "SEInfo",
           "rank_replicas"]
