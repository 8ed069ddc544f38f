"""The ledger's data: one channel as the server sees it, the requests in flight on it, and
the inputs and effects of its transitions (`channels.protocol.ledger`), as frozen dataclasses::

    >>> state = ChannelState(cid, balance=100_000, charged=3_000)
    >>> state.channel_state.charged_cumulative_amount     # extra.channelState for a 402
    3000
    >>> AcceptInput(cid, ceiling=4_000, signature=sig, price=1_000, request_id="r1", now=t)
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from .errors import ErrorCode
from .payloads import MIN_WITHDRAW_DELAY, ChannelConfig
from .snapshots import ChannelStateSnapshot, VoucherStateSnapshot

__all__ = [
    "AcceptInput",
    "ChannelState",
    "Charge",
    "ClaimTarget",
    "LedgerPolicy",
    "PendingSpend",
    "Rejection",
    "Reservation",
]

# ChannelState.reserved runs on every request: a C-level getter, not a genexpr.
_AMOUNT = attrgetter("amount")


@dataclass(frozen=True, slots=True)
class LedgerPolicy:
    """Server-side knobs of the ledger.

    >>> LedgerPolicy(reservation_timeout_s=120, withdraw_margin_s=300, max_in_flight=64)
    """

    reservation_timeout_s: float = 120.0
    withdraw_margin_s: float = 300.0
    max_in_flight: int = 64
    spend_timeout_s: float = 900.0  # how long a refund in flight blocks the channel at most


@dataclass(frozen=True, slots=True)
class PendingSpend:
    """An on-chain transaction that takes money out of the channel (a cooperative refund) has
    been decided and may be in flight. While it is live the channel accepts no voucher: the
    amounts it was built from (`claim_total` claimed first, `amount` returned to the payer)
    must not move under it, or the charges made meanwhile could never be claimed.

    It ends when a chain fact shows `refundNonce > nonce` (the refund landed, whoever reports
    it), when the gateway learns the transaction failed (`channels.protocol.spending.end_spend`), or at
    `expires_at` (a crashed gateway's lock; by then the transaction was mined or dropped).
    """

    kind: str  # "refund"
    nonce: int  # the refundNonce the transaction uses
    claim_total: int  # totalClaimed it sets first (every charge so far)
    amount: int  # what it returns to the payer
    expires_at: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request in flight: `amount` (its price) is held until commit, release or expiry."""

    request_id: str
    channel_id: bytes
    amount: int
    ceiling: int
    expires_at: float
    deposit_amount: int = 0


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One channel as the server sees it (the spec's per-channel state + reservations)."""

    channel_id: bytes
    balance: int = 0
    total_claimed: int = 0
    withdraw_requested_at: int = 0
    refund_nonce: int = 0
    charged: int = 0  # chargedCumulativeAmount
    signed_max_claimable: int = 0
    signature: bytes = b""
    reservations: tuple[Reservation, ...] = ()
    unclaimed_since: float | None = None  # when the oldest charge not yet claimed was made
    withdraw_delay: int = MIN_WITHDRAW_DELAY
    config: ChannelConfig | None = None
    withdraw_amount: int | None = None  # of the pending withdrawal; None: unknown (or none)
    spend: PendingSpend | None = None  # a refund decided and maybe in flight (see PendingSpend)

    def spending(self, now: float) -> bool:
        """Whether a refund of this channel is being submitted on chain at `now`."""
        return self.spend is not None and self.spend.expires_at > now

    @property
    def reserved(self) -> int:
        return sum(map(_AMOUNT, self.reservations))

    @property
    def claimable(self) -> int:
        """What a claim can still bring on chain: charged, capped by the balance."""
        return min(self.charged, self.balance)

    @property
    def unclaimed(self) -> int:
        return max(0, self.claimable - self.total_claimed)

    @property
    def withdraw_deadline(self) -> int | None:
        """Chain time after which the payer can finalize the withdrawal (None: none pending)."""
        if not self.withdraw_requested_at:
            return None
        return self.withdraw_requested_at + self.withdraw_delay

    @property
    def channel_state(self) -> ChannelStateSnapshot:
        """`extra.channelState` (with chargedCumulativeAmount) for 402s and PAYMENT-RESPONSE."""
        return ChannelStateSnapshot(
            self.channel_id,
            self.balance,
            self.total_claimed,
            self.withdraw_requested_at,
            self.refund_nonce,
            self.charged,
        )

    @property
    def voucher_state(self) -> VoucherStateSnapshot | None:
        """`extra.voucherState`: the highest voucher the payer signed (None before the first)."""
        if not self.signature:
            return None
        return VoucherStateSnapshot(self.signed_max_claimable, self.signature)


@dataclass(frozen=True, slots=True)
class AcceptInput:
    """A verified voucher (signature already checked) asking to reserve `price`.

    `deposit_amount` > 0 for a deposit payload whose deposit is not on chain yet; `config`
    lets a new channel record keep its ChannelConfig (payer, withdrawDelay, ...).
    """

    channel_id: bytes
    ceiling: int
    signature: bytes
    price: int
    request_id: str
    now: float
    deposit_amount: int = 0
    config: ChannelConfig | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a voucher was refused: the spec's `code`, a message, and the channel as it stands."""

    code: ErrorCode
    message: str
    state: ChannelState | None = None

    @property
    def channel_state(self) -> ChannelStateSnapshot | None:
        return self.state.channel_state if self.state is not None else None

    @property
    def voucher_state(self) -> VoucherStateSnapshot | None:
        return self.state.voucher_state if self.state is not None else None


@dataclass(frozen=True, slots=True)
class Charge:
    """The effect of commit: `amount` charged now, `cumulative` = chargedCumulativeAmount after."""

    request_id: str
    channel_id: bytes
    amount: int
    cumulative: int
    channel_state: ChannelStateSnapshot  # after the charge: PAYMENT-RESPONSE extra.channelState


@dataclass(frozen=True, slots=True)
class ClaimTarget:
    """What the settler claims for one channel: a ClaimEntry(channel_id, max_claimable,
    total_claimed) signed by the payer's `signature` over `max_claimable`."""

    channel_id: bytes
    config: ChannelConfig | None
    max_claimable: int
    signature: bytes
    total_claimed: int  # the new on-chain totalClaimed to submit (= claimable)
    unclaimed: int  # total_claimed - on-chain totalClaimed now
    unclaimed_since: float | None
    withdraw_deadline: int | None

