"""Wait for a condition in an async test, bounded (a hung condition fails, never hangs).

    await until(lambda: clf.stats().admitted == 16)          # a plain predicate
    await until(channel_is_claimed, interval=0.05)            # or an async one
    await until(swapped, timeout=240, interval=0.1, what="the swap")   # named in the failure
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0, interval: float = 0.001,
    *, what: str = "condition",
) -> None:
    """Poll `predicate` every `interval` seconds until it is true; fail after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
