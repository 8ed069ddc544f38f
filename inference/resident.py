"""The model versions a server keeps loaded: a bounded, least-recently-used set of classifiers.

    models = ResidentModels(store, opener, capacity=2)    # opener(StoredVersion) -> classifier
    await models.open_default()                           # the store's champion, loaded and warm
    async with models.use(store.servable("previous")) as clf:    # loads it if not resident
        [preds] = await clf.classify([jpeg])
    lease = await models.acquire(None)                    # the default; lease.release() after
    await models.close()

    models = ResidentModels.fixed(clf)                    # no store: one classifier, as before

Each resident version has its own classifier (its own batcher thread), so a batch never mixes
versions. A version that is not resident is loaded in a worker thread (reading weights blocks)
and warmed on its own model thread; concurrent requests for it share one load. When a load
makes the set exceed ``capacity``, the least recently used version leaves the set at once and
its classifier is closed once the requests using it have finished (``use`` counts them).

A hot swap (``gateway.model_watch``) loads the next default with ``acquire_next`` and then
moves the default with ``set_default``, one synchronous step on the event loop: a request
that already holds a lease finishes on the version it started on, every later unpinned
request gets the new one, and no batch mixes the two. While a swap is pending neither the
current default nor the incoming version is evicted (the set may exceed ``capacity``);
``set_default`` or ``cancel_next`` trims it back::

    lease = await models.acquire_next(stored)             # loaded + warm, not yet the default
    models.set_default(stored)                            # or models.cancel_next() on a failed check
    lease.release()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from inference.errors import ClassifierClosed
from inference.interface import ImageClassifier
from inference.versions import ModelStore, StoredVersion

__all__ = ["Lease", "Opener", "ResidentModels"]

#: Builds (not starts) the classifier for a version; runs in a worker thread.
Opener = Callable[[StoredVersion], ImageClassifier]


@dataclasses.dataclass(eq=False)
class _Entry:
    version_id: str
    clf: ImageClassifier
    users: int = 0
    evicted: bool = False
    closed: bool = False


class Lease:
    """One request's hold on a resident classifier; ``release`` exactly once."""

    __slots__ = ("_entry", "_models", "_released")

    def __init__(self, models: ResidentModels, entry: _Entry) -> None:
        self._models = models
        self._entry = entry
        self._released = False

    @property
    def clf(self) -> ImageClassifier:
        return self._entry.clf

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        entry = self._entry
        entry.users -= 1
        if entry.evicted and entry.users == 0:
            self._models._close_later(entry)


