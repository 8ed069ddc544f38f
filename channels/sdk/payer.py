"""The payer side of a channel (the SDK's core, no I/O but its own SQLite file).

A `Payer` turns a server's `PaymentRequirements` into signed `PAYMENT-SIGNATURE` payloads
(deposit, voucher or refund), checks every `PAYMENT-RESPONSE` against the spec's client
verification rules and our signed receipt, and keeps its cumulative state durably, so a
restarted client resumes where it stopped. Several requests may ride one channel at once:
each reserves its price on the payer side and signs the ceiling charged + in flight + price.

    >>> payer = Payer(Signer(key), "payer.sqlite", settlement=dep.settlement)
    >>> payment = payer.pay(requirements)                  # deposit first, vouchers after
    >>> headers = {"PAYMENT-SIGNATURE": payment.header}
    >>> payer.settle(payment, parse_payment_response(resp.headers["PAYMENT-RESPONSE"]))
    >>> payer.release(payment)                              # a failure the server did not charge
    >>> payer.recover(payment, parse_payment_required(resp.headers["PAYMENT-REQUIRED"]))
    >>> payer.adopt(requirements, channel_state, voucher_state)  # rebuild from a server's proof

The money rules themselves (the ceiling, deposit sizing, the client verification rules, the
recovery checks) are pure functions in `channels.protocol.payer_rules`; this class holds
the state they run on (a SQLite file, and what is in flight in memory) and the locks. The
HTTP side is `channels.sdk.PaymentClient` / `SyncPaymentClient`.

A new or stale file recovers as the spec's "Recovery After State Loss" says: `adopt` takes
the server's charged total only with the payer's own last voucher as proof, `resync` falls
back to the on-chain totalClaimed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from ..protocol import (
    CANONICAL_ERC3009_COLLECTOR_ADDRESS,
    CANONICAL_SETTLEMENT_ADDRESS,
    DEFAULT_DEPOSIT_MULTIPLIER,
    ChannelConfig,
    ChannelStateSnapshot,
    DepositPayload,
    DepositPolicy,
    ExpectedAnswer,
    InFlight,
    PayerChannel,
    PaymentError,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    RefundPayload,
    ResourceInfo,
    SettleResponse,
    Signer,
    VoucherPayload,
    VoucherStateSnapshot,
    channel_id,
    payer_rules,
    to_address,
)
from .errors import ChannelHalted, RecoveryRefused
from .models import ChannelRecord, Payment
from .payer_file import PayerFile
from .signing import sign_deposit, sign_voucher

__all__ = ["Payer"]


@dataclass(slots=True)
class _Live:
    """In-memory state of a channel: what is in flight right now (lost on restart, on purpose)."""

    in_flight: dict[int, int]  # payment id -> price reserved
    deposits: dict[int, int]  # payment id -> deposit amount not yet confirmed
    maybe_charged: int = 0  # released payments whose outcome is unknown (timeouts)
    max_reported: int = 0  # highest chargedCumulativeAmount the server reported
    # payment id -> the charged total adopted while it was in flight (see Payer.adopt): its
    # own charge is already inside that total when the server reports it at or below it
    covered: dict[int, int] = field(default_factory=dict)

    def keep(self, state: PayerChannel) -> None:
        """Take the live figures a rule decided (the per-payment maps stay the caller's)."""
        self.maybe_charged = state.maybe_charged
        self.max_reported = state.max_reported


def _view(rec: ChannelRecord, live: _Live | None = None) -> PayerChannel:
    """The rules' view of a channel: its record, and what is live on it."""
    state = PayerChannel(rec.charged, rec.balance, rec.signed_floor, rec.signed_max, rec.signature)
    if live is None:
        return state
    return replace(state, in_flight=sum(live.in_flight.values()),
                   pending_deposits=sum(live.deposits.values()),
                   maybe_charged=live.maybe_charged, max_reported=live.max_reported)


class Payer:
    """Signs channel payments for one payer key and keeps its state in a SQLite file.

    One process at a time per file: the reservations of requests in flight live in memory.

    Args:
        signer: the payer's key (deposits; and vouchers unless `voucher_signer` is given).
        path: SQLite file holding the channels (":memory:" for a throwaway payer).
        voucher_signer: the payerAuthorizer key that signs vouchers, if not `signer`.
        salt: the channel salt (32 bytes); another salt opens another channel.
        settlement, collector: the batch-settlement and ERC-3009 collector contracts.
        deposit_amount: how much one deposit adds, in token base units (default:
            `deposit_requests` request prices). Always at least the server's minDeposit and
            what the new ceiling needs. A later deposit on the same channel (a top-up) is
            sized the same way once the balance no longer covers the next request.
        deposit_requests: the deposit in request prices when `deposit_amount` is None
            (default DEFAULT_DEPOSIT_MULTIPLIER = 10).
        require_receipt: refuse answers without our signed receipt (servers other than
            paychan's gateway send none).
    """

    def __init__(
        self,
        signer: Signer,
        path: str | Path,
        *,
        voucher_signer: Signer | None = None,
        salt: bytes = bytes(32),
        settlement: str | bytes = CANONICAL_SETTLEMENT_ADDRESS,
        collector: str | bytes = CANONICAL_ERC3009_COLLECTOR_ADDRESS,
        deposit_amount: int | None = None,
        deposit_requests: int = DEFAULT_DEPOSIT_MULTIPLIER,
        require_receipt: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(salt) != 32:
            raise ValueError(f"salt must be 32 bytes, got {len(salt)}")
        if deposit_amount is not None and deposit_amount <= 0:
            raise ValueError(
                f"deposit_amount must be positive (token base units), got {deposit_amount}"
            )
        if deposit_requests < 1:
            raise ValueError(f"deposit_requests must be at least 1, got {deposit_requests}")
        self.path = str(path)
        self.signer = signer
        self.voucher_signer = voucher_signer or signer
        self.salt = salt
        self.settlement = to_address(settlement)
        self.collector = to_address(collector)
        self.deposit_amount = deposit_amount
        self.deposit_requests = deposit_requests
        self.require_receipt = require_receipt
        self._clock = clock
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._live: dict[bytes, _Live] = {}
        self._file = PayerFile(path)

    # --- queries ---------------------------------------------------------------------

    def channel_config(self, requirements: PaymentRequirements) -> ChannelConfig:
        """The channel this payer uses for an offer (payTo, receiverAuthorizer, asset, delay)."""
        return ChannelConfig(
            payer=self.signer.address_bytes,
            payer_authorizer=self.voucher_signer.address_bytes,
            receiver=requirements.pay_to,
            receiver_authorizer=requirements.extra.receiver_authorizer,
            token=requirements.asset,
            withdraw_delay=requirements.extra.withdraw_delay,
            salt=self.salt,
        )

    def channel_id(self, requirements: PaymentRequirements) -> bytes:
        """The channel id for an offer on its chain and this payer's settlement contract."""
        return channel_id(self.channel_config(requirements), requirements.chain_id, self.settlement)

    def channel(self, cid: bytes) -> ChannelRecord | None:
        """The stored record of a channel, or None."""
        return self._file.record(cid)

    def channels(self) -> list[ChannelRecord]:
        """Every channel this payer has signed for."""
        return self._file.records()

    @staticmethod
    def read_channels(path: str | Path) -> list[ChannelRecord]:
        """The channels stored in a payer file, read without the key (for `paychan channel list`).

            >>> [r.channel_id.hex() for r in Payer.read_channels("~/.paychan/payer.sqlite")]

        Raises FileNotFoundError when there is no such file (no channel was ever opened).
        """
        return PayerFile.read_records(path)

    def in_flight(self, cid: bytes) -> int:
        """Sum of the prices of this channel's unresolved payments."""
        live = self._live.get(cid)
        return sum(live.in_flight.values()) if live else 0

    def pay(
        self,
        requirements: PaymentRequirements,
        *,
        resource: ResourceInfo | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> Payment:
        """Sign the next payment for one request priced `requirements.amount`.

        A deposit payload when the channel's known balance does not cover the new ceiling,
        a voucher payload otherwise. Raises ChannelHalted after a failed verification.
        `extensions` rides in the payload as x402 `extensions` (e.g. the `payment-identifier`
        extension's id, when the server declared it):

            >>> payer.pay(offer, extensions={"payment-identifier": {"info": {"id": key}}})
        """
        price = requirements.amount
        config = self.channel_config(requirements)
        chain_id = requirements.chain_id
        cid = channel_id(config, chain_id, self.settlement)
        with self._lock, self._transaction():
            rec = self.channel(cid) or self._new_record(cid, chain_id, config)
            if rec.halted:
                raise ChannelHalted(cid, rec.halted)
            live = self._live_of(cid, rec)
            state, plan = payer_rules.pay(
                _view(rec, live), price=price, min_deposit=requirements.extra.min_deposit or 0,
                policy=DepositPolicy(self.deposit_amount, self.deposit_requests),
            )
            voucher = sign_voucher(self.voucher_signer, chain_id, self.settlement, cid, plan.ceiling)
            pid = next(self._ids)
            body: DepositPayload | VoucherPayload
            if plan.deposit is not None:
                deposit = sign_deposit(self.signer, requirements, self.collector, cid, plan.deposit,
                                       now=self._clock())
                body = DepositPayload(config, voucher, deposit)
            else:
                body = VoucherPayload(config, voucher)
            self._file.update(cid, signed_floor=state.signed_floor, signed_max=state.signed_max,
                              signature=voucher.signature)
            live.in_flight[pid] = price  # only once the ceiling is durable
            if plan.deposit is not None:
                live.deposits[pid] = plan.deposit
        payload = PaymentPayload(requirements, body, resource, extensions)
        return Payment(pid, cid, requirements, payload, price, plan.ceiling, plan.deposit)

    def refund(
        self,
        requirements: PaymentRequirements,
        amount: int | None = None,
        *,
        resource: ResourceInfo | None = None,
    ) -> Payment:
        """Sign a cooperative refund request: the spec's zero-charge voucher at `charged`.

        `amount` None asks for everything unclaimed. Needs no payment in flight.
        """
        if amount is not None and amount <= 0:
            raise ValueError("refund amount must be positive; None refunds everything")
        chain_id = requirements.chain_id
        config = self.channel_config(requirements)
        cid = channel_id(config, chain_id, self.settlement)
        with self._lock:
            rec = self.channel(cid)
            if rec is None:
                raise ValueError(f"no channel 0x{cid.hex()} to refund: deposit first")
            if rec.halted:
                raise ChannelHalted(cid, rec.halted)
            if self.in_flight(cid):
                raise ValueError("refund needs no payment in flight on the channel")
            voucher = sign_voucher(self.voucher_signer, chain_id, self.settlement, cid, rec.charged)
            pid = next(self._ids)
        body = RefundPayload(config, voucher, amount)
        return Payment(
            pid, cid, requirements, PaymentPayload(requirements, body, resource), 0, rec.charged
        )

    # --- answers ---------------------------------------------------------------------

    def settle(
        self,
        payment: Payment,
        response: SettleResponse,
        *,
        request_digest: bytes | None = None,
        result_digest: bytes | None = None,
        require_receipt: bool | None = None,
    ) -> ChannelRecord:
        """Check a paid answer's `PAYMENT-RESPONSE` and record the charge.

        The spec's client rules: chargedAmount <= the price; the channel id matches; the
        reported cumulative charge is consistent with what this payer has paid and has in
        flight; the balance covers it; our receipt (when sent, or when required) is signed by
        the receiverAuthorizer and repeats the same figures (and, when given, the sha256
        digests of the request and response bodies). Any failure halts the channel
        (ChannelHalted) and nothing is recorded. `require_receipt` overrides the payer's
        setting for this answer.
        """
        if isinstance(payment.payload.payload, RefundPayload):
            return self._settle_refund(payment, response)
        cid, offer = payment.channel_id, payment.requirements
        expected = ExpectedAnswer(
            cid, payment.price, offer.network, offer.chain_id, self.settlement,
            offer.extra.receiver_authorizer, payment.deposit_amount,
            self.require_receipt if require_receipt is None else require_receipt,
            request_digest, result_digest,
        )
        with self._lock, self._transaction():
            rec = self.channel(cid)
            live = self._live_of(cid, rec)
            if rec is None or payment.id not in live.in_flight:
                raise ValueError(f"payment {payment.id} is not in flight (settled or released)")
            try:
                report = payer_rules.check_response(response, expected)
            except PaymentError as exc:
                live.in_flight.pop(payment.id)
                live.deposits.pop(payment.id, None)
                self._halt(rec, f"{exc.field}: {exc.message}")
                raise ChannelHalted(cid, f"{exc.field}: {exc.message}") from exc
            before = _view(rec, live)  # the payment still in flight: the rule resolves it
            flight = InFlight(live.in_flight.pop(payment.id), live.deposits.pop(payment.id, 0))
            state, problem = payer_rules.settle(
                before, flight, report, covered=live.covered.pop(payment.id, None)
            )
            live.keep(state)
            if problem:
                self._halt(rec, problem)
                raise ChannelHalted(cid, problem)
            self._file.update(cid, charged=state.charged, balance=state.balance)
            return replace(rec, charged=state.charged, balance=state.balance)

    def release(self, payment: Payment, *, maybe_charged: bool = False) -> None:
        """Forget a payment the server did not charge (an error answer, a refused payment).

        `maybe_charged=True` for a payment whose answer never came (timeout, lost
        connection): the server may have charged it, so its price stays counted until a
        later answer tells.
        """
        with self._lock:
            live = self._live.get(payment.channel_id)
            if live is None or payment.id not in live.in_flight:
                return
            price = live.in_flight.pop(payment.id)
            live.deposits.pop(payment.id, None)
            live.covered.pop(payment.id, None)
            state = PayerChannel(maybe_charged=live.maybe_charged, in_flight=price)
            live.keep(replace(payer_rules.release(state, InFlight(price), maybe_charged=maybe_charged),
                              max_reported=live.max_reported))

    def recover(
        self,
        payment: Payment,
        required: PaymentRequired,
        *,
        total_claimed: int | None = None,
        balance: int | None = None,
    ) -> bool:
        """Adopt the server's state from a corrective 402, after verifying its proof.

        The 402 must carry `cumulative_amount_mismatch` or `cumulative_below_claimed` (the
        ceiling is at or below what is claimed on chain: this file is new or stale), with
        `channelState` and `voucherState` passing `adopt`'s checks. `total_claimed` and
        `balance` are the chain's figures when the caller read them. Returns False (and adopts
        nothing) otherwise. The payment is released either way; pay again afterwards.
        """
        return self.recover_reason(payment, required, total_claimed=total_claimed,
                                   balance=balance) is None

    def recover_reason(
        self,
        payment: Payment,
        required: PaymentRequired,
        *,
        total_claimed: int | None = None,
        balance: int | None = None,
    ) -> str | None:
        """`recover`, answering why nothing was adopted (None: adopted).

            >>> payer.recover_reason(payment, required)
            'extra.voucherState.signature: is signed by 0x70997970..., not this payer's ...'
        """
        self.release(payment)
        try:
            offer = payer_rules.corrective_offer(required, payment.requirements)
            self.adopt(
                payment.requirements,
                offer.extra.channel_state,
                offer.extra.voucher_state,
                total_claimed=total_claimed,
                balance=balance,
            )
        except PaymentError as exc:  # not corrective, or RecoveryRefused
            return f"{exc.field}: {exc.message}"
        except ChannelHalted as exc:
            return f"channel halted: {exc.reason}"
        return None

    def adopt(
        self,
        requirements: PaymentRequirements,
        channel_state: ChannelStateSnapshot | None,
        voucher_state: VoucherStateSnapshot | None,
        *,
        total_claimed: int | None = None,
        balance: int | None = None,
    ) -> ChannelRecord:
        """Adopt a server's view of this payer's channel for `requirements` (its corrective
        402, or GET /v1/channels/ID), after checking it: the spec's recovery after state loss.

            >>> rec = payer.adopt(offer, view_state, view_voucher, total_claimed=onchain.total_claimed)
            >>> rec.charged, rec.signed_floor     # the server's charged total, its proof

        Checks, any failure raising RecoveryRefused (nothing is written):
        the snapshot is of this payer's channel; `voucherState.signature` is this payer's own
        voucher key's signature over `signedMaxClaimable`; `chargedCumulativeAmount` and
        `totalClaimed` are at most that signed maximum (the payer never adopts a charge it did
        not sign for); the balance covers the charge. The adopted charge is never below
        `totalClaimed` (the snapshot's, or the chain's `total_claimed` when the caller read
        it): a ceiling at or below it would be refused again. `balance` (the chain's) wins
        over the snapshot's. Creates the record when this file has none (a new file).
        Raises ChannelHalted for a halted channel.
        """
        config = self.channel_config(requirements)
        chain_id = requirements.chain_id
        cid = channel_id(config, chain_id, self.settlement)
        try:
            adoption = payer_rules.check_adoption(
                channel_state, voucher_state, channel_id=cid, chain_id=chain_id,
                settlement=self.settlement, voucher_signer=self.voucher_signer.address_bytes,
                total_claimed=total_claimed, balance=balance,
            )
        except PaymentError as exc:
            raise RecoveryRefused(cid, exc.field or "", exc.message) from None
        with self._lock, self._transaction():
            rec = self.channel(cid) or self._new_record(cid, chain_id, config)
            if rec.halted:
                raise ChannelHalted(cid, rec.halted)
            live = self._live_of(cid, rec)
            state = payer_rules.adopt(_view(rec, live), adoption)
            live.keep(state)
            # Payments still in flight may be inside the adopted total already (committed,
            # answer not back yet): settle must not add those a second time.
            live.covered.update(dict.fromkeys(live.in_flight, state.charged))
            self._file.update(cid, charged=state.charged, signed_floor=state.signed_floor,
                              signed_max=state.signed_max, signature=state.signature,
                              balance=state.balance)
            return replace(rec, charged=state.charged, signed_floor=state.signed_floor,
                           signed_max=state.signed_max, signature=state.signature,
                           balance=state.balance)

    def resync(
        self, requirements: PaymentRequirements, *, balance: int, total_claimed: int
    ) -> None:
        """Cold start from on-chain `channels(channelId)`: charged = totalClaimed (the spec).

        For a payer that lost its file or never had one; the caller reads the chain.
        """
        config = self.channel_config(requirements)
        cid = channel_id(config, requirements.chain_id, self.settlement)
        with self._lock, self._transaction():
            rec = self.channel(cid) or self._new_record(cid, requirements.chain_id, config)
            live = self._live_of(cid, rec)
            state = payer_rules.resync(_view(rec, live), balance=balance, total_claimed=total_claimed)
            self._file.update(cid, charged=state.charged, balance=state.balance,
                              signed_floor=state.signed_floor)
            live.keep(state)

    def observe_chain(self, cid: bytes, *, balance: int, total_claimed: int) -> ChannelRecord:
        """Record the channel's on-chain balance after a chain event this payer caused
        (a finalized withdrawal), keeping every charge it already proved.

            >>> payer.observe_chain(cid, balance=onchain.balance, total_claimed=onchain.claimed)
        """
        with self._lock, self._transaction():
            rec = self.channel(cid)
            if rec is None:
                raise ValueError(f"no channel 0x{cid.hex()} in {self.path}")
            live = self._live_of(cid, rec)
            state = payer_rules.observe_chain(
                _view(rec, live), balance=balance, total_claimed=total_claimed
            )
            self._file.update(cid, charged=state.charged, balance=state.balance)
            live.keep(state)
            return replace(rec, charged=state.charged, balance=state.balance)

    def close(self) -> None:
        """Close the SQLite file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[None]:
        return self._file.transaction()

    def _live_of(self, cid: bytes, rec: ChannelRecord | None) -> _Live:
        live = self._live.get(cid)
        if live is None:
            live = self._live[cid] = _Live({}, {}, 0, rec.charged if rec else 0)
        return live

    def _new_record(self, cid: bytes, chain_id: int, config: ChannelConfig) -> ChannelRecord:
        return self._file.insert(cid, chain_id, self.settlement, config)

    def halt(self, cid: bytes, reason: str) -> None:
        """Sign nothing more on channel ``cid``: a check made outside the payer failed (the
        answer's model is not published by the receipt key: ``channels.sdk.provenance``)."""
        self._halt(self.channel(cid), reason)

    def _halt(self, rec: ChannelRecord | None, reason: str) -> None:
        if rec is not None:
            self._file.update(rec.channel_id, halted=reason)

    def _settle_refund(self, payment: Payment, response: SettleResponse) -> ChannelRecord:
        cid = payment.channel_id
        with self._lock, self._transaction():
            rec = self.channel(cid)
            assert rec is not None
            if not response.success:
                return rec
            cs = response.extra.channel_state if response.extra else None
            balance = payer_rules.refund_balance(_view(rec), response.amount or 0, cs)
            self._file.update(cid, balance=balance)
            return replace(rec, balance=balance)
