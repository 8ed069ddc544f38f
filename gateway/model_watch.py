"""The hot swap: the gateway follows the model store's ``champion`` alias by itself.

    app.cleanup_ctx.append(model_watch_ctx)      # done by create_app
    app[MODEL_WATCH].status()                    # {"champion", "serving", "state", "last_error", ...}
    await app[MODEL_WATCH].check_now()           # one poll, now (tests, the console)

Every ``model_watch_s`` (default 1 s) the watcher stats ``<models>/aliases.json``; only when
its inode, size or mtime changed does it read the file (aliases are written by rename, so a
change always shows). When the champion differs from the version that answers unpinned
requests (``paychan models promote``/``rollback`` from another shell, a retrain's promotion,
another worker), it:

1. loads the new version off the event loop and warms it (``ResidentModels.acquire_next``:
   weights read in a thread, warm-up on the version's own model thread);
2. checks it on the golden set (``inference.golden_set``) through the serving path: no answer
   may be NaN, and when the manifest records ``golden_top1`` (a retrain's gate wrote it) the
   measured top-1 accuracy must match it within one photo. No golden set: skipped, logged;
3. publishes it to the ModelRegistry when a registry is configured (``gateway.provenance``),
   so no receipt ever names an unpublished version;
4. makes it the default (``ResidentModels.set_default``): one synchronous step, between
   batches. Requests holding a lease finish on the old version, which stays resident under
   the LRU bound and is closed only after its last lease.

A failed load, check or publication keeps the old champion serving; the reason is logged and
shown in ``/readyz`` (``models``) and ``/v1/models`` (``swap``), and counted in
``paychan_model_swaps_total{outcome="refused"}``. It is tried again when the aliases change,
or after ``RETRY_S``. A version checked once in this process is not checked again (a rollback
to a resident version is instant). The version served at startup is published (when a
registry is configured) before ``/readyz`` says ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.keys import CONFIG, METRICS, MODEL_WATCH, MODELS, PAYMENTS, STATE
from gateway.metrics import Counter

if TYPE_CHECKING:
    from gateway.provenance import Publisher
    from inference import ImageClassifier, ResidentModels, StoredVersion
    from inference.golden_set import GoldenSet

__all__ = ["RETRY_S", "ModelWatch", "SwapRefused", "golden_check", "model_watch_ctx"]

log = logging.getLogger("paychan.models")

#: A refused champion is tried again after this long even if the aliases did not change
#: (a publication that failed because the node was down, say).
RETRY_S = 60.0
_GOLDEN_CHUNK = 8  # images per classify call during the golden check
_PUBLISH_RETRY_S = 5.0


class SwapRefused(RuntimeError):
    """A new champion was not swapped in; the message says why."""


async def golden_check(clf: ImageClassifier, version: StoredVersion, golden: GoldenSet) -> str:
    """Run the golden set through ``clf``; returns a summary, raises SwapRefused on a NaN answer
    or a top-1 accuracy that differs from the manifest's ``golden_top1`` by more than one photo."""
    from inference import ImageError

    items = golden.items
    datas = await asyncio.to_thread(lambda: [item.path.read_bytes() for item in items])
    right = total = skipped = 0
    for start in range(0, len(items), _GOLDEN_CHUNK):
        chunk = list(zip(items[start:start + _GOLDEN_CHUNK], datas[start:start + _GOLDEN_CHUNK],
                         strict=True))
        try:
            answers = await clf.classify([data for _, data in chunk], top_k=1)
            pairs = list(zip((item for item, _ in chunk), answers, strict=True))
        except ImageError:  # one photo the limits refuse: classify the chunk one by one
            pairs = []
            for item, data in chunk:
                try:
                    [answer] = await clf.classify([data], top_k=1)
                except ImageError as exc:
                    skipped += 1
                    log.warning("golden check: %s skipped (%s)", item.file, exc)
                    continue
                pairs.append((item, answer))
        for item, answer in pairs:
            if not math.isfinite(answer.top.probability) or not math.isfinite(answer.animal.probability):
                raise SwapRefused(f"version {version.id[:16]} answers NaN on golden photo {item.file}")
            if item.imagenet_index is not None:
                total += 1
                right += answer.top.index == item.imagenet_index
    accuracy = round(100.0 * right / total, 3) if total else 0.0
    recorded = version.manifest.metrics.get("golden_top1")
    summary = f"golden top-1 {accuracy:.1f}% ({right}/{total}, {skipped} skipped)"
    if recorded is not None and total:
        tolerance = 100.0 / total + 1e-6  # one photo: another device may round one answer differently
        if abs(accuracy - float(recorded)) > tolerance:
            raise SwapRefused(f"version {version.id[:16]}: {summary} but its manifest records "
                              f"{float(recorded):.1f}%; these are not the weights that were gated")
        summary += f", matches the recorded {float(recorded):.1f}%"
    return summary


