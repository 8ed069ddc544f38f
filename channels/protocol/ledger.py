"""The channel ledger: a pure state machine per channel (no I/O, no clock: `now` is an input).

Every transition is a function `(state, input) -> (new state, effect)` over frozen dataclasses,
so each rule is unit-testable and the stores (SQLite, Redis) run exactly this code:

    >>> st, res = accept(None, AcceptInput(cid, ceiling=1000, signature=sig, price=1000,
    ...                  request_id="r1", now=t, deposit_amount=100_000, config=cfg))
    >>> st = apply_fact(st, Deposited(new_balance=100_000))
    >>> st, charge = commit(st, "r1", actual=1000, now=t + 1)       # charge.cumulative == 1000

State per channel is the spec's server state (balance, totalClaimed, withdrawRequestedAt,
refundNonce, chargedCumulativeAmount, the highest signed voucher and its signature) plus the live
reservations of requests in flight.

Acceptance rules for a voucher ceiling C with `charged` K, reserved R and this request's price P:

* ``C <= totalClaimed``                  -> CUMULATIVE_BELOW_CLAIMED (must exceed what is on chain)
* ``C > balance (+ deposit amount)``     -> CUMULATIVE_EXCEEDS_BALANCE
* ``C < K + P``                          -> CUMULATIVE_AMOUNT_MISMATCH, the corrective 402
  (`Rejection.channel_state` / `.voucher_state` carry chargedCumulativeAmount and the proof)
* ``K + P <= C < K + R + P``             -> CHANNEL_BUSY: the voucher is right for a client that
  does not know about requests still in flight on the channel; it should retry shortly (a
  corrective 402 would tell it nothing new, K has not moved).
* ``C >= K + R + P``                     -> accepted. Equality is what a standard client sends.
  A ceiling ABOVE K + R + P is accepted too (a client with several requests in flight signs
  ahead): the excess is headroom, never a charge. The server only ever claims `charged`
  (`claim_target`), the corrective 402 always reports `charged`, never the ceiling, and the
  stored voucher is the highest one signed, which covers every charge.
* a pending withdrawal of a KNOWN amount W (the `WithdrawInitiated` event carries it): the
  balance a ceiling is checked against is ``balance - W``, so whatever is accepted stays
  claimable even if the withdrawal finalizes before the settler claims. Of an UNKNOWN amount
  (a bare withdrawRequestedAt): no acceptance once `now` is within `policy.withdraw_margin_s`
  of its deadline (withdrawRequestedAt + withdrawDelay) -> CUMULATIVE_EXCEEDS_BALANCE.
* ``len(reservations) >= policy.max_in_flight`` -> CHANNEL_BUSY.

Invariants (tests/protocol/test_ledger.py checks them under random interleavings):

* ``charged + reserved <= signed_max_claimable`` always, so ``charged <= signed_max_claimable``;
* ``signed_max_claimable <= balance + deposit_amount`` holds when a voucher is accepted, so
  ``signed_max_claimable <= balance`` holds unless (a) a chain fact LOWERED the balance since
  (WithdrawFinalized, Refunded, a Synced snapshot) or (b) the deposit a deposit voucher came with
  never landed (the reservation is released; the voucher stays the highest signed). Then ``claimable = min(charged, balance)`` is what the settler can still claim
  and ``charged - claimable`` is forfeited; no new voucher above the new balance is accepted;
* ``charged`` never decreases; it equals the sum of committed amounts (plus, only after server
  state loss, an adopted on-chain totalClaimed above it: `Claimed`/`Synced` set
  ``charged = max(charged, totalClaimed)``, the spec's recovery baseline);
* ``signed_max_claimable`` never decreases.
"""

from __future__ import annotations

from dataclasses import replace
from operator import attrgetter

from .chain_facts import (
    ChainFact,
    Claimed,
    Deposited,
    Refunded,
    Synced,
    WithdrawFinalized,
    WithdrawInitiated,
)
from .channel_state import (
    AcceptInput,
    ChannelState,
    Charge,
    ClaimTarget,
    LedgerPolicy,
    Rejection,
    Reservation,
)
from .errors import ErrorCode
from .payloads import MIN_WITHDRAW_DELAY, ChannelConfig

__all__ = [
    "LedgerError",
    "UnknownReservation",
    "accept",
    "apply_fact",
    "claim_target",
    "commit",
    "expire",
    "new_channel",
    "release",
    "with_config",
]


class LedgerError(ValueError):
    """A caller bug (not a payment problem): a bad amount or a duplicate request id."""


class UnknownReservation(LedgerError, KeyError):
    """commit() of a reservation that is not live: it expired, was released or committed."""


# The per-request transitions (accept, commit, release) scan a channel's reservations (dozens
# when a client keeps many requests in flight) through these C-level getters, not genexprs.
_EXPIRES_AT = attrgetter("expires_at")
_REQUEST_ID = attrgetter("request_id")


def _index(reservations: tuple[Reservation, ...], request_id: str) -> int:
    """Position of the reservation of `request_id`, -1 when none."""
    try:
        return list(map(_REQUEST_ID, reservations)).index(request_id)
    except ValueError:
        return -1


