"""Deadlock victims are retried whole; other errors are not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from junodcs.db.retry import is_retryable, retry_transaction


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def deadlock() -> OperationalError:
    return OperationalError("UPDATE ...", {}, Exception(1213, "Deadlock found when trying to get lock"))


def test_classification() -> None:
    assert is_retryable(deadlock())
    assert is_retryable(OperationalError("x", {}, PgError("40P01")))
    assert not is_retryable(OperationalError("x", {}, PgError("42P01")))
    assert not is_retryable(IntegrityError("x", {}, Exception(1062, "Duplicate entry")))
    assert not is_retryable(ValueError("no"))


def test_retries_until_success_and_gives_up() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise deadlock()
        return "done"

    assert retry_transaction(flaky, pause=0) == "done" and len(calls) == 3

    def always() -> None:
        raise deadlock()

    with pytest.raises(OperationalError):
        retry_transaction(always, attempts=3, pause=0)

    def integrity() -> None:
        calls.append(1)
        raise IntegrityError("x", {}, Exception(1062, "dup"))

    calls.clear()
    with pytest.raises(IntegrityError):
        retry_transaction(integrity, pause=0)
    assert len(calls) == 1
