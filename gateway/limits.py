"""Admission limits: per-channel in-flight caps, a global in-flight cap, and rate limits.

All of them are plain counters in the event loop (one gateway process); none does I/O::

    caps = InFlightCaps(per_channel=32, total=256)
    if not caps.try_enter(channel_id):
        ...  # answer 429 with Retry-After
    try:
        ...
    finally:
        caps.leave(channel_id)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["InFlightCaps", "RateLimiter", "Rejection"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was not admitted: the HTTP status and the Retry-After seconds."""

    status: int
    reason: str
    retry_after_s: int


class InFlightCaps:
    """Counts requests being served, in total and per payment channel."""

    __slots__ = ("_by_channel", "_count", "per_channel", "total")

    def __init__(self, per_channel: int, total: int) -> None:
        self.per_channel = per_channel
        self.total = total
        self._by_channel: dict[str, int] = {}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def try_enter(self, channel_id: str | None = None) -> bool:
        """Admit one request (of ``channel_id`` if given); False when a cap is reached."""
        if self._count >= self.total:
            return False
        if channel_id is not None:
            n = self._by_channel.get(channel_id, 0)
            if n >= self.per_channel:
                return False
            self._by_channel[channel_id] = n + 1
        self._count += 1
        return True

    def leave(self, channel_id: str | None = None) -> None:
        self._count -= 1
        if channel_id is not None:
            n = self._by_channel[channel_id] - 1
            if n:
                self._by_channel[channel_id] = n
            else:
                del self._by_channel[channel_id]

    def channel_count(self, channel_id: str) -> int:
        return self._by_channel.get(channel_id, 0)


class RateLimiter:
    """Token bucket per key: ``rate_per_minute`` sustained, bursts up to ``burst``."""

    __slots__ = ("_buckets", "_clock", "burst", "rate")

    def __init__(self, rate_per_minute: float, burst: int | None = None, clock=time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, int(rate_per_minute // 6) or 1))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is free."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle clients rather than grow forever
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
