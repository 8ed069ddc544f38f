"""Typed application keys: the resources ``create_app`` puts on the ``web.Application``.

Handlers read them as ``request.app[CLASSIFIER]``; the type checker knows each one's type.
Resources that exist only while the app runs (store, chain, classifier) are set by the
cleanup contexts in ``gateway.app``; the payment ones (``PAYMENTS``, ``STORE``, ``SETTLER``)
only on a gateway that takes payments, so code that runs either way reads them with
``app.get(PAYMENTS)``::

    gate = request.app.get(PAYMENTS)     # PaymentGate | None (None: --no-payment)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.limits import Deadlines, InFlightCaps, RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.uploads import Upload

if TYPE_CHECKING:
    # Types only: these load torch / web3 (and gateway.payments imports this module).
    from channels.provider import ChainSync, Store
    from gateway.earnings import Accounting
    from gateway.model_watch import ModelWatch
    from gateway.payments import PaymentGate
    from inference import ImageClassifier, ResidentModels, StoredVersion
    from inference.samples import SampleStore

__all__ = [
    "ACCOUNTING",
    "CAPS",
    "CHARGED",
    "CLASSIFIER",
    "CONFIG",
    "DEADLINES",
    "METRICS",
    "MODELS",
    "MODEL_VERSION",
    "MODEL_VERSION_HASH",
    "MODEL_WATCH",
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
SAMPLE_LIMITER = web.AppKey("sample_limiter", RateLimiter)
# Set by cleanup contexts. Their types load torch or web3, so they are named in annotations
# (never evaluated at run time) rather than passed to AppKey.
CLASSIFIER: web.AppKey[ImageClassifier] = web.AppKey("classifier")  # the default version's
MODELS: web.AppKey[ResidentModels] = web.AppKey("models")  # every resident version (LRU set)
# The champion watcher (hot swap) and the registry publisher (gateway.model_watch).
MODEL_WATCH: web.AppKey[ModelWatch] = web.AppKey("model_watch")
SAMPLES: web.AppKey[SampleStore] = web.AppKey("samples")  # inference.samples (create_app)
# The payment gate, its ledger store and its chain sync: set only when config.payment
# (SETTLER also needs config.settler), so absent on a free gateway.
PAYMENTS: web.AppKey[PaymentGate] = web.AppKey("payments")
STORE: web.AppKey[Store] = web.AppKey("store")
SETTLER: web.AppKey[ChainSync] = web.AppKey("settler")  # the watcher + settler loop
# Usage log, chain-truth metrics, earnings history (gateway.earnings): on a paying gateway.
ACCOUNTING: web.AppKey[Accounting] = web.AppKey("accounting")

# Per-request values handed from the pricer / payment gate to the handler and back.
UPLOADS: web.RequestKey[list[Upload]] = web.RequestKey("uploads")
TOP_K = web.RequestKey("top_k", int)
MODEL_VERSION_HASH = web.RequestKey("model_version_hash", bytes)
# The store version a request pinned with ?model= (None: the default), set by the pricer.
MODEL_VERSION: web.RequestKey[StoredVersion | None] = web.RequestKey("model_version")
# What a paid request was charged, set by the payment gate at commit, read by the access
# log: (channel id as 0x-hex, base units charged, the ledger's request id).
CHARGED: web.RequestKey[tuple[str, int, str]] = web.RequestKey("charged")