class ModelWatch:
    """Follows the store's champion (see the module docstring) and publishes what it serves."""

    def __init__(self, models: ResidentModels, *, poll_s: float, swaps: Counter,
                 publisher: Publisher | None = None) -> None:
        self.models = models
        self.poll_s = poll_s
        self.publisher = publisher
        self.swaps = swaps
        self.registry: dict[str, Any] | None = None  # address + chain, advertised in /v1/models
        self.publications: dict[str, dict[str, Any]] = {}  # version id -> publication record
        self.default_published = publisher is None
        self._checked: set[str] = {models.default_id}  # served at startup: already trusted
        self._golden: GoldenSet | None = None
        self._golden_loaded = False
        self._stamp: tuple[int, int, int] | None = None
        self._champion: str | None = models.default_id or None
        self._refused: dict[str, float] = {}  # version id -> when it was refused
        self._state = "serving"
        self._last_error: dict[str, Any] | None = None
        self._last_swap: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._publish_after = 0.0  # monotonic time of the next startup-publication attempt

    # ------------------------------------------------------------------ reading

    def status(self) -> dict[str, Any]:
        """What /readyz and /v1/models show about the champion and the last swap."""
        return {"champion": self._champion, "serving": self.models.default_id,
                "state": self._state, "swaps": int(self.swaps.get(("swapped",))),
                "last_swap": self._last_swap, "last_error": self._last_error,
                "poll_s": self.poll_s, "published": self.default_published}

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paychan-model-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        watching = self.models.store is not None and self.poll_s > 0
        while True:
            if not self.default_published and time.monotonic() >= self._publish_after:
                await self._publish_default()
            if watching:
                try:
                    await self.check_now()
                except Exception:  # never let one bad read stop the watch
                    log.exception("model watch: poll failed")
            elif self.default_published:
                return  # nothing left to do: no store to follow
            await asyncio.sleep(self.poll_s if watching else 0.5)

    async def _publish_default(self) -> None:
        assert self.publisher is not None
        try:
            record = await self._publish(self.models.default)
        except Exception as exc:  # noqa: BLE001 - node down, no gas: logged, shown, retried
            self._last_error = {"version": self.models.default_id, "reason": str(exc),
                                "at": time.time(), "stage": "publish"}
            log.warning("model watch: the served version %s is not published yet (%s); retrying "
                        "in %.0fs", self.models.default_id[:16], exc, _PUBLISH_RETRY_S)
            self._publish_after = time.monotonic() + _PUBLISH_RETRY_S
            return
        self.default_published = True
        log.info("model watch: %s published in %s (tx %s)", self.models.default_id[:16],
                 record.get("registry"), record.get("tx_hash"))

    async def _publish(self, version: StoredVersion | None) -> dict[str, Any]:
        assert self.publisher is not None
        if version is None:  # no store: the one fixed classifier
            clf = self.models.checker(None)
            assert clf is not None
            record = await self.publisher.ensure_hash(clf.version.architecture,
                                                      clf.version.content_hash)
            key = clf.version.content_hash.hex()
        else:
            record = await self.publisher.ensure(version, self.models.store)
            key = version.id
        self.publications[key] = record
        return record

    async def check_now(self) -> None:
        """Read the aliases if the file changed (or a refusal is due for a retry) and swap."""
        store = self.models.store
        if store is None:
            return
        path = store.root / "aliases.json"
        try:
            st = await asyncio.to_thread(os.stat, path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        champion = self._champion
        if stamp != self._stamp:
            self._stamp = stamp
            champion = (await asyncio.to_thread(store.aliases))["champion"]
            self._champion = champion
            self._refused.clear()  # any alias change: give refused versions another chance
        if champion is None or champion == self.models.default_id:
            if self._state == "refused" and champion == self.models.default_id:
                self._state = "serving"
            return
        refused_at = self._refused.get(champion)
        if refused_at is not None and time.monotonic() - refused_at < RETRY_S:
            return
        await self.swap(champion)

    async def swap(self, ident: str) -> bool:
        """Load, warm, check, publish and make ``ident`` the default; False if refused."""
        async with self._lock:
            if ident == self.models.default_id:
                return True
            store = self.models.store
            assert store is not None
            before = self.models.default_id
            self._state = "swapping"
            started = time.monotonic()
            stage = "load"
            try:
                version = await asyncio.to_thread(store.servable, ident)
                lease = await self.models.acquire_next(version)
                try:
                    summary = "checked before"
                    if ident not in self._checked:
                        stage = "golden check"
                        golden = await self._golden_set()
                        summary = ("no golden set: check skipped" if golden is None
                                   else await golden_check(lease.clf, version, golden))
                    if self.publisher is not None:
                        stage = "publish"
                        await self._publish(version)
                    self._checked.add(ident)
                    self.models.set_default(version)
                except BaseException:
                    self.models.cancel_next()
                    raise
                finally:
                    lease.release()
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old champion
                self._refused[ident] = time.monotonic()
                self._state = "refused"
                reason = str(exc) if isinstance(exc, SwapRefused) else f"{type(exc).__name__}: {exc}"
                self._last_error = {"version": ident, "stage": stage, "reason": reason,
                                    "at": time.time()}
                self.swaps.inc(("refused",))
                log.error("model swap to %s refused at %s: %s; %s keeps serving", ident[:16],
                          stage, reason, before[:16])
                return False
            self._state = "serving"
            self._last_error = None
            self._last_swap = {"from": before, "to": ident, "at": time.time(),
                               "seconds": round(time.monotonic() - started, 3), "check": summary}
            self.swaps.inc(("swapped",))
            log.info("model swap: %s -> %s in %.1fs (%s)", before[:16], ident[:16],
                     time.monotonic() - started, summary)
            return True

    async def _golden_set(self) -> GoldenSet | None:
        if not self._golden_loaded:
            from inference.golden_set import GoldenSetError, load_golden

            try:
                self._golden = await asyncio.to_thread(load_golden)
            except GoldenSetError as exc:
                log.warning("model watch: no golden set (%s); swaps are not golden-checked", exc)
                self._golden = None
            self._golden_loaded = True
        return self._golden


async def model_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the watcher (and the registry publisher) once the models and the chain are open."""
    config = app[CONFIG]
    models = app[MODELS]
    swaps = Counter("paychan_model_swaps_total", "Champion changes followed (swapped) or refused "
                    "(load, golden check or publication failed).", ("outcome",))
    app[METRICS].add(swaps)
    publisher = await _publisher(app)
    watch = app[MODEL_WATCH] = ModelWatch(models, poll_s=config.model_watch_s, swaps=swaps,
                                          publisher=publisher)
    if config.registry is not None:
        gate = app.get(PAYMENTS)
        chain_id = await gate.chain.chain_id() if gate is not None else None
        watch.registry = {"address": _checksum(config.registry), "chain_id": chain_id,
                          "publishing": publisher is not None}
    state = app[STATE]
    if publisher is not None:
        state.checks["model_registry"] = False
        app[METRICS].add(_ready_gauge(watch))
    watch.start()
    ready = asyncio.create_task(_follow_readiness(watch, state.checks))
    yield
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ready
    await watch.stop()


async def _publisher(app: web.Application) -> Publisher | None:
    """A publisher with the gateway's key and ChainClient, when a registry is configured and
    publishing is on (a paying gateway with a real model)."""
    config = app[CONFIG]
    gate = app.get(PAYMENTS)
    if config.registry is None or not config.publish_models or gate is None or config.is_null_model:
        return None
    from channels.provider.registry import ModelRegistry
    from gateway.provenance import Publisher, chain_sender

    registry = ModelRegistry(gate.chain.w3, config.registry)
    return Publisher(registry, chain_sender(gate.chain, registry.address),
                     publisher=gate.chain.address, chain_id=await gate.chain.chain_id())


async def _follow_readiness(watch: ModelWatch, checks: dict[str, bool]) -> None:
    """/readyz's model_registry check turns true once the served version is published."""
    while not watch.default_published:
        await asyncio.sleep(0.05)
    if "model_registry" in checks:
        checks["model_registry"] = True


def _ready_gauge(watch: ModelWatch) -> Any:
    from gateway.metrics import Gauge

    return Gauge("paychan_model_published", "1 once the version answering unpinned requests is "
                 "published in the ModelRegistry.", read=lambda: float(watch.default_published))


def _checksum(address: str) -> str:
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(address))