def _evolve(
    s: ChannelState,
    *,
    charged: int,
    signed_max_claimable: int,
    signature: bytes,
    reservations: tuple[Reservation, ...],
    unclaimed_since: float | None,
) -> ChannelState:
    """`dataclasses.replace` of the fields a request changes, at a third of its cost (it
    runs twice per paid request; every other transition uses `replace`)."""
    return ChannelState(
        s.channel_id, s.balance, s.total_claimed, s.withdraw_requested_at, s.refund_nonce, charged,
        signed_max_claimable, signature, reservations, unclaimed_since, s.withdraw_delay, s.config,
        s.withdraw_amount, s.spend,
    )



# --- transitions ------------------------------------------------------------------------------


def new_channel(
    channel_id: bytes,
    config: ChannelConfig | None = None,
    *,
    balance: int = 0,
    total_claimed: int = 0,
) -> ChannelState:
    """A fresh record; charged starts at on-chain totalClaimed (the spec's recovery baseline)."""
    delay = config.withdraw_delay if config is not None else MIN_WITHDRAW_DELAY
    return ChannelState(
        channel_id,
        balance=balance,
        total_claimed=total_claimed,
        charged=total_claimed,
        withdraw_delay=delay,
        config=config,
    )


def with_config(state: ChannelState, config: ChannelConfig | None) -> ChannelState:
    """Record the channel's config (and its withdrawDelay) if the record has none yet."""
    if config is None or state.config is not None:
        return state
    return replace(state, config=config, withdraw_delay=config.withdraw_delay)


def accept(
    state: ChannelState | None, inp: AcceptInput, policy: LedgerPolicy = LedgerPolicy()
) -> tuple[ChannelState, Reservation | Rejection]:
    """Reserve `inp.price` on the channel, or say why not (see the module docstring's rules).

    Expired reservations are dropped first. On rejection the returned state is the input
    state (after that expiry), so a store need not write anything but the expiry.
    """
    if inp.price < 0 or inp.ceiling < 0 or inp.deposit_amount < 0:
        raise LedgerError("price, ceiling and deposit_amount must be >= 0")
    state = (
        new_channel(inp.channel_id, inp.config) if state is None else with_config(state, inp.config)
    )
    state, _ = expire(state, inp.now)
    if _index(state.reservations, inp.request_id) >= 0:
        raise LedgerError(
            f"request_id {inp.request_id!r} already holds a reservation: use a unique id"
        )

    def no(code: ErrorCode, message: str) -> tuple[ChannelState, Rejection]:
        return state, Rejection(code, message, state)

    ceiling, balance = inp.ceiling, state.balance + inp.deposit_amount
    if balance == 0:
        return no(
            ErrorCode.CHANNEL_NOT_FOUND,
            "no channel with a positive balance: send a deposit payload",
        )
    if state.spending(inp.now):
        return no(
            ErrorCode.CHANNEL_BUSY,
            "a refund of this channel is being submitted on chain: retry when it lands "
            "(a full refund closes the channel: then deposit again)",
        )
    deadline = state.withdraw_deadline
    if deadline is not None and state.withdraw_amount is not None:
        balance -= state.withdraw_amount  # what stays in the channel when it finalizes
    elif deadline is not None and inp.now >= deadline - policy.withdraw_margin_s:
        return no(
            ErrorCode.CUMULATIVE_EXCEEDS_BALANCE,
            f"a withdrawal finalizes at {deadline}: the channel takes no new charges; open a new one",
        )
    if ceiling <= state.total_claimed:
        return no(
            ErrorCode.CUMULATIVE_BELOW_CLAIMED,
            f"maxClaimableAmount {ceiling} must exceed on-chain totalClaimed {state.total_claimed}",
        )
    if ceiling > balance:
        return no(
            ErrorCode.CUMULATIVE_EXCEEDS_BALANCE,
            f"maxClaimableAmount {ceiling} exceeds the balance {balance}"
            + (" left after the pending withdrawal" if deadline is not None else "")
            + ": top up with a deposit payload",
        )
    need = state.charged + inp.price
    if ceiling < need:
        return no(
            ErrorCode.CUMULATIVE_AMOUNT_MISMATCH,
            f"maxClaimableAmount {ceiling} is below chargedCumulativeAmount {state.charged} + price "
            f"{inp.price} = {need}: sign {need}",
        )
    reserved = state.reserved
    if ceiling < need + reserved or len(state.reservations) >= policy.max_in_flight:
        return no(
            ErrorCode.CHANNEL_BUSY,
            f"{len(state.reservations)} request(s) holding {reserved} are in flight on this channel: "
            f"retry shortly or sign {need + reserved}",
        )
    res = Reservation(
        inp.request_id,
        state.channel_id,
        inp.price,
        ceiling,
        inp.now + policy.reservation_timeout_s,
        inp.deposit_amount,
    )
    higher = ceiling > state.signed_max_claimable
    return _evolve(
        state,
        charged=state.charged,
        signed_max_claimable=ceiling if higher else state.signed_max_claimable,
        signature=inp.signature if higher else state.signature,
        reservations=state.reservations + (res,),
        unclaimed_since=state.unclaimed_since,
    ), res


