"""The gateway's use of ``inference``: open the classifier, check images, answer in JSON.

Image checks are header-only (``Classifier.check``: format, bytes, pixels, aspect ratio and
the size after the model's resize) so a bad image is refused before any money is reserved
and before any pixel is decoded; inference failures keep their HTTP status (400/413/415/422
for the image, 429/503 with Retry-After for the service)::

    clf = await open_classifier(config)                 # Classifier.load / Classifier.null
    check(clf, upload_bytes)                            # raises Rejected(status, code, msg)
    answer = await classify(clf, [jpeg], top_k=5)       # Answer(body=b'{...}', version_hash=...)
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics, Gauge
from inference import BatchEvent, Classifier, ClassifierError, ImageClassifier, ImageError

__all__ = [
    "Answer",
    "Rejected",
    "check",
    "classify",
    "list_models",
    "open_classifier",
    "parse_label",
    "register_metrics",
    "resolve_model",
]

_DEFAULT_ALIASES = ("default", "latest")


class Rejected(Exception):
    """A request the classifier refuses: HTTP ``status``, error ``code``, optional Retry-After."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Answer:
    """A prediction answer: the exact JSON body sent, and the version that produced it."""

    body: bytes
    version_hash: bytes


async def open_classifier(config: GatewayConfig) -> ImageClassifier:
    """Load (in a thread: reading weights blocks) and start the configured classifier."""
    clf: ImageClassifier
    if config.is_null_model:
        clf = Classifier.null()
    else:
        load = functools.partial(Classifier.load, model=config.model, device=config.device,
                                 queue_size=config.max_in_flight)
        if config.batch_cap is not None:
            # A fixed batch_cap skips the warm-up's choice (timings on a busy machine vary).
            load = functools.partial(load, max_batch=config.batch_cap, auto_cap=False)
        clf = await asyncio.to_thread(load)
    await clf.start()
    return clf


def check(clf: ImageClassifier, data: bytes, index: int | None = None) -> None:
    """Header-only image validation under the classifier's limits; raises Rejected.

        check(clf, body)          # Rejected(422, "aspect_ratio_too_large", ...) for 1x10000
    """
    try:
        clf.check(data)
    except ImageError as exc:
        if index is not None:
            exc = exc.at(index)
        raise Rejected(exc.status, exc.code, str(exc)) from None


def resolve_model(clf: ImageClassifier, requested: str | None) -> str:
    """The version id that will answer ``requested`` (an id, alias, or the version hash)."""
    version = clf.version
    if requested is None or requested in _DEFAULT_ALIASES or requested in (
        version.id, version.architecture, version.hash_hex,
    ):
        return version.id
    raise Rejected(404, "unknown_model",
                   f"model {requested!r} is not served here; GET /v1/models lists the versions")


async def classify(clf: ImageClassifier, images: list[bytes], top_k: int, deadline: float | None = None) -> Answer:
    """Run the classifier and encode the answer; raises Rejected on image/service errors."""
    try:
        predictions = await clf.classify(images, top_k=top_k, deadline=deadline)
    except ImageError as exc:
        raise Rejected(exc.status, exc.code, str(exc)) from None
    except ClassifierError as exc:
        raise Rejected(exc.status, exc.code, str(exc), exc.retry_after) from None
    version = clf.version
    body = {
        "model": {"id": version.id, "version": version.hash_hex},
        "results": [{"predictions": [p.to_json() for p in preds]} for preds in predictions],
    }
    return Answer(json.dumps(body, separators=(",", ":")).encode(), version.content_hash)


def list_models(clf: ImageClassifier) -> list[dict[str, Any]]:
    v = clf.version
    return [{
        "id": v.id, "architecture": v.architecture, "version": v.hash_hex,
        "source": str(getattr(v, "source", "")), "default": True,
    }]


def parse_label(text: str) -> int:
    """An ImageNet-1k class index from ``"281"`` or a label name such as ``"tabby"``."""
    from inference.labels import imagenet_labels

    labels = imagenet_labels()
    text = text.strip()
    if text.isdigit():
        index = int(text)
        if 0 <= index < len(labels):
            return index
        raise Rejected(400, "bad_label", f"label {index} is not an ImageNet-1k class (0..{len(labels) - 1})")
    lowered = text.lower()
    for index, name in enumerate(labels):
        if name.lower() == lowered:
            return index
    raise Rejected(400, "bad_label", f"label {text!r} is not an ImageNet-1k class name or index")


def register_metrics(clf: ImageClassifier, metrics: GatewayMetrics) -> None:
    """Batch size and queue wait per batch, and the batcher's counters as gauges at scrape time."""

    def on_batch(event: BatchEvent) -> None:
        metrics.batch_size.observe(event.size)
        metrics.queue_wait_seconds.observe(event.oldest_wait_s)

    clf.add_batch_listener(on_batch)

    def stat(name: str) -> Callable[[], float]:
        return lambda: float(getattr(clf.stats(), name, 0) or 0)

    for name, help_text in (
        ("queued", "Images waiting in the classifier queue."),
        ("batches", "Model batches run."),
        ("images", "Images run through the model."),
        ("mean_batch", "Mean images per model batch."),
        ("overloaded", "Requests refused because the queue was full."),
        ("expired", "Requests dropped past their deadline."),
    ):
        metrics.add(Gauge(f"paychan_classifier_{name}", help_text, read=stat(name)))
    metrics.add(Gauge("paychan_classifier_batch_cap", "Largest model batch (chosen at warm-up).",
                      read=lambda: float(getattr(clf, "batch_cap", 0) or 0)))
