"""The payer SDK's value types: the payer's records and what its calls return.

    >>> rec = payer.channel(cid)                       # ChannelRecord: what the payer proved
    >>> payment = payer.pay(offer)                     # Payment: one signed payment in flight
    >>> result = await client.classify("cat.jpg")      # Classification: animal, then Predictions
    >>> result.animal.group, result.animal.status      # ("cat", "animal"): summed over cat classes
    >>> answer = await client.post(url, data=body)     # PaidResponse: any x402 answer
    >>> status = await client.withdraw()               # WithdrawStatus
    >>> rebuilt = await client.sync()                  # SyncResult
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol import (
    ChannelConfig,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    SettleResponse,
    SignedReceipt,
    encode_payment_signature,
)

__all__ = [
    "AnimalAnswer",
    "ChannelRecord",
    "Classification",
    "PaidResponse",
    "Payment",
    "Prediction",
    "SyncResult",
    "WithdrawStatus",
]


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """The payer's durable view of one channel (amounts in token base units)."""

    channel_id: bytes
    chain_id: int
    settlement: bytes
    config: ChannelConfig
    signed_floor: int  # no ceiling is signed below this (raised by every voucher signed)
    signed_max: int  # the highest ceiling ever signed: the payer's exposure on this channel
    signature: bytes | None  # the voucher signature at signed_floor
    charged: int  # cumulative charge the server proved (responses and receipts verified)
    balance: int  # channel balance as last known (deposits and the server's snapshot)
    halted: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """One signed payment, in flight until `settle`, `release` or `recover` resolves it."""

    id: int
    channel_id: bytes
    requirements: PaymentRequirements
    payload: PaymentPayload
    price: int
    ceiling: int
    deposit_amount: int | None = None

    @property
    def header(self) -> str:
        """The `PAYMENT-SIGNATURE` header value."""
        return encode_payment_signature(self.payload)


@dataclass(frozen=True, slots=True)
class PaidResponse:
    """An HTTP answer with what it cost: `payment` None when nothing was paid."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    payment: Payment | None = None
    settlement: SettleResponse | None = None
    required: PaymentRequired | None = None  # the 402's terms, when the answer is a 402
    recovery_refused: str | None = None  # why a corrective 402's state was not adopted

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One of the top-k ImageNet classes: ``Prediction("tiger cat", 282, 0.39, "cat")``."""

    label: str
    index: int
    probability: float
    group: str  # the class's animal group: dog, cat, other_mammal, ..., not_animal

    @property
    def score(self) -> float:
        return self.probability

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "group": self.group}


@dataclass(frozen=True, slots=True)
class AnimalAnswer:
    """What animal the image shows: ``AnimalAnswer("cat", 0.92, "animal")``.

    ``probability`` sums every class of ``group``; ``status`` is ``animal``, ``unsure``
    (``group`` is only the best guess) or ``not_animal`` (``group`` is ``not_animal``).
    The gateway's thresholds are in docs/protocol.md.
    """

    group: str  # dog, cat, other_mammal, bird, fish, reptile, amphibian, invertebrate, not_animal
    probability: float
    status: str

    @property
    def is_animal(self) -> bool:
        """True when the gateway is sure the image shows an animal (of ``group``)."""
        return self.status == "animal"

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "probability": self.probability, "status": self.status}


@dataclass(frozen=True, slots=True)
class Classification:
    """A paid, verified classification of one image (amounts in token base units):
    ``animal`` first (the answer to "what animal is this?"), then the top-k ``predictions``."""

    animal: AnimalAnswer
    predictions: tuple[Prediction, ...]
    model_id: str
    model_version: str  # 0x + the 32-byte content hash of the weights that answered
    charged: int  # this image's charge
    cumulative_charged: int  # the channel's total charge so far
    balance: int  # the channel's balance as the gateway reports it
    channel_id: str  # 0x-hex
    receipt: SignedReceipt  # verified: signer, charge, request/answer digests, model version
    deposit_tx: str | None = None  # the deposit transaction when this request opened/topped up
    deposited: int | None = None
    image: str | None = None  # the file name, when classified from a path
    receipt_verified: bool = field(default=True)  # always True: an unverified one raises

    @property
    def top(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]

    @property
    def remaining(self) -> int:
        """What the channel's balance still covers (balance minus everything charged)."""
        return max(self.balance - self.cumulative_charged, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "animal": self.animal.to_json(),
            "predictions": [p.to_json() for p in self.predictions],
            "model": {"id": self.model_id, "version": self.model_version},
            "charged": str(self.charged),
            "cumulativeCharged": str(self.cumulative_charged),
            "balance": str(self.balance),
            "channelId": self.channel_id,
            "depositTransaction": self.deposit_tx,
            "deposited": None if self.deposited is None else str(self.deposited),
            "receipt": self.receipt.to_json(),
            "receiptVerified": self.receipt_verified,
        }


@dataclass(frozen=True, slots=True)
class WithdrawStatus:
    """A timed withdrawal: started (`ready_at` is when it may be finalized) or finalized."""

    channel_id: str
    tx_hash: str
    amount: int  # requested (initiate) or transferred to the payer (finalize)
    ready_at: int | None  # unix time the delay ends (chain clock); None once finalized
    finalized: bool
    balance: int  # the channel's on-chain balance after the transaction

    def to_json(self) -> dict[str, Any]:
        return {"channelId": self.channel_id, "transaction": self.tx_hash,
                "amount": str(self.amount), "readyAt": self.ready_at,
                "finalized": self.finalized, "balance": str(self.balance)}


@dataclass(frozen=True, slots=True)
class SyncResult:
    """A channel rebuilt by `PaymentClient.sync` (amounts in token base units).

    `source` says what the record now rests on: ``gateway`` (the gateway's charged total,
    proven by the payer's own voucher), ``gateway+chain`` (the same, floored and funded by
    the chain's figures), or ``chain`` (no proof at the gateway: on-chain totalClaimed, the
    spec's cold-start baseline). `before` is the record as it was (None: the file had none).
    """

    channel_id: str
    source: str
    record: ChannelRecord
    before: ChannelRecord | None
    gateway: dict[str, Any] | None  # GET /v1/channels/ID as answered (None: unknown there)
    chain: dict[str, Any] | None  # the chain's figures (None: no rpc_url)

    def to_json(self) -> dict[str, Any]:
        rec, before = self.record, self.before
        return {
            "channelId": self.channel_id,
            "source": self.source,
            "balance": str(rec.balance),
            "charged": str(rec.charged),
            "remaining": str(max(rec.balance - rec.charged, 0)),
            "signedMax": str(rec.signed_max),
            "before": None if before is None else {
                "balance": str(before.balance), "charged": str(before.charged),
                "signedMax": str(before.signed_max)},
            "gateway": self.gateway,
            "chain": self.chain,
        }
