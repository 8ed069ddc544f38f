"""The payer's money rules, pure: what the next voucher signs, how big a deposit is, which
paid answers to believe and which server state to adopt (no I/O, no clock, no key).

The payer-side twin of `channels.protocol.ledger`: each rule is a function over frozen
dataclasses, `(state, input) -> new state` (or a checked figure), and a refusal is a
`PaymentError` naming the field at fault. `channels.sdk.payer.Payer` keeps the durable and
live state and the locks, and runs exactly this code::

    >>> st = PayerChannel(charged=3000, balance=10_000, signed_floor=3000, signed_max=3000)
    >>> st, plan = pay(st, price=1000, min_deposit=0, policy=DepositPolicy())
    >>> plan.ceiling, plan.deposit, st.in_flight
    (4000, None, 1000)
    >>> report = check_response(response, expected)        # the spec's client rules
    >>> st, problem = settle(st, InFlight(1000), report)    # problem: halt the channel

Invariants (tests/protocol/test_payer_rules.py checks them):

* a ceiling covers ``charged + maybe_charged + in_flight + price`` and is never below the
  signed floor (so a new voucher never undercuts one the server holds);
* ``signed_max`` never decreases; a deposit is signed whenever the ceiling exceeds the
  balance plus the deposits in flight, and covers the gap;
* a paid answer charging more than the price, for another channel or network, with a
  cumulative total the payer cannot account for, or above the balance, is refused;
* an adopted state never charges more than the payer's own signed voucher proves, never
  less than on-chain totalClaimed, and only when the balance covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# From the package (not its modules): channels/protocol/__init__ binds these before it imports
# this module, and other engineers move them between modules.
from . import (
    ChannelStateSnapshot,
    ErrorCode,
    PaymentError,
    PaymentRequired,
    PaymentRequirements,
    SettleResponse,
    VoucherStateSnapshot,
    recover_address,
    verify_receipt,
    voucher_digest,
)

__all__ = [
    "DEFAULT_DEPOSIT_MULTIPLIER",
    "Adoption",
    "DepositPolicy",
    "ExpectedAnswer",
    "InFlight",
    "PayerChannel",
    "PaymentPlan",
    "ReportedCharge",
    "adopt",
    "check_adoption",
    "check_response",
    "corrective_offer",
    "deposit_size",
    "next_ceiling",
    "observe_chain",
    "pay",
    "refund_balance",
    "release",
    "resync",
    "settle",
]

# Deposit this many request prices when no amount is set: one on-chain deposit then pays for
# ten requests, and at most ten prices sit in escrow unspent.
DEFAULT_DEPOSIT_MULTIPLIER = 10

_INVALID = ErrorCode.INVALID_PAYLOAD


@dataclass(frozen=True, slots=True)
class PayerChannel:
    """One channel as the payer sees it (amounts in token base units).

    Durable: `charged` (proven by verified answers), `balance` (as last known),
    `signed_floor` (no ceiling goes below it), `signed_max` (the most ever signed: the payer's
    exposure), `signature` (the voucher at signed_floor). Live (lost on restart, on purpose):
    `in_flight` (prices of unresolved payments), `pending_deposits` (deposits signed, not
    confirmed), `maybe_charged` (payments whose answer never came), `max_reported` (the
    highest cumulative charge the server reported).
    """

    charged: int = 0
    balance: int = 0
    signed_floor: int = 0
    signed_max: int = 0
    signature: bytes | None = None
    in_flight: int = 0
    pending_deposits: int = 0
    maybe_charged: int = 0
    max_reported: int = 0


@dataclass(frozen=True, slots=True)
class DepositPolicy:
    """How much one deposit adds: `amount` base units, else `requests` request prices.

    >>> DepositPolicy(amount=1_000_000)          # 1 USDC per deposit
    """

    amount: int | None = None
    requests: int = DEFAULT_DEPOSIT_MULTIPLIER


@dataclass(frozen=True, slots=True)
class PaymentPlan:
    """What the next payment signs: the voucher `ceiling`, and a `deposit` (None: none)."""

    ceiling: int
    deposit: int | None


@dataclass(frozen=True, slots=True)
class InFlight:
    """One unresolved payment: its `price` and the `deposit` it carried (0: none)."""

    price: int
    deposit: int = 0


@dataclass(frozen=True, slots=True)
class ExpectedAnswer:
    """What a payment signed for, to check its paid answer against (`check_response`).

    `request_digest` / `result_digest`: sha256 of the bodies sent and received, checked
    against our receipt when given. `receiver_authorizer` signs receipts.
    """

    channel_id: bytes
    price: int
    network: str
    chain_id: int
    settlement: bytes
    receiver_authorizer: bytes
    deposit_amount: int | None = None
    require_receipt: bool = False
    request_digest: bytes | None = None
    result_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class ReportedCharge:
    """A verified paid answer's figures: this request's charge, the cumulative, the balance."""

    charged: int
    cumulative: int
    balance: int


@dataclass(frozen=True, slots=True)
class Adoption:
    """A server's channel state that passed `check_adoption`: what the payer may adopt."""

    charged: int
    balance: int
    signed_floor: int  # the payer's own voucher the server holds
    signature: bytes


