"""Refunds as ledger transitions: the split of a channel's balance, decided atomically with the
lock that keeps it true until the refund lands (pure: no I/O, no clock; `now` is an input).

A cooperative refund claims every charge and returns the rest. Its amounts are computed from
the ledger, then the transaction takes a block or more; if the channel kept accepting
vouchers meanwhile, every charge made in that window would be above the balance the refund
leaves, and could never be claimed. So deciding the refund and refusing new holds are ONE
step, run by the store like any other transition::

    >>> st, plan = begin_refund(st, requested=None, now=t, policy=policy)
    >>> if isinstance(plan, Rejection): ...      # channel_busy / refund_no_balance: say so
    >>> # submit claim(plan.claim_total) + refundWithSignature(plan.amount, plan.nonce) ...
    >>> st = apply_fact(st, Synced(...))          # refundNonce > plan.nonce: the lock ends
    >>> st, _ = end_spend(st, plan.nonce)         # or: the transaction failed, release it

`ChannelState.spend` holds the lock (see `channels.protocol.channel_state.PendingSpend` for how it ends).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .channel_state import ChannelState, LedgerPolicy, PendingSpend, Rejection
from .errors import ErrorCode
from .ledger import expire
from .payloads import ChannelConfig

__all__ = ["RefundPlan", "begin_refund", "end_spend"]


@dataclass(frozen=True, slots=True)
class RefundPlan:
    """What the refund transaction must do, decided under the lock.

    `claim_total` > `claimed_before`: claim first, with the payer's highest voucher
    (`max_claimable`, `signature`), so every charged unit stays with the provider.
    """

    channel_id: bytes
    config: ChannelConfig | None
    nonce: int
    claim_total: int
    claimed_before: int
    max_claimable: int
    signature: bytes
    amount: int

    @property
    def needs_claim(self) -> bool:
        return self.claim_total > self.claimed_before


def begin_refund(
    state: ChannelState, *, requested: int | None, now: float, policy: LedgerPolicy = LedgerPolicy()
) -> tuple[ChannelState, RefundPlan | Rejection]:
    """Decide a refund of `requested` (None: everything not charged) and lock the channel.

    Refused with CHANNEL_BUSY while a request holds a price or another refund is pending,
    with REFUND_NO_BALANCE when nothing is left to return; the state is then unchanged but
    for expired holds.
    """
    if requested is not None and requested <= 0:
        return state, Rejection(
            ErrorCode.REFUND_AMOUNT_INVALID, "payload.amount must be positive (omit it: all)", state
        )
    state, _ = expire(state, now)
    if state.spending(now):
        return state, Rejection(
            ErrorCode.CHANNEL_BUSY,
            "a refund of this channel is already being submitted on chain: retry when it lands",
            state,
        )
    if state.reservations:
        return state, Rejection(
            ErrorCode.CHANNEL_BUSY,
            f"{len(state.reservations)} request(s) in flight on this channel: retry when they end",
            state,
        )
    claim_total = state.claimable  # min(charged, balance): every charged unit is claimed first
    available = state.balance - max(claim_total, state.total_claimed)
    amount = available if requested is None else min(requested, available)
    if amount <= 0:
        return state, Rejection(ErrorCode.REFUND_NO_BALANCE, "nothing is left to refund", state)
    lock = PendingSpend(
        "refund", state.refund_nonce, claim_total, amount, now + policy.spend_timeout_s
    )
    plan = RefundPlan(
        state.channel_id,
        state.config,
        state.refund_nonce,
        claim_total,
        state.total_claimed,
        state.signed_max_claimable,
        state.signature,
        amount,
    )
    return replace(state, spend=lock), plan


def end_spend(state: ChannelState, nonce: int) -> tuple[ChannelState, bool]:
    """Release the lock of the refund at `nonce` (its transaction failed); False if none."""
    if state.spend is None or state.spend.nonce != nonce:
        return state, False
    return replace(state, spend=None), True
