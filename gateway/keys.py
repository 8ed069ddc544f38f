"""Typed application keys: the resources ``create_app`` puts on the ``web.Application``.

Handlers read them as ``request.app[CLASSIFIER]``; the type checker knows each one's type.
Resources that exist only while the app runs (store, chain, classifier) are set by the
cleanup contexts in ``gateway.app``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.limits import Deadlines, InFlightCaps, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.samples import SampleStore

__all__ = [
    "CAPS",
    "CLASSIFIER",
    "CONFIG",
    "DEADLINES",
    "DEPOSIT",
    "METRICS",
    "MODEL_VERSION_HASH",
    "PAYMENTS",
    "SAMPLES",
    "SAMPLE_LIMITER",
    "SETTLER",
    "STATE",
    "STORE",
    "TOP_K",
    "UPLOADS",
    "GatewayState",
]


@dataclass
class GatewayState:
    """What /readyz reports and what shutdown flips."""

    checks: dict[str, bool] = field(default_factory=dict)  # name -> ready
    draining: bool = False

    @property
    def ready(self) -> bool:
        return not self.draining and all(self.checks.values())


CONFIG = web.AppKey("config", GatewayConfig)
METRICS = web.AppKey("metrics", GatewayMetrics)
STATE = web.AppKey("state", GatewayState)
CAPS = web.AppKey("caps", InFlightCaps)
DEADLINES = web.AppKey("deadlines", Deadlines)
SAMPLES = web.AppKey("samples", SampleStore)
SAMPLE_LIMITER = web.AppKey("sample_limiter", RateLimiter)
# Set by cleanup contexts; typed Any until the owning packages' types are imported lazily.
CLASSIFIER: web.AppKey[Any] = web.AppKey("classifier")
STORE: web.AppKey[Any] = web.AppKey("store")  # the ledger store (channels.provider.store)
PAYMENTS: web.AppKey[Any] = web.AppKey("payments")  # gateway.payments.PaymentGate
# The running channels.provider.settler.ChainSync (watcher + settler) when config.settler; else None.
SETTLER: web.AppKey[Any] = web.AppKey("settler")

# Per-request values handed from the pricer / payment gate to the handler and back.
UPLOADS: web.RequestKey[list[Any]] = web.RequestKey("uploads")
TOP_K = web.RequestKey("top_k", int)
MODEL_VERSION_HASH = web.RequestKey("model_version_hash", bytes)
DEPOSIT: web.RequestKey[tuple[str, int]] = web.RequestKey("deposit")  # (tx hash, amount)
