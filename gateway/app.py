"""The application factory: ``create_app(config) -> web.Application``.

    config = GatewayConfig.load(flags={"token": "0x...", "key_file": "provider.key"})
    runner = GatewayRunner(create_app(config))    # gateway.connections: read timeouts, per-address cap
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()

Resources live on typed keys (``gateway.keys``) and are opened and closed by cleanup
contexts, in order: the classifier, the payment gate (chain client, ledger store, in-process
facilitator), then the chain sync (watcher + settler, ``channels.provider.ChainSync``), then
the model watch (hot swap of a new champion, ModelRegistry publication: ``gateway.model_watch``).
Shutdown runs the other way round after aiohttp has stopped accepting connections and the
in-flight paid requests have drained, so the last charges are committed before the store is
flushed and closed. With ``config.facilitator`` the x402 facilitator endpoints are mounted
under ``/facilitator`` (``/verify``, ``/settle``, ``/supported``), served by the same
facilitator the gate uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import predictions
from gateway.admin import enable_admin
from gateway.config import GatewayConfig
from gateway.connections import CONNECTIONS, ConnectionGuard, ConnectionLimits
from gateway.console import enable_console
from gateway.earnings import accounting_ctx
from gateway.facilitator_routes import FACILITATOR, facilitator_app
from gateway.keys import (
    CAPS,
    CLASSIFIER,
    CONFIG,
    DEADLINES,
    METRICS,
    MODELS,
    PAYMENTS,
    SAMPLE_LIMITER,
    SAMPLES,
    SETTLER,
    STATE,
    STORE,
    GatewayState,
)
from gateway.limits import Deadlines, InFlightCaps, RateLimiter
from gateway.metrics import Gauge, GatewayMetrics
from gateway.model_watch import model_watch_ctx
from gateway.retraining import retraining_ctx
from gateway.routes import routes
from gateway.x402 import x402_middleware
from inference.samples import SampleStore

if TYPE_CHECKING:
    from inference import ImageClassifier

__all__ = ["create_app"]


def create_app(
    config: GatewayConfig,
    *,
    classifier: ImageClassifier | None = None,
    chain: object | None = None,
) -> web.Application:
    """Build the gateway application for ``config``.

    ``classifier`` (an ``inference.ImageClassifier``) may be passed in to share one loaded model,
    e.g. across tests. ``chain`` shares a chain *connection*: an ``AsyncWeb3``, or anything
    with a ``.w3`` AsyncWeb3 — ``contracts.EmbeddedChain`` (``paychan demo``) or a
    ``channels.provider.ChainClient``. Whichever is given, the gateway builds its own ``ChainClient``
    over that connection (signing with ``config.key``, journaling into its ledger store);
    addresses come from ``config`` (settlement, collector, token). Without ``chain`` it
    connects to ``config.rpc_url``. Passed-in objects are not closed by the app::

        emb = contracts.embedded_chain()
        app = create_app(GatewayConfig.from_mapping({"key": k, "token": emb.deployment.token}),
                         classifier=clf, chain=emb)
        ...
        result = await app[PAYMENTS].settle_now()     # claim + settle now (see its docstring)
    """
    config.require_payment_terms()
    # Bodies larger than this are refused while reading (Content-Length is checked earlier).
    app = web.Application(
        middlewares=[_metrics_middleware, x402_middleware],
        client_max_size=max(config.max_body_bytes, config.max_sample_bytes),
    )
    app[CONFIG] = config
    app[METRICS] = GatewayMetrics()
    app[STATE] = GatewayState()
    caps = app[CAPS] = InFlightCaps(per_channel=config.max_in_flight_per_channel, total=config.max_in_flight)
    app[METRICS].add(Gauge("paychan_in_flight_requests", "Classification requests being served now.",
                           read=lambda: caps.count))
    # Read timeouts and the per-address cap act in the protocol, under GatewayRunner.
    guard = app[CONNECTIONS] = ConnectionGuard(ConnectionLimits.from_config(config))
    app[METRICS].add(guard.cuts)
    app[METRICS].add(Gauge("paychan_open_connections", "Client connections open now (admitted).",
                           read=lambda: guard.open))
    app[DEADLINES] = Deadlines()
    app.cleanup_ctx.append(_deadlines_ctx)
    app[SAMPLES] = SampleStore(config.samples_dir, max_total_bytes=config.samples_max_bytes,
                               max_payer_bytes=config.samples_payer_max_bytes)
    app[SAMPLE_LIMITER] = RateLimiter(config.samples_per_minute, burst=config.samples_burst)  # per payer
    app.add_routes(routes)
    app.cleanup_ctx.append(_classifier_ctx(classifier))
    if config.payment:
        facilitator = None
        if config.facilitator:
            # Mounted now (routes freeze at startup); the facilitator is set once it exists.
            facilitator = facilitator_app()
            app.add_subapp("/facilitator", facilitator)
        app.cleanup_ctx.append(_payments_ctx(chain, facilitator))
        app.cleanup_ctx.append(accounting_ctx)  # usage log, chain-truth metrics (gateway/earnings.py)
        if config.settler:
            app.cleanup_ctx.append(_chain_sync_ctx)
    # The champion watch (hot swap) and the ModelRegistry publisher, once models and chain are open.
    app.cleanup_ctx.append(model_watch_ctx)
    app.cleanup_ctx.append(retraining_ctx)  # --retrain-after N: retrains in a subprocess
    enable_admin(app, config)  # POST /admin/settle, only with an admin token (gateway/admin.py)
    enable_console(app, config)  # GET /admin/console, /admin/earnings: the same token (gateway/console)
    app.on_shutdown.append(_drain)
    return app


async def _deadlines_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sweep that answers 503 ``timeout`` for classifications past ``request_timeout_s``."""
    sweep = asyncio.create_task(app[DEADLINES].run(), name="paychan-deadlines")
    yield
    sweep.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweep


_CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def _classifier_ctx(shared: ImageClassifier | None) -> _CleanupContext:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        state.checks["model"] = False
        # Without config.models: the shared classifier or config.model alone; with it, the
        # store's champion, and other versions loaded on demand (gateway.predictions).
        models = app[MODELS] = await predictions.open_models(app[CONFIG], shared)
        clf = models.checker(None)
        assert clf is not None  # the default version is resident once opened
        app[CLASSIFIER] = clf
        predictions.register_metrics(models, app[METRICS])
        state.checks["model"] = True
        yield
        state.checks["model"] = False
        await models.close()  # a shared classifier is left open

    return ctx


def _payments_ctx(shared_chain: object | None, facilitator: web.Application | None) -> _CleanupContext:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from gateway.payments import PaymentGate

        gate = await PaymentGate.open(app[CONFIG], app[METRICS], chain=shared_chain)
        app[PAYMENTS] = gate
        app[STORE] = gate.store
        if facilitator is not None:
            facilitator[FACILITATOR] = gate.facilitator
        yield
        await gate.close()  # stops the chain sync, flushes the ledger store

    return ctx


async def _chain_sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """The watcher + settler loop (``ChainSync``), under its lease (Redis: one of N workers)."""
    gate = app[PAYMENTS]
    app[SETTLER] = gate.sync
    gate.sync.start()
    yield
    await gate.stop_sync()


async def _drain(app: web.Application) -> None:
    """Stop taking paid work and wait (bounded) for in-flight requests to finish."""
    state = app[STATE]
    state.draining = True
    caps = app[CAPS]
    deadline = time.monotonic() + app[CONFIG].drain_timeout_s
    while caps.count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    metrics = request.app[METRICS]
    counter = metrics.requests
    started = time.perf_counter()

    def count(status: int) -> None:
        counter.inc((name, str(status)))
        if name.startswith("/v1/"):  # the API's traffic, for the console's charts
            metrics.minutes.record(status, time.perf_counter() - started)

    try:
        response = await handler(request)
    except web.HTTPException as exc:
        count(exc.status)
        raise
    except Exception:
        count(500)
        raise
    count(response.status)
    return response
