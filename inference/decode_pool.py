"""Decoding a request's images in a few threads, dropping work that nobody waits for.

    pool = DecodePool(preprocessor, threads=4, count=lambda name, n: counts.update({name: n}))
    tensors = await pool.decode([jpeg, png], deadline=time.monotonic() + 30)
    pool.shutdown()

Pillow decodes with the GIL released, so a small pool keeps a GPU fed. A decode that waited
for a thread past its request's deadline is not started (``DeadlineExceeded``, counted as
``"expired"``), and when a request fails or is cancelled (the gateway's deadline sweep cancels
its task) its decodes that have not started leave the pool (counted as ``"cancelled"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inference.errors import DeadlineExceeded, ImageError

if TYPE_CHECKING:
    import torch

__all__ = ["DecodePool"]


class DecodePool:
    """Bytes to tensors with ``preprocess`` in ``threads`` threads; ``count(name, n)`` is told
    of every dropped decode (it runs in a pool thread or on the caller's loop)."""

    def __init__(self, preprocess: Callable[[bytes], torch.Tensor], threads: int,
                 count: Callable[[str, int], None]) -> None:
        self._preprocess = preprocess
        self._count = count
        self._pool = concurrent.futures.ThreadPoolExecutor(threads,
                                                           thread_name_prefix="paychan-decode")

    async def decode(self, images: Sequence[bytes], deadline: float | None) -> list[torch.Tensor]:
        """Every image's tensor, in order; raises the first image's error naming its position.

            [tensor] = await pool.decode([jpeg], deadline=None)
        """
        jobs = [self._pool.submit(self._decode_by, data, deadline) for data in images]
        try:
            return await _gather_images([asyncio.wrap_future(job) for job in jobs])
        except BaseException:
            self._drop(jobs)
            raise

    def shutdown(self) -> None:
        """Stop the threads; decodes still queued are cancelled, running ones finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode_by(self, data: bytes, deadline: float | None) -> torch.Tensor:
        """Preprocess one image in a pool thread, unless its deadline passed while it waited.

        The caller has been answered 503 by then (or is about to be): decoding would only
        take a thread from requests that can still make it.
        """
        if deadline is not None and time.monotonic() >= deadline:
            self._count("expired", 1)
            raise DeadlineExceeded("dropped before decoding: the deadline passed while the image "
                                   "waited for a decode thread; retry with a later deadline or "
                                   "at lower load", retry_after=1)
        return self._preprocess(data)

    def _drop(self, jobs: list[concurrent.futures.Future[torch.Tensor]]) -> None:
        """Take a failed or cancelled request's decodes that have not started out of the pool.

        ``Future.cancel`` succeeds only for a job still queued (a running decode cannot be
        interrupted, and is bounded by the image limits).
        """
        dropped = sum(job.cancel() for job in jobs)  # True: queued, or already cancelled
        if dropped:
            self._count("cancelled", dropped)


async def _gather_images(decoding: list[asyncio.Future[torch.Tensor]]) -> list[torch.Tensor]:
    """Await every decode; raise the first image's error naming its position."""
    results = await asyncio.gather(*decoding, return_exceptions=True)
    tensors: list[torch.Tensor] = []
    for index, result in enumerate(results):
        if isinstance(result, ImageError):
            raise result.at(index) if len(results) > 1 else result
        if isinstance(result, BaseException):
            raise result
        tensors.append(result)
    return tensors
