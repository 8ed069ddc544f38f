"""Reading a server's HTTP answers: the 402's terms, error codes and texts, which answers may
be retried and after how long, and a paid classification's typed result.

    >>> required = payment_required(headers, body)         # a 402's x402 terms
    >>> error_code(body), error_text(body)
    ('top_k_too_large', 'top_k must be at most 20')
    >>> is_transient(503, body, lost=False), retry_after({"Retry-After": "2"}, attempt=1)
    (True, 2.0)
    >>> raise_for_answer(answer)                           # PaymentRefused / RequestFailed
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from typing import Any

from ..protocol import (
    PAYMENT_REQUIRED,
    ErrorCode,
    PaymentError,
    PaymentRequired,
    parse_payment_required,
)
from .errors import PaymentRefused, ReceiptInvalid, RequestFailed
from .models import AnimalAnswer, Classification, PaidResponse, Prediction

__all__ = [
    "MISMATCH",
    "PAYMENT_IDENTIFIER",
    "RETRY_AFTER_CAP_S",
    "busy_backoff",
    "classification_of",
    "error_code",
    "error_text",
    "gateway_base",
    "header",
    "is_transient",
    "new_idempotency_key",
    "payment_required",
    "raise_for_answer",
    "retry_after",
    "without_header",
]

# The corrective 402s: the payer's cumulative is off (new or stale state file).
MISMATCH = (ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, ErrorCode.CUMULATIVE_BELOW_CLAIMED)
PAYMENT_IDENTIFIER = "payment-identifier"  # the x402 extension naming the Idempotency-Key
RETRY_AFTER_CAP_S = 5.0
# Answers after which the very same request (same key, same payment) is sent again. 503:
# the server did not serve it (nothing charged). 502/504 (a proxy lost the answer) and no
# answer at all: only to a server known to replay a charged answer for its key.
_NOT_SERVED = frozenset({503})
_ANSWER_LOST = frozenset({502, 504})


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key, also valid as an x402 `payment-identifier` id (16-128 of
    ``[A-Za-z0-9_-]``).

        >>> new_idempotency_key()
        'pay_7d5d747be160e280504c099d984bcfe0'
    """
    return "pay_" + uuid.uuid4().hex


def busy_backoff(attempt: int) -> float:
    """A short jittered wait before retrying channel_busy (our own requests hold the channel).

        >>> 0.01 <= busy_backoff(1) <= 0.05
        True
    """
    return random.uniform(0.01, 0.05) * min(2.0 ** (attempt - 1), 16.0)


def retry_after(headers: Mapping[str, str], attempt: int, default: float | None = None) -> float:
    """The answer's Retry-After in seconds (capped at 5 s), else `default` (else busy_backoff).

        >>> retry_after({"Retry-After": "30"}, 1)
        5.0
    """
    try:
        wait = float(headers.get("Retry-After", ""))
    except ValueError:
        wait = busy_backoff(attempt) if default is None else default
    return min(max(wait, 0.0), RETRY_AFTER_CAP_S)


