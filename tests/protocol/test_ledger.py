"""The pure ledger: rules one by one, then invariants under random interleavings (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from channels import ErrorCode
from channels.protocol import (
    AcceptInput,
    ChannelState,
    Claimed,
    Deposited,
    LedgerError,
    LedgerPolicy,
    Refunded,
    Rejection,
    Reservation,
    Synced,
    UnknownReservation,
    WithdrawFinalized,
    WithdrawInitiated,
)
from channels.protocol.ledger import (
    accept,
    apply_fact,
    claim_target,
    commit,
    expire,
    new_channel,
    release,
)

CID = bytes(range(32))
SIG = b"\x11" * 65
T0 = 1_800_000_000.0
POLICY = LedgerPolicy(reservation_timeout_s=60, withdraw_margin_s=300, max_in_flight=8)


def funded(balance: int = 10_000, total_claimed: int = 0) -> ChannelState:
    return apply_fact(new_channel(CID), Synced(balance, total_claimed))


def inp(ceiling: int, price: int = 100, rid: str = "r1", now: float = T0, **kw) -> AcceptInput:
    return AcceptInput(CID, ceiling, SIG, price, rid, now, **kw)


def test_standard_client_exact_ceiling_then_charge_and_snapshot():
    s, res = accept(funded(), inp(100), POLICY)
    assert isinstance(res, Reservation) and s.reserved == 100 and s.signed_max_claimable == 100
    s, charge = commit(s, "r1", 100, T0 + 1)
    assert (charge.amount, charge.cumulative, s.charged, s.reserved) == (100, 100, 100, 0)
    assert s.unclaimed_since == T0 + 1
    s, res = accept(s, inp(200, rid="r2"), POLICY)
    assert isinstance(res, Reservation)
    snap = s.channel_state
    assert (snap.charged_cumulative_amount, snap.balance) == (100, 10_000)
    assert s.voucher_state.signed_max_claimable == 200 and s.voucher_state.signature == SIG


def test_ceiling_below_charged_plus_price_is_a_corrective_402():
    s, _ = accept(funded(), inp(100), POLICY)
    s, _ = commit(s, "r1", 100, T0)
    s2, res = accept(s, inp(150, rid="r2"), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CUMULATIVE_AMOUNT_MISMATCH
    assert res.channel_state.charged_cumulative_amount == 100
    assert res.voucher_state.signed_max_claimable == 100
    assert s2 == s  # a refusal changes nothing


def test_several_in_flight_need_ceiling_covering_reserved_else_busy():
    s, _ = accept(funded(), inp(100, rid="a"), POLICY)
    _, res = accept(s, inp(100, rid="b"), POLICY)  # right for a client unaware of "a"
    assert isinstance(res, Rejection) and res.code == ErrorCode.CHANNEL_BUSY
    s, res = accept(s, inp(200, rid="b"), POLICY)
    assert isinstance(res, Reservation) and s.reserved == 200
    s, _ = commit(s, "a", 60, T0)
    s, _ = release(s, "b")
    assert (s.charged, s.reserved, s.signed_max_claimable) == (60, 0, 200)


def test_ceiling_above_need_is_headroom_never_charged():
    s, res = accept(funded(), inp(5_000), POLICY)
    assert isinstance(res, Reservation)
    s, charge = commit(s, "r1", 100, T0)
    assert charge.cumulative == 100 and s.signed_max_claimable == 5_000
    t = claim_target(s)
    assert (t.total_claimed, t.max_claimable, t.unclaimed) == (100, 5_000, 100)
    # the next standard voucher (charged + price) is below the stored ceiling: accepted, ceiling kept
    s, res = accept(s, inp(200, rid="r2"), POLICY)
    assert isinstance(res, Reservation) and s.signed_max_claimable == 5_000


@pytest.mark.parametrize(
    ("state", "ceiling", "kw", "code"),
    [
        (new_channel(CID), 100, {}, ErrorCode.CHANNEL_NOT_FOUND),
        (funded(1_000), 1_001, {}, ErrorCode.CUMULATIVE_EXCEEDS_BALANCE),
        (funded(1_000, total_claimed=300), 300, {}, ErrorCode.CUMULATIVE_BELOW_CLAIMED),
    ],
)
def test_refusals(state, ceiling, kw, code):
    _, res = accept(state, inp(ceiling, **kw), POLICY)
    assert isinstance(res, Rejection) and res.code == code


def test_deposit_payload_counts_its_deposit_and_new_channel_starts_at_claimed():
    s, res = accept(None, inp(100, deposit_amount=1_000), POLICY)
    assert isinstance(res, Reservation) and res.deposit_amount == 1_000 and s.balance == 0
    s = apply_fact(s, Deposited(new_balance=1_000))
    s, _ = commit(s, "r1", 100, T0)
    assert (s.balance, s.charged) == (1_000, 100)
    s, res = accept(funded(1_000), inp(1_500, deposit_amount=400), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CUMULATIVE_EXCEEDS_BALANCE
    assert new_channel(CID, total_claimed=700).charged == 700


def test_known_withdrawal_amount_lowers_the_balance_vouchers_may_use():
    s = apply_fact(funded(1_000, total_claimed=100), WithdrawInitiated(int(T0), amount=600))
    _, res = accept(s, inp(401), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CUMULATIVE_EXCEEDS_BALANCE
    assert "pending withdrawal" in res.message
    s, res = accept(s, inp(400, now=T0 + 899), POLICY)  # safe even at the deadline
    assert isinstance(res, Reservation)
    s, _ = commit(s, "r1", 100, T0 + 899)
    s = apply_fact(s, WithdrawFinalized(new_balance=400))
    assert (s.withdraw_amount, s.withdraw_requested_at) == (None, 0)
    assert claim_target(s).total_claimed == 200  # charged from the baseline 100, all claimable


def test_no_acceptance_within_margin_of_withdrawal_deadline():
    s = apply_fact(funded(), WithdrawInitiated(requested_at=int(T0)))  # deadline T0 + 900
    _, res = accept(s, inp(100, now=T0 + 599), POLICY)
    assert isinstance(res, Reservation)
    _, res = accept(s, inp(100, now=T0 + 600), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CUMULATIVE_EXCEEDS_BALANCE
    assert apply_fact(s, WithdrawFinalized(new_balance=0)).withdraw_requested_at == 0


def test_expiry_releases_and_late_commit_is_refused():
    s, _ = accept(funded(), inp(100), POLICY)
    s2, gone = expire(s, T0 + 59)
    assert gone == () and s2 is s
    s, gone = expire(s, T0 + 60)
    assert [r.request_id for r in gone] == ["r1"] and s.reserved == 0
    with pytest.raises(UnknownReservation):
        commit(s, "r1", 100, T0 + 61)


def test_caller_bugs_raise():
    s, _ = accept(funded(), inp(100), POLICY)
    with pytest.raises(LedgerError, match="already holds"):
        accept(s, inp(300), POLICY)
    with pytest.raises(LedgerError, match="within 0..100"):
        commit(s, "r1", 101, T0)


def test_claims_and_balance_lowering_facts():
    s, _ = accept(funded(1_000), inp(1_000), POLICY)
    s, _ = commit(s, "r1", 100, T0)
    s = apply_fact(s, Claimed(new_total_claimed=100))
    assert s.unclaimed_since is None and claim_target(s) is None
    assert apply_fact(s, Claimed(new_total_claimed=50)).total_claimed == 100  # stale replay
    s = apply_fact(s, Refunded(new_balance=100, refund_nonce=1))
    _, res = accept(s, inp(200, rid="r2"), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CUMULATIVE_EXCEEDS_BALANCE
    # state loss: on-chain claims above what we recorded are adopted as charged
    lost = apply_fact(new_channel(CID), Synced(balance=900, total_claimed=400))
    assert lost.charged == 400


# --- invariants under random interleavings ------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """One channel driven by every input. The test tracks what it committed and whether the
    highest voucher is no longer backed by the balance: a balance-lowering fact happened since
    it was accepted, or the deposit it came with never landed."""

    def __init__(self) -> None:
        super().__init__()
        self.s = funded(5_000)
        self.now = T0
        self.committed = 0
        self.n = 0
        self.prev = self.s
        self.lowered = False

    def _step(self, new: ChannelState) -> None:
        self.prev, self.s = self.s, new

    @rule(
        price=st.integers(0, 400),
        mode=st.sampled_from(["exact", "above", "unaware", "below", "any"]),
        extra=st.integers(0, 3_000),
        deposit=st.sampled_from([0, 0, 0, 500, 2_000]),
        deposit_lands=st.booleans(),
    )
    def do_accept(self, price, mode, extra, deposit, deposit_lands):
        s = self.s
        need = s.charged + s.reserved + price
        ceiling = {
            "exact": need,
            "above": need + extra,
            "unaware": s.charged + price,
            "below": max(0, s.charged + price - 1 - extra % 50),
            "any": extra * 3,
        }[mode]
        self.n += 1
        rid = f"r{self.n}"
        new, res = accept(
            s,
            AcceptInput(
                CID,
                ceiling,
                SIG + bytes([self.n % 256]),
                price,
                rid,
                self.now,
                deposit_amount=deposit,
            ),
            POLICY,
        )
        fresh, _ = expire(s, self.now)
        deadline = fresh.withdraw_deadline
        known = deadline is not None and fresh.withdraw_amount is not None
        ok_conditions = (
            ceiling > fresh.total_claimed
            and ceiling <= fresh.balance + deposit - (fresh.withdraw_amount if known else 0)
            and fresh.balance + deposit > 0
            and (deadline is None or known or self.now < deadline - POLICY.withdraw_margin_s)
            and len(fresh.reservations) < POLICY.max_in_flight
        )
        if mode in ("exact", "above") and ok_conditions:
            assert isinstance(res, Reservation), res  # a standard client's exact ceiling must pass
        if isinstance(res, Rejection):
            assert (
                new.reservations == fresh.reservations
                and new.signed_max_claimable == s.signed_max_claimable
            )
            self._step(new)
            return
        assert ceiling >= need
        self._step(new)
        backed = fresh.balance
        if deposit:
            if deposit_lands:  # the gateway applies the deposit before it commits
                self._step(apply_fact(self.s, Deposited(new_balance=self.s.balance + deposit)))
                backed += deposit
            else:  # the deposit failed: released, but the voucher it came with stays the highest
                self._step(release(self.s, rid)[0])
        if (
            ceiling >= s.signed_max_claimable
        ):  # the new highest voucher: is it backed by the balance?
            self.lowered = ceiling > backed

    @precondition(lambda self: self.s.reservations)
    @rule(i=st.integers(0, 100), frac=st.floats(0, 1))
    def do_commit(self, i, frac):
        r = self.s.reservations[i % len(self.s.reservations)]
        actual = int(r.amount * frac)
        new, charge = commit(self.s, r.request_id, actual, self.now)
        self.committed += actual
        assert charge.cumulative == new.charged == self.s.charged + actual
        self._step(new)

    @precondition(lambda self: self.s.reservations)
    @rule(i=st.integers(0, 100))
    def do_release(self, i):
        r = self.s.reservations[i % len(self.s.reservations)]
        new, got = release(self.s, r.request_id)
        assert got == r and new.reserved == self.s.reserved - r.amount
        self._step(new)

    @rule(dt=st.floats(0, 90))
    def tick(self, dt):
        self.now += dt
        new, gone = expire(self.s, self.now)
        assert all(r.expires_at <= self.now for r in gone)
        assert all(r.expires_at > self.now for r in new.reservations)
        self._step(new)

    @rule(amount=st.integers(1, 3_000))
    def fact_deposit(self, amount):
        self._step(apply_fact(self.s, Deposited(new_balance=self.s.balance + amount)))

    @rule(frac=st.floats(0, 1))
    def fact_claim(self, frac):
        s = self.s
        target = claim_target(s)
        if target is not None:
            assert (
                s.total_claimed
                < target.total_claimed
                <= min(target.max_claimable, s.balance, s.charged)
            )
        total = (
            s.total_claimed + int((s.claimable - s.total_claimed) * frac)
            if s.claimable > s.total_claimed
            else s.total_claimed
        )
        self._step(apply_fact(s, Claimed(new_total_claimed=total)))

    @precondition(lambda self: not self.s.withdraw_requested_at)
    @rule(ago=st.integers(0, 1_000), frac=st.none() | st.floats(0, 1))
    def fact_withdraw_initiated(self, ago, frac):
        s = self.s
        amount = None if frac is None else int((s.balance - s.total_claimed) * frac)
        self._step(
            apply_fact(s, WithdrawInitiated(requested_at=int(self.now) - ago, amount=amount))
        )

    @precondition(lambda self: self.s.withdraw_requested_at)
    @rule()
    def fact_withdraw_finalized(self):
        # the contract pays out the amount, capped by what is not claimed (unknown: all of it)
        s = self.s
        available = s.balance - s.total_claimed
        paid = available if s.withdraw_amount is None else min(s.withdraw_amount, available)
        new_balance = s.balance - paid
        self.lowered = self.lowered or s.signed_max_claimable > new_balance
        self._step(apply_fact(s, WithdrawFinalized(new_balance=new_balance)))

    @rule(frac=st.floats(0, 1))
    def fact_refund(self, frac):
        s = self.s
        amount = int((s.balance - s.total_claimed) * frac)
        self.lowered = self.lowered or amount > 0
        self._step(
            apply_fact(s, Refunded(new_balance=s.balance - amount, refund_nonce=s.refund_nonce + 1))
        )

    @invariant()
    def money_invariants(self):
        s, p = self.s, self.prev
        assert (
            s.charged + s.reserved <= s.signed_max_claimable
            or s.signed_max_claimable == 0 == s.charged + s.reserved
        )
        assert s.charged <= s.signed_max_claimable or s.charged == 0
        assert s.charged >= p.charged and s.signed_max_claimable >= p.signed_max_claimable
        assert s.charged == self.committed  # claims here never exceed charged, so nothing adopted
        assert s.total_claimed <= s.claimable <= s.charged
        if not self.lowered:
            assert s.signed_max_claimable <= s.balance
        assert s.reserved == sum(r.amount for r in s.reservations) >= 0


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
