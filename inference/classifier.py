"""The asyncio-facing classifier: a dynamic batcher in front of one model in one thread.

    classifier = Classifier.load()                  # tf_efficientnet_lite0, bundled weights
    await classifier.start()                        # warms every batch-size bucket
    [preds] = await classifier.classify([jpeg], top_k=3)
    preds[0].label, preds[0].group                  # "tiger cat", AnimalGroup.CAT
    classifier.version.hash_hex                     # names the weights in receipts
    await classifier.close()

How a batch forms: requests are decoded in a small thread pool, then queued. The worker
thread that owns the model takes everything queued (up to ``batch_cap``) at once when it was
idle. When images had to wait for a batch in compute (load), the next batch gets up to
``max_wait_us`` after that compute ends for more to join: clients just answered send their
next image within that time, so batches stay full. The batch is padded to the next size bucket. Items
whose deadline has passed are dropped before compute. Admission is bounded: more than
``queue_size`` images admitted and not yet computed raise ``Overloaded`` at once.

Work for a request nobody waits for is dropped, not run on: a decode that waited for a
thread past its request's deadline is not started (DeadlineExceeded), and the decodes of a
request that failed or was cancelled (the gateway's deadline sweep cancels its task) are
taken out of the pool's queue.

``batch_cap``: warm-up times every bucket and caps batches at the smallest bucket within 5%
of the best images/s. On a GPU that is usually ``max_batch``; on a 2-core CPU lite0 peaks
near batch 8 and a batch of 32 runs at half the speed (its activations leave the caches),
so serving larger batches there would only add latency and lose throughput.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from inference.buckets import bucket_for, normalize_buckets
from inference.errors import (
    ClassifierClosed,
    DeadlineExceeded,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    Overloaded,
)
from inference.labels import AnimalGroup, group_of
from inference.model import DEFAULT_MODEL, LoadedModel, ModelVersion, cpu_threads, load_model
from inference.prediction import Prediction
from inference.preprocess import (
    DEFAULT_LIMITS,
    ImageInfo,
    ImageLimits,
    Preprocessor,
    check_image,
)

if TYPE_CHECKING:
    import torch

__all__ = ["BatchEvent", "BatcherStats", "Classifier"]

_CAP_TOLERANCE = 0.95  # batch_cap: the smallest bucket timed within 5% of the best images/s

_QUEUED, _TAKEN, _GONE = 0, 1, 2


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


@dataclasses.dataclass(eq=False, slots=True)
class _Item:
    tensor: Any
    top_k: int
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = 0.0
    state: int = _QUEUED


class Classifier:
    """Dynamic batcher owning one model in one worker thread; use from asyncio.

    Build with ``Classifier.load(...)`` (a real timm model), ``Classifier.from_model(model)``
    or ``Classifier.null()`` (a fixed answer, no model: measures everything but inference).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch: int = 32,
        max_wait_us: int = 2000,
        queue_size: int = 256,
        buckets: Sequence[int] | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        decode_threads: int | None = None,
        warmup_rounds: int = 1,
        auto_cap: bool = True,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_us < 0:
            raise ValueError(
                f"max_batch={max_batch}, queue_size={queue_size}, max_wait_us={max_wait_us}: "
                "need max_batch >= 1, queue_size >= 1, max_wait_us >= 0"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_us / 1e6
        self.queue_size = queue_size
        self.buckets = normalize_buckets(buckets, max_batch)
        self.limits = limits
        self.preprocessor = Preprocessor(model.data_config, limits)
        # Pillow decodes with the GIL released: a few threads keep a GPU fed; 2 on 2 cores.
        self._decode_threads = decode_threads or max(2, min(8, cpu_threads()))
        self._warmup_rounds = warmup_rounds
        self._auto_cap = auto_cap
        self.batch_cap = max_batch
        self.warmup_rates: dict[int, float] = {}

        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._admitted = 0
        self._computing = 0
        self._free_since = 0.0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._decoder: concurrent.futures.ThreadPoolExecutor | None = None
        self._started: asyncio.Future | None = None
        self._listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[BatchEvent], None]]] = []
        self._buffers: dict[int, Any] = {}
        self._counts = collections.Counter()
        self._rate = 0.0

    # --- construction --------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        *,
        max_batch: int = 32,
        max_wait_us: int = 2000,
        queue_size: int = 256,
        buckets: Sequence[int] | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        threads: int | None = None,
        compile: bool = False,
        decode_threads: int | None = None,
        auto_cap: bool = True,
    ) -> Classifier:
        """Load a timm model with real local weights (see ``load_model``) and wrap it.

        ``model="null"`` gives ``Classifier.null()``, so one config string picks either.
        """
        if model == "null":
            return cls.null(limits=limits)
        loaded = load_model(model, weights, device=device, threads=threads, compile=compile)
        return cls(loaded, max_batch=max_batch, max_wait_us=max_wait_us, queue_size=queue_size,
                   buckets=buckets, limits=limits, decode_threads=decode_threads,
                   warmup_rounds=2 if compile else 1, auto_cap=auto_cap)

    @classmethod
    def from_model(cls, model: LoadedModel, **options: Any) -> Classifier:
        """Wrap an already loaded model (tests and benchmarks share one)."""
        return cls(model, **options)

    @classmethod
    def null(cls, *, limits: ImageLimits = DEFAULT_LIMITS,
             prediction: Prediction | None = None) -> Classifier:
        """A classifier that answers ``prediction`` at once for every image (no model, no
        decode); it still refuses empty and oversized bodies. For measuring the gateway."""
        return NullClassifier(limits=limits, prediction=prediction)

    # --- properties ------------------------------------------------------------------------

    @property
    def version(self) -> ModelVersion:
        return self.model.version

    @property
    def labels(self) -> Sequence[str]:
        return self.model.labels

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.model.input_shape

    @property
    def ready(self) -> bool:
        return (self._started is not None and self._started.done()
                and not self._started.cancelled() and self._started.exception() is None
                and not self._closing)

    def stats(self) -> BatcherStats:
        with self._cond:
            c = self._counts
            return BatcherStats(
                queued=len(self._queue), admitted=self._admitted, computing=self._computing,
                queue_size=self.queue_size,
                batches=c["batches"], images=c["images"], padded_images=c["padded"],
                expired=c["expired"], cancelled=c["cancelled"], overloaded=c["overloaded"],
                images_per_second=self._rate,
            )

    def add_batch_listener(self, listener: Callable[[BatchEvent], None]) -> None:
        """Call ``listener(event)`` on the current event loop after every batch (metrics)."""
        self._listeners.append((asyncio.get_running_loop(), listener))

    def check(self, data: bytes) -> ImageInfo:
        """Header-only validation under this classifier's limits and the model's resize
        (raises ImageError): the same rules ``classify`` applies when it decodes."""
        return self.preprocessor.check(data)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and warm every bucket; returns when ready. Idempotent."""
        if self._closing:
            raise ClassifierClosed("the classifier was closed; create a new one")
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._started = loop.create_future()
            self._decoder = concurrent.futures.ThreadPoolExecutor(
                self._decode_threads, thread_name_prefix="paychan-decode")
            self._thread = threading.Thread(
                target=self._run, args=(loop, self._started), name="paychan-model", daemon=True)
            self._thread.start()
        await asyncio.shield(self._started)

    async def close(self) -> None:
        """Finish what is queued, then stop the worker. Later calls raise ClassifierClosed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------

    async def classify(
        self, images: Sequence[bytes], top_k: int = 5, deadline: float | None = None
    ) -> list[list[Prediction]]:
        """Top-k predictions for each image, in order; batched with concurrent requests.

        ``deadline``: absolute ``time.monotonic()`` seconds (the clock of ``loop.time()``);
        images not computed by then raise DeadlineExceeded. Raises ImageError (with
        ``.index``) for a bad image, Overloaded when the queue is full.
        """
        _check_top_k(top_k, len(self.labels))
        if not images:
            raise EmptyImage("no images in the request; send at least one")
        await self._ensure_started()
        self._admit(len(images))
        slots = len(images)
        try:
            assert self._decoder is not None
            jobs = [self._decoder.submit(self._decode_by, data, deadline) for data in images]
            try:
                tensors = await _gather_images([asyncio.wrap_future(job) for job in jobs])
            except BaseException:
                self._drop_decodes(jobs)
                raise
            slots = 0  # _submit now owns them
            return await self._submit(tensors, top_k, deadline, admitted=True)
        finally:
            if slots:
                self._release(slots)

    def _decode_by(self, data: bytes, deadline: float | None) -> torch.Tensor:
        """Preprocess one image in a pool thread, unless its deadline passed while it waited.

            pool.submit(clf._decode_by, jpeg, time.monotonic() + 30.0)

        The caller has been answered 503 by then (or is about to be): decoding would only
        take a thread from requests that can still make it.
        """
        if deadline is not None and time.monotonic() >= deadline:
            with self._cond:
                self._counts["expired"] += 1
            raise DeadlineExceeded("dropped before decoding: the deadline passed while the image "
                                   "waited for a decode thread; retry with a later deadline or "
                                   "at lower load", retry_after=1)
        return self.preprocessor(data)

    def _drop_decodes(self, jobs: list[concurrent.futures.Future]) -> None:
        """Take a failed or cancelled request's decodes that have not started out of the pool.

            self._drop_decodes(jobs)      # counted in stats().cancelled

        ``Future.cancel`` succeeds only for a job still queued (a running decode cannot be
        interrupted, and is bounded by the image limits).
        """
        dropped = sum(job.cancel() for job in jobs)  # True: queued, or already cancelled
        if dropped:
            with self._cond:
                self._counts["cancelled"] += dropped

    async def classify_tensors(
        self, batch: torch.Tensor | Sequence[torch.Tensor], top_k: int = 5,
        deadline: float | None = None,
    ) -> list[list[Prediction]]:
        """Like ``classify`` for preprocessed float tensors, (N, 3, H, W) or a list of (3, H, W)."""
        _check_top_k(top_k, len(self.labels))
        tensors = list(batch)
        if not tensors:
            raise ValueError("classify_tensors needs at least one tensor")
        for t in tensors:
            if tuple(t.shape) != self.input_shape:
                raise ValueError(f"tensor of shape {tuple(t.shape)}; the model takes "
                                 f"{self.input_shape} (use classifier.preprocessor)")
        await self._ensure_started()
        return await self._submit(tensors, top_k, deadline, admitted=False)

    # --- the asyncio side of the queue ----------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._closing:
            raise ClassifierClosed("the classifier is shutting down; retry on another instance",
                                   retry_after=1)
        if not self.ready:
            await self.start()

    def _retry_after(self, extra: int) -> int:
        rate = self._rate or 1.0
        return max(1, math.ceil((self._admitted + extra) / rate))

    def _admit(self, n: int) -> None:
        with self._cond:
            if self._admitted + n > self.queue_size:
                self._counts["overloaded"] += n
                retry = self._retry_after(n)
                if n > self.queue_size:
                    raise Overloaded(retry, f"{n} images exceed the queue of {self.queue_size}; "
                                            "send fewer images per request")
                raise Overloaded(retry)
            self._admitted += n

    def _release(self, n: int) -> None:
        with self._cond:
            self._admitted -= n

    async def _submit(self, tensors: list[Any], top_k: int, deadline: float | None,
                      *, admitted: bool) -> list[list[Prediction]]:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            if admitted:
                self._release(len(tensors))
            with self._cond:
                self._counts["expired"] += len(tensors)
            raise DeadlineExceeded("the request's deadline passed before it was queued; "
                                   "retry with a later deadline", retry_after=1)
        items = [_Item(t, top_k, deadline, loop, loop.create_future(), now) for t in tensors]
        with self._cond:
            if self._closing:
                if admitted:
                    self._admitted -= len(items)
                raise ClassifierClosed("the classifier is shutting down", retry_after=1)
            if not admitted:
                if self._admitted + len(items) > self.queue_size:
                    self._counts["overloaded"] += len(items)
                    raise Overloaded(self._retry_after(len(items)))
                self._admitted += len(items)
            self._queue.extend(items)
            self._cond.notify()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            # Cancelled, or one image failed: free the slots of the ones still queued.
            self._withdraw(items)
            raise

    def _withdraw(self, items: list[_Item]) -> None:
        with self._cond:
            for item in items:
                if item.state == _QUEUED:
                    item.state = _GONE
                    self._queue.remove(item)
                    self._admitted -= 1
                    self._counts["cancelled"] += 1
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    item.future.exception()  # mark retrieved: no "never retrieved" warnings

    # --- the worker thread -----------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future) -> None:
        try:
            self._warm_up()
        except BaseException as exc:  # noqa: BLE001  (start() re-raises it in the caller)
            loop.call_soon_threadsafe(_settle, started, None, exc)
            return
        loop.call_soon_threadsafe(_settle, started, None, None)
        while True:
            batch, expired, oldest = self._next_batch()
            if batch is None:
                return
            if batch:
                self._compute(batch, expired, oldest)

    def _warm_up(self) -> None:
        import torch

        shape = self.input_shape
        for size in self.buckets:
            buffer = torch.zeros((size, *shape)).contiguous(memory_format=torch.channels_last)
            if self.model.device.type == "cuda":
                buffer = buffer.pin_memory()
            self._buffers[size] = buffer
            for _ in range(self._warmup_rounds):
                self.model.top_k(buffer, 5)
        if self._auto_cap and len(self.buckets) > 1:
            self._choose_batch_cap()

    def _choose_batch_cap(self) -> None:
        """Time every bucket and cap batches at the smallest one within 5% of the best rate.

        Each bucket's rate is its best of three calls: other processes only ever slow a call
        down, so the fastest call is the least disturbed estimate. Among near-equal rates the
        smaller bucket wins: it gives up at most 5% of throughput (as timed) and answers
        sooner, while a bucket past the knee can lose far more than its timing promised
        (lite0 on 2 cores: 209 images/s at batch 8, 199 at 16, 120 at 32; warm-up timings are
        noisy enough that "the largest within 10%" picked 24).
        """
        def rate(size: int) -> float:
            fastest = math.inf
            for _ in range(3):
                began = time.perf_counter()
                self.model.top_k(self._buffers[size], 5)
                fastest = min(fastest, time.perf_counter() - began)
            return size / fastest

        rates = {size: rate(size) for size in self.buckets}
        best = max(rates.values())
        self.batch_cap = min(size for size in self.buckets if rates[size] >= _CAP_TOLERANCE * best)
        self.warmup_rates = {size: round(r, 2) for size, r in rates.items()}

    def _next_batch(self) -> tuple[list[_Item] | None, int, float]:
        """Block until a batch is due; (None, ...) once closing with nothing queued."""
        with self._cond:
            was_idle = False
            while not self._queue:
                if self._closing:
                    return None, 0, 0.0
                was_idle = True
                self._cond.wait()
            if (not was_idle and self.max_wait_s > 0
                    and self._queue[0].enqueued < self._free_since):
                # Under load: let the batch fill for max_wait after the last compute ended.
                due = self._free_since + self.max_wait_s
                while self._queue and len(self._queue) < self.batch_cap and not self._closing:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            now = time.monotonic()
            batch: list[_Item] = []
            expired: list[_Item] = []
            while self._queue and len(batch) < self.batch_cap:
                item = self._queue.popleft()
                self._admitted -= 1
                if item.deadline is not None and now >= item.deadline:
                    item.state = _GONE
                    expired.append(item)
                else:
                    item.state = _TAKEN
                    batch.append(item)
            self._counts["expired"] += len(expired)
            self._computing = len(batch)
            oldest = now - batch[0].enqueued if batch else 0.0
        for item in expired:
            waited = now - item.enqueued
            item.loop.call_soon_threadsafe(
                _settle, item.future, None,
                DeadlineExceeded(f"dropped before compute: the deadline passed after {waited:.3f} s "
                                 "in the queue; retry with a later deadline or at lower load",
                                 retry_after=1))
        return batch, len(expired), oldest

    def _compute(self, batch: list[_Item], expired: int, oldest: float) -> None:
        size = len(batch)
        padded = bucket_for(size, self.buckets)
        buffer = self._buffers[padded]
        for row, item in enumerate(batch):
            buffer[row].copy_(item.tensor)
        k = max(item.top_k for item in batch)
        began = time.perf_counter()
        try:
            probs, indices = self.model.top_k(buffer, k)
        except Exception as exc:  # noqa: BLE001  (fails this batch, not the worker)
            with self._cond:
                self._computing = 0
            self._free_since = time.monotonic()
            for item in batch:
                item.loop.call_soon_threadsafe(_settle, item.future, None, exc)
            return
        elapsed = time.perf_counter() - began
        self._free_since = time.monotonic()  # before any caller can see a result and resubmit
        probs_l, indices_l = probs.tolist(), indices.tolist()
        labels = self.labels
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for row, item in enumerate(batch):
            preds = [Prediction(labels[i], i, p, group_of(i))
                     for p, i in zip(probs_l[row][: item.top_k], indices_l[row][: item.top_k])]
            by_loop.setdefault(item.loop, []).append((item.future, preds))
        with self._cond:  # counters first, so a caller who sees its result sees them too
            self._computing = 0
            self._counts["batches"] += 1
            self._counts["images"] += size
            self._counts["padded"] += padded
            rate = size / elapsed if elapsed > 0 else 0.0
            self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
        for loop, results in by_loop.items():
            loop.call_soon_threadsafe(_settle_many, results)
        if self._listeners:
            event = BatchEvent(size, padded, elapsed, oldest, expired)
            for loop, listener in self._listeners:
                loop.call_soon_threadsafe(listener, event)


