"""The payer's money rules (`channels.protocol.payer_rules`): properties under hypothesis.

A ceiling always covers what is charged, maybe charged and in flight plus the price, and
never goes below the signed floor; a deposit covers any gap; a paid answer that overcharges
or misreports is refused; an adopted state never exceeds what the payer signed.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.protocol import (
    Adoption,
    ChannelStateSnapshot,
    DepositPolicy,
    ErrorCode,
    ExpectedAnswer,
    InFlight,
    PayerChannel,
    PaymentError,
    ReportedCharge,
    ResponseExtra,
    SettleResponse,
    Signer,
    VoucherStateSnapshot,
    payer_rules,
    voucher_digest,
)

CID = bytes(range(32))
OTHER_CID = bytes(32)
SETTLEMENT = bytes.fromhex("4020615294c913f045dc10f0a5cdebd86c280001")
CHAIN_ID = 31337
NETWORK = "eip155:31337"
PAYER = Signer("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
STRANGER = Signer("0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6")

amounts = st.integers(min_value=0, max_value=10**12)
prices = st.integers(min_value=1, max_value=10**9)


@st.composite
def states(draw: st.DrawFn) -> PayerChannel:
    charged = draw(amounts)
    floor = draw(st.integers(min_value=0, max_value=charged + 10**9))
    return PayerChannel(
        charged=charged,
        balance=draw(amounts),
        signed_floor=floor,
        signed_max=floor + draw(st.integers(min_value=0, max_value=10**6)),
        in_flight=draw(st.integers(min_value=0, max_value=10**9)),
        pending_deposits=draw(st.integers(min_value=0, max_value=10**9)),
        maybe_charged=draw(st.integers(min_value=0, max_value=10**9)),
    )


policies = st.builds(
    DepositPolicy,
    amount=st.none() | st.integers(min_value=1, max_value=10**9),
    requests=st.integers(min_value=1, max_value=100),
)


# --- the next voucher and its deposit --------------------------------------------------------


@given(states(), prices, amounts, policies)
def test_ceiling_covers_everything_owed_and_never_undercuts_the_floor(
    state: PayerChannel, price: int, min_deposit: int, policy: DepositPolicy
) -> None:
    new, plan = payer_rules.pay(state, price=price, min_deposit=min_deposit, policy=policy)
    owed = state.charged + state.maybe_charged + state.in_flight + price
    assert plan.ceiling >= owed
    assert plan.ceiling >= state.signed_floor
    assert plan.ceiling == max(owed, state.signed_floor)  # no headroom beyond that
    assert new.signed_floor == plan.ceiling
    assert new.signed_max == max(state.signed_max, plan.ceiling) >= state.signed_max
    assert new.in_flight == state.in_flight + price


@given(states(), prices, amounts, policies)
def test_a_deposit_comes_exactly_when_the_funds_fall_short_and_covers_the_gap(
    state: PayerChannel, price: int, min_deposit: int, policy: DepositPolicy
) -> None:
    new, plan = payer_rules.pay(state, price=price, min_deposit=min_deposit, policy=policy)
    funds = state.balance + state.pending_deposits
    if plan.ceiling <= funds:
        assert plan.deposit is None and new.pending_deposits == state.pending_deposits
        return
    assert plan.deposit is not None
    assert funds + plan.deposit >= plan.ceiling
    assert plan.deposit >= min_deposit
    assert plan.deposit >= (policy.amount or policy.requests * price)
    assert new.pending_deposits == state.pending_deposits + plan.deposit


def test_deposit_size_defaults_to_ten_prices() -> None:
    assert payer_rules.deposit_size(DepositPolicy(), 1000, 0, 1) == 10_000
    assert payer_rules.deposit_size(DepositPolicy(amount=500), 1000, 0, 1000) == 1000
    assert payer_rules.deposit_size(DepositPolicy(amount=500), 1000, 7000, 1000) == 7000


@given(states(), prices, st.booleans())
def test_release_frees_the_price_and_remembers_a_maybe_charge(
    state: PayerChannel, price: int, maybe: bool
) -> None:
    held = PayerChannel(in_flight=state.in_flight + price, maybe_charged=state.maybe_charged)
    new = payer_rules.release(held, InFlight(price), maybe_charged=maybe)
    assert new.in_flight == state.in_flight
    assert new.maybe_charged == state.maybe_charged + (price if maybe else 0)


# --- paid answers: the client verification rules -------------------------------------------


def _expected(price: int, **kw: object) -> ExpectedAnswer:
    return ExpectedAnswer(CID, price, NETWORK, CHAIN_ID, SETTLEMENT, bytes(20), **kw)  # type: ignore[arg-type]


def _response(charged: int, cumulative: int, balance: int, *, cid: bytes = CID,
              network: str = NETWORK, amount: int | None = None) -> SettleResponse:
    snapshot = ChannelStateSnapshot(cid, balance, 0, 0, 0, cumulative)
    return SettleResponse(True, network, amount=amount,
                          extra=ResponseExtra(charged_amount=charged, channel_state=snapshot))


@given(prices, st.integers(min_value=1, max_value=10**9), amounts)
def test_a_response_charging_above_the_price_is_refused(price: int, over: int, base: int) -> None:
    response = _response(price + over, base + price + over, 10**15)
    with pytest.raises(PaymentError) as err:
        payer_rules.check_response(response, _expected(price))
    assert err.value.field == "extra.chargedAmount" and err.value.code == ErrorCode.INVALID_PAYLOAD


@given(prices, st.integers(min_value=0, max_value=10**9), amounts, amounts)
def test_a_response_within_the_price_reports_its_figures(
    price: int, under: int, cumulative: int, balance: int
) -> None:
    charged = max(price - under, 0)
    report = payer_rules.check_response(_response(charged, cumulative, balance), _expected(price))
    assert report == ReportedCharge(charged, cumulative, balance)


@pytest.mark.parametrize("change, field", [
    ({"cid": OTHER_CID}, "extra.channelState.channelId"),
    ({"network": "eip155:1"}, "network"),
    ({"amount": 99}, "amount"),
])
def test_a_response_for_another_channel_network_or_deposit_is_refused(
    change: dict[str, object], field: str
) -> None:
    response = _response(1000, 1000, 10_000, **change)  # type: ignore[arg-type]
    with pytest.raises(PaymentError) as err:
        payer_rules.check_response(response, _expected(1000, deposit_amount=10_000))
    assert err.value.field == field


def test_a_required_receipt_must_be_there() -> None:
    with pytest.raises(PaymentError, match="require_receipt"):
        payer_rules.check_response(_response(1000, 1000, 10_000),
                                   _expected(1000, require_receipt=True))


@given(states(), prices, st.integers(min_value=0, max_value=10**9), amounts)
def test_settle_never_accepts_a_cumulative_it_cannot_account_for(
    state: PayerChannel, price: int, extra: int, balance: int
) -> None:
    held = PayerChannel(charged=state.charged, balance=state.balance, in_flight=price,
                        maybe_charged=state.maybe_charged, max_reported=state.charged)
    cumulative = state.charged + price + state.maybe_charged + extra
    new, problem = payer_rules.settle(held, InFlight(price),
                                      ReportedCharge(price, cumulative, balance))
    if extra > 0:  # more than charged + this price + every maybe-charge: an overcharge
        assert problem is not None and "server reports cumulative" in problem
    elif balance < cumulative:
        assert problem is not None and "balance" in problem
    else:
        assert problem is None
        assert new.charged == cumulative and new.maybe_charged == 0 and new.in_flight == 0
        assert new.balance == balance


@given(amounts, prices, st.integers(min_value=1, max_value=10**9))
def test_settle_refuses_a_cumulative_below_the_charges(charged: int, price: int, short: int) -> None:
    held = PayerChannel(charged=charged, balance=10**15, in_flight=price, max_reported=charged)
    cumulative = max(charged + price - short, 0)
    _, problem = payer_rules.settle(held, InFlight(price), ReportedCharge(price, cumulative, 10**15))
    assert problem is not None


def test_settle_counts_once_a_charge_already_inside_an_adopted_total() -> None:
    held = PayerChannel(charged=5000, balance=10_000, in_flight=1000, max_reported=5000)
    new, problem = payer_rules.settle(held, InFlight(1000), ReportedCharge(1000, 5000, 10_000),
                                      covered=5000)
    assert problem is None and new.charged == 5000


# --- adopting a server's state ---------------------------------------------------------------


def _proof(signed: int, signer: Signer = PAYER) -> VoucherStateSnapshot:
    return VoucherStateSnapshot(
        signed, signer.sign_digest(voucher_digest(CHAIN_ID, SETTLEMENT, CID, signed))
    )


def _check(cs: ChannelStateSnapshot | None, vs: VoucherStateSnapshot | None,
           **kw: int | None) -> Adoption:
    return payer_rules.check_adoption(cs, vs, channel_id=CID, chain_id=CHAIN_ID,
                                      settlement=SETTLEMENT, voucher_signer=PAYER.address_bytes,
                                      **kw)


@given(
    signed=st.integers(min_value=0, max_value=10**12),
    charged=st.integers(min_value=0, max_value=2 * 10**12),
    claimed=st.integers(min_value=0, max_value=2 * 10**12),
    onchain_claimed=st.none() | st.integers(min_value=0, max_value=2 * 10**12),
    balance=st.integers(min_value=0, max_value=3 * 10**12),
)
def test_an_adopted_state_never_exceeds_what_was_signed(
    signed: int, charged: int, claimed: int, onchain_claimed: int | None, balance: int
) -> None:
    cs = ChannelStateSnapshot(CID, balance, claimed, 0, 0, charged)
    vs = _proof(signed)
    try:
        adoption = _check(cs, vs, total_claimed=onchain_claimed)
    except PaymentError as exc:
        assert exc.code == ErrorCode.INVALID_PAYLOAD
        assert charged > signed or claimed > signed or balance < max(
            charged, claimed, onchain_claimed or 0)
        return
    assert charged <= signed and claimed <= signed
    assert adoption.charged == max(charged, claimed, onchain_claimed or 0)
    assert adoption.charged >= claimed and adoption.balance >= adoption.charged
    assert adoption.signed_floor == signed
    state = payer_rules.adopt(PayerChannel(signed_max=7, maybe_charged=3), adoption)
    assert state.signed_max == max(7, signed) and state.maybe_charged == 0
    assert state.max_reported == state.charged == adoption.charged


def test_adoption_refuses_a_proof_signed_by_another_key() -> None:
    cs = ChannelStateSnapshot(CID, 10_000, 0, 0, 0, 5000)
    with pytest.raises(PaymentError) as err:
        _check(cs, _proof(5000, STRANGER))
    assert err.value.field == "extra.voucherState.signature"


@pytest.mark.parametrize("cs, vs, field", [
    (None, None, "extra.channelState"),
    (ChannelStateSnapshot(CID, 10_000, 0, 0, 0, 5000), None, "extra.voucherState"),
    (ChannelStateSnapshot(OTHER_CID, 10_000, 0, 0, 0, 5000), "proof", "extra.channelState.channelId"),
    (ChannelStateSnapshot(CID, 10_000, 0, 0, 0, None), "proof", "extra.channelState.chargedCumulativeAmount"),
    (ChannelStateSnapshot(CID, 10_000, 0, 0, 0, 6000), "proof", "extra.channelState.chargedCumulativeAmount"),
    (ChannelStateSnapshot(CID, 1000, 0, 0, 0, 5000), "proof", "extra.channelState.balance"),
])
def test_adoption_names_the_field_that_failed(
    cs: ChannelStateSnapshot | None, vs: object, field: str
) -> None:
    with pytest.raises(PaymentError) as err:
        _check(cs, _proof(5000) if vs == "proof" else None)
    assert err.value.field == field


@given(states(), amounts, amounts)
def test_resync_and_chain_observations_never_forget_a_proved_charge(
    state: PayerChannel, balance: int, claimed: int
) -> None:
    cold = payer_rules.resync(state, balance=balance, total_claimed=claimed)
    assert cold.charged == max(state.charged, claimed) and cold.balance == balance
    assert cold.signed_floor >= max(state.signed_floor, cold.charged)
    seen = payer_rules.observe_chain(state, balance=balance, total_claimed=claimed)
    assert seen.charged == max(state.charged, claimed)
    assert seen.max_reported >= seen.charged
