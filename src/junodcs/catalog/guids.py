"""GUIDs the catalog assigns to files registered without one: time-ordered UUIDs (version 7, RFC 9562).

Why version 7 and not random (version 4) UUIDs: the GUID column is indexed, and random keys land on a
random page of that index for every new file, which made the GUID index the single most expensive part
of bulk registration. Version 7 UUIDs start with the Unix time in milliseconds; within one call the next
26 bits are a counter from a random start (RFC 9562 §6.2, method 1), so a call's GUIDs are consecutive
keys and the index grows at its end. The remaining 48 bits are random, so GUIDs stay unique across
calls, processes and servers. They are upper case, like the GUIDs clients send.
"""

from __future__ import annotations

import os
import time

#: the counter starts at a random value below 2**24, which leaves room for this many GUIDs per call
_MAX_PER_CALL = (1 << 26) - (1 << 24)


class TimeOrderedGuids:
    """`guids[i]` for i in range(n): n version 7 UUIDs for one call, in increasing order. Made all at once
    on first use (one list comprehension is cheaper than formatting one per call), so calls whose
    entries all carry a GUID pay nothing."""

    def __init__(self, n: int) -> None:
        if n > _MAX_PER_CALL:
            raise ValueError(f"at most {_MAX_PER_CALL} GUIDs per call")
        self._n = n
        self._values: list[str] | None = None

    def _make(self) -> list[str]:
        millis = time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF
        stamp = f"{millis >> 16:08X}-{millis & 0xFFFF:04X}-"
        start = int.from_bytes(os.urandom(3), "big")
        rand = os.urandom(6 * self._n).hex().upper()
        # version nibble 7 then the counter's top 12 bits; variant bits 10 then its low 14 bits; 48 random bits
        self._values = ["%s%04X-%04X-%s" % (stamp, 0x7000 | (c >> 14), 0x8000 | (c & 0x3FFF), rand[12 * k : 12 * k + 12])
                        for k, c in enumerate(range(start, start + self._n))]
        return self._values

    def __getitem__(self, i: int) -> str:
        values = self._values
        if values is None:
            values = self._make()
        return values[i]