class NullClassifier(Classifier):
    """The same interface with no model: one fixed prediction, at once."""

    def __init__(self, *, limits: ImageLimits = DEFAULT_LIMITS,
                 prediction: Prediction | None = None) -> None:
        self.limits = limits
        self.max_batch = self.queue_size = self.batch_cap = 1 << 30
        self.warmup_rates = {}
        self.max_wait_s = 0.0
        self.buckets = (1,)
        self._prediction = prediction or Prediction("tiger cat", 282, 1.0, AnimalGroup.CAT)
        self._version = ModelVersion.of("null", hashlib.sha256(b"paychan null model").digest(),
                                        "null")
        self._closing = False
        self._counts = collections.Counter()
        self._cond = threading.Condition()

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
        pass

    def check(self, data: bytes) -> ImageInfo:
        """Header-only validation; no model, so every limit but the resized size."""
        return check_image(data, self.limits)

    async def start(self) -> None:
        if self._closing:
            raise ClassifierClosed("the classifier was closed; create a new one")

    async def close(self) -> None:
        self._closing = True

    async def classify(self, images: Sequence[bytes], top_k: int = 5,
                       deadline: float | None = None) -> list[list[Prediction]]:
        await self._ensure_started()
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
        return [[self._prediction] for _ in images]

    async def classify_tensors(self, batch: Any, top_k: int = 5,
                               deadline: float | None = None) -> list[list[Prediction]]:
        await self._ensure_started()
        n = len(batch)
        self._counts["images"] += n
        return [[self._prediction] for _ in range(n)]


def _check_top_k(top_k: int, classes: int) -> None:
    if not 1 <= top_k <= classes:
        raise ValueError(f"top_k={top_k}: must be between 1 and {classes}")


async def _gather_images(decoding: list[asyncio.Future]) -> list[Any]:
    """Await every decode; raise the first image's error naming its position."""
    results = await asyncio.gather(*decoding, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, ImageError):
            raise result.at(index) if len(results) > 1 else result
        if isinstance(result, BaseException):
            raise result
    return results


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _settle_many(results: list[tuple[asyncio.Future, Any]]) -> None:
    for future, result in results:
        if not future.done():
            future.set_result(result)
