"""Transactions that the database aborted to break a deadlock are safe to run again.

Under concurrency (several pilots matching, several agents claiming) MariaDB and PostgreSQL may pick
a transaction as a deadlock victim and roll it back; nothing of it was applied, so the caller retries
it whole after a short random pause. Any other error is the caller's to handle.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

#: MySQL/MariaDB error numbers: deadlock found, lock wait timeout.
_MYSQL_RETRYABLE = {1213, 1205}
#: PostgreSQL SQLSTATEs: deadlock detected, serialization failure.
_POSTGRES_RETRYABLE = {"40P01", "40001"}


def is_retryable(error: BaseException) -> bool:
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_RETRYABLE:
        return True
    return getattr(original, "sqlstate", None) in _POSTGRES_RETRYABLE


def retry_transaction(work: Callable[[], T], *, attempts: int = 6, pause: float = 0.01) -> T:
    """Run `work` (one whole transaction); again, after a growing random pause, if it was a deadlock victim."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as error:
            if attempt == attempts or not is_retryable(error):
                raise
            time.sleep(random.uniform(0, pause * 2**attempt))
    raise AssertionError("unreachable")