class ResidentModels:
    """Up to ``capacity`` loaded versions, keyed by version id (the weights' sha256 hex)."""

    def __init__(self, store: ModelStore | None, opener: Opener | None, *, capacity: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity}: at least one version must stay resident")
        self.store = store
        self.capacity = capacity
        self._opener = opener
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._hooks: list[Callable[[ImageClassifier], None]] = []
        self._default: StoredVersion | None = None
        self._default_id = ""
        self._incoming = ""  # the version a pending swap is loading (acquire_next)
        self._closed = False
        self._owned = True

    @classmethod
    def fixed(cls, clf: ImageClassifier, *, owned: bool = False) -> ResidentModels:
        """One started classifier and no store (``owned``: ``close`` closes it)."""
        models = cls(None, None, capacity=1)
        models._default_id = clf.version.content_hash.hex()
        models._entries[models._default_id] = _Entry(models._default_id, clf)
        models._owned = owned
        return models

    async def open_default(self, ref: str = "champion") -> ImageClassifier:
        """Resolve ``ref`` in the store (in a thread), load it and make it the default."""
        if self.store is None:
            raise ValueError("open_default needs a store; use ResidentModels.fixed without one")
        store = self.store
        self._default = await asyncio.to_thread(store.servable, ref)
        self._default_id = self._default.id
        return (await self._entry(self._default)).clf

    # ------------------------------------------------------------------ reading

    @property
    def default_id(self) -> str:
        """The version id that answers a request that pins none."""
        return self._default_id

    @property
    def default(self) -> StoredVersion | None:
        """The store version answering unpinned requests (None without a store)."""
        return self._default

    def resident(self) -> dict[str, ImageClassifier]:
        """Version id -> classifier, least recently used first."""
        return {key: entry.clf for key, entry in self._entries.items()}

    async def acquire_next(self, version: StoredVersion) -> Lease:
        """``acquire`` the version a swap will make the default; until ``set_default`` or
        ``cancel_next`` neither it nor the current default is evicted."""
        self._incoming = version.id
        try:
            return await self.acquire(version)
        except BaseException:
            self.cancel_next()
            raise

    def set_default(self, version: StoredVersion) -> None:
        """Make the resident ``version`` the default now (no await: between two batches);
        ValueError if it is not resident. The old default stays resident (LRU) and is closed
        only after its last lease, if the bound evicts it."""
        entry = self._entries.get(version.id)
        if entry is None or entry.evicted:
            raise ValueError(f"version {version.id[:16]}: not resident; acquire it before "
                             "making it the default")
        self._default = version
        self._default_id = version.id
        self._entries.move_to_end(version.id)
        self._incoming = ""
        self._trim(keep=version.id)

    def cancel_next(self) -> None:
        """Give up a pending swap: the default stays, the bound applies again."""
        self._incoming = ""
        self._trim(keep=self._default_id)

    def on_open(self, hook: Callable[[ImageClassifier], None]) -> None:
        """Call ``hook(clf)`` for every classifier resident now and every one loaded later."""
        self._hooks.append(hook)
        for entry in self._entries.values():
            hook(entry.clf)

    def checker(self, version: StoredVersion | None) -> ImageClassifier | None:
        """A resident classifier whose header checks hold for ``version`` without loading it:
        its own, or one of the same architecture (same resize, same limits); else None."""
        key = self._default_id if version is None else version.id
        entry = self._entries.get(key)
        if entry is not None:
            return entry.clf
        if version is None:
            return None
        for entry in self._entries.values():
            if entry.clf.version.architecture == version.manifest.architecture:
                return entry.clf
        return None

    # ------------------------------------------------------------------ serving

    async def acquire(self, version: StoredVersion | None) -> Lease:
        """Hold the classifier of ``version`` (None: the default), loading it if needed; it
        stays open until ``lease.release()`` even if it is evicted meanwhile."""
        for _ in range(3):
            entry = await self._entry(version)
            if not entry.evicted:  # evicted while this caller waited for its load: load again
                break
        else:
            raise ClassifierClosed("model versions are being loaded and evicted faster than they "
                                   "answer; retry, or raise max_resident_models", retry_after=1)
        entry.users += 1
        return Lease(self, entry)

    @contextlib.asynccontextmanager
    async def use(self, version: StoredVersion | None) -> AsyncIterator[ImageClassifier]:
        """``acquire`` for the length of a block."""
        lease = await self.acquire(version)
        try:
            yield lease.clf
        finally:
            lease.release()

    async def close(self) -> None:
        """Close every resident classifier (after its requests) and wait for all of them."""
        self._closed = True
        for pending in list(self._loading.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pending
        if self._owned:
            for entry in list(self._entries.values()):
                entry.evicted = True
                if entry.users == 0:
                    self._close_later(entry)
        self._entries.clear()
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _entry(self, version: StoredVersion | None) -> _Entry:
        if self._closed:
            raise ClassifierClosed("the gateway is shutting down; retry", retry_after=1)
        key = self._default_id if version is None else version.id
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        if version is None:
            version = self._default
            if version is None:  # a fixed set never loses its one classifier
                raise ClassifierClosed("the classifier is closed", retry_after=1)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(version))
            self._loading[key] = pending
            pending.add_done_callback(lambda fut: self._loaded(key, fut))
        # shield: a caller that goes away does not cancel a load others may be waiting for
        return await asyncio.shield(pending)

    def _loaded(self, key: str, fut: asyncio.Future[_Entry]) -> None:
        self._loading.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: a failed load is reported to its waiters, not logged

    async def _load(self, version: StoredVersion) -> _Entry:
        if self._opener is None:
            raise ValueError("this set has no opener; it serves only its fixed classifier")
        clf = await asyncio.to_thread(self._opener, version)
        try:
            await clf.start()
            if self._closed:
                raise ClassifierClosed("the gateway is shutting down; retry", retry_after=1)
        except BaseException:
            await clf.close()
            raise
        entry = _Entry(version.id, clf)
        self._entries[version.id] = entry
        for hook in self._hooks:
            hook(clf)
        self._trim(keep=version.id)
        return entry

    def _trim(self, keep: str) -> None:
        """Evict least recently used versions down to ``capacity``, never ``keep`` (the one
        just loaded), nor, while a swap is pending, the default or the incoming version."""
        protected = {keep, self._incoming, self._default_id} if self._incoming else {keep}
        while len(self._entries) > self.capacity:
            victim_key = next((k for k in self._entries if k not in protected), None)
            if victim_key is None:
                return
            victim = self._entries.pop(victim_key)
            victim.evicted = True
            if victim.users == 0:
                self._close_later(victim)

    def _close_later(self, entry: _Entry) -> None:
        if entry.closed:
            return
        entry.closed = True
        task = asyncio.ensure_future(entry.clf.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
