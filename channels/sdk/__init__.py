"""The payer SDK: the payer's signed channel state and the clients that pay over HTTP.

Modules, one job each: `payer` (the signed channel state; its money rules are
`channels.protocol.payer_rules`), `payer_file` (its SQLite file), `signing` (vouchers and
deposit authorizations), `client` (the async `PaymentClient`) on `transport` (HTTP, resends)
and `channel_ops` (status, refund, sync, withdrawal), `onchain` (the payer's chain calls),
`samples` (`add_sample`: labelled images for retraining, signed by the payer), `sync`
(`SyncPaymentClient`), `answers` (reading HTTP answers), `inputs` (checking
arguments), `models` (value types), `errors`.

    >>> async with PaymentClient.from_key(key, "payer.sqlite", base_url=url) as client:
    ...     result = await client.classify("cat.jpg")
"""

from .client import PaymentClient
from .errors import (
    ChainError,
    ChannelHalted,
    ClientError,
    GatewayUnreachable,
    InputError,
    PaymentRefused,
    ReceiptInvalid,
    RecoveryRefused,
    RequestFailed,
)
from .inputs import load_image
from .models import (
    AnimalAnswer,
    ChannelRecord,
    Classification,
    PaidResponse,
    Payment,
    Prediction,
    SyncResult,
    WithdrawStatus,
)
from .onchain import read_onchain
from .payer import Payer
from .samples import SampleResult
from .sync import SyncPaymentClient

__all__ = [
    "AnimalAnswer",
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
    "SampleResult",
    "SyncPaymentClient",
    "SyncResult",
    "WithdrawStatus",
    "load_image",
    "read_onchain",
]
