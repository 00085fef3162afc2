"""How commands talk to people and to scripts.

Every listing prints a Rich table for people or, with `--json`, one JSON document for scripts. Every
failure prints one line, `error[code]: detail`, on stderr and exits non-zero: users never see a trace
for a problem they can fix.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import Any, TypeVar

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = False) -> Any:
    """A Rich console; when the output is not a terminal (a pipe, a log, the demo) it is 120 columns
    wide rather than Rich's 80, so URLs and LFNs stay on one line."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 120
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_table(
    rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], *, title: str | None = None
) -> None:
    """`columns` are (key, header) pairs; values are shown as text, lists joined by commas."""
    from rich.table import Table

    table = Table(title=title, header_style="bold", show_lines=False)
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key, _ in columns))
    console().print(table)


def print_fields(data: dict[str, Any], *, title: str | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key, _cell(value))
    console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def fail(code: str, detail: str, exit_code: int = 1) -> None:
    sys.stderr.write(f"error[{code}]: {detail}\n")
    raise typer.Exit(exit_code)


def handle_errors(func: F) -> F:
    """Decorator for commands: a `DCSError` (local or from the server) becomes one clear line."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from junodcs.core.errors import DCSError

        try:
            return func(*args, **kwargs)
        except DCSError as exc:
            fail(exc.code, exc.detail)
        except KeyboardInterrupt:
            fail("interrupted", "interrupted by the user", 130)
        return None

    return wrapper  # type: ignore[return-value]
