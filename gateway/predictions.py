"""The gateway's use of ``inference``: open the classifier, check images, answer in JSON.

Image checks are header-only (``Classifier.check``: format, bytes, pixels, aspect ratio and
the size after the model's resize) so a bad image is refused before any money is reserved
and before any pixel is decoded; inference failures keep their HTTP status (400/413/415/422
for the image, 429/503 with Retry-After for the service)::

    clf = await open_classifier(config)                 # Classifier.load / Classifier.null
    check(clf, upload_bytes)                            # raises Rejected(status, code, msg)
    answer = await classify(clf, [jpeg], top_k=5)       # Answer(body=b'{...}', version_hash=...)
    # body: {"model": {...}, "results": [{"animal": {"group", "probability", "status"},
    #                                     "predictions": [...top-k...]}]}  (docs/protocol.md §5)

With a model store (``config.models``) several versions are resident (``ResidentModels``)::

    models = await open_models(config)                  # the store's champion, loaded and warm
    version = await resolve_version(models, "previous") # StoredVersion | None; Rejected if unknown
    async with using(models, version) as clf:           # loaded off the event loop if needed
        answer = await classify(clf, [jpeg], top_k=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics, Gauge
from inference import (
    BatchEvent,
    Classifier,
    ClassifierError,
    ImageClassifier,
    ImageError,
    ImageInfo,
    ModelStore,
    ModelVersion,
    ResidentModels,
    StoredVersion,
    StoreError,
)

__all__ = [
    "Answer",
    "Rejected",
    "check",
    "classify",
    "list_models",
    "open_classifier",
    "open_models",
    "register_metrics",
    "resolve_version",
    "using",
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


async def open_models(config: GatewayConfig, shared: ImageClassifier | None = None) -> ResidentModels:
    """The resident set: ``shared`` or ``config.model`` alone without a store; with
    ``config.models`` the store's champion (an empty store is bootstrapped), loaded and warm."""
    if shared is not None:
        if config.models is not None:
            raise ValueError("pass a shared classifier or config.models (a model store), not both")
        return ResidentModels.fixed(shared)
    if config.models is None:
        return ResidentModels.fixed(await open_classifier(config), owned=True)
    store = await asyncio.to_thread(ModelStore.open, config.models)
    models = ResidentModels(store, _opener(config, store), capacity=config.max_resident_models)
    await models.open_default()
    return models


def _opener(config: GatewayConfig, store: ModelStore) -> Callable[[StoredVersion], ImageClassifier]:
    options: dict[str, Any] = {"queue_size": config.max_in_flight}
    if config.batch_cap is not None:
        options.update(max_batch=config.batch_cap, auto_cap=False)

    def open_version(version: StoredVersion) -> ImageClassifier:  # in a worker thread
        return Classifier.from_model(store.load(version.id, device=config.device), **options)

    return open_version


def check(clf: ImageClassifier, data: bytes, index: int | None = None) -> ImageInfo:
    """Header-only image validation under the classifier's limits; raises Rejected.

        check(clf, body)          # Rejected(422, "aspect_ratio_too_large", ...) for 1x10000
        check(clf, body).format   # "JPEG", "PNG" or "WEBP" (what the bytes are, not the label)
    """
    try:
        return clf.check(data)
    except ImageError as exc:
        if index is not None:
            exc = exc.at(index)
        raise Rejected(exc.status, exc.code, str(exc)) from None


_LIST = "GET /v1/models lists the versions"


async def resolve_version(models: ResidentModels, requested: str | None) -> StoredVersion | None:
    """The store version that ``?model=requested`` pins (None: the default version answers).

    Accepts an alias (``champion``, ``previous``; ``default``/``latest`` mean the default), a
    full id, ``0x``-id, a unique id prefix of 4+ hex digits or ``<architecture>-<prefix>``.
    Unknown or ambiguous: Rejected 404/400; retired: 410. Never names a server path.
    """
    if requested is None or requested in _DEFAULT_ALIASES:
        return None
    store = models.store
    if store is None:
        clf = models.checker(None)
        version = clf.version if clf is not None else None
        if version is not None and requested in (version.id, version.architecture, version.hash_hex,
                                                 version.content_hash.hex()):
            return None
        raise Rejected(404, "unknown_model", f"model={requested!r}: not served here; {_LIST}")
    try:
        found = await asyncio.to_thread(store.resolve, requested)
    except StoreError as exc:
        if "ambiguous" in str(exc):
            raise Rejected(400, "ambiguous_model", f"model={requested!r}: matches more than one "
                           f"version; give more hex digits ({_LIST})") from None
        raise Rejected(404, "unknown_model", f"model={requested!r}: no version here matches (give "
                       "champion, previous, an id or a unique prefix of 4+ hex digits); "
                       f"{_LIST}") from None
    if found.retired:
        raise Rejected(410, "model_retired", f"model={requested!r}: version {found.id[:16]} is "
                       f"retired and no longer served; {_LIST}")
    return found


