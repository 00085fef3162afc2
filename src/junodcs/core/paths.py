"""Where one installation keeps its state.

`DCS_HOME`, when set, holds everything of one installation (database, keys, CA, client configuration,
tokens, logs) so that tests and several local grids never share state. Unset, server data goes to
`~/.local/share/junodcs` and client configuration and tokens to `~/.config/junodcs`.

This module imports nothing heavy: the CLI reads it before deciding what else to load.
"""

from __future__ import annotations

import os
from pathlib import Path


def dcs_home() -> Path | None:
    value = os.environ.get("DCS_HOME")
    return Path(value).expanduser().resolve() if value else None


def data_dir() -> Path:
    """Server-side state: database, signing keys, CA, logs of local processes."""
    home = dcs_home()
    if home is not None:
        return home
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "junodcs"


def config_dir() -> Path:
    """Client-side state: which server to talk to, tokens. Kept private (mode 700)."""
    home = dcs_home()
    if home is not None:
        return home / "client"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "junodcs"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private_file(path: Path, data: bytes | str) -> None:
    """Write a secret atomically with mode 600: a crash leaves the old file or the new one, never half."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
