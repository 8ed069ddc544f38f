"""Our signed EIP-712 receipt for every paid answer (``PAYMENT-RESPONSE`` ``extra.receipt``).

A receipt binds the channel, what was asked (``requestDigest`` = sha256 of the request
body), what was answered (``resultDigest`` = sha256 of the response body), the model version
that answered (its 32-byte content hash), the charge and the channel's cumulative charge.
The receiver-authorizer key signs it under the domain
``{name: "paychan Receipt", version: "1", chainId, verifyingContract: settlement}``::

    signer = ReceiptSigner(key, chain_id=31337, settlement=CANONICAL_SETTLEMENT)
    receipt_json = signer.sign(channel_id, request_body, response_body, version, 1000, 5000)

A payer checks it with ``channels.verify.verify_receipt``.
"""

from __future__ import annotations

import hashlib

from channels.eip712 import receipt_digest
from channels.signing import Signer
from channels.wire import Receipt

__all__ = ["ReceiptSigner", "request_digest", "result_digest"]


def request_digest(body: bytes) -> bytes:
    """``requestDigest``: sha256 of the exact request body bytes (hardware-accelerated)."""
    return hashlib.sha256(body).digest()


def result_digest(body: bytes) -> bytes:
    """``resultDigest``: sha256 of the exact response body bytes the client receives."""
    return hashlib.sha256(body).digest()


class ReceiptSigner:
    """Signs receipts with the receiver-authorizer key; ``sign`` returns the receipt JSON text."""

    __slots__ = ("_signer", "address", "chain_id", "settlement")

    def __init__(self, signer: Signer, *, chain_id: int, settlement: str) -> None:
        self._signer = signer
        self.chain_id = chain_id
        self.settlement = settlement
        self.address = signer.address

    def sign(
        self,
        channel_id: bytes,
        request_body: bytes,
        response_body: bytes,
        model_version: bytes,
        charged: int,
        cumulative: int,
    ) -> str:
        """The signed receipt as a compact JSON object (text, ready to splice into a header)."""
        receipt = Receipt(
            channel_id, request_digest(request_body), result_digest(response_body),
            model_version, charged, cumulative,
        )
        signature = self._signer.sign_digest(receipt_digest(self.chain_id, self.settlement, receipt))
        # Hand-formatted: every value is hex or decimal, so no escaping is ever needed, and this
        # is several microseconds cheaper than building a dict and json.dumps on every request.
        return (
            '{"channelId":"0x' + channel_id.hex()
            + '","requestDigest":"0x' + receipt.request_digest.hex()
            + '","resultDigest":"0x' + receipt.result_digest.hex()
            + '","modelVersion":"0x' + model_version.hex()
            + '","chargedAmount":"' + str(charged)
            + '","cumulativeCharged":"' + str(cumulative)
            + '","signature":"0x' + signature.hex() + '"}'
        )
