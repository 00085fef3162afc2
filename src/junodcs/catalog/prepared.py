"""Statements of the catalog's hot paths, compiled once per dialect and run straight through the driver.

Why: for a one-row lookup such as `stat`, building a Core `select`, computing its cache key and
post-processing the result cost several times more than the indexed lookup itself (about 0.4 ms
against 0.05 ms on SQLite). A `Prepared` statement is still written with SQLAlchemy Core, so it stays
portable across SQLite, PostgreSQL and MariaDB, but it is compiled once per dialect with named bind
parameters; each call only maps the parameters to the driver's style and runs the SQL string on the
connection's DBAPI cursor (inside whatever transaction the connection is in).

Rows come back as plain named tuples. Date-time columns are returned as `datetime` on every back end
(SQLite's driver hands out ISO strings; they are parsed with the C `fromisoformat`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select


def to_datetime(value: Any) -> Any:
    """A driver's date-time value as a naive `datetime` (None stays None)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def iso(value: Any) -> str | None:
    """A driver's date-time value as `datetime.isoformat()` would print it."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return datetime.fromisoformat(value).isoformat()


class _Compiled:
    __slots__ = ("sql", "order", "defaults", "make")

    def __init__(self, sql: str, order: tuple[str, ...] | None, defaults: dict[str, Any],
                 make: Callable[[tuple[Any, ...]], Any]) -> None:
        self.sql = sql
        self.order = order
        self.defaults = defaults
        self.make = make


class Prepared:
    """A Core `select` with named bind parameters, compiled lazily once per dialect."""

    def __init__(self, stmt: Select[Any], name: str = "Row") -> None:
        self._stmt = stmt
        self._name = name
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        entry = self._compiled.get(dialect.name)
        if entry is None:
            compiled = self._stmt.compile(dialect=dialect)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            columns = list(self._stmt.selected_columns)
            row_type = namedtuple(self._name, [c.key for c in columns])  # type: ignore[misc]
            dates = [i for i, c in enumerate(columns) if isinstance(c.type, DateTime)]

            def make(raw: tuple[Any, ...], row_type: Any = row_type, dates: list[int] = dates) -> Any:
                if dates:
                    values = list(raw)
                    for i in dates:
                        values[i] = to_datetime(values[i])
                    return row_type._make(values)
                return row_type._make(raw)

            entry = _Compiled(str(compiled), order, dict(compiled.params), make)
            self._compiled[dialect.name] = entry
        return entry

    def _rows(self, conn: Connection, params: dict[str, Any], one: bool) -> tuple[_Compiled, list[Any]]:
        """Run on the connection's DBAPI cursor: `exec_driver_sql` would rebuild result metadata from the
        cursor description on every call, which costs more than a one-row lookup. Driver errors are
        raised wrapped like SQLAlchemy's own (`sqlalchemy.exc.DBAPIError` subclasses)."""
        entry = self._for(conn)
        merged = {**entry.defaults, **params} if entry.defaults else params
        args: Any = tuple(merged[n] for n in entry.order) if entry.order is not None else merged
        cursor = conn.connection.cursor()
        try:
            cursor.execute(entry.sql, args)
            if one:
                row = cursor.fetchone()
                rows = [] if row is None else [row]
            else:
                rows = cursor.fetchall()
        except Exception as exc:
            base = conn.dialect.loaded_dbapi.Error
            if isinstance(exc, base):
                raise DBAPIError.instance(entry.sql, args, exc, base, dialect=conn.dialect) from exc
            raise
        finally:
            cursor.close()
        return entry, rows

    def first(self, conn: Connection, **params: Any) -> Any:
        """The first row (a named tuple) or None."""
        entry, rows = self._rows(conn, params, True)
        return entry.make(tuple(rows[0])) if rows else None

    def all(self, conn: Connection, **params: Any) -> list[Any]:
        entry, rows = self._rows(conn, params, False)
        return [entry.make(tuple(raw)) for raw in rows]
