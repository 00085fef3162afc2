"""The per-link optimizer: how many transfers may run at once on a link (FTS3's algorithm, reference §2.5).

Like a TCP congestion window: from the throughput moving average (EMA, alpha 0.1), the success rate and
the queue it increases the number of active transfers step by step while the link delivers more, holds
when the queue is emptying or nothing is known, and backs off when transfers fail or the throughput
collapses. Every decision carries a readable rationale (stored as the optimizer evolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EMA_ALPHA = 0.1
LOW_SUCCESS_RATE = 97.0
BASE_SUCCESS_RATE = 96.0
DECREASE_STEP = 1
INCREASE_STEP = 1
AGGRESSIVE_INCREASE_STEP = 2
MAX_STREAMS_PER_QUEUED = 16

MODE_DISABLED, MODE_CONSERVATIVE, MODE_NORMAL, MODE_AGGRESSIVE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class LinkSample:
    """What happened on a link over the optimizer window."""

    throughput: float
    """MB/s of the files finished in the window (0 = no information)."""
    success_rate: float
    """% of finished vs finished+failed in the window (100 when nothing ended)."""
    retries: int
    active: int
    queue: int
    filesize_avg: float = 0.0
    filesize_stddev: float = 0.0
    ended: int = 0


@dataclass(frozen=True, slots=True)
class Previous:
    active: int
    ema: float
    success_rate: float
    retries: int
    filesize_avg: float


@dataclass(frozen=True, slots=True)
class Range:
    min_active: int = 2
    max_active: int = 130
    mode: int = MODE_NORMAL
    specific: bool = False
    """The link is configured explicitly (first decision starts at max, as FTS3 does)."""


@dataclass(frozen=True, slots=True)
class Decision:
    active: int
    ema: float
    rationale: str
    diff: int


def optimize(sample: LinkSample, previous: Previous | None, limits: Range,
             over_throughput_cap: bool = False) -> Decision:
    lo, hi = limits.min_active, max(limits.min_active, limits.max_active)
    ema = previous.ema if previous else 0.0
    if sample.throughput > 0:
        ema = sample.throughput if ema == 0 else EMA_ALPHA * sample.throughput + (1 - EMA_ALPHA) * ema
    if lo == hi or limits.mode == MODE_DISABLED:
        value = hi if limits.mode == MODE_DISABLED else lo
        return _decide(value, previous, ema, "range fixed" if lo == hi else "optimizer disabled: maximum")
    if previous is None:
        value = hi if limits.specific else lo + (hi - lo) // 2
        return _decide(value, None, ema, "first decision: " + ("configured maximum" if limits.specific
                                                                else "middle of the range"))
    current = previous.active
    if over_throughput_cap:
        return _decide(current - DECREASE_STEP, previous, ema, "throughput cap of an SE exceeded: decrease", lo, hi)
    if sample.success_rate < LOW_SUCCESS_RATE:
        improving = (sample.success_rate > previous.success_rate and sample.success_rate >= BASE_SUCCESS_RATE
                     and sample.retries <= previous.retries)
        if improving:
            return _decide(current, previous, ema, f"bad success rate {sample.success_rate:.1f}% but improving: "
                           "hold", lo, hi)
        return _decide(current - DECREASE_STEP, previous, ema,
                       f"bad success rate {sample.success_rate:.1f}%: decrease", lo, hi)
    if ema == 0:
        return _decide(current, previous, ema, "no throughput information: hold", lo, hi)
    if sample.queue < current:
        return _decide(current, previous, ema, f"queue ({sample.queue}) smaller than the limit: hold", lo, hi)
    step = INCREASE_STEP if limits.mode == MODE_CONSERVATIVE else AGGRESSIVE_INCREASE_STEP
    if previous.ema and ema < previous.ema:
        if previous.filesize_avg and sample.filesize_avg and \
                _magnitude(sample.filesize_avg) < _magnitude(previous.filesize_avg):
            value, why = current + step, "throughput fell with an order of magnitude smaller files: increase"
        elif _magnitude(ema) < _magnitude(previous.ema):
            value, why = current - DECREASE_STEP, "throughput fell by an order of magnitude: decrease"
        else:
            return _decide(current, previous, ema, f"throughput falling ({ema:.2f} MB/s): hold", lo, hi)
    else:
        value, why = current + step, f"good link, throughput {ema:.2f} MB/s steady or rising: increase"
    if value > current:
        ceiling = sample.queue if limits.mode == MODE_CONSERVATIVE else sample.queue * MAX_STREAMS_PER_QUEUED
        value = max(current, min(value, ceiling))
    return _decide(value, previous, ema, why, lo, hi)


def _magnitude(value: float) -> int:
    return int(math.floor(math.log10(value))) if value > 0 else -99


def _decide(value: int, previous: Previous | None, ema: float, rationale: str, lo: int | None = None,
            hi: int | None = None) -> Decision:
    if lo is not None and hi is not None:
        value = max(lo, min(hi, value))
    old = previous.active if previous else 0
    return Decision(value, ema, rationale, value - old)
