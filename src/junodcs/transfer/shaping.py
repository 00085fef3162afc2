"""Link shaping for the local grid: every configured link carries at most its bandwidth.

On loopback every "link" is infinitely fast, so neither the optimizer nor the monitoring would face a
constraint. Shaping lives on the data path of the SE that moves the bytes of a third-party copy: the
active SE (the destination for a pull, the source for a push) passes the body through a token bucket of
the remote peer's link, shared by all copies with that peer. An SE is given its per-peer rates at
start-up (`SEConfig(shaper=LinkShaper(...))`; `LinkShaper.for_se(grid, se_name, urls)` derives them from
the links of grid.yaml: a link between two sites applies to every SE pair of those sites).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit


class TokenBucket:
    """Bytes per second with a burst of `burst` bytes (default: 50 ms worth, at least 64 KiB)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(64 * 1024, rate * 0.05))
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        t = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may pass (a chunk larger than the burst passes in burst-sized debts)."""
        async with self._lock:
            self._refill()
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)
                self._refill()

    def delay_for(self, n: int) -> float:
        """Synchronous variant (for threads): seconds to sleep before sending `n` bytes."""
        self._refill()
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


def peer_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.lower()


class LinkShaper:
    """Per-peer token buckets: `rates` maps `host:port` (or `*`) to bytes per second."""

    def __init__(self, rates: Mapping[str, float]) -> None:
        self.rates = {k.lower(): float(v) for k, v in rates.items() if v and v > 0}
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, url: str) -> TokenBucket | None:
        peer = peer_of(url)
        rate = self.rates.get(peer, self.rates.get("*"))
        if rate is None:
            return None
        key = peer if peer in self.rates else "*"
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = TokenBucket(rate)
        return found

    async def throttle(self, chunks: AsyncIterator[bytes], url: str) -> AsyncIterator[bytes]:
        bucket = self.bucket(url)
        async for chunk in chunks:
            if bucket is not None:
                await bucket.take(len(chunk))
            yield chunk

    @classmethod
    def for_se(cls, grid: Any, se_name: str, urls: Mapping[str, str]) -> LinkShaper:
        """Rates for SE `se_name` from the grid's links (Mb/s -> bytes/s) towards every SE of the other site."""
        site_of = {se.name: site.name for site in grid.sites for se in site.storage_elements}
        mine = site_of.get(se_name)
        rates: dict[str, float] = {}
        for name, url in urls.items():
            other = site_of.get(name)
            if not other or other == mine or name == se_name:
                continue
            link = grid.link(other, mine) or grid.link(mine, other)
            if link is not None:
                rates[peer_of(url)] = link.bandwidth * 1e6 / 8
        return cls(rates)


def shaper_for(grid: Any, se_name: str) -> LinkShaper | None:
    """The shaper an SE of `grid` applies to its third-party copies: each peer SE at another site is
    limited to the bandwidth of the configured link between the two sites (None when no link applies).
    `dcs se serve --grid` uses it, so in a local grid every configured link is a real constraint."""
    urls = {se.name: se.url for site in grid.sites for se in site.storage_elements if se.url}
    shaper = LinkShaper.for_se(grid, se_name, urls)
    return shaper if shaper.rates else None
