"""Admission limits: per-channel in-flight caps, a global in-flight cap, rate limits, and
the deadline every classification must meet.

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

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Deadlines", "InFlightCaps", "RateLimiter", "Rejection"]


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

    def __init__(self, rate_per_minute: float, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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


class Deadlines:
    """Cancels requests that run past their deadline: one sweep every ``tick_s`` for all of
    them, where ``asyncio.timeout`` would schedule and cancel a timer per request (a few
    microseconds each, on every request, for a rare event). A deadline is met to ``tick_s``::

        task = deadlines.enter(loop.time() + 30.0)
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            if deadlines.expired(task):   # the sweep cancelled it: answer 503, not a cancel
                ...
            raise
        finally:
            deadlines.leave(task)

    ``run()`` is the sweep (a task for the app's lifetime). The cancellation reaches the
    classifier, which takes the request's queued decodes and batch slots back: work past a
    deadline is dropped, not run on (``inference.Classifier.classify``).
    """

    __slots__ = ("_expired", "_running", "tick_s")

    def __init__(self, tick_s: float = 0.25) -> None:
        self.tick_s = tick_s
        self._running: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()

    def enter(self, deadline: float) -> asyncio.Task[object]:
        """Watch the current task until ``deadline`` (the loop's clock); returns the task."""
        task = asyncio.current_task()
        assert task is not None, "Deadlines.enter() runs inside a task"
        self._running[task] = deadline
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._running.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """True when the sweep cancelled ``task`` and nothing else did: that cancellation is
        taken back (``uncancel``), so the caller answers instead of propagating it. When
        someone else cancelled it too (shutdown), False: the cancellation goes on."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            late = [task for task, deadline in self._running.items() if deadline <= now]
            for task in late:
                del self._running[task]
                self._expired.add(task)
                task.cancel()