@contextlib.asynccontextmanager
async def using(models: ResidentModels, version: StoredVersion | None) -> AsyncIterator[ImageClassifier]:
    """Hold ``version``'s classifier (loading it off the event loop if not resident); a load
    that fails is Rejected 503 (retryable) and names no server path."""
    try:
        lease = await models.acquire(version)
    except ClassifierError as exc:
        raise Rejected(exc.status, exc.code, str(exc), exc.retry_after) from None
    except Exception as exc:  # unreadable weights, out of memory: this version cannot answer now
        raise Rejected(503, "model_unavailable", f"model version could not be loaded "
                       f"({type(exc).__name__}); retry later or pin another ({_LIST})", 5) from None
    try:
        yield lease.clf
    finally:
        lease.release()


async def classify(clf: ImageClassifier, images: list[bytes], top_k: int, deadline: float | None = None) -> Answer:
    """Run the classifier and encode the answer; raises Rejected on image/service errors."""
    try:
        answers = await clf.classify(images, top_k=top_k, deadline=deadline)
    except ImageError as exc:
        raise Rejected(exc.status, exc.code, str(exc)) from None
    except ClassifierError as exc:
        raise Rejected(exc.status, exc.code, str(exc), exc.retry_after) from None
    version = clf.version
    body = {  # each result leads with the animal answer, then the top-k classes
        "model": {"id": version.id, "version": version.hash_hex},
        "results": [answer.to_json() for answer in answers],
    }
    return Answer(json.dumps(body, separators=(",", ":")).encode(), version.content_hash)


async def list_models(models: ResidentModels) -> list[dict[str, Any]]:
    """``GET /v1/models`` rows: every store version (retired ones too) with its aliases,
    metrics and whether it is resident; no server file paths."""
    resident = models.resident()
    if models.store is None:
        rows = []
        for key, clf in resident.items():  # one, keyed by its weights' sha256 hex
            v = clf.version
            rows.append({"id": v.id, "name": v.id, "architecture": v.architecture,
                         "version": v.hash_hex, "aliases": [], "default": key == models.default_id,
                         "resident": True})
        return rows
    rows = []
    for stored in await asyncio.to_thread(models.store.list):
        row = stored.to_json()
        row.pop("weights", None)  # a file name inside the store: the server's business
        manifest = stored.manifest
        row.update(name=ModelVersion.of(manifest.architecture, bytes.fromhex(stored.id), "").id,
                   version="0x" + stored.id, default=stored.id == models.default_id,
                   resident=stored.id in resident)
        # its ModelRegistry publication (gateway.provenance), None until published
        row["registry"] = await asyncio.to_thread(models.store.publication, stored.id)
        rows.append(row)
    return rows


def register_metrics(models: ResidentModels, metrics: GatewayMetrics) -> None:
    """Batch size and queue wait per batch (every resident version), and the batchers'
    counters summed over the resident versions as gauges at scrape time."""

    def on_batch(event: BatchEvent) -> None:
        metrics.batch_size.observe(event.size)
        metrics.queue_wait_seconds.observe(event.oldest_wait_s)

    models.on_open(lambda clf: clf.add_batch_listener(on_batch))

    def stat(name: str) -> Callable[[], float]:
        return lambda: float(sum(getattr(clf.stats(), name, 0) or 0
                                 for clf in models.resident().values()))

    for name, help_text in (
        ("queued", "Images waiting in the classifier queues."),
        ("batches", "Model batches run (resident versions)."),
        ("images", "Images run through the model (resident versions)."),
        ("overloaded", "Requests refused because a queue was full."),
        ("expired", "Requests dropped past their deadline."),
    ):
        metrics.add(Gauge(f"paychan_classifier_{name}", help_text, read=stat(name)))

    def mean_batch() -> float:
        stats = [clf.stats() for clf in models.resident().values()]
        batches = sum(s.batches for s in stats)
        return sum(s.images for s in stats) / batches if batches else 0.0

    metrics.add(Gauge("paychan_classifier_mean_batch", "Mean images per model batch.", read=mean_batch))
    metrics.add(Gauge("paychan_classifier_batch_cap", "Largest model batch (chosen at warm-up).",
                      read=lambda: float(max((getattr(clf, "batch_cap", 0) or 0
                                              for clf in models.resident().values()), default=0))))
    metrics.add(Gauge("paychan_models_resident", "Model versions loaded now.",
                      read=lambda: float(len(models.resident()))))
