"""The batcher's rules without a thread or a model (inference.batch_policy): which bucket caps
batches, when a batch stops waiting for company, what a batch takes from the queue, and the
bounded admission's numbers. Examples first, then properties (hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.batch_policy import (
    CAP_TOLERANCE,
    Taken,
    admits,
    choose_batch_cap,
    ewma_rate,
    fill_until,
    has_expired,
    keep_filling,
    retry_after_s,
    take_batch,
)


@dataclasses.dataclass(frozen=True)
class Item:
    name: int
    enqueued: float = 0.0
    deadline: float | None = None


# --- examples ---------------------------------------------------------------------------


def test_the_cap_is_the_smallest_bucket_within_five_percent_of_the_best() -> None:
    # lite0 on 2 cores: past the knee at 8, larger batches only lose throughput.
    assert choose_batch_cap({1: 90.0, 8: 209.0, 16: 199.0, 32: 120.0}) == 8
    assert choose_batch_cap({1: 90.0, 8: 190.0, 16: 209.0}) == 16
    assert choose_batch_cap({4: 100.0}) == 4
    with pytest.raises(ValueError):
        choose_batch_cap({})


def test_an_idle_worker_never_waits_and_a_loaded_one_waits_from_the_end_of_compute() -> None:
    assert fill_until(was_idle=True, max_wait_s=1.0, head_enqueued=5.0, free_since=10.0) is None
    assert fill_until(was_idle=False, max_wait_s=0.0, head_enqueued=5.0, free_since=10.0) is None
    # Queued after the last compute ended: nobody waited for a batch, so no load to batch up.
    assert fill_until(was_idle=False, max_wait_s=1.0, head_enqueued=10.0, free_since=10.0) is None
    assert fill_until(was_idle=False, max_wait_s=0.5, head_enqueued=9.0, free_since=10.0) == 10.5


def test_filling_stops_when_full_due_or_closing() -> None:
    assert keep_filling(queued=3, cap=8, now=10.0, due=10.5, closing=False)
    assert not keep_filling(queued=8, cap=8, now=10.0, due=10.5, closing=False)
    assert not keep_filling(queued=3, cap=8, now=10.5, due=10.5, closing=False)
    assert not keep_filling(queued=3, cap=8, now=10.0, due=10.5, closing=True)
    assert not keep_filling(queued=0, cap=8, now=10.0, due=10.5, closing=False)
    assert not keep_filling(queued=3, cap=8, now=10.0, due=None, closing=False)


def test_a_batch_takes_the_head_in_order_and_drops_the_expired_on_the_way() -> None:
    queue = [Item(0), Item(1, deadline=5.0), Item(2, deadline=20.0), Item(3), Item(4)]
    taken = take_batch(queue, cap=2, now=10.0)
    assert [i.name for i in taken.batch] == [0, 2]
    assert [i.name for i in taken.expired] == [1]
    assert taken.count == 3
    assert has_expired(Item(9, deadline=10.0), 10.0) and not has_expired(Item(9), 1e18)
    with pytest.raises(ValueError):
        take_batch(queue, cap=0, now=10.0)


def test_the_oldest_wait_is_the_head_of_the_batch() -> None:
    taken = take_batch([Item(0, enqueued=1.0, deadline=2.0), Item(1, enqueued=3.0)], 4, now=5.0)
    assert taken.oldest_wait_s(5.0) == 2.0
    assert Taken((), ()).oldest_wait_s(5.0) == 0.0


def test_admission_retry_after_and_the_rate_estimate() -> None:
    assert admits(admitted=4, n=4, queue_size=8) and not admits(admitted=5, n=4, queue_size=8)
    assert retry_after_s(300, 150.0) == 2
    assert retry_after_s(0, 150.0) == 1
    assert retry_after_s(3, 0.0) == 3  # before the first batch the rate counts as 1/s
    assert ewma_rate(0.0, 100.0) == 100.0
    assert ewma_rate(100.0, 200.0) == pytest.approx(120.0)


# --- properties -------------------------------------------------------------------------

_times = st.floats(min_value=0.0, max_value=1_000.0, allow_nan=False)
# Queued one a second (name = enqueue time), each with or without a deadline.
_items = st.lists(st.one_of(st.none(), _times), max_size=40).map(
    lambda deadlines: [Item(n, float(n), d) for n, d in enumerate(deadlines)])


@given(queue=_items, cap=st.integers(1, 16), now=_times)
def test_a_taken_batch_never_exceeds_the_cap_and_never_reorders(
    queue: list[Item], cap: int, now: float,
) -> None:
    taken = take_batch(queue, cap, now)
    assert len(taken.batch) <= cap
    head = queue[: taken.count]
    # What leaves the queue is exactly its head, split in queue order, nothing skipped.
    assert sorted(taken.batch + taken.expired, key=lambda i: i.name) == head
    assert [i.name for i in taken.batch] == sorted(i.name for i in taken.batch)
    assert [i.name for i in taken.expired] == sorted(i.name for i in taken.expired)
    assert all(not has_expired(i, now) for i in taken.batch)
    assert all(has_expired(i, now) for i in taken.expired)
    # It stops only at a full batch or the end of the queue: live work is never left behind.
    assert len(taken.batch) == cap or taken.count == len(queue)
    if queue:
        assert taken.count >= 1 and (queue[0] in taken.batch or queue[0] in taken.expired)


@given(rates=st.dictionaries(st.integers(1, 256), st.floats(0.01, 1e6), min_size=1))
def test_the_cap_is_a_bucket_near_the_best_and_no_smaller_one_is(rates: dict[int, float]) -> None:
    cap = choose_batch_cap(rates)
    best = max(rates.values())
    assert cap in rates and rates[cap] >= CAP_TOLERANCE * best
    assert all(rates[size] < CAP_TOLERANCE * best for size in rates if size < cap)


@given(was_idle=st.booleans(), max_wait_s=st.floats(0.0, 1.0), head=_times, free=_times,
       elapsed=st.floats(0.0, 2.0), queued=st.integers(0, 40), cap=st.integers(1, 32),
       closing=st.booleans())
def test_the_head_is_taken_once_it_waited_long_enough(
    was_idle: bool, max_wait_s: float, head: float, free: float, elapsed: float,
    queued: int, cap: int, closing: bool,
) -> None:
    due = fill_until(was_idle=was_idle, max_wait_s=max_wait_s, head_enqueued=head,
                     free_since=free)
    if due is not None:
        # Only under load (the head queued before the last compute ended), for max_wait at most.
        assert not was_idle and head < free and due == free + max_wait_s
    waiting = keep_filling(queued=queued, cap=cap, now=free + elapsed, due=due, closing=closing)
    if waiting:
        assert due is not None and free + elapsed < due and 0 < queued < cap and not closing
    if elapsed >= max_wait_s or was_idle or closing or queued >= cap:
        assert not waiting


# Rates are images over a measured compute time: 0.0 before the first batch, else well above 0.
@given(backlog=st.integers(0, 10_000), rate=st.one_of(st.just(0.0), st.floats(0.01, 1e5)))
def test_retry_after_is_a_whole_second_at_least(backlog: int, rate: float) -> None:
    seconds = retry_after_s(backlog, rate)
    assert seconds >= 1
    assert seconds * (rate or 1.0) >= backlog * (1 - 1e-9)  # enough time to drain the backlog