def next_ceiling(state: PayerChannel, price: int) -> int:
    """The cumulative ceiling the next voucher signs: everything charged, maybe charged or in
    flight plus this price, never below the signed floor.

    >>> next_ceiling(PayerChannel(charged=3000, signed_floor=5000), 1000)
    5000
    """
    return max(state.signed_floor, state.charged + state.maybe_charged + state.in_flight + price)


def deposit_size(policy: DepositPolicy, price: int, min_deposit: int, needed: int) -> int:
    """The deposit to sign: the policy's amount, at least the server's minDeposit and what
    the new ceiling `needed` beyond the funds.

    >>> deposit_size(DepositPolicy(), price=1000, min_deposit=0, needed=1000)
    10000
    """
    wanted = policy.amount or policy.requests * price
    return max(needed, wanted, min_deposit)


def pay(
    state: PayerChannel, *, price: int, min_deposit: int, policy: DepositPolicy
) -> tuple[PayerChannel, PaymentPlan]:
    """Sign for one request priced `price`: the ceiling, and a deposit when the known balance
    plus the deposits in flight does not cover it. The new state holds the price in flight.

    >>> st, plan = pay(PayerChannel(), price=1000, min_deposit=0, policy=DepositPolicy())
    >>> plan
    PaymentPlan(ceiling=1000, deposit=10000)
    """
    ceiling = next_ceiling(state, price)
    available = state.balance + state.pending_deposits
    deposit = None
    if ceiling > available:
        deposit = deposit_size(policy, price, min_deposit, ceiling - available)
    new = replace(
        state,
        signed_floor=ceiling,
        signed_max=max(ceiling, state.signed_max),
        in_flight=state.in_flight + price,
        pending_deposits=state.pending_deposits + (deposit or 0),
    )
    return new, PaymentPlan(ceiling, deposit)


def release(state: PayerChannel, payment: InFlight, *, maybe_charged: bool = False) -> PayerChannel:
    """A payment the server did not charge; `maybe_charged`: its answer never came, so its
    price stays counted until a later answer tells.

    >>> release(PayerChannel(in_flight=1000), InFlight(1000), maybe_charged=True).maybe_charged
    1000
    """
    return replace(
        state,
        in_flight=state.in_flight - payment.price,
        pending_deposits=state.pending_deposits - payment.deposit,
        maybe_charged=state.maybe_charged + (payment.price if maybe_charged else 0),
    )


def check_response(response: SettleResponse, expected: ExpectedAnswer) -> ReportedCharge:
    """The spec's client verification rules on a paid answer's `PAYMENT-RESPONSE`, and our
    signed receipt (when sent, or when required). Raises PaymentError naming the field.

    >>> check_response(parse_payment_response(raw), expected).cumulative
    4000
    """
    if not response.success:
        raise PaymentError(_INVALID, "success", f"is false ({response.error_reason})")
    extra = response.extra
    if extra is None or extra.charged_amount is None:
        raise PaymentError(_INVALID, "extra.chargedAmount", "is required on a paid answer")
    cs = extra.channel_state
    if cs is None or cs.charged_cumulative_amount is None:
        raise PaymentError(_INVALID, "extra.channelState.chargedCumulativeAmount", "is required")
    charged, reported = extra.charged_amount, cs.charged_cumulative_amount
    if charged > expected.price:
        raise PaymentError(
            _INVALID, "extra.chargedAmount", f"{charged} exceeds the price {expected.price}"
        )
    if cs.channel_id != expected.channel_id:
        raise PaymentError(_INVALID, "extra.channelState.channelId", "is not this payment's channel")
    if response.network != expected.network:
        raise PaymentError(_INVALID, "network", f"{response.network} is not {expected.network}")
    if expected.deposit_amount is not None and response.amount not in (
        None,
        expected.deposit_amount,
    ):
        raise PaymentError(
            _INVALID, "amount", f"deposited {response.amount}, signed {expected.deposit_amount}"
        )
    receipt = extra.receipt
    if receipt is None:
        if expected.require_receipt:
            raise PaymentError(_INVALID, "extra.receipt", "is required (require_receipt=True)")
        return ReportedCharge(charged, reported, cs.balance)
    verify_receipt(receipt, expected.chain_id, expected.settlement, expected.receiver_authorizer)
    r = receipt.receipt
    if r.channel_id != expected.channel_id:
        raise PaymentError(_INVALID, "extra.receipt.channelId", "is not this payment's channel")
    if r.charged_amount != charged or r.cumulative_charged != reported:
        raise PaymentError(
            _INVALID, "extra.receipt", "charge figures differ from extra.chargedAmount/channelState"
        )
    if expected.request_digest is not None and r.request_digest != expected.request_digest:
        raise PaymentError(
            _INVALID, "extra.receipt.requestDigest", "is not the digest of the request sent"
        )
    if expected.result_digest is not None and r.result_digest != expected.result_digest:
        raise PaymentError(
            _INVALID, "extra.receipt.resultDigest", "is not the digest of the answer received"
        )
    return ReportedCharge(charged, reported, cs.balance)


