"""HTTP-TPC performance markers: what the active SE writes and what a client reads.

The grammar is davix's (the de-facto reference, used by gfal2 and FTS): a block `Perf Marker`,
`Timestamp:`, `Stripe Index:`, `Stripe Bytes Transferred:`, `Total Stripe Count:`, `End`, repeated, then
exactly one final line `success: ...`, `failure: ...` or `aborted: ...`. A stream that ends without a
final line means the outcome is unknown, which a client must treat as a failure.

After a pull, a junodcs SE ends its success line with the adler32 of the file it stored
(`success: Created; adler32=0a1b2c3d`): davix and gfal2 read only the word `success`, and a transfer
service that needs the destination's checksum has it without another request. A foreign SE gives none,
and the client asks with a HEAD as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field


def format_marker(transferred: int, *, timestamp: float | None = None) -> bytes:
    ts = int(timestamp if timestamp is not None else time.time())
    return (
        "Perf Marker\n"
        f"\tTimestamp: {ts}\n"
        "\tStripe Index: 0\n"
        f"\tStripe Bytes Transferred: {transferred}\n"
        "\tTotal Stripe Count: 1\n"
        "End\n"
    ).encode()


def format_final(ok: bool, reason: str = "Created", *, digests: dict[str, str] | None = None) -> bytes:
    reason = " ".join(reason.split())  # one line, whatever the remote error text was
    if ok and digests and "adler32" in digests:
        reason += f"; adler32={digests['adler32']}"
    return (f"success: {reason}\n" if ok else f"failure: {reason}\n").encode()


@dataclass(slots=True)
class MarkerParser:
    """Feed it text lines; it tracks bytes moved, the marker count and the final outcome."""

    transferred: int = 0
    markers: int = 0
    outcome: str | None = None
    """"success", "failure" or "aborted" once the final line arrived."""
    message: str = ""
    adler32: str | None = None
    """The stored file's adler32 from a junodcs SE's success line, else None."""
    _stripes: dict[int, int] = field(default_factory=dict)
    _stripe: int = 0
    _bytes: int = 0

    def feed(self, line: str) -> None:
        text = line.strip()
        lower = text.lower()
        if not text:
            return
        if lower.startswith("perf marker"):
            self._stripe, self._bytes = 0, 0
        elif lower.startswith("stripe index:"):
            self._stripe = _int(text)
        elif lower.startswith("stripe bytes transferred:"):
            self._bytes = _int(text)
        elif lower == "end":
            self._stripes[self._stripe] = self._bytes
            self.transferred = sum(self._stripes.values())
            self.markers += 1
        elif lower.startswith("success"):
            self.outcome, self.message = "success", text.partition(":")[2].strip()
            found = _ADLER32.search(text)
            self.adler32 = found.group(1).lower() if found else None
        elif lower.startswith(("failure", "failed")):
            self.outcome, self.message = "failure", text.partition(":")[2].strip()
        elif lower.startswith("aborted"):
            self.outcome, self.message = "aborted", text.partition(":")[2].strip()


_ADLER32 = re.compile(r";\s*adler32=([0-9A-Fa-f]{8})\s*$")


def _int(text: str) -> int:
    try:
        return int(text.partition(":")[2].strip())
    except ValueError:
        return 0
