"""What one storage element is: its name, root, namespace prefix, authorisation and TLS settings."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TokenVerifyHook = Callable[[str], dict[str, Any]]
"""Takes a bearer JWT, returns its claims or raises `Unauthenticated` (e.g. `auth.tokens.TokenVerifier.verify`)."""


@dataclass(slots=True)
class SEConfig:
    name: str
    root: Path
    vo_prefix: str = "/juno"
    """URL path that token scope paths are relative to (`storage.read:/raw` -> `/juno/raw`)."""
    anonymous_read: bool = False
    verify_token: TokenVerifyHook | None = None
    macaroon_secret: bytes | None = None
    """32+ random bytes; None disables macaroon issuing and acceptance."""
    public_url: str | None = None
    md5_on_upload: bool = False
    """Also compute md5 inline on every upload (costs ~1.8 s/GiB of CPU); otherwise md5 is computed inline
    only when the client sends one, or once on the first `Want-Digest: md5` and stored."""
    fsync: bool = False
    marker_interval: float = 5.0
    """Seconds between TPC performance markers (the spec's upper bound is 5 s)."""
    tpc_idle_timeout: float = 60.0
    """A TPC with no byte moving for this long fails (XRootD's default)."""
    tpc_connect_timeout: float = 30.0
    outbound_ssl: ssl.SSLContext | bool | None = None
    """TLS context for TPC outbound requests: a context, True (system CAs) or False (no verification)."""
    remote_ca_dir: Path | None = None
    """CA directory (X509_CERT_DIR layout) for TPC outbound https when `outbound_ssl` is None."""
    io_block: int = 4 << 20
    """Read buffer of uploads (aiohttp's `read_bufsize`), TPC push read size, threaded write batches."""
    write_block: int = 256 << 10
    """Bytes of an upload gathered before one `writev`: small enough to still be in the CPU cache."""
    inline_writes: bool = True
    """Write uploads on the event loop (cheapest on a local disk); False hands them to a worker thread,
    for roots on file systems whose writes can block for long (NFS, Lustre)."""
    tape: TapeSettings | None = None
    """Set for a tape SE: the WLCG Tape REST API is served and files go to tape after the flush delay."""
    x509: X509Settings | None = None
    """Set (with TLS on) to accept client certificates and VOMS proxies."""
    shaper: Any = None
    """Optional link shaping of third-party copies (`transfer.shaping.LinkShaper`): the bytes this SE pulls
    from or pushes to a peer pass through that peer's token bucket (local grids emulate link bandwidth)."""


@dataclass(frozen=True, slots=True)
class TapeSettings:
    mount_delay: float = 1.0
    """Seconds before a stage request starts reading (the tape mount)."""
    stage_delay: float = 2.0
    """Seconds each file of a request takes to come back from tape, one after the other."""
    flush_delay: float = 5.0
    """Seconds after a write before the file is on tape (DISK -> DISK_AND_TAPE)."""
    evict_delay: float = 10.0
    """Seconds a flushed file's disk copy stays (DISK_AND_TAPE -> TAPE) unless pinned by a stage."""
    default_pin: float = 3600.0
    """Disk lifetime of a staged file when the request gives no `diskLifetime`."""
    max_pin: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class X509Settings:
    """Client certificates / RFC 3820 proxies: validated against `ca_dir` (+ VOMS ACs against `vomsdir`),
    the DN and FQANs mapped to a user and group by `registry` (an `auth.registry.Registry`)."""

    ca_dir: Path
    vomsdir: Path | None
    registry: Any