def settle(
    state: PayerChannel, payment: InFlight, report: ReportedCharge, *, covered: int | None = None
) -> tuple[PayerChannel, str | None]:
    """Record a verified answer's charge: the new state, and why the channel must halt (None:
    consistent). The reported cumulative must be what this payer was charged, give or take
    what is still outstanding; once nothing is, it must equal it (charges of timed-out
    payments are absorbed then). The balance must cover it.

    `covered`: the charged total adopted while this payment was in flight (`adopt`); a
    charge the server numbered at or below it is already inside that total.

    >>> settle(PayerChannel(in_flight=1000, balance=10_000), InFlight(1000),
    ...        ReportedCharge(1000, 1000, 10_000))[1] is None
    True
    """
    counted = 0 if covered is not None and report.cumulative <= covered else report.charged
    charged = state.charged + counted
    max_reported = max(state.max_reported, report.cumulative)
    outstanding = state.in_flight - payment.price
    maybe_charged = state.maybe_charged
    problem = None
    if max_reported > charged + outstanding + maybe_charged:
        problem = (
            f"server reports cumulative {max_reported} but this payer was charged "
            f"{charged} with {outstanding + maybe_charged} at most outstanding"
        )
    elif not outstanding:
        if max_reported < charged:
            problem = f"server reports cumulative {max_reported}, below the {charged} it charged"
        else:  # quiescent: absorb the charges of timed-out payments, now known
            charged = max_reported
            maybe_charged = 0
    if problem is None and report.balance < max_reported:
        problem = f"channel balance {report.balance} is below the charged total {max_reported}"
    new = replace(
        state,
        in_flight=outstanding,
        pending_deposits=state.pending_deposits - payment.deposit,
        maybe_charged=maybe_charged,
        max_reported=max_reported,
    )
    if problem is not None:
        return new, problem
    # the server mirrors the chain, deposit included
    return replace(new, charged=charged, balance=report.balance), None


def refund_balance(state: PayerChannel, refunded: int, snapshot: ChannelStateSnapshot | None) -> int:
    """The channel's balance after a successful refund: the server's snapshot, else the
    known balance less the refund (never below what is charged).

    >>> refund_balance(PayerChannel(charged=3000, balance=10_000), 7000, None)
    3000
    """
    if snapshot is not None:
        return snapshot.balance
    return max(state.balance - refunded, state.charged)


def corrective_offer(
    required: PaymentRequired, requirements: PaymentRequirements
) -> PaymentRequirements:
    """The offer of a corrective 402 (``cumulative_amount_mismatch`` or
    ``cumulative_below_claimed``) that carries the channel state to check for `requirements`;
    PaymentError naming what is missing otherwise.

    >>> corrective_offer(required, payment.requirements).extra.channel_state.charged_cumulative_amount
    5000
    """
    if required.error not in (
        ErrorCode.CUMULATIVE_AMOUNT_MISMATCH,
        ErrorCode.CUMULATIVE_BELOW_CLAIMED,
    ):
        raise PaymentError(_INVALID, "error", f"{required.error} is not a corrective 402")
    for offer in required.accepts:
        if offer.matches(requirements) and offer.extra.channel_state:
            return offer
    raise PaymentError(
        _INVALID, "accepts[].extra.channelState", "missing: the server sent no channel state"
    )


