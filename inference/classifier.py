"""The asyncio-facing classifier: a dynamic batcher in front of one model in one thread.

    classifier = Classifier.load()                  # tf_efficientnet_lite0, bundled weights
    await classifier.start()                        # warms every batch-size bucket
    [answer] = await classifier.classify([jpeg], top_k=3)
    answer.animal                                   # AnimalAnswer(CAT, 0.92, ANIMAL): summed per group
    answer[0].label, answer[0].group                # "tiger cat", AnimalGroup.CAT (top-k, best first)
    classifier.version.hash_hex                     # names the weights in receipts
    await classifier.close()

How a batch forms: requests are decoded in a small thread pool (``inference.decode_pool``),
then queued. The worker thread that owns the model takes everything queued (up to
``batch_cap``) at once when it was idle. When images had to wait for a batch in compute
(load), the next batch gets up to ``max_wait_us`` after that compute ends for more to join:
clients just answered send their next image within that time, so batches stay full. The
batch is padded to the next size bucket. Items whose deadline has passed are dropped before
compute. Admission is bounded: more than ``queue_size`` images admitted and not yet computed
raise ``Overloaded`` at once. Those rules are pure functions in ``inference.batch_policy``;
this module holds the thread, the condition variable and the tensors.

``batch_cap``: warm-up (``inference.warmup``) times every bucket and caps batches at the
smallest bucket within 5% of the best images/s. On a GPU that is usually ``max_batch``; on a
2-core CPU lite0 peaks near batch 8 and a batch of 32 runs at half the speed (its
activations leave the caches), so larger batches there would only add latency.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from inference.animal import GROUP_ORDER, answer_from_sums
from inference.batch_policy import (
    admits,
    choose_batch_cap,
    ewma_rate,
    fill_until,
    keep_filling,
    retry_after_s,
    take_batch,
)
from inference.buckets import bucket_for, normalize_buckets
from inference.decode_pool import DecodePool
from inference.errors import ClassifierClosed, DeadlineExceeded, EmptyImage, Overloaded
from inference.interface import BatcherStats, BatchEvent
from inference.model import DEFAULT_MODEL, LoadedModel, ModelVersion, cpu_threads, load_model
from inference.null_classifier import NullClassifier
from inference.prediction import ImageAnswer, Prediction
from inference.preprocess import DEFAULT_LIMITS, ImageInfo, ImageLimits, Preprocessor
from inference.warmup import time_buckets, warm_buffers

if TYPE_CHECKING:
    import torch

__all__ = ["Classifier"]

_T = TypeVar("_T")

_QUEUED, _TAKEN, _GONE = 0, 1, 2


@dataclasses.dataclass(eq=False, slots=True)
class _Item:
    tensor: torch.Tensor
    top_k: int
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ImageAnswer]
    enqueued: float = 0.0
    state: int = _QUEUED


class Classifier:
    """Dynamic batcher owning one model in one worker thread; use from asyncio.

    Build with ``Classifier.load(...)`` (a real timm model), ``Classifier.from_model(model)``
    or ``Classifier.null()`` (a fixed answer, no model: measures everything but inference).
    Both satisfy ``inference.ImageClassifier``, the type a server holds.
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
        self._decoder: DecodePool | None = None
        self._started: asyncio.Future[None] | None = None
        self._listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[BatchEvent], None]]] = []
        self._buffers: dict[int, torch.Tensor] = {}
        self._counts: collections.Counter[str] = collections.Counter()
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
    ) -> Classifier | NullClassifier:
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

    @staticmethod
    def null(*, limits: ImageLimits = DEFAULT_LIMITS,
             prediction: Prediction | None = None) -> NullClassifier:
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
            self._decoder = DecodePool(self.preprocessor, self._decode_threads, self._count)
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
            self._decoder.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------

    async def classify(
        self, images: Sequence[bytes], top_k: int = 5, deadline: float | None = None
    ) -> list[ImageAnswer]:
        """Each image's answer, in order: the animal answer and the top-k predictions;
        batched with concurrent requests.

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
            tensors = await self._decoder.decode(images, deadline)
            slots = 0  # _submit now owns them
            return await self._submit(tensors, top_k, deadline, admitted=True)
        finally:
            if slots:
                self._release(slots)

    async def classify_tensors(
        self, batch: torch.Tensor | Sequence[torch.Tensor], top_k: int = 5,
        deadline: float | None = None,
    ) -> list[ImageAnswer]:
        """Like ``classify`` for preprocessed float tensors, (N, 3, H, W) or a list of (3, H, W)."""
        _check_top_k(top_k, len(self.labels))
        tensors: list[torch.Tensor] = list(batch)
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

    def _count(self, name: str, n: int) -> None:
        with self._cond:
            self._counts[name] += n

    def _count_refused(self, n: int) -> int:
        """Count ``n`` images refused for a full queue; their Retry-After (under the lock)."""
        self._counts["overloaded"] += n
        return retry_after_s(self._admitted + n, self._rate)

    def _admit(self, n: int) -> None:
        with self._cond:
            if not admits(self._admitted, n, self.queue_size):
                retry = self._count_refused(n)
                if n > self.queue_size:
                    raise Overloaded(retry, f"{n} images exceed the queue of {self.queue_size}; "
                                            "send fewer images per request")
                raise Overloaded(retry)
            self._admitted += n

    def _release(self, n: int) -> None:
        with self._cond:
            self._admitted -= n

    async def _submit(self, tensors: list[torch.Tensor], top_k: int, deadline: float | None,
                      *, admitted: bool) -> list[ImageAnswer]:
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
                if not admits(self._admitted, len(items), self.queue_size):
                    raise Overloaded(self._count_refused(len(items)))
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

    def _run(self, loop: asyncio.AbstractEventLoop, started: asyncio.Future[None]) -> None:
        try:
            self._warm_up()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, started, exc)
            return
        loop.call_soon_threadsafe(_resolve, started, None)
        while True:
            batch, expired, oldest = self._next_batch()
            if batch is None:
                return
            if batch:
                self._compute(batch, expired, oldest)

    def _warm_up(self) -> None:
        """Warm every bucket; with ``auto_cap``, time them and choose ``batch_cap``."""
        self._buffers = warm_buffers(self.model, self.buckets, self._warmup_rounds)
        if self._auto_cap and len(self.buckets) > 1:
            rates = time_buckets(self.model, self._buffers)
            self.batch_cap = choose_batch_cap(rates)
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
            due = fill_until(was_idle=was_idle, max_wait_s=self.max_wait_s,
                             head_enqueued=self._queue[0].enqueued, free_since=self._free_since)
            while True:
                now = time.monotonic()
                if not keep_filling(queued=len(self._queue), cap=self.batch_cap, now=now,
                                    due=due, closing=self._closing):
                    break
                assert due is not None  # keep_filling is False without one
                self._cond.wait(due - now)
            now = time.monotonic()
            taken = take_batch(self._queue, self.batch_cap, now)
            for _ in range(taken.count):
                self._queue.popleft()
            self._admitted -= taken.count
            for item in taken.expired:
                item.state = _GONE
            for item in taken.batch:
                item.state = _TAKEN
            self._counts["expired"] += len(taken.expired)
            self._computing = len(taken.batch)
        for item in taken.expired:
            waited = now - item.enqueued
            item.loop.call_soon_threadsafe(
                _fail, item.future,
                DeadlineExceeded(f"dropped before compute: the deadline passed after {waited:.3f} s "
                                 "in the queue; retry with a later deadline or at lower load",
                                 retry_after=1))
        return list(taken.batch), len(taken.expired), taken.oldest_wait_s(now)

    def _compute(self, batch: list[_Item], expired: int, oldest: float) -> None:
        size = len(batch)
        padded = bucket_for(size, self.buckets)
        buffer = self._buffers[padded]
        for row, item in enumerate(batch):
            buffer[row].copy_(item.tensor)
        k = max(item.top_k for item in batch)
        began = time.perf_counter()
        try:
            top = self.model.top_k(buffer, k)
        except Exception as exc:
            with self._cond:
                self._computing = 0
            self._free_since = time.monotonic()
            for item in batch:
                item.loop.call_soon_threadsafe(_fail, item.future, exc)
            return
        elapsed = time.perf_counter() - began
        self._free_since = time.monotonic()  # before any caller can see a result and resubmit
        probs_l, indices_l, groups_l = (top.probabilities.tolist(), top.indices.tolist(),
                                        top.groups.tolist())
        labels, groups = self.labels, self.model.groups
        by_loop: dict[asyncio.AbstractEventLoop,
                      list[tuple[asyncio.Future[ImageAnswer], ImageAnswer]]] = {}
        for row, item in enumerate(batch):
            preds = tuple(Prediction(labels[i], i, p, groups[i])
                          for p, i in zip(probs_l[row][: item.top_k], indices_l[row][: item.top_k]))
            animal = answer_from_sums(dict(zip(GROUP_ORDER, groups_l[row])))
            by_loop.setdefault(item.loop, []).append((item.future, ImageAnswer(animal, preds)))
        with self._cond:  # counters first, so a caller who sees its result sees them too
            self._computing = 0
            self._counts["batches"] += 1
            self._counts["images"] += size
            self._counts["padded"] += padded
            self._rate = ewma_rate(self._rate, size / elapsed if elapsed > 0 else 0.0)
        for loop, results in by_loop.items():
            loop.call_soon_threadsafe(_resolve_many, results)
        if self._listeners:
            event = BatchEvent(size, padded, elapsed, oldest, expired)
            for loop, listener in self._listeners:
                loop.call_soon_threadsafe(listener, event)


def _check_top_k(top_k: int, classes: int) -> None:
    if not 1 <= top_k <= classes:
        raise ValueError(f"top_k={top_k}: must be between 1 and {classes}")


# Futures are settled on their own loop (call_soon_threadsafe), where a cancelled or already
# answered one is skipped: the caller may have gone away while the worker computed.

def _resolve(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _resolve_many(results: list[tuple[asyncio.Future[_T], _T]]) -> None:
    for future, result in results:
        _resolve(future, result)
