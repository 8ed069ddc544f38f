"""Serving a cooperative refund sent to a paid resource (the spec's server side).

The facilitator claims every outstanding charge and refunds the rest (or ``payload.amount``)
in one transaction. The answer carries ``PAYMENT-RESPONSE`` (the settlement: refunded amount,
refund transaction, channel state) and no resource; a refused refund is a 402 naming the
spec's code, with the failed settlement attached. Nothing is charged either way::

    refund = gate.refund_payment(header, request)     # None | 402 | verified refund
    response = await serve_refund(gate, refund, request)
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

from aiohttp import web

from channels.protocol import PAYMENT_RESPONSE, ErrorCode, PaymentError, RefundPayload, Rejection
from channels.provider import is_transport_error
from gateway.rejections import CORRECTIVE, chain_unavailable
from gateway.terms import EXPOSE_HEADERS, VerifiedPayment

if TYPE_CHECKING:
    from gateway.payments import PaymentGate

__all__ = ["serve_refund"]


async def serve_refund(gate: PaymentGate, payment: VerifiedPayment, request: web.Request) -> web.Response:
    """Refund ``payment`` (a verified refund payload) through ``gate``'s facilitator."""
    payload = payment.payload
    if not isinstance(payload, RefundPayload):
        raise TypeError(f"serve_refund takes a refund payload, got {type(payload).__name__}")
    try:
        settled = await gate.facilitator.refund(payload, gate.terms.requirements(1))
    except Exception as exc:
        if is_transport_error(exc):
            raise chain_unavailable(gate.config) from None
        raise
    text = json.dumps(settled.to_json(), separators=(",", ":"))
    header = base64.b64encode(text.encode()).decode()
    if settled.success:
        response = web.Response(status=200, body=text.encode(), content_type="application/json")
    else:
        try:
            code = ErrorCode(settled.error_reason or "")  # none or unknown: the fallback below
        except ValueError:
            code = ErrorCode.REFUND_TRANSACTION_FAILED
        error = PaymentError(code, "payload", settled.error_message or "refund refused")
        # A refund voucher below what is claimed (a payer with a new or stale state file):
        # the 402 carries our state and the payer's own last voucher, so it can adopt them.
        state = await gate.store.get(payment.channel_id) if code in CORRECTIVE else None
        rejection = Rejection(code, error.message, state) if state is not None else None
        response = gate.reject(error, 1, request, rejection)
    response.headers[PAYMENT_RESPONSE] = header
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response