def is_transient(status: int, body: bytes, *, lost: bool) -> bool:
    """An answer after which the same request may be sent again as is (see
    `PaymentClient._send_paid`); `lost`: also those that say the answer was lost on the way
    (502, 504).

        >>> is_transient(502, b"", lost=False)
        False
    """
    if status in _NOT_SERVED or (lost and status in _ANSWER_LOST):
        return True
    return status == 409 and error_code(body) == "idempotency_key_in_use"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, its name matched case-insensitively (None: absent).

        >>> header({"idempotency-key": "k"}, "Idempotency-Key")
        'k'
    """
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def without_header(headers: Mapping[str, str], name: str) -> dict[str, str]:
    """`headers` less every spelling of `name`.

        >>> without_header({"a": "1", "B": "2"}, "b")
        {'a': '1'}
    """
    lower = name.lower()
    return {k: v for k, v in headers.items() if k.lower() != lower}


def gateway_base(url: str) -> str | None:
    """A paychan gateway's base URL from one of its /v1/ URLs (None: not such a URL).

        >>> gateway_base("http://127.0.0.1:8402/v1/classify")
        'http://127.0.0.1:8402'
    """
    return url.split("/v1/", 1)[0] if "/v1/" in url else None


def payment_required(headers: Mapping[str, str], body: bytes) -> PaymentRequired:
    """A 402's terms: its PAYMENT-REQUIRED header, else its JSON body (PaymentError if neither).

        >>> payment_required(resp.headers, await resp.read()).accepts[0].amount
        1000
    """
    raw = headers.get(PAYMENT_REQUIRED)
    if raw is not None:
        return parse_payment_required(raw)
    try:
        data = json.loads(body)
    except ValueError:
        raise PaymentError(
            ErrorCode.INVALID_PAYLOAD, PAYMENT_REQUIRED, "a 402 without x402 terms"
        ) from None
    return PaymentRequired.from_json(data)


def _error_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def error_code(body: bytes) -> str | None:
    """The error code of an error answer's JSON body (``{"error": {"code": ...}}`` and kin).

        >>> error_code(b'{"error": {"code": "image_too_large"}}')
        'image_too_large'
    """
    data = _error_json(body)
    err = data.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        return code if isinstance(code, str) else None
    if isinstance(err, str):
        return err
    code = data.get("code")
    return code if isinstance(code, str) else None


def error_text(body: bytes) -> str:
    """The human message of an error answer (its first 200 bytes when not JSON).

        >>> error_text(b'{"error": {"message": "not an image"}}')
        'not an image'
    """
    data = _error_json(body)
    err = data.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if data.get("message"):
        return str(data["message"])
    if isinstance(err, str):
        return err
    return body[:200].decode("utf-8", "replace") or "(empty body)"


def raise_for_answer(answer: PaidResponse) -> None:
    """Raise PaymentRefused for a 402, RequestFailed for any other non-2xx answer.

        >>> raise_for_answer(await client.post(url, data=body))
    """
    if answer.status == 402:
        required = answer.required
        code = required.error if required else None
        note = answer.recovery_refused
        text = error_text(answer.body) + (
            f"; the server's corrective state was not adopted: {note}" if note else "")
        raise PaymentRefused(code, text, required)
    if not 200 <= answer.status < 300:
        raise RequestFailed(answer.status, error_code(answer.body), error_text(answer.body))


def classification_of(answer: PaidResponse, name: str | None) -> Classification:
    """The typed result of a paid, settled classify answer; ReceiptInvalid when the body is
    not a classification or names another model than the receipt signs.

        >>> result = classification_of(answer, "cat.jpg")
        >>> result.animal.group, result.top.label
        ('cat', 'tiger cat')
    """
    settlement, payment = answer.settlement, answer.payment
    assert settlement is not None and settlement.extra is not None and payment is not None
    receipt = settlement.extra.receipt
    assert receipt is not None  # require_receipt=True made settle check it
    cid = payment.channel_id
    try:
        data = answer.json()
        model = data["model"]
        result = data["results"][0]
        animal = AnimalAnswer(str(result["animal"]["group"]), float(result["animal"]["probability"]),
                              str(result["animal"]["status"]))
        preds = tuple(
            Prediction(str(p["label"]), int(p["index"]), float(p["probability"]), str(p["group"]))
            for p in result["predictions"]
        )
        version = str(model["version"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ReceiptInvalid(cid, f"the paid answer is not a classification ({exc!r})") from None
    if bytes.fromhex(version.removeprefix("0x")) != receipt.receipt.model_version:
        raise ReceiptInvalid(cid, f"the answer names model {version} but the receipt signs "
                                  f"0x{receipt.receipt.model_version.hex()}")
    cs = settlement.extra.channel_state
    assert cs is not None and settlement.extra.charged_amount is not None
    return Classification(
        animal=animal,
        predictions=preds,
        model_id=str(model.get("id", "")),
        model_version=version if version.startswith("0x") else "0x" + version,
        charged=settlement.extra.charged_amount,
        cumulative_charged=cs.charged_cumulative_amount or 0,
        balance=cs.balance,
        channel_id="0x" + cid.hex(),
        receipt=receipt,
        deposit_tx=settlement.transaction or None,
        deposited=payment.deposit_amount if settlement.transaction else None,
        image=name,
    )
