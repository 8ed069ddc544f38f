"""The seam between a classifier and what serves it: ``ImageClassifier`` and what it reports.

    async def answer(clf: ImageClassifier, jpeg: bytes) -> str:
        clf.check(jpeg)                                  # header-only; raises ImageError
        [answer] = await clf.classify([jpeg], top_k=1)
        return f"{answer.animal.words}: {answer[0].label} ({clf.version.id})"

Both ``inference.Classifier`` (the batcher over a timm model) and ``inference.NullClassifier``
(one fixed answer, no model) satisfy it, so the gateway is typed against this, not either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from inference.model import ModelVersion
from inference.prediction import ImageAnswer
from inference.preprocess import ImageInfo

if TYPE_CHECKING:
    import torch

__all__ = ["BatchEvent", "BatcherStats", "ImageClassifier"]


@dataclasses.dataclass(frozen=True, slots=True)
class BatchEvent:
    """One computed batch, as told to batch listeners (metrics)."""

    size: int            # real images in it
    padded: int          # the bucket it ran at
    compute_s: float     # forward pass + top-k, seconds
    oldest_wait_s: float # how long its oldest image waited in the queue
    expired: int         # images dropped for their deadline while forming it


@dataclasses.dataclass(frozen=True, slots=True)
class BatcherStats:
    """A snapshot of the batcher's counters since start."""

    queued: int              # waiting for the worker now
    admitted: int            # admitted and not yet computed (decoding + queued)
    computing: int           # images in the forward pass now
    queue_size: int
    batches: int
    images: int
    padded_images: int       # rows computed including padding
    expired: int             # dropped before compute: deadline passed
    cancelled: int           # left the queue because the caller went away
    overloaded: int          # images refused with Overloaded
    images_per_second: float # recent compute throughput (EWMA), 0.0 before the first batch

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class ImageClassifier(Protocol):
    """What a server needs from a classifier: start, check, classify, report, close.

        clf: ImageClassifier = Classifier.load()   # or Classifier.null()
        await clf.start()
        [answer] = await clf.classify([jpeg], top_k=5, deadline=time.monotonic() + 30)
        await clf.close()

    Errors: ``ImageError`` (the caller's image) and ``ClassifierError`` (the service:
    ``Overloaded``, ``DeadlineExceeded``, ``ClassifierClosed``), each with its HTTP status.
    """

    @property
    def batch_cap(self) -> int:
        """The largest batch computed at once (chosen at warm-up)."""
        ...

    @property
    def version(self) -> ModelVersion:
        """Which weights answer: the id and the 32-byte hash that receipts carry."""
        ...

    @property
    def device(self) -> str:
        """Where the model runs: ``"cpu"``, ``"cuda:0"``, or ``"none"``."""
        ...

    @property
    def ready(self) -> bool:
        """Started, warmed up and not closing."""
        ...

    def stats(self) -> BatcherStats:
        """A snapshot of the counters since start."""
        ...

    def add_batch_listener(self, listener: Callable[[BatchEvent], None]) -> None:
        """Call ``listener(event)`` on the current event loop after every batch."""
        ...

    def check(self, data: bytes) -> ImageInfo:
        """Header-only validation (raises ImageError) under the rules ``classify`` applies."""
        ...

    async def start(self) -> None:
        """Start and warm up; returns when ready. Idempotent."""
        ...

    async def close(self) -> None:
        """Finish what is queued, then stop; later calls raise ClassifierClosed."""
        ...

    async def classify(self, images: Sequence[bytes], top_k: int = 5,
                       deadline: float | None = None) -> list[ImageAnswer]:
        """Each image's animal answer and top-k predictions, in order (``deadline``:
        ``time.monotonic()``)."""
        ...

    async def classify_tensors(self, batch: torch.Tensor | Sequence[torch.Tensor], top_k: int = 5,
                               deadline: float | None = None) -> list[ImageAnswer]:
        """Like ``classify`` for preprocessed float tensors, (N, 3, H, W) or a list of (3, H, W)."""
        ...
