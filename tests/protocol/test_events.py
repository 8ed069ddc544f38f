"""Settlement events as ledger facts (channels.protocol.fact_of_event): pure, no chain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.protocol import (
    SETTLEMENT_EVENTS,
    ChannelConfig,
    ChannelStateSnapshot,
    Claimed,
    Deposited,
    Refunded,
    WithdrawFinalized,
    WithdrawInitiated,
    channel_config_of,
    fact_of_event,
    needs_snapshot,
)

CID = bytes(range(32))
u128 = st.integers(min_value=0, max_value=2**128 - 1)
u40 = st.integers(min_value=0, max_value=2**40 - 1)
snapshots = st.builds(ChannelStateSnapshot, st.just(CID), u128, u128, u40, u128)


@given(balance=u128)
def test_deposited_carries_the_new_balance(balance: int) -> None:
    args = {"channelId": CID, "sender": b"\x01" * 20, "amount": 1, "newBalance": balance}
    assert not needs_snapshot("Deposited")
    assert fact_of_event("Deposited", args) == Deposited(balance)


@given(total=u128, amount=u128)
def test_claimed_carries_the_new_total(total: int, amount: int) -> None:
    args = {"channelId": CID, "claimAmount": amount, "newTotalClaimed": total}
    assert fact_of_event("Claimed", args) == Claimed(total)


@given(delay=st.integers(min_value=1, max_value=2**40 - 1), started=u40, amount=u128)
def test_withdraw_initiated_with_a_known_delay_needs_no_read(
    delay: int, started: int, amount: int
) -> None:
    args = {"channelId": CID, "amount": amount, "finalizeAfter": started + delay}
    assert not needs_snapshot("WithdrawInitiated", withdraw_delay=delay)
    assert fact_of_event("WithdrawInitiated", args, withdraw_delay=delay) == WithdrawInitiated(
        started, amount
    )


@given(snapshot=snapshots, amount=u128)
def test_withdraw_initiated_with_an_unknown_delay_takes_the_chain_time(
    snapshot: ChannelStateSnapshot, amount: int
) -> None:
    args = {"channelId": CID, "amount": amount, "finalizeAfter": 10**9}
    assert needs_snapshot("WithdrawInitiated", withdraw_delay=0)
    fact = fact_of_event("WithdrawInitiated", args, snapshot=snapshot)
    assert fact == WithdrawInitiated(snapshot.withdraw_requested_at, amount)


@given(snapshot=snapshots)
def test_finalized_and_refunded_mirror_the_snapshot(snapshot: ChannelStateSnapshot) -> None:
    assert needs_snapshot("WithdrawFinalized") and needs_snapshot("Refunded")
    args = {"channelId": CID, "amount": 5}
    assert fact_of_event("WithdrawFinalized", args, snapshot=snapshot) == WithdrawFinalized(
        snapshot.balance
    )
    assert fact_of_event("Refunded", args, snapshot=snapshot) == Refunded(
        snapshot.balance, snapshot.refund_nonce, snapshot.withdraw_requested_at
    )


@pytest.mark.parametrize("name", ["WithdrawFinalized", "Refunded", "WithdrawInitiated"])
def test_a_missing_snapshot_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="read at the event's block"):
        fact_of_event(name, {"amount": 1, "finalizeAfter": 2})


@pytest.mark.parametrize("name", ["ChannelCreated", "Settled", "ChannelClosed", "Unknown"])
def test_events_that_are_no_channel_fact(name: str) -> None:
    assert not needs_snapshot(name)
    assert fact_of_event(name, {"channelId": CID}) is None


def test_every_followed_event_is_named_once() -> None:
    assert len(set(SETTLEMENT_EVENTS)) == len(SETTLEMENT_EVENTS) == 8


@given(delay=u40, salt=st.binary(min_size=32, max_size=32))
def test_channel_created_config_from_a_mapping_or_an_object(delay: int, salt: bytes) -> None:
    fields = {
        "payer": "0x" + "11" * 20,
        "payerAuthorizer": "0x" + "22" * 20,
        "receiver": "0x" + "33" * 20,
        "receiverAuthorizer": "0x" + "44" * 20,
        "token": "0x" + "55" * 20,
        "withdrawDelay": delay,
        "salt": salt,
    }
    expected = ChannelConfig(
        b"\x11" * 20, b"\x22" * 20, b"\x33" * 20, b"\x44" * 20, b"\x55" * 20, delay, salt
    )

    class Decoded:  # web3 may hand the struct over as an object with the ABI's names
        def __init__(self) -> None:
            self.__dict__.update(fields)

    assert channel_config_of(fields) == expected
    assert channel_config_of(Decoded()) == expected
