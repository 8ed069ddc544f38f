"""paychan's payment channels: the x402 `batch-settlement` scheme on EVM.

Three subpackages, one job each:

- ``channels.protocol``: the pure core (wire types, EIP-712 digests, verification, signing,
  the ledger and refunds as transitions); no I/O library is imported there.
- ``channels.provider``: the gateway's I/O around it (stores, chain client, watcher,
  settler, facilitator).
- ``channels.sdk``: the payer (its signed channel state, the async and sync clients).

The names most callers need are here::

    >>> import channels
    >>> async with channels.PaymentClient.from_key(key, "payer.sqlite", base_url=url) as c:
    ...     result = await c.classify("cat.jpg")
    >>> channels.recover_signer(channels.voucher_digest(chain_id, contract, cid, 1000), sig)

The SDK and provider names load on first use: ``import channels`` costs neither aiohttp
nor web3.
"""

from __future__ import annotations

import importlib
from typing import Any

from .protocol import (
    ChannelConfig,
    ErrorCode,
    PaymentError,
    PaymentRequirements,
    SignedReceipt,
    Signer,
    encode_payment_signature,
    parse_payment_required,
    parse_payment_response,
    parse_payment_signature,
    recover_signer,
    verify_receipt,
    voucher_digest,
)

_SDK = (
    "ClientError",
    "Classification",
    "GatewayUnreachable",
    "InputError",
    "Payer",
    "PaymentClient",
    "PaymentRefused",
    "Prediction",
    "ReceiptInvalid",
    "RequestFailed",
    "SyncPaymentClient",
)

__all__ = [
    "ChannelConfig",
    "ErrorCode",
    "PaymentError",
    "PaymentRequirements",
    "SignedReceipt",
    "Signer",
    *_SDK,
    "encode_payment_signature",
    "parse_payment_required",
    "parse_payment_response",
    "parse_payment_signature",
    "protocol",
    "provider",
    "recover_signer",
    "sdk",
    "verify_receipt",
    "voucher_digest",
]


def __getattr__(name: str) -> Any:
    if name in _SDK:
        return getattr(importlib.import_module(".sdk", __name__), name)
    if name in ("provider", "sdk"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'channels' has no attribute {name!r}")
