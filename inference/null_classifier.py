"""A classifier with no model: one fixed prediction at once, for measuring everything else.

    null = Classifier.null()                     # or NullClassifier(prediction=...)
    await null.start()
    [[pred]] = await null.classify([jpeg])       # Prediction("tiger cat", 282, 1.0, CAT)
    (await null.classify([jpeg]))[0].animal      # cat 100%: the prediction's group
    null.version.id                              # "null-..." (a fixed 32-byte hash)

It has the batcher's interface (``ImageClassifier``) and still refuses empty and oversized
bodies, so a gateway in front of it behaves as in front of a real model, minus inference.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Self

from inference.animal import answer_from_sums
from inference.errors import ClassifierClosed, EmptyImage, ImageTooLarge
from inference.interface import BatcherStats, BatchEvent
from inference.labels import AnimalGroup
from inference.model import ModelVersion
from inference.prediction import ImageAnswer, Prediction
from inference.preprocess import DEFAULT_LIMITS, ImageInfo, ImageLimits, check_image

if TYPE_CHECKING:
    import torch

__all__ = ["NullClassifier"]


class NullClassifier:
    """The classifier's interface with no model: one fixed prediction, at once."""

    def __init__(self, *, limits: ImageLimits = DEFAULT_LIMITS,
                 prediction: Prediction | None = None) -> None:
        self.limits = limits
        # No queue and no model: every bound is "unbounded", so nothing here refuses load.
        self.max_batch = self.queue_size = self.batch_cap = 1 << 30
        self.warmup_rates: dict[int, float] = {}
        self.max_wait_s = 0.0
        self.buckets: tuple[int, ...] = (1,)
        prediction = prediction or Prediction("tiger cat", 282, 1.0, AnimalGroup.CAT)
        self._answer = ImageAnswer(answer_from_sums({prediction.group: prediction.probability}),
                                   (prediction,))
        self._version = ModelVersion.of("null", hashlib.sha256(b"paychan null model").digest(),
                                        "null")
        self._closing = False
        self._counts: collections.Counter[str] = collections.Counter()

    @property
    def version(self) -> ModelVersion:
        return self._version

    @property
    def labels(self) -> Sequence[str]:
        return ("",) * 1000

    @property
    def device(self) -> str:
        return "none"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, 224, 224)

    @property
    def ready(self) -> bool:
        return not self._closing

    def stats(self) -> BatcherStats:
        c = self._counts
        return BatcherStats(queued=0, admitted=0, computing=0, queue_size=self.queue_size,
                            batches=c["images"], images=c["images"], padded_images=c["images"],
                            expired=0, cancelled=0, overloaded=0, images_per_second=0.0)

    def add_batch_listener(self, listener: Callable[[BatchEvent], None]) -> None:
        pass  # no batches are computed, so there is nothing to tell

    def check(self, data: bytes) -> ImageInfo:
        """Header-only validation; no model, so every limit but the resized size."""
        return check_image(data, self.limits)

    async def start(self) -> None:
        if self._closing:
            raise ClassifierClosed("the classifier was closed; create a new one")

    async def close(self) -> None:
        self._closing = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def classify(self, images: Sequence[bytes], top_k: int = 5,
                       deadline: float | None = None) -> list[ImageAnswer]:
        self._refuse_if_closing()
        if not images:
            raise EmptyImage("no images in the request; send at least one")
        for index, data in enumerate(images):
            if not data:
                raise EmptyImage("the image is empty (0 bytes); send the image file",
                                 index=index)
            if len(data) > self.limits.max_bytes:
                raise ImageTooLarge(f"the image is {len(data):,} bytes, above the limit of "
                                    f"{self.limits.max_bytes:,}; resize or recompress it",
                                    index=index)
        self._counts["images"] += len(images)
        return [self._answer] * len(images)

    async def classify_tensors(self, batch: torch.Tensor | Sequence[torch.Tensor], top_k: int = 5,
                               deadline: float | None = None) -> list[ImageAnswer]:
        self._refuse_if_closing()
        n = len(batch)
        self._counts["images"] += n
        return [self._answer] * n

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise ClassifierClosed("the classifier is shutting down; retry on another instance",
                                   retry_after=1)
