"""Warming the model at every batch-size bucket, and timing each one to choose the cap.

    buffers = warm_buffers(model, (1, 2, 4, 8), rounds=1)    # {size: (size, 3, H, W) zeros}
    rates = time_buckets(model, buffers)                     # {size: images/s}, best of three
    choose_batch_cap(rates)                                  # inference.batch_policy

Runs in the classifier's worker thread before it serves: the buffers it makes are the ones
batches are copied into, so no batch allocates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from inference.model import LoadedModel

if TYPE_CHECKING:
    import torch

__all__ = ["time_buckets", "warm_buffers"]

_TIMED_CALLS = 3  # each bucket's rate is its fastest of this many calls


def warm_buffers(model: LoadedModel, buckets: Sequence[int],
                 rounds: int) -> dict[int, torch.Tensor]:
    """One channels_last input buffer per bucket (pinned on CUDA), each run ``rounds`` times.

        buffers = warm_buffers(model, (1, 4), rounds=2)    # 2 for torch.compile: it traces first
    """
    import torch

    buffers: dict[int, torch.Tensor] = {}
    for size in buckets:
        buffer = torch.zeros((size, *model.input_shape))
        buffer = buffer.contiguous(memory_format=torch.channels_last)
        if model.device.type == "cuda":
            buffer = buffer.pin_memory()
        buffers[size] = buffer
        for _ in range(rounds):
            model.top_k(buffer, 5)
    return buffers


def time_buckets(model: LoadedModel, buffers: Mapping[int, torch.Tensor]) -> dict[int, float]:
    """Images/s of each bucket, from the fastest of three forward passes.

        time_buckets(model, buffers)     # {1: 90.1, 8: 209.3, 16: 199.0, 32: 120.4}

    Other processes only ever slow a call down, so the fastest call is the least disturbed
    estimate.
    """
    rates: dict[int, float] = {}
    for size, buffer in buffers.items():
        fastest = math.inf
        for _ in range(_TIMED_CALLS):
            began = time.perf_counter()
            model.top_k(buffer, 5)
            fastest = min(fastest, time.perf_counter() - began)
        rates[size] = size / fastest
    return rates
