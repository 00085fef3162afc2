"""The root command: every command in the table loads, no module adds an unlisted one, help stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer
from typer.main import get_group

from junodcs.cli.main import COMMANDS, LazyCommands, app


def test_every_listed_command_loads() -> None:
    group = get_group(app)
    assert isinstance(group, LazyCommands)
    for name in COMMANDS:
        command = group.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None, f"{name} is listed but no module builds it"


def test_no_module_registers_an_unlisted_top_level_command() -> None:
    modules = {module for modules, _ in COMMANDS.values() for module in modules}
    for module in modules:
        holder = typer.Typer()
        importlib.import_module(module).register(holder)
        unlisted = set(get_group(holder).commands) - set(COMMANDS)
        assert not unlisted, f"{module} registers {unlisted}: add them to COMMANDS"


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys; sys.argv = ['dcs', '--help']\n"
        "from junodcs.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'httpx', 'cryptography', 'pydantic', 'junodcs.cli.job')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
    assert "transfer" in out and "cond" in out


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "junodcs", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "No such command 'nope'" in result.stderr
