"""Settlement-contract events as ledger facts, pure: what the watcher applies for each event.

Each fact carries the ABSOLUTE post-event value, so replaying an event changes nothing.
Some events do not say everything the ledger needs; for those the caller reads the channel
at the event's block and passes that snapshot in (`needs_snapshot` says when)::

    >>> fact_of_event("Deposited", {"newBalance": 5000})
    Deposited(new_balance=5000)
    >>> needs_snapshot("Refunded", withdraw_delay=900)
    True
    >>> fact_of_event("Refunded", args, snapshot=ChannelStateSnapshot(cid, 200, 800, 0, 3))
    Refunded(new_balance=200, refund_nonce=3, withdraw_requested_at=0)

ChannelCreated+Deposited -> Deposited(newBalance) (the config comes from ChannelCreated:
`channel_config_of`); Claimed -> Claimed(newTotalClaimed); WithdrawInitiated ->
WithdrawInitiated(finalizeAfter - withdrawDelay, amount); WithdrawFinalized and Refunded ->
the channel's balance (and refundNonce) read at that block. Settled and ChannelClosed are no
channel fact (None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# From the package (not its modules): channels/protocol/__init__ binds these before it imports
# this module, and the modules behind them are free to move.
from . import (
    ChainFact,
    ChannelConfig,
    ChannelStateSnapshot,
    Claimed,
    Deposited,
    Refunded,
    WithdrawFinalized,
    WithdrawInitiated,
    to_address,
)

__all__ = ["SETTLEMENT_EVENTS", "channel_config_of", "fact_of_event", "needs_snapshot"]

# The settlement contract's events the watcher follows (names as in the ABI).
SETTLEMENT_EVENTS: tuple[str, ...] = (
    "ChannelCreated",
    "Deposited",
    "Claimed",
    "Settled",
    "Refunded",
    "WithdrawInitiated",
    "WithdrawFinalized",
    "ChannelClosed",
)

# These events do not carry the post-event balance / nonce: the chain is read at their block.
_READ_AT_BLOCK = frozenset({"WithdrawFinalized", "Refunded"})


def needs_snapshot(name: str, *, withdraw_delay: int = 0) -> bool:
    """True when `fact_of_event(name, ...)` needs the channel read at the event's block.

    `withdraw_delay` is the channel's delay as the ledger knows it (0: unknown); without it
    a WithdrawInitiated cannot turn finalizeAfter back into the block time it started.

    >>> needs_snapshot("WithdrawInitiated", withdraw_delay=0)
    True
    """
    return name in _READ_AT_BLOCK or (name == "WithdrawInitiated" and not withdraw_delay)


def fact_of_event(
    name: str,
    args: Mapping[str, Any],
    *,
    withdraw_delay: int = 0,
    snapshot: ChannelStateSnapshot | None = None,
) -> ChainFact | None:
    """The ledger fact for one decoded settlement event, or None (no channel fact).

    `args` are the event's decoded arguments (ABI names); `snapshot` the channel at the
    event's block, required when `needs_snapshot(name, withdraw_delay=...)` (ValueError if
    it is missing then).

    >>> fact_of_event("WithdrawInitiated", {"amount": 7, "finalizeAfter": 1900}, withdraw_delay=900)
    WithdrawInitiated(requested_at=1000, amount=7)
    """
    if needs_snapshot(name, withdraw_delay=withdraw_delay) and snapshot is None:
        raise ValueError(f"{name}: the fact needs the channel read at the event's block")
    if name == "Deposited":
        return Deposited(int(args["newBalance"]))
    if name == "Claimed":
        return Claimed(int(args["newTotalClaimed"]))
    if name == "WithdrawInitiated":
        if withdraw_delay:
            requested_at = int(args["finalizeAfter"]) - int(withdraw_delay)
        else:
            assert snapshot is not None  # checked above
            requested_at = snapshot.withdraw_requested_at
        return WithdrawInitiated(requested_at, int(args["amount"]))
    if name == "WithdrawFinalized":
        assert snapshot is not None
        return WithdrawFinalized(snapshot.balance)
    if name == "Refunded":
        assert snapshot is not None
        return Refunded(snapshot.balance, snapshot.refund_nonce, snapshot.withdraw_requested_at)
    return None


def channel_config_of(config: Any) -> ChannelConfig:
    """The ChannelConfig in a `ChannelCreated` event's `config` argument (a mapping or an
    object with the ABI's field names, as web3 decodes it).

    >>> channel_config_of(decoded["args"]["config"]).withdraw_delay
    900
    """
    get: Callable[[str], Any] = (
        config.get if isinstance(config, Mapping) else (lambda k: getattr(config, k))
    )
    return ChannelConfig(
        to_address(get("payer")),
        to_address(get("payerAuthorizer")),
        to_address(get("receiver")),
        to_address(get("receiverAuthorizer")),
        to_address(get("token")),
        int(get("withdrawDelay")),
        bytes(get("salt")),
    )
