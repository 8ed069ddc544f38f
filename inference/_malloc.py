"""Keep the memory of CPU forward passes in the process instead of returning it per batch.

A forward pass of lite0 over a batch of 8 allocates activation tensors of up to ~40 MB.
glibc's malloc serves blocks that large with ``mmap`` (or, in a thread's own arena, from a
heap it unmaps once empty) and hands them back to the kernel on ``free``, so every batch
faulted its activations in again: 28,000-45,000 page faults per batch, up to half its time
(72-92 ms per batch of 8 on the 2-core benchmark VM, 47 ms without them). With mmap off for
malloc, one arena for every thread and a high trim threshold, freed activations stay in
malloc's heap and the next batch reuses them. The cost: the process keeps its peak
forward-pass memory (measured: 1.79 GB resident after a warm-up up to batch 32, against
1.31 GB) rather than returning it between batches.

    keep_freed_memory()   # True where applied (Linux, glibc); elsewhere it changes nothing

Call it before the process starts threads (``paychan serve`` does, first thing): a thread
that has allocated already keeps the arena it has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD_BYTES = 256 << 20  # free memory above the heap's top kept before trimming


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every thread from one heap and keep freed memory there."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 on success; all are process-wide and only affect later allocations.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    return all([mallopt(option, value) == 1 for option, value in settings])
