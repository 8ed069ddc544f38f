"""The dynamic batcher's decisions, as pure functions: no thread, no clock, no tensors.

    cap = choose_batch_cap({1: 90.0, 8: 209.0, 16: 199.0, 32: 120.0})   # 8
    due = fill_until(was_idle=False, max_wait_s=0.002, head_enqueued=9.0, free_since=10.0)
    while keep_filling(queued=len(queue), cap=cap, now=time.monotonic(), due=due, closing=False):
        cond.wait(due - time.monotonic())
    taken = take_batch(queue, cap, now=time.monotonic())      # Taken(batch=(...), expired=(...))
    retry_after_s(backlog=300, images_per_second=150.0)       # 2

``inference.classifier.Classifier`` owns the thread, the condition variable and the tensors,
and asks these functions what to do; the rules are tested here without a model
(tests/inference/test_inference_batch_policy.py).

Nothing in a queue has to be kept apart from anything else: every tensor is checked against
the model's input shape before it is queued, the batch runs at the largest ``top_k`` asked
for and each caller's rows are cut to its own, and results go back to each item's own loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

__all__ = [
    "CAP_TOLERANCE",
    "Queued",
    "Taken",
    "admits",
    "choose_batch_cap",
    "ewma_rate",
    "fill_until",
    "has_expired",
    "keep_filling",
    "retry_after_s",
    "take_batch",
]

CAP_TOLERANCE = 0.95  # batch_cap: the smallest bucket timed within 5% of the best images/s
_RATE_WEIGHT = 0.2    # the newest batch's share in the images/s estimate


class Queued(Protocol):
    """What the policy reads of a queued image: when it was queued and when it expires."""

    @property
    def enqueued(self) -> float: ...

    @property
    def deadline(self) -> float | None: ...


_Q = TypeVar("_Q", bound=Queued)


@dataclasses.dataclass(frozen=True, slots=True)
class Taken(Generic[_Q]):
    """The head of the queue that one batch consumes, in queue order.

        taken.batch      # to compute, at most the cap
        taken.expired    # past their deadline: answered DeadlineExceeded, never computed
        taken.count      # how many items leave the queue's head (batch + expired)
    """

    batch: tuple[_Q, ...]
    expired: tuple[_Q, ...]

    @property
    def count(self) -> int:
        return len(self.batch) + len(self.expired)

    def oldest_wait_s(self, now: float) -> float:
        """How long the batch's first (oldest) image waited in the queue; 0.0 for no batch."""
        return now - self.batch[0].enqueued if self.batch else 0.0


def choose_batch_cap(rates: Mapping[int, float], tolerance: float = CAP_TOLERANCE) -> int:
    """The smallest bucket whose timed images/s is within ``tolerance`` of the best.

        choose_batch_cap({8: 209.0, 16: 199.0, 32: 120.0})    # 8 (lite0 on 2 cores)

    Among near-equal rates the smaller bucket wins: it gives up at most 5% of throughput (as
    timed) and answers sooner, while a bucket past the knee can lose far more than its timing
    promised (warm-up timings are noisy enough that "the largest within 10%" picked 24).
    """
    if not rates:
        raise ValueError("choose_batch_cap needs the timed rate of at least one bucket")
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= tolerance * best)


def fill_until(*, was_idle: bool, max_wait_s: float, head_enqueued: float,
               free_since: float) -> float | None:
    """When a batch stops waiting for more images to join; None: take it now.

        fill_until(was_idle=False, max_wait_s=0.002, head_enqueued=9.0, free_since=10.0)  # 10.002

    An idle worker dispatches at once: a lone request never waits for company. Under load
    (the head was queued while the last batch computed) the batch gets ``max_wait_s`` after
    that compute ended: clients just answered send their next image within that time.
    """
    if was_idle or max_wait_s <= 0 or head_enqueued >= free_since:
        return None
    return free_since + max_wait_s


def keep_filling(*, queued: int, cap: int, now: float, due: float | None, closing: bool) -> bool:
    """Whether the worker waits on for more images before it takes a batch.

        keep_filling(queued=3, cap=8, now=10.001, due=10.002, closing=False)    # True

    It stops once the queue holds a full batch, the time is up, or the batcher is closing.
    """
    return due is not None and 0 < queued < cap and not closing and now < due


def has_expired(item: Queued, now: float) -> bool:
    """Whether ``item``'s deadline has passed at ``now`` (no deadline: never)."""
    return item.deadline is not None and now >= item.deadline


def take_batch(queue: Iterable[_Q], cap: int, now: float) -> Taken[_Q]:
    """Take items from the head of ``queue`` until ``cap`` of them are live.

        taken = take_batch(deque_of_items, cap=8, now=time.monotonic())
        for _ in range(taken.count): deque_of_items.popleft()

    Expired items met on the way leave the queue too (they do not count against the cap);
    nothing is skipped or reordered, so the queue's head always goes first.
    """
    if cap < 1:
        raise ValueError(f"cap={cap}: a batch holds at least one image")
    batch: list[_Q] = []
    expired: list[_Q] = []
    for item in queue:
        if len(batch) >= cap:
            break
        (expired if has_expired(item, now) else batch).append(item)
    return Taken(tuple(batch), tuple(expired))


def admits(admitted: int, n: int, queue_size: int) -> bool:
    """Whether ``n`` more images fit beside ``admitted`` ones under the bound ``queue_size``."""
    return admitted + n <= queue_size


def retry_after_s(backlog: int, images_per_second: float) -> int:
    """Whole seconds until ``backlog`` images are computed at the recent rate (at least 1).

        retry_after_s(300, 150.0)     # 2; before the first batch the rate counts as 1/s
    """
    return max(1, math.ceil(backlog / (images_per_second or 1.0)))


def ewma_rate(previous: float, sample: float) -> float:
    """The images/s estimate after one more batch: the first sample, then a moving average."""
    return sample if not previous else (1 - _RATE_WEIGHT) * previous + _RATE_WEIGHT * sample