def check_adoption(
    channel_state: ChannelStateSnapshot | None,
    voucher_state: VoucherStateSnapshot | None,
    *,
    channel_id: bytes,
    chain_id: int,
    settlement: bytes,
    voucher_signer: bytes,
    total_claimed: int | None = None,
    balance: int | None = None,
) -> Adoption:
    """Check a server's view of the payer's channel (a corrective 402, or GET
    /v1/channels/ID) before adopting it: the spec's recovery after state loss.

    The snapshot is of this channel; `voucherState.signature` is the payer's own voucher
    key's (`voucher_signer`) over `signedMaxClaimable`; `chargedCumulativeAmount` and
    `totalClaimed` are at most that signed maximum; the adopted charge is the larger of the
    charged total and totalClaimed (the snapshot's, or the chain's `total_claimed`), and
    the balance (the chain's `balance` over the snapshot's) covers it. Raises PaymentError
    (code invalid_payload) naming the field at fault.

    >>> check_adoption(cs, vs, channel_id=cid, chain_id=31337, settlement=s,
    ...                voucher_signer=signer.address_bytes).charged
    5000
    """
    cid = channel_id
    if channel_state is None:
        raise PaymentError(_INVALID, "extra.channelState", "missing: nothing to adopt")
    if voucher_state is None:
        raise PaymentError(
            _INVALID, "extra.voucherState",
            "missing: the server sent no voucher of this payer's proving its charged total; "
            "rebuild from the chain instead (rpc_url / paychan channel sync --rpc)",
        )
    cs, vs = channel_state, voucher_state
    if cs.channel_id != cid:
        raise PaymentError(_INVALID, "extra.channelState.channelId",
                           f"0x{cs.channel_id.hex()} is not this payer's channel")
    proven = cs.charged_cumulative_amount
    if proven is None:
        raise PaymentError(_INVALID, "extra.channelState.chargedCumulativeAmount", "missing")
    digest = voucher_digest(chain_id, settlement, cid, vs.signed_max_claimable)
    try:
        signer = recover_address(digest, vs.signature, field="extra.voucherState.signature")
    except PaymentError as exc:
        raise PaymentError(_INVALID, "extra.voucherState.signature", exc.message) from None
    if signer != voucher_signer:
        raise PaymentError(
            _INVALID, "extra.voucherState.signature",
            f"is signed by 0x{signer.hex()}, not this payer's voucher key "
            f"0x{voucher_signer.hex()}: the server's state is not proven; refusing it",
        )
    top = vs.signed_max_claimable
    for name, value in (("chargedCumulativeAmount", proven), ("totalClaimed", cs.total_claimed)):
        if value > top:
            raise PaymentError(
                _INVALID, f"extra.channelState.{name}",
                f"{value} is above {top}, the most this payer signed (voucherState."
                "signedMaxClaimable): refusing a charge the payer never authorized",
            )
    charged = max(proven, cs.total_claimed, total_claimed or 0)
    funds = cs.balance if balance is None else balance
    if funds < charged:
        raise PaymentError(
            _INVALID, "extra.channelState.balance",
            f"{funds} is below the charged total {charged}: the state is inconsistent; "
            "rebuild from the chain (rpc_url / paychan channel sync --rpc)",
        )
    return Adoption(charged, funds, vs.signed_max_claimable, vs.signature)


def adopt(state: PayerChannel, adoption: Adoption) -> PayerChannel:
    """Adopt a checked server state: its charged total, its proof as the signed floor, the
    balance; nothing is maybe charged any more.

    >>> adopt(PayerChannel(signed_max=9000), Adoption(5000, 10_000, 6000, sig)).signed_max
    9000
    """
    return replace(
        state,
        charged=adoption.charged,
        balance=adoption.balance,
        signed_floor=adoption.signed_floor,
        signed_max=max(state.signed_max, adoption.signed_floor),
        signature=adoption.signature,
        maybe_charged=0,
        max_reported=adoption.charged,
    )


def resync(state: PayerChannel, *, balance: int, total_claimed: int) -> PayerChannel:
    """Cold start from on-chain figures (the spec: charged = totalClaimed), never forgetting
    a charge already proved; the floor rises so no voucher goes at or below it.

    >>> resync(PayerChannel(charged=2000), balance=10_000, total_claimed=5000).charged
    5000
    """
    charged = max(total_claimed, state.charged)
    return replace(
        state,
        charged=charged,
        balance=balance,
        signed_floor=max(state.signed_floor, charged),
        max_reported=charged,
    )


def observe_chain(state: PayerChannel, *, balance: int, total_claimed: int) -> PayerChannel:
    """The on-chain balance after a chain event the payer caused (a finalized withdrawal),
    keeping every charge it already proved.

    >>> observe_chain(PayerChannel(charged=5000), balance=5000, total_claimed=4000).charged
    5000
    """
    charged = max(state.charged, total_claimed)
    return replace(
        state, charged=charged, balance=balance, max_reported=max(state.max_reported, charged)
    )
