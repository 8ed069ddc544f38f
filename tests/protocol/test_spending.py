"""Refunds as ledger transitions: the split and the lock, rule by rule, then under random
interleavings with paid requests (hypothesis): no charge ever ends up above the balance a
refund leaves, i.e. nothing answered is left unclaimable."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from channels import ErrorCode
from channels.protocol import (
    AcceptInput,
    ChannelState,
    Claimed,
    LedgerPolicy,
    Refunded,
    Rejection,
    Reservation,
    Synced,
)
from channels.protocol.ledger import accept, apply_fact, commit, new_channel
from channels.protocol.spending import RefundPlan, begin_refund, end_spend

CID = bytes(range(32))
SIG = b"\x11" * 65
T0 = 1_800_000_000.0
POLICY = LedgerPolicy(reservation_timeout_s=60, max_in_flight=8, spend_timeout_s=600)


def funded(balance: int = 10_000, total_claimed: int = 0, nonce: int = 0) -> ChannelState:
    return apply_fact(new_channel(CID), Synced(balance, total_claimed, refund_nonce=nonce))


def paid(s: ChannelState, price: int, rid: str, now: float = T0) -> ChannelState:
    s, res = accept(s, AcceptInput(CID, s.charged + s.reserved + price, SIG, price, rid, now), POLICY)
    assert isinstance(res, Reservation), res
    return commit(s, rid, price, now)[0]


def test_refund_claims_every_charge_and_returns_the_rest() -> None:
    s = paid(funded(10_000, nonce=3), 700, "a")
    s, plan = begin_refund(s, requested=None, now=T0, policy=POLICY)
    assert isinstance(plan, RefundPlan) and plan.needs_claim
    assert (plan.nonce, plan.claim_total, plan.amount, plan.max_claimable) == (3, 700, 9_300, 700)
    assert s.spend is not None and s.spending(T0)
    # a partial refund is capped by what is not charged
    _, part = begin_refund(paid(funded(1_000), 900, "a"), requested=500, now=T0, policy=POLICY)
    assert isinstance(part, RefundPlan) and part.amount == 100


def test_while_a_refund_is_pending_no_voucher_is_accepted() -> None:
    s, _ = begin_refund(paid(funded(), 100, "a"), requested=None, now=T0, policy=POLICY)
    new, res = accept(s, AcceptInput(CID, 10_000, SIG, 100, "b", T0 + 1), POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CHANNEL_BUSY
    assert "refund" in res.message and new.reservations == ()
    _, again = begin_refund(s, requested=None, now=T0 + 1, policy=POLICY)
    assert isinstance(again, Rejection) and again.code == ErrorCode.CHANNEL_BUSY


def test_a_refund_waits_for_requests_in_flight_and_refuses_nothing_left() -> None:
    s, _ = accept(funded(), AcceptInput(CID, 100, SIG, 100, "a", T0), POLICY)
    same, res = begin_refund(s, requested=None, now=T0, policy=POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.CHANNEL_BUSY and same.spend is None
    # the hold expired: it no longer blocks
    _, res = begin_refund(s, requested=None, now=T0 + 61, policy=POLICY)
    assert isinstance(res, RefundPlan)
    _, res = begin_refund(paid(funded(100), 100, "a"), requested=None, now=T0, policy=POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.REFUND_NO_BALANCE
    _, res = begin_refund(funded(), requested=0, now=T0, policy=POLICY)
    assert isinstance(res, Rejection) and res.code == ErrorCode.REFUND_AMOUNT_INVALID


def test_the_lock_ends_when_the_nonce_moves_when_released_or_when_it_expires() -> None:
    s, plan = begin_refund(paid(funded(nonce=2), 100, "a"), requested=None, now=T0, policy=POLICY)
    assert isinstance(plan, RefundPlan)
    # a fact read before the refund landed (same nonce) keeps it
    assert apply_fact(s, Synced(10_000, 0, refund_nonce=2)).spend is not None
    landed = apply_fact(s, Refunded(new_balance=100, refund_nonce=3))
    assert landed.spend is None and landed.balance == 100
    released, ok = end_spend(s, plan.nonce)
    assert ok and released.spend is None
    assert end_spend(s, plan.nonce + 1) == (s, False)  # another refund's release: not ours
    assert not s.spending(T0 + 600)


def test_a_snapshot_older_than_a_landed_refund_does_not_raise_the_balance_back() -> None:
    s = apply_fact(funded(10_000, nonce=1), Refunded(new_balance=500, refund_nonce=2))
    stale = apply_fact(s, Synced(10_000, 200, refund_nonce=1))
    assert (stale.balance, stale.total_claimed) == (500, 200)


class RefundRaceMachine(RuleBasedStateMachine):
    """Paid requests (accept/commit) interleaved with refunds that are decided, then land or
    fail, in any order. The money rule: once the chain has done what we decided, every charge
    is claimable (charged <= balance) and claimed equals what the refund claimed."""

    def __init__(self) -> None:
        super().__init__()
        self.s = funded(20_000)
        self.now = T0
        self.n = 0
        self.plan: RefundPlan | None = None

    @rule(price=st.integers(1, 500), commit_it=st.booleans())
    def request(self, price: int, commit_it: bool) -> None:
        self.n += 1
        rid = f"r{self.n}"
        s = self.s
        new, res = accept(
            s, AcceptInput(CID, s.charged + s.reserved + price, SIG, price, rid, self.now), POLICY
        )
        if self.plan is not None and s.spending(self.now):
            assert isinstance(res, Rejection) and res.code == ErrorCode.CHANNEL_BUSY
        self.s = new
        if isinstance(res, Reservation) and commit_it:
            self.s = commit(self.s, rid, price, self.now)[0]

    @precondition(lambda self: self.plan is None)
    @rule(part=st.none() | st.integers(1, 30_000))
    def decide_refund(self, part: int | None) -> None:
        self.s, plan = begin_refund(self.s, requested=part, now=self.now, policy=POLICY)
        if isinstance(plan, RefundPlan):
            assert plan.claim_total == min(self.s.charged, self.s.balance)
            assert plan.claim_total + plan.amount <= self.s.balance
            self.plan = plan

    # The lock is sized to outlive its transaction: a refund lands while the lock holds, or
    # never (dropped from the mempool), which then looks like a failure.
    @precondition(lambda self: self.plan is not None and self.s.spending(self.now))
    @rule()
    def refund_lands(self) -> None:
        plan = self.plan
        assert plan is not None
        s = apply_fact(self.s, Claimed(plan.claim_total))
        self.s = apply_fact(s, Refunded(s.balance - plan.amount, plan.nonce + 1))
        self.plan = None
        assert self.s.spend is None

    @precondition(lambda self: self.plan is not None)
    @rule()
    def refund_fails(self) -> None:
        assert self.plan is not None
        self.s, ok = end_spend(self.s, self.plan.nonce)
        assert ok
        self.plan = None

    @rule(dt=st.floats(0, 90))
    def tick(self, dt: float) -> None:
        self.now += dt
        if self.plan is not None and not self.s.spending(self.now):
            self.plan = None  # expired: the transaction was dropped

    @invariant()
    def every_charge_stays_claimable(self) -> None:
        assert self.s.charged <= self.s.balance
        assert self.s.charged + self.s.reserved <= self.s.signed_max_claimable or not self.s.charged


TestRefundRace = RefundRaceMachine.TestCase
TestRefundRace.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