def commit(
    state: ChannelState, request_id: str, actual: int, now: float
) -> tuple[ChannelState, Charge]:
    """Charge `actual` (0 <= actual <= the reserved price) and drop the reservation.

    Raises UnknownReservation when it is not live (expired, released or already committed):
    the caller must not report a charge then.
    """
    held = state.reservations
    i = _index(held, request_id)
    if i < 0:
        raise UnknownReservation(
            f"no live reservation {request_id!r} on channel 0x{state.channel_id.hex()}"
        )
    res = held[i]
    if not 0 <= actual <= res.amount:
        raise LedgerError(f"actual {actual} must be within 0..{res.amount} (the reserved price)")
    charged = state.charged + actual
    since = state.unclaimed_since
    if since is None and actual > 0 and charged > state.total_claimed:
        since = now
    new = _evolve(
        state,
        charged=charged,
        signed_max_claimable=state.signed_max_claimable,
        signature=state.signature,
        reservations=held[:i] + held[i + 1 :],
        unclaimed_since=since,
    )
    return new, Charge(request_id, state.channel_id, actual, charged, new.channel_state)


def release(state: ChannelState, request_id: str) -> tuple[ChannelState, Reservation | None]:
    """Drop a reservation without charging (idempotent: None when it was not live)."""
    held = state.reservations
    i = _index(held, request_id)
    if i < 0:
        return state, None
    return replace(state, reservations=held[:i] + held[i + 1 :]), held[i]


def expire(state: ChannelState, now: float) -> tuple[ChannelState, tuple[Reservation, ...]]:
    """Drop reservations whose `expires_at <= now`; returns the expired ones."""
    if not state.reservations or min(map(_EXPIRES_AT, state.reservations)) > now:
        return state, ()
    gone = tuple(r for r in state.reservations if r.expires_at <= now)
    if not gone:
        return state, ()
    return replace(
        state, reservations=tuple(r for r in state.reservations if r.expires_at > now)
    ), gone


def _claimed(state: ChannelState, total: int) -> ChannelState:
    total = max(state.total_claimed, total)
    charged = max(state.charged, total)  # claims above our charge: state was lost; adopt them
    since = None if total >= charged else state.unclaimed_since
    return replace(state, total_claimed=total, charged=charged, unclaimed_since=since)


def apply_fact(state: ChannelState, fact: ChainFact) -> ChannelState:
    """Mirror one on-chain fact. Facts carry absolute values, so replays change nothing.

    A fact whose refundNonce passed a pending refund's nonce ends that refund's lock: the
    refund landed, and the balance the fact carries is the one after it.
    """
    state = _mirror(state, fact)
    spend = state.spend
    if spend is not None and state.refund_nonce > spend.nonce:
        return replace(state, spend=None)
    return state


def _mirror(state: ChannelState, fact: ChainFact) -> ChannelState:
    match fact:
        case Deposited(new_balance=b):
            return replace(state, balance=b)
        case Claimed(new_total_claimed=t):
            return _claimed(state, t)
        case WithdrawInitiated(requested_at=t, amount=a):
            return replace(state, withdraw_requested_at=t, withdraw_amount=a)
        case WithdrawFinalized(new_balance=b):
            return replace(state, balance=b, withdraw_requested_at=0, withdraw_amount=None)
        case Refunded(refund_nonce=n) | Synced(refund_nonce=n) if n < state.refund_nonce:
            # Read before a refund we already know landed: its balance is the one before
            # that refund, too high; only its (monotone) totalClaimed still says something.
            return _claimed(state, fact.total_claimed) if isinstance(fact, Synced) else state
        case Refunded(new_balance=b, refund_nonce=n, withdraw_requested_at=w):
            state = replace(state, balance=b, refund_nonce=max(state.refund_nonce, n))
            if w is None:
                return state
            return replace(
                state, withdraw_requested_at=w, withdraw_amount=state.withdraw_amount if w else None
            )
        case Synced(
            balance=b, total_claimed=t, withdraw_requested_at=w, refund_nonce=n, withdraw_amount=a
        ):
            state = replace(
                state,
                balance=b,
                withdraw_requested_at=w,
                withdraw_amount=a if w else None,
                refund_nonce=max(state.refund_nonce, n),
            )
            return _claimed(state, t)
    raise LedgerError(f"unknown chain fact {fact!r}")


def claim_target(state: ChannelState) -> ClaimTarget | None:
    """What to claim now for this channel (None: nothing unclaimed or no voucher covers it)."""
    unclaimed = state.unclaimed
    if unclaimed <= 0 or state.signed_max_claimable < state.claimable:
        return None
    return ClaimTarget(
        state.channel_id,
        state.config,
        state.signed_max_claimable,
        state.signature,
        state.claimable,
        unclaimed,
        state.unclaimed_since,
        state.withdraw_deadline,
    )
