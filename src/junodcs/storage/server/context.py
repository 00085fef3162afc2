"""Everything the request handlers share: configuration, store, authorizer, metrics, the outbound client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from junodcs.storage.server.auth import Authorizer, X509Authenticator
from junodcs.storage.server.config import SEConfig
from junodcs.storage.server.macaroons import MacaroonAuthority
from junodcs.storage.server.store import Store, Upload

if TYPE_CHECKING:
    import aiohttp

    from junodcs.storage.server.tape import TapeSystem
    from prometheus_client import CollectorRegistry, Counter


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    bytes_in: Counter
    bytes_out: Counter
    tpc: Counter

    @classmethod
    def create(cls, se_name: str) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter

        registry = CollectorRegistry()
        labels = {"se": se_name}
        return cls(
            registry=registry,
            requests=Counter("dcs_se_requests", "Requests by method and status", ["se", "method", "status"],
                             registry=registry),
            bytes_in=Counter("dcs_se_bytes_written", "Bytes stored by PUT and TPC pull", ["se"],
                             registry=registry).labels(**labels),
            bytes_out=Counter("dcs_se_bytes_pushed", "Bytes sent by TPC push", ["se"],
                              registry=registry).labels(**labels),
            tpc=Counter("dcs_se_tpc", "Third-party copies by mode and outcome", ["se", "mode", "outcome"],
                        registry=registry),
        )


@dataclass(slots=True)
class Progress:
    transferred: int = 0


@dataclass
class SEContext:
    config: SEConfig
    store: Store
    auth: Authorizer
    metrics: Metrics
    executor: concurrent.futures.ThreadPoolExecutor
    http: aiohttp.ClientSession | None = None
    tape: TapeSystem | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: SEConfig) -> SEContext:
        macaroons = None
        if config.macaroon_secret is not None:
            macaroons = MacaroonAuthority(config.macaroon_secret, location=config.name)
        x509 = None
        if config.x509 is not None:
            x509 = X509Authenticator(config.x509.ca_dir, config.x509.vomsdir, config.x509.registry)
        store = Store(config.root, md5_on_upload=config.md5_on_upload, fsync=config.fsync)
        tape = None
        if config.tape is not None:
            from junodcs.storage.server.tape import TapeSystem

            tape = TapeSystem(store.root, config.tape, lambda logical: store.paths.resolve(logical).local)
        return cls(
            config=config,
            store=store,
            tape=tape,
            auth=Authorizer(vo_prefix=config.vo_prefix, anonymous_read=config.anonymous_read,
                            verify_token=config.verify_token, macaroons=macaroons, x509=x509),
            metrics=Metrics.create(config.name),
            executor=concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"se-{config.name}"),
        )

    async def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: func(*args, **kwargs))

    def outbound_ssl(self) -> ssl.SSLContext | bool:
        option = self.config.outbound_ssl
        if isinstance(option, (ssl.SSLContext, bool)):
            return option
        context = ssl.create_default_context()
        ca_dir = self.config.remote_ca_dir or (os.environ.get("X509_CERT_DIR") or None)
        if ca_dir:
            context.load_verify_locations(capath=str(ca_dir))
        return context

    async def start_client(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.tpc_connect_timeout,
                                        sock_read=self.config.tpc_idle_timeout)
        connector = aiohttp.TCPConnector(limit=100, ssl=self.outbound_ssl())
        self.http = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                          read_bufsize=1 << 20, skip_auto_headers=("User-Agent",),
                                          headers={"User-Agent": f"junodcs-se/{self.config.name}"})

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.tape is not None:
            self.tape.close()


async def pump(ctx: SEContext, chunks: AsyncIterator[bytes], upload: Upload, progress: Progress | None = None) -> None:
    """Write (and checksum) what arrives, `write_block` bytes at a time, with one `writev` of the pieces
    as received.

    By default the write happens right here on the event loop, like nginx writes request bodies: a
    quarter MiB that has just come off the socket is still in this core's cache, so copying it into the
    page cache and checksumming it is cheap. Handing 4 MiB batches to a worker thread, as this SE first
    did, made the bytes go cold and cost twice the CPU (2.0-2.3 s per GiB uploaded against 1.0-1.1 s,
    `perf`: the page-cache copy dominated), which on a shared, busy machine was half the throughput.
    With `inline_writes=False` (a root on a network file system, whose writes may block for long) the
    batches go to a worker thread while the loop receives the next one."""
    if not ctx.config.inline_writes:
        await _pump_threaded(ctx, chunks, upload, progress)
        return
    block = ctx.config.write_block
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= block:
            upload.write_parts(parts)
            if progress is not None:
                progress.transferred += size
            parts, size = [], 0
    if parts:
        upload.write_parts(parts)
        if progress is not None:
            progress.transferred += size


async def _pump_threaded(ctx: SEContext, chunks: AsyncIterator[bytes], upload: Upload,
                         progress: Progress | None) -> None:
    """Receive on the event loop while a worker thread writes the previous batch of `io_block` bytes.

    On any failure the write in flight is waited for before the caller removes the temporary, so no
    thread ever writes to a closed (and possibly reused) descriptor."""
    block = ctx.config.io_block
    parts: list[bytes] = []
    size = 0
    pending: concurrent.futures.Future[None] | None = None
    try:
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= block:
                batch, batch_size = parts, size
                parts, size = [], 0
                if pending is not None:
                    await asyncio.wrap_future(pending)
                pending = ctx.executor.submit(upload.write_parts, batch)
                if progress is not None:
                    progress.transferred += batch_size
        if pending is not None:
            await asyncio.wrap_future(pending)
            pending = None
        if parts:
            await ctx.run(upload.write_parts, parts)
            if progress is not None:
                progress.transferred += size
    finally:
        if pending is not None:
            try:
                pending.result()
            except BaseException:  # noqa: BLE001 - the original error is what matters
                pass


async def stream_chunks(reader: Any) -> AsyncIterator[bytes]:
    """An aiohttp StreamReader as an async iterator of whatever has arrived (no fixed-size waits)."""
    while True:
        chunk = await reader.readany()
        if not chunk:
            return
        yield chunk
