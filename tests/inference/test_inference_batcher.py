"""The dynamic batcher: bounded admission, deadlines, cancellation, buckets, shutdown, null mode."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from inference import (
    AnimalGroup,
    Classifier,
    ClassifierClosed,
    DeadlineExceeded,
    EmptyImage,
    ImageClassifier,
    ImageLimits,
    ImageTooLarge,
    Overloaded,
)
from inference.buckets import bucket_for, default_buckets, normalize_buckets
from tests.polling import until


def test_default_buckets_bound_the_padding() -> None:
    assert default_buckets(32) == (1, 2, 4, 6, 8, 12, 16, 24, 32)
    assert default_buckets(1) == (1,)
    assert default_buckets(10) == (1, 2, 4, 6, 8, 10)
    assert normalize_buckets([4, 1], 8) == (1, 4, 8)
    for size in range(1, 33):
        bucket = bucket_for(size, default_buckets(32))
        assert size <= bucket and (bucket - size) <= max(1, size // 2)
    with pytest.raises(ValueError):
        normalize_buckets([64], 32)


def _rows(classifier: Classifier, n: int) -> torch.Tensor:
    return torch.zeros(n, *classifier.input_shape)


async def test_a_full_queue_raises_overloaded_and_a_cancelled_request_frees_its_slots(
    small_batcher: Classifier,
) -> None:
    clf = small_batcher
    await clf.start()
    busy = asyncio.ensure_future(clf.classify_tensors(_rows(clf, 4)))
    await until(lambda: clf.stats().computing == 4)
    # The worker computes `busy`; these four fill the queue of 4.
    waiting = asyncio.ensure_future(clf.classify_tensors(_rows(clf, 4)))
    await until(lambda: clf.stats().queued == 4)
    with pytest.raises(Overloaded) as info:
        await clf.classify_tensors(_rows(clf, 1))
    assert info.value.status == 429 and info.value.retry_after >= 1
    assert "retry after" in str(info.value)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    stats = clf.stats()
    assert stats.queued == 0 and stats.admitted == 0 and stats.cancelled == 4
    # The freed slots take a new request at once.
    [preds] = await clf.classify_tensors(_rows(clf, 1), top_k=1)
    assert len(preds) == 1
    assert len(await busy) == 4
    assert clf.stats().overloaded == 1


async def test_more_images_than_the_queue_holds_says_to_send_fewer(small_batcher: Classifier) -> None:
    with pytest.raises(Overloaded, match="send fewer images"):
        await small_batcher.classify([b"x"] * 5)


async def test_expired_requests_are_dropped_before_compute(small_batcher: Classifier) -> None:
    clf = small_batcher
    await clf.start()
    with pytest.raises(DeadlineExceeded) as past:
        await clf.classify_tensors(_rows(clf, 1), deadline=time.monotonic() - 1)
    assert past.value.status == 503

    busy = asyncio.ensure_future(clf.classify_tensors(_rows(clf, 4)))
    await until(lambda: clf.stats().computing == 4)
    # Queued behind a 4-image forward pass that takes far longer than a millisecond.
    with pytest.raises(DeadlineExceeded, match="dropped before compute"):
        await clf.classify_tensors(_rows(clf, 2), deadline=time.monotonic() + 0.001)
    await busy
    stats = clf.stats()
    assert stats.expired == 3
    assert stats.images == 4, "expired images must not be computed"


async def test_an_idle_worker_dispatches_at_once_without_waiting_for_max_wait(lite0) -> None:
    # A one-minute max wait: a lone request must still be answered by the first forward pass.
    clf = Classifier.from_model(lite0, max_batch=4, buckets=(1, 4), max_wait_us=60_000_000,
                                queue_size=16, auto_cap=False)
    await clf.start()
    try:
        for _ in range(3):
            [preds] = await asyncio.wait_for(clf.classify_tensors(_rows(clf, 1)), timeout=30)
            assert len(preds) == 5
        assert clf.stats().batches == 3
    finally:
        await clf.close()


async def test_padding_to_buckets_and_batch_events(small_batcher: Classifier) -> None:
    clf = small_batcher
    await clf.start()
    events = []
    clf.add_batch_listener(events.append)
    results = await clf.classify_tensors(_rows(clf, 3), top_k=2)
    assert len(results) == 3 and all(len(r) == 2 for r in results)
    await until(lambda: bool(events))
    assert (events[0].size, events[0].padded) == (3, 4)
    assert events[0].compute_s > 0
    assert clf.stats().padded_images == 4


async def test_close_drains_the_queue_then_refuses(lite0) -> None:
    clf = Classifier.from_model(lite0, max_batch=2, buckets=(1, 2), queue_size=16,
                                auto_cap=False)
    await clf.start()
    assert clf.ready
    pending = [asyncio.ensure_future(clf.classify_tensors(_rows(clf, 1))) for _ in range(5)]
    await asyncio.sleep(0)
    await clf.close()
    assert all(len(r) == 1 for r in await asyncio.gather(*pending))
    assert not clf.ready
    with pytest.raises(ClassifierClosed) as info:
        await clf.classify_tensors(_rows(clf, 1))
    assert info.value.status == 503


async def test_warm_up_times_every_bucket_and_caps_batches_at_one(lite0) -> None:
    clf = Classifier.from_model(lite0, max_batch=4, buckets=(1, 2, 4), queue_size=16)
    await clf.start()
    try:
        assert set(clf.warmup_rates) == {1, 2, 4}
        assert all(rate > 0 for rate in clf.warmup_rates.values())
        assert clf.batch_cap in clf.buckets
        best = max(clf.warmup_rates.values())
        assert clf.warmup_rates[clf.batch_cap] >= 0.95 * best - 0.01
        assert all(rate < 0.95 * best + 0.01 for size, rate in clf.warmup_rates.items()
                   if size < clf.batch_cap)  # the smallest bucket within 5% of the best
        events = []
        clf.add_batch_listener(events.append)
        await asyncio.gather(*(clf.classify_tensors(_rows(clf, 1)) for _ in range(12)))
        await until(lambda: sum(e.size for e in events) == 12)
        assert max(e.size for e in events) <= clf.batch_cap
    finally:
        await clf.close()


async def test_top_k_and_empty_requests_are_refused(classifier: Classifier) -> None:
    with pytest.raises(ValueError, match="top_k"):
        await classifier.classify([b"x"], top_k=0)
    with pytest.raises(EmptyImage):
        await classifier.classify([])


async def test_null_classifier_answers_at_once_with_the_same_interface() -> None:
    null = Classifier.load(model="null", limits=ImageLimits(max_bytes=10))
    await null.start()
    [[pred]] = await null.classify([b"anything"], top_k=5)
    assert pred.group is AnimalGroup.CAT and pred.probability == 1.0
    assert null.version.id.startswith("null-") and len(null.version.content_hash) == 32
    with pytest.raises(EmptyImage):
        await null.classify([b""])
    with pytest.raises(ImageTooLarge):
        await null.classify([b"x" * 11])
    assert len(await null.classify_tensors(torch.zeros(3, 3, 224, 224))) == 3
    await null.close()
    with pytest.raises(ClassifierClosed):
        await null.classify([b"x"])


def test_both_classifiers_offer_the_seam_a_server_holds(lite0) -> None:
    """``ImageClassifier`` is what the gateway is typed against: the batcher and the null
    classifier both have every member of it (mypy checks the signatures)."""
    members = [name for name in vars(ImageClassifier)
               if not name.startswith("_") and name not in vars(object)]
    assert {"classify", "check", "start", "close", "stats", "version", "batch_cap"} <= set(members)
    for clf in (Classifier.from_model(lite0, max_batch=1), Classifier.null()):
        assert all(hasattr(clf, name) for name in members), type(clf).__name__
