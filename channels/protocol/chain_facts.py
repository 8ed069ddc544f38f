"""What the chain says about a channel, as ledger inputs (`channels.protocol.ledger.apply_fact`).

Each fact carries the ABSOLUTE post-event value, so applying one twice is a no-op::

    >>> state = apply_fact(state, Deposited(new_balance=100_000))
    >>> state = apply_fact(state, Synced(balance=100_000, total_claimed=3_000))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ChainFact",
    "Claimed",
    "Deposited",
    "Refunded",
    "Synced",
    "WithdrawFinalized",
    "WithdrawInitiated",
]


@dataclass(frozen=True, slots=True)
class Deposited:
    """`Deposited(channelId, sender, amount, newBalance)`: the balance is now `new_balance`."""

    new_balance: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """`Claimed(channelId, sender, claimAmount, newTotalClaimed)`."""

    new_total_claimed: int


@dataclass(frozen=True, slots=True)
class WithdrawInitiated:
    """`WithdrawInitiated(channelId, amount, finalizeAfter)`: `requested_at` = the block time
    (finalizeAfter - withdrawDelay); `amount` None when unknown (the ledger then assumes all)."""

    requested_at: int
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class WithdrawFinalized:
    """`WithdrawFinalized`: the balance after it (read `channels(id)` or subtract the amount)."""

    new_balance: int


@dataclass(frozen=True, slots=True)
class Refunded:
    """A refund landed: the balance and refundNonce after it (spec: mirror the snapshot)."""

    new_balance: int
    refund_nonce: int
    withdraw_requested_at: int | None = None  # None: leave a pending withdrawal as it is


@dataclass(frozen=True, slots=True)
class Synced:
    """A full on-chain snapshot of `channels(id)` (cold start, facilitator answers)."""

    balance: int
    total_claimed: int
    withdraw_requested_at: int = 0
    refund_nonce: int = 0
    withdraw_amount: int | None = None  # pendingWithdrawals(id).amount when read


ChainFact = Deposited | Claimed | WithdrawInitiated | WithdrawFinalized | Refunded | Synced
