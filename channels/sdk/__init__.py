"""The payer SDK: the payer's signed channel state and the clients that pay over HTTP.

    >>> async with PaymentClient.from_key(key, "payer.sqlite", base_url=url) as client:
    ...     result = await client.classify("cat.jpg")
"""

from .client import (
    ChainError,
    Classification,
    ClientError,
    GatewayUnreachable,
    InputError,
    PaidResponse,
    PaymentClient,
    PaymentRefused,
    Prediction,
    ReceiptInvalid,
    RecoveryRefused,
    RequestFailed,
    SyncPaymentClient,
    SyncResult,
    WithdrawStatus,
)
from .payer import ChannelHalted, ChannelRecord, Payer, Payment

__all__ = [
    "ChainError",
    "ChannelHalted",
    "ChannelRecord",
    "Classification",
    "ClientError",
    "GatewayUnreachable",
    "InputError",
    "PaidResponse",
    "Payer",
    "Payment",
    "PaymentClient",
    "PaymentRefused",
    "Prediction",
    "ReceiptInvalid",
    "RecoveryRefused",
    "RequestFailed",
    "SyncPaymentClient",
    "SyncResult",
    "WithdrawStatus",
]
