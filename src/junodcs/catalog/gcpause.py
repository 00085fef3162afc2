"""Pause Python's cycle collector around bulk catalog calls.

Why: registering 10,000 entries allocates some ten small containers per entry (tuples, lists, the
per-entry result). Each 700 allocations trigger a young-generation collection, and every few hundred
of those a full one that walks every live object of the process (in a server: the request bodies, the
loaded application); measured on bulk registration this was about 30 % of the CPU time. Nothing the
bulk code allocates forms reference cycles, so reference counting frees all of it anyway; pausing
the collector for the duration of one call (well under a second) loses nothing, and cyclic garbage
made meanwhile by other threads is collected as soon as the last pause ends.

Pauses nest and may overlap across threads: the collector is re-enabled when the last pause ends, and
only if it was enabled when the first one began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_active = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _active, _was_enabled
    with _lock:
        if _active == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _was_enabled:
                gc.enable()
