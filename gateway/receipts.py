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

from channels.eip712 import (
    RECEIPT_DOMAIN_NAME,
    RECEIPT_DOMAIN_VERSION,
    RECEIPT_TYPE,
    domain_separator,
    keccak256,
)
from channels.signing import Signer

# Precomputed once: the type hash, and (per signer) "\x19\x01" ++ the domain separator.
_RECEIPT_TYPEHASH = keccak256(RECEIPT_TYPE.encode())
_PAD16 = bytes(16)

__all__ = ["ReceiptSigner", "request_digest", "result_digest"]


def request_digest(body: bytes) -> bytes:
    """``requestDigest``: sha256 of the exact request body bytes (hardware-accelerated)."""
    return hashlib.sha256(body).digest()


def result_digest(body: bytes) -> bytes:
    """``resultDigest``: sha256 of the exact response body bytes the client receives."""
    return hashlib.sha256(body).digest()


class ReceiptSigner:
    """Signs receipts with the receiver-authorizer key; ``sign`` returns the receipt JSON text."""

    __slots__ = ("_prefix", "_signer", "address", "chain_id", "settlement")

    def __init__(self, signer: Signer, *, chain_id: int, settlement: str) -> None:
        self._signer = signer
        self.chain_id = chain_id
        self.settlement = settlement
        self.address = signer.address
        separator = domain_separator(chain_id, settlement, RECEIPT_DOMAIN_NAME, RECEIPT_DOMAIN_VERSION)
        self._prefix = b"\x19\x01" + separator

    def sign(
        self,
        channel_id: bytes,
        request_body: bytes,
        response_body: bytes,
        model_version: bytes,
        charged: int,
        cumulative: int,
    ) -> str:
        """The signed receipt as a compact JSON object (text, ready to splice into a header).

        The digest is ``channels.eip712.receipt_digest`` packed inline (the words are already
        32 bytes; amounts are uint128, so ``to_bytes(16)`` refuses anything larger).
        """
        req = hashlib.sha256(request_body).digest()
        res = hashlib.sha256(response_body).digest()
        if len(channel_id) != 32 or len(model_version) != 32:
            raise ValueError("channel_id and model_version must be 32 bytes")
        struct_hash = keccak256(
            _RECEIPT_TYPEHASH + channel_id + req + res + model_version
            + _PAD16 + charged.to_bytes(16, "big") + _PAD16 + cumulative.to_bytes(16, "big")
        )
        signature = self._signer.sign_digest(keccak256(self._prefix + struct_hash))
        # Hand-formatted: every value is hex or decimal, so no escaping is ever needed, and this
        # is several microseconds cheaper than building a dict and json.dumps on every request.
        return (
            f'{{"channelId":"0x{channel_id.hex()}","requestDigest":"0x{req.hex()}",'
            f'"resultDigest":"0x{res.hex()}","modelVersion":"0x{model_version.hex()}",'
            f'"chargedAmount":"{charged}","cumulativeCharged":"{cumulative}",'
            f'"signature":"0x{signature.hex()}"}}'
        )
