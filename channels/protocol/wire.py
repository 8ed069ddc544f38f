"""x402 v2 over HTTP for scheme `batch-settlement` (EVM): the header names, and each header's
encoder and strict parser (base64 of the spec's JSON).

The types live by job: `offers` (what a server asks for, the 402), `payloads` (what a payer
sends), `responses` (what a server answers), `snapshots` (the corrective channel state);
all are exported from `channels.protocol`::

    >>> payment = parse_payment_signature(request.headers[PAYMENT_SIGNATURE])
    >>> payment.payload.voucher.max_claimable_amount
    5000
    >>> headers[PAYMENT_REQUIRED] = encode_payment_required(PaymentRequired(accepts=(reqs,)))
"""

from __future__ import annotations

from ._fields import b64, b64_json
from .offers import PaymentRequired
from .payloads import PaymentPayload
from .responses import SettleResponse

__all__ = [
    "IDEMPOTENCY_KEY",
    "PAYMENT_REQUIRED",
    "PAYMENT_RESPONSE",
    "PAYMENT_SIGNATURE",
    "SAMPLE_SIGNATURE",
    "encode_payment_required",
    "encode_payment_response",
    "encode_payment_signature",
    "parse_payment_required",
    "parse_payment_response",
    "parse_payment_signature",
]

# The x402 v2 HTTP header names: the one place they are spelled (gateway and SDK import them).
PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
IDEMPOTENCY_KEY = "Idempotency-Key"
# paychan's own: a payer's signature on a labelled sample (channels.protocol.sample_auth).
SAMPLE_SIGNATURE = "SAMPLE-SIGNATURE"


def parse_payment_signature(header: str | bytes) -> PaymentPayload:
    """Decode and strictly validate the `PAYMENT-SIGNATURE` header (raises PaymentError)."""
    return PaymentPayload.from_json(b64_json(header, PAYMENT_SIGNATURE))


def encode_payment_signature(payment: PaymentPayload) -> str:
    """The `PAYMENT-SIGNATURE` header value for a payment."""
    return b64(payment.to_json())


def parse_payment_required(header: str | bytes) -> PaymentRequired:
    """Decode the `PAYMENT-REQUIRED` header (a 402 body: `PaymentRequired.from_json`)."""
    return PaymentRequired.from_json(b64_json(header, PAYMENT_REQUIRED))


def encode_payment_required(required: PaymentRequired) -> str:
    """The `PAYMENT-REQUIRED` header value (send `required.to_json()` as the body too)."""
    return b64(required.to_json())


def parse_payment_response(header: str | bytes) -> SettleResponse:
    """Decode the `PAYMENT-RESPONSE` header of a paid answer."""
    return SettleResponse.from_json(b64_json(header, PAYMENT_RESPONSE))


def encode_payment_response(response: SettleResponse) -> str:
    """The `PAYMENT-RESPONSE` header value."""
    return b64(response.to_json())
