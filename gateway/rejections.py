"""The payment gate's refusals: the 402 of a refused payment, and the 503 of an unreachable chain.

A refusal names the spec's error code; the codes a payer recovers from by adopting our state
carry the corrective ``channelState`` / ``voucherState`` in ``accepts[0].extra``; a busy
channel carries ``Retry-After``::

    return reject(terms, metrics, config.retry_after_s, error, units, request, rejection)
    raise chain_unavailable(config)
"""

from __future__ import annotations

from aiohttp import web

from channels.protocol import ErrorCode, PaymentError, Rejection
from gateway.config import GatewayConfig
from gateway.errors import api_error
from gateway.metrics import GatewayMetrics
from gateway.terms import Terms

__all__ = ["CORRECTIVE", "chain_unavailable", "reject", "resource_url", "store_unavailable"]

# The rejections whose 402 carries the corrective channelState / voucherState: the spec's
# cumulative mismatch, and (its "Recovery After State Loss") a ceiling at or below what is
# claimed on chain, which is what a payer with a new or stale state file sends after a claim.
CORRECTIVE = frozenset({ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, ErrorCode.CUMULATIVE_BELOW_CLAIMED})


def reject(
    terms: Terms,
    metrics: GatewayMetrics,
    retry_after_s: int,
    error: PaymentError,
    units: int,
    request: web.Request,
    rejection: Rejection | None = None,
) -> web.Response:
    """The 402 for a refused payment, counted by code; a corrective one for `CORRECTIVE`
    codes when the ledger's ``rejection`` says how the channel stands."""
    metrics.payment_errors.inc((str(error.code),))
    if rejection is not None and error.code in CORRECTIVE:
        response = terms.rejection(
            error, units, resource_url(request),
            channel_state=rejection.channel_state, voucher_state=rejection.voucher_state,
        )
    else:
        response = terms.rejection(error, units, resource_url(request))
    if error.code == ErrorCode.CHANNEL_BUSY:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def chain_unavailable(config: GatewayConfig, why: str = "", *, retry_after_s: int | None = None,
                      ) -> web.HTTPException:
    """The 503 for a chain node that cannot be reached (nothing is charged); ``why`` says
    what needed it."""
    return api_error(503, "chain_unavailable", why or "the chain node cannot be reached; retry shortly",
                     retry_after=config.retry_after_s if retry_after_s is None else retry_after_s)


def store_unavailable(config: GatewayConfig) -> web.HTTPException:
    """The 503 for a ledger store that cannot be reached (Redis down or restarting); a resend
    with the same Idempotency-Key is safe (a charge that did land is replayed, not repeated)."""
    return api_error(503, "store_unavailable", "the ledger store (Redis) cannot be reached; "
                     "retry shortly with the same Idempotency-Key (an answer already charged "
                     "is replayed, never charged twice)",
                     retry_after=config.retry_after_s)


def resource_url(request: web.Request) -> str:
    """The paid resource's URL as the 402's ``resource.url`` names it."""
    return f"{request.scheme}://{request.host}{request.path}"
