"""Batch-size buckets: the few shapes a batch is padded to, so each is warmed once.

    >>> default_buckets(32)
    (1, 2, 4, 6, 8, 12, 16, 24, 32)
    >>> bucket_for(5, (1, 2, 4, 6, 8))
    6
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

__all__ = ["bucket_for", "default_buckets", "normalize_buckets"]


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two and their midpoints (1.5x) up to ``max_batch``, which is always one.

    Midpoints bound the padding waste at a third instead of a half of the batch, while the
    shape count (warm-up time, compiled graphs) stays logarithmic.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: must be at least 1")
    sizes = {max_batch}
    power = 1
    while power < max_batch:
        sizes.add(power)
        if power >= 4 and power * 3 // 2 < max_batch:
            sizes.add(power * 3 // 2)
        power *= 2
    return tuple(sorted(sizes))


def normalize_buckets(buckets: Iterable[int] | None, max_batch: int) -> tuple[int, ...]:
    """Sorted, unique buckets that end at ``max_batch``; the defaults when None."""
    if buckets is None:
        return default_buckets(max_batch)
    sizes = sorted({int(b) for b in buckets})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"buckets={sizes}: every bucket must be a batch size of at least 1")
    if sizes[-1] > max_batch:
        raise ValueError(f"buckets={sizes}: the largest must not exceed max_batch={max_batch}")
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return tuple(sizes)


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` rows."""
    pos = bisect.bisect_left(buckets, size)
    if pos == len(buckets):
        raise ValueError(f"batch of {size} exceeds the largest bucket {buckets[-1]}")
    return buckets[pos]
