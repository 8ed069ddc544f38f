"""The x402 v2 payment middleware for paid routes (scheme ``batch-settlement``).

A route is paid when its handler is marked with :func:`paid`, which names a *pricer*: an
async function that reads and cheaply validates the request (its images) and returns how
many units it costs. For such a route the middleware

1. refuses a declared body over the limit before reading it (413),
2. runs the pricer (bad input: 400/413/415/422; nothing is reserved),
3. answers 402 + ``PAYMENT-REQUIRED`` when there is no ``PAYMENT-SIGNATURE``
   (a ``PAYMENT-SIGNATURE`` carrying a cooperative *refund* is served before step 1: the
   facilitator claims what was charged and refunds the rest; the answer is the
   ``PAYMENT-RESPONSE`` alone, no image is read and nothing is charged),
4. has the :class:`~gateway.payments.PaymentGate` check the payment (parse, offer, channel
   binding, voucher signature, deposit authorization),
5. admits it under the per-channel and global in-flight caps: a busy channel is the spec's
   402 ``invalid_batch_settlement_evm_channel_busy`` with Retry-After, exactly as the ledger
   answers it (so on every store); a full gateway is 429 ``overloaded`` with Retry-After,
6. reserves the price (an ``Idempotency-Key`` seen before replays its stored answer; a
   deposit payload's deposit is submitted on-chain here), runs the handler (503 ``timeout``
   past ``request_timeout_s``, see ``gateway.limits.Deadlines``), then commits
   the charge and adds ``PAYMENT-RESPONSE`` with the signed receipt; on any failure the
   reservation is released and nothing is charged.

::

    @paid(price_images)
    async def classify(request: web.Request) -> web.Response: ...

    app = web.Application(middlewares=[x402_middleware])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from channels.protocol import PAYMENT_SIGNATURE, ErrorCode, PaymentError
from gateway.errors import api_error
from gateway.keys import CAPS, CONFIG, DEADLINES, METRICS, PAYMENTS, STATE
from gateway.uploads import UploadError, check_content_length

if TYPE_CHECKING:
    from gateway.payments import PaymentGate

__all__ = [
    "Pricer",
    "client_address",
    "paid",
    "x402_middleware",
]

Pricer = Callable[[web.Request], Awaitable[int]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def paid(pricer: Pricer) -> Callable[[Handler], Handler]:
    """Mark a handler as paid; ``pricer(request)`` returns the units (images) it costs."""

    def mark(handler: Handler) -> Handler:
        handler.__paid__ = pricer  # type: ignore[attr-defined]
        return handler

    return mark


def client_address(request: web.Request) -> str:
    """The peer address used for rate limits (no proxy headers are trusted)."""
    return request.remote or "unknown"


async def _within_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler, answered 503 ``timeout`` past ``request_timeout_s`` (a held price is then
    released by the caller: nothing is charged)."""
    app = request.app
    deadlines = app[DEADLINES]
    task = deadlines.enter(asyncio.get_running_loop().time() + app[CONFIG].request_timeout_s)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if deadlines.expired(task):
            raise api_error(503, "timeout", "the classifier did not answer in time; retry",
                            retry_after=app[CONFIG].retry_after_s) from None
        raise
    finally:
        deadlines.leave(task)


def _channel_busy(gate: PaymentGate, units: int, request: web.Request) -> web.Response:
    """The spec's ``channel_busy`` for a channel at this process's in-flight cap.

    The same answer the ledger gives when its own cap is reached (402, PAYMENT-REQUIRED,
    Retry-After), built by the same call: a client sees one answer for a busy channel
    whichever cap refused it and whichever store the gateway runs on::

        return _channel_busy(app[PAYMENTS], units, request)
    """
    error = PaymentError(ErrorCode.CHANNEL_BUSY, "payload.voucher",
                         f"{gate.config.max_in_flight_per_channel} requests are in flight on "
                         "this channel; retry after Retry-After seconds")
    return gate.reject(error, units, request)


@web.middleware
async def x402_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    pricer: Pricer | None = getattr(request.match_info.handler, "__paid__", None)
    if pricer is None:
        return await handler(request)
    app = request.app
    config = app[CONFIG]
    if app[STATE].draining:
        raise api_error(503, "shutting_down", "the gateway is draining; retry", retry_after=1)
    header = request.headers.get(PAYMENT_SIGNATURE)
    if header is not None and config.payment:
        # A cooperative refund is sent to the paid resource itself (the spec's server side):
        # answered here, before pricing, so it needs no image and is charged nothing.
        gate = app[PAYMENTS]
        refund = gate.refund_payment(header, request)
        if refund is not None:
            if isinstance(refund, web.StreamResponse):  # 402: a bad refund payload
                return refund
            return await gate.refund(refund, request)
    try:
        check_content_length(request, config.max_body_bytes)
        units = await pricer(request)
    except UploadError as exc:
        raise api_error(exc.status, exc.code, str(exc)) from None
    caps = app[CAPS]
    if not config.payment:
        if not caps.try_enter(None):
            raise api_error(429, "overloaded", "too many requests in flight",
                            retry_after=config.retry_after_s)
        try:
            return await _within_deadline(request, handler)
        finally:
            caps.leave(None)

    gate = app[PAYMENTS]
    if header is None:
        return gate.challenge(units, request)
    started = time.perf_counter()
    checked = gate.check(header, units, request)
    app[METRICS].verify_seconds.observe(time.perf_counter() - started)
    if isinstance(checked, web.StreamResponse):  # 402: malformed, wrong offer, bad signature
        return checked
    channel = checked.channel_hex
    if not caps.try_enter(channel):
        if caps.channel_count(channel) >= caps.per_channel:
            return _channel_busy(gate, units, request)
        app[METRICS].payment_errors.inc(("overloaded",))
        raise api_error(429, "overloaded", "too many requests in flight",
                        retry_after=config.retry_after_s)
    try:
        hold = await gate.reserve(checked, units, request)
        if isinstance(hold, web.StreamResponse):  # 402 (ceiling, balance, deposit) or a replay
            return hold
        response: web.StreamResponse | None = None
        try:
            response = await _within_deadline(request, handler)
        finally:
            if response is None or response.status >= 400 or not isinstance(response, web.Response):
                await gate.release(hold)
        if response.status >= 400 or not isinstance(response, web.Response):
            return response
        return await gate.commit(hold, request, response)
    finally:
        caps.leave(channel)
