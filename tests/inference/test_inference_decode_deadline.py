"""Work past a request's deadline stops, not runs on: decodes that waited for a thread past
their deadline are not started, and a cancelled request's queued decodes leave the pool.

One decode thread and a slow (but acceptable) image in front make the queue deterministic:
a 3000x2000 PNG takes 0.1-0.3 s to decode and resize, far longer than the steps measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from inference_images import ramp

from inference import Classifier, DeadlineExceeded, LoadedModel
from tests.polling import until


@pytest.fixture(scope="module")
def slow_png() -> bytes:
    return ramp(3000, 2000, "PNG")


@pytest.fixture
def one_decoder(lite0: LoadedModel) -> Iterator[Classifier]:
    clf = Classifier.from_model(lite0, max_batch=4, buckets=(1, 4), max_wait_us=0,
                                queue_size=16, decode_threads=1, auto_cap=False)
    yield clf
    asyncio.run(clf.close())


async def test_a_decode_that_waited_past_its_deadline_is_not_started(
    one_decoder: Classifier, slow_png: bytes, cat_jpeg: bytes,
) -> None:
    clf = one_decoder
    await clf.start()
    first = asyncio.ensure_future(clf.classify([slow_png]))
    await until(lambda: clf.stats().admitted == 1)  # its decode holds the only thread
    with pytest.raises(DeadlineExceeded, match="dropped before decoding") as late:
        await clf.classify([cat_jpeg], deadline=time.monotonic() + 0.001)
    assert late.value.status == 503 and late.value.retry_after == 1
    assert len(await first) == 1
    stats = clf.stats()
    assert (stats.expired, stats.images, stats.admitted) == (1, 1, 0)


async def test_a_deadline_already_past_decodes_nothing(
    one_decoder: Classifier, slow_png: bytes,
) -> None:
    clf = one_decoder
    await clf.start()
    with pytest.raises(DeadlineExceeded, match="dropped before decoding"):
        await clf.classify([slow_png] * 3, deadline=time.monotonic() - 1)
    stats = clf.stats()
    assert (stats.expired, stats.images, stats.admitted) == (3, 0, 0)


async def test_a_cancelled_request_s_queued_decodes_are_dropped(
    one_decoder: Classifier, slow_png: bytes, cat_jpeg: bytes,
) -> None:
    """The gateway's deadline sweep cancels a late request's task: what it had queued for the
    decode pool is taken out, not decoded for nobody (``cancelled`` counts only decodes that
    never started: a running one cannot be cancelled)."""
    clf = one_decoder
    await clf.start()
    first = asyncio.ensure_future(clf.classify([slow_png]))
    await until(lambda: clf.stats().admitted == 1)
    gone = asyncio.ensure_future(clf.classify([cat_jpeg] * 3))
    await until(lambda: clf.stats().admitted == 4)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    stats = clf.stats()
    assert (stats.cancelled, stats.admitted) == (3, 1)
    assert len(await first) == 1
    assert clf.stats().images == 1
