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

The HTTP side (`PaymentClient`, `SyncPaymentClient`) lives in `channels.sdk.client`.

Ceilings never go below the highest voucher signed before, except where the server proves,
with the payer's own voucher signature, a lower state (the spec's corrective 402) and for the
spec's zero-charge refund voucher.

A payer whose file is new or stale (deleted, or another file of the same key paid since)
recovers as the spec's "Recovery After State Loss" says: it adopts the server's
`chargedCumulativeAmount` only with the server's copy of the payer's own last voucher
(`voucherState`), checked here (`adopt`), or falls back to the on-chain `totalClaimed`
(`resync`).
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from ..protocol.eip712 import (
    CANONICAL_ERC3009_COLLECTOR_ADDRESS,
    CANONICAL_SETTLEMENT_ADDRESS,
    channel_id,
    erc3009_deposit_nonce,
    receive_with_authorization_digest,
    to_address,
    voucher_digest,
)
from ..protocol.errors import ErrorCode, PaymentError
from ..protocol.signing import Signer
from ..protocol.verify import recover_address, verify_receipt
from ..protocol.wire import (
    ChannelConfig,
    ChannelStateSnapshot,
    Deposit,
    DepositPayload,
    Erc3009Authorization,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    RefundPayload,
    ResourceInfo,
    SettleResponse,
    Voucher,
    VoucherPayload,
    VoucherStateSnapshot,
    encode_payment_signature,
)

__all__ = [
    "DEFAULT_DEPOSIT_MULTIPLIER",
    "ChannelHalted",
    "ChannelRecord",
    "Payer",
    "Payment",
    "RecoveryRefused",
]

# Deposit this many request prices when no amount is set: one on-chain deposit then pays for
# ten requests, and at most ten prices sit in escrow unspent.
DEFAULT_DEPOSIT_MULTIPLIER = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id   BLOB PRIMARY KEY,
    chain_id     INTEGER NOT NULL,
    settlement   BLOB NOT NULL,
    config       TEXT NOT NULL,
    signed_floor TEXT NOT NULL,
    signed_max   TEXT NOT NULL,
    signature    BLOB,
    charged      TEXT NOT NULL,
    balance      TEXT NOT NULL,
    halted       TEXT
)
"""


class ChannelHalted(RuntimeError):
    """The server broke a client verification rule on this channel: sign nothing more on it.

    The spec's advice is to start a timed withdrawal (`initiateWithdraw`) for the rest.
    """

    def __init__(self, channel_id: bytes, reason: str) -> None:
        self.channel_id = channel_id
        self.reason = reason
        super().__init__(f"channel 0x{channel_id.hex()} halted: {reason}")


class RecoveryRefused(PaymentError):
    """A server's channel state failed the payer's checks, so nothing was adopted.

    `field` names the check (e.g. ``extra.voucherState.signature``: not this payer's own
    voucher; ``extra.channelState.chargedCumulativeAmount``: above what the payer signed).

        >>> try: payer.adopt(offer, state, proof)
        ... except RecoveryRefused as exc: print(exc.field, exc.message)
    """

    def __init__(self, channel_id: bytes, field: str, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PAYLOAD, field, message)
        self.channel_id = channel_id

    def __str__(self) -> str:
        return (f"channel 0x{self.channel_id.hex()}: the server's state was not adopted: "
                f"{self.field}: {self.message}")


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """The payer's durable view of one channel (amounts in token base units)."""

    channel_id: bytes
    chain_id: int
    settlement: bytes
    config: ChannelConfig
    signed_floor: int  # no ceiling is signed below this (raised by every voucher signed)
    signed_max: int  # the highest ceiling ever signed: the payer's exposure on this channel
    signature: bytes | None  # the voucher signature at signed_floor
    charged: int  # cumulative charge the server proved (responses and receipts verified)
    balance: int  # channel balance as last known (deposits and the server's snapshot)
    halted: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """One signed payment, in flight until `settle`, `release` or `recover` resolves it."""

    id: int
    channel_id: bytes
    requirements: PaymentRequirements
    payload: PaymentPayload
    price: int
    ceiling: int
    deposit_amount: int | None = None

    @property
    def header(self) -> str:
        """The `PAYMENT-SIGNATURE` header value."""
        return encode_payment_signature(self.payload)


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
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a signed ceiling is on disk before it leaves
        self._db.execute(_SCHEMA)

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
        row = self._db.execute("SELECT * FROM channels WHERE channel_id = ?", (cid,)).fetchone()
        return None if row is None else _record(row)

    def channels(self) -> list[ChannelRecord]:
        """Every channel this payer has signed for."""
        return [_record(r) for r in self._db.execute("SELECT * FROM channels ORDER BY rowid")]

    @staticmethod
    def read_channels(path: str | Path) -> list[ChannelRecord]:
        """The channels stored in a payer file, read without the key (for `paychan channel list`).

            >>> [r.channel_id.hex() for r in Payer.read_channels("~/.paychan/payer.sqlite")]

        Raises FileNotFoundError when there is no such file (no channel was ever opened).
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no payer state file at {path}")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT * FROM channels ORDER BY rowid").fetchall()
        except sqlite3.DatabaseError as exc:  # another file, or not SQLite at all
            raise ValueError(f"{path} is not a payer state file ({exc})") from None
        finally:
            db.close()
        return [_record(r) for r in rows]

    def in_flight(self, cid: bytes) -> int:
        """Sum of the prices of this channel's unresolved payments."""
        live = self._live.get(cid)
        return sum(live.in_flight.values()) if live else 0

    # --- paying ----------------------------------------------------------------------

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
            reserved = sum(live.in_flight.values())
            ceiling = max(rec.signed_floor, rec.charged + live.maybe_charged + reserved + price)
            available = rec.balance + sum(live.deposits.values())
            digest = voucher_digest(chain_id, self.settlement, cid, ceiling)
            voucher = Voucher(cid, ceiling, self.voucher_signer.sign_digest(digest))
            pid = next(self._ids)
            deposit_amount = None
            if ceiling > available:
                deposit_amount = self._deposit_size(requirements, ceiling - available)
                body = DepositPayload(
                    config, voucher, self._deposit(requirements, cid, deposit_amount)
                )
            else:
                body = VoucherPayload(config, voucher)
            self._db.execute(
                "UPDATE channels SET signed_floor = ?, signed_max = ?, signature = ? "
                "WHERE channel_id = ?",
                (str(ceiling), str(max(ceiling, rec.signed_max)), voucher.signature, cid),
            )
            live.in_flight[pid] = price  # only once the ceiling is durable
            if deposit_amount is not None:
                live.deposits[pid] = deposit_amount
        payload = PaymentPayload(requirements, body, resource, extensions)
        return Payment(pid, cid, requirements, payload, price, ceiling, deposit_amount)

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
            digest = voucher_digest(chain_id, self.settlement, cid, rec.charged)
            voucher = Voucher(cid, rec.charged, self.voucher_signer.sign_digest(digest))
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
        cid = payment.channel_id
        with self._lock, self._transaction():
            rec = self.channel(cid)
            live = self._live_of(cid, rec)
            if payment.id not in live.in_flight:
                raise ValueError(f"payment {payment.id} is not in flight (settled or released)")
            try:
                charged, reported, balance = self._check_response(
                    payment, response, request_digest, result_digest, require_receipt
                )
            except PaymentError as exc:
                live.in_flight.pop(payment.id)
                live.deposits.pop(payment.id, None)
                self._halt(rec, f"{exc.field}: {exc.message}")
                raise ChannelHalted(cid, f"{exc.field}: {exc.message}") from exc
            live.in_flight.pop(payment.id)
            live.deposits.pop(payment.id, None)
            adopted = live.covered.pop(payment.id, None)
            # A charge the server numbered at or below a total adopted meanwhile is in it.
            new_charged = rec.charged + (0 if adopted is not None and reported <= adopted else charged)
            live.max_reported = max(live.max_reported, reported)
            outstanding = sum(live.in_flight.values())
            problem = None
            if live.max_reported > new_charged + outstanding + live.maybe_charged:
                problem = (
                    f"server reports cumulative {live.max_reported} but this payer was charged "
                    f"{new_charged} with {outstanding + live.maybe_charged} at most outstanding"
                )
            elif not outstanding:
                if live.max_reported < new_charged:
                    problem = (
                        f"server reports cumulative {live.max_reported}, below the "
                        f"{new_charged} it charged"
                    )
                else:  # quiescent: absorb the charges of timed-out payments, now known
                    new_charged = live.max_reported
                    live.maybe_charged = 0
            if problem is None and balance < live.max_reported:
                problem = (
                    f"channel balance {balance} is below the charged total {live.max_reported}"
                )
            if problem:
                self._halt(rec, problem)
                raise ChannelHalted(cid, problem)
            new_balance = balance  # the server mirrors the chain, deposit included
            self._db.execute(
                "UPDATE channels SET charged = ?, balance = ? WHERE channel_id = ?",
                (str(new_charged), str(new_balance), cid),
            )
            return replace(rec, charged=new_charged, balance=new_balance)

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
            if maybe_charged:
                live.maybe_charged += price

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
        if required.error not in (
            ErrorCode.CUMULATIVE_AMOUNT_MISMATCH,
            ErrorCode.CUMULATIVE_BELOW_CLAIMED,
        ):
            return f"error: {required.error} is not a corrective 402"
        offer = next(
            (
                a
                for a in required.accepts
                if a.matches(payment.requirements) and a.extra.channel_state
            ),
            None,
        )
        if offer is None:
            return "accepts[].extra.channelState: missing: the server sent no channel state"
        try:
            self.adopt(
                payment.requirements,
                offer.extra.channel_state,
                offer.extra.voucher_state,
                total_claimed=total_claimed,
                balance=balance,
            )
        except RecoveryRefused as exc:
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
        proven = self._check_proof(cid, chain_id, channel_state, voucher_state)
        cs, vs = channel_state, voucher_state
        assert cs is not None and vs is not None
        charged = max(proven, cs.total_claimed, total_claimed or 0)
        funds = cs.balance if balance is None else balance
        if funds < charged:
            raise RecoveryRefused(
                cid, "extra.channelState.balance",
                f"{funds} is below the charged total {charged}: the state is inconsistent; "
                "rebuild from the chain (rpc_url / paychan channel sync --rpc)",
            )
        with self._lock, self._transaction():
            rec = self.channel(cid) or self._new_record(cid, chain_id, config)
            if rec.halted:
                raise ChannelHalted(cid, rec.halted)
            live = self._live_of(cid, rec)
            live.maybe_charged = 0
            live.max_reported = charged
            # Payments still in flight may be inside the adopted total already (committed,
            # answer not back yet): settle must not add those a second time.
            live.covered.update(dict.fromkeys(live.in_flight, charged))
            signed_max = max(rec.signed_max, vs.signed_max_claimable)
            self._db.execute(
                "UPDATE channels SET charged = ?, signed_floor = ?, signed_max = ?, signature = ?,"
                " balance = ? WHERE channel_id = ?",
                (str(charged), str(vs.signed_max_claimable), str(signed_max), vs.signature,
                 str(funds), cid),
            )
            return replace(rec, charged=charged, signed_floor=vs.signed_max_claimable,
                           signed_max=signed_max, signature=vs.signature, balance=funds)

    def _check_proof(
        self,
        cid: bytes,
        chain_id: int,
        cs: ChannelStateSnapshot | None,
        vs: VoucherStateSnapshot | None,
    ) -> int:
        """The server's chargedCumulativeAmount, once its proof checks out (see `adopt`)."""
        if cs is None:
            raise RecoveryRefused(cid, "extra.channelState", "missing: nothing to adopt")
        if vs is None:
            raise RecoveryRefused(
                cid, "extra.voucherState",
                "missing: the server sent no voucher of this payer's proving its charged total; "
                "rebuild from the chain instead (rpc_url / paychan channel sync --rpc)",
            )
        if cs.channel_id != cid:
            raise RecoveryRefused(cid, "extra.channelState.channelId",
                                  f"0x{cs.channel_id.hex()} is not this payer's channel")
        charged = cs.charged_cumulative_amount
        if charged is None:
            raise RecoveryRefused(cid, "extra.channelState.chargedCumulativeAmount", "missing")
        digest = voucher_digest(chain_id, self.settlement, cid, vs.signed_max_claimable)
        try:
            signer = recover_address(digest, vs.signature, field="extra.voucherState.signature")
        except PaymentError as exc:
            raise RecoveryRefused(cid, "extra.voucherState.signature", exc.message) from None
        mine = self.voucher_signer.address_bytes
        if signer != mine:
            raise RecoveryRefused(
                cid, "extra.voucherState.signature",
                f"is signed by 0x{signer.hex()}, not this payer's voucher key 0x{mine.hex()}: "
                "the server's state is not proven; refusing it",
            )
        top = vs.signed_max_claimable
        for name, value in (("chargedCumulativeAmount", charged), ("totalClaimed", cs.total_claimed)):
            if value > top:
                raise RecoveryRefused(
                    cid, f"extra.channelState.{name}",
                    f"{value} is above {top}, the most this payer signed (voucherState."
                    "signedMaxClaimable): refusing a charge the payer never authorized",
                )
        return charged

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
            # never forget charges this payer already proved
            total_claimed = max(total_claimed, rec.charged)
            floor = max(rec.signed_floor, total_claimed)
            self._db.execute(
                "UPDATE channels SET charged = ?, balance = ?, signed_floor = ?"
                " WHERE channel_id = ?",
                (str(total_claimed), str(balance), str(floor), cid),
            )
            live = self._live_of(cid, rec)
            live.max_reported = total_claimed

    def observe_chain(self, cid: bytes, *, balance: int, total_claimed: int) -> ChannelRecord:
        """Record the channel's on-chain balance after a chain event this payer caused
        (a finalized withdrawal), keeping every charge it already proved.

            >>> payer.observe_chain(cid, balance=onchain.balance, total_claimed=onchain.claimed)
        """
        with self._lock, self._transaction():
            rec = self.channel(cid)
            if rec is None:
                raise ValueError(f"no channel 0x{cid.hex()} in {self.path}")
            charged = max(rec.charged, total_claimed)
            self._db.execute(
                "UPDATE channels SET charged = ?, balance = ? WHERE channel_id = ?",
                (str(charged), str(balance), cid),
            )
            live = self._live_of(cid, rec)
            live.max_reported = max(live.max_reported, charged)
            return replace(rec, charged=charged, balance=balance)

    def close(self) -> None:
        """Close the SQLite file."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    def _live_of(self, cid: bytes, rec: ChannelRecord | None) -> _Live:
        live = self._live.get(cid)
        if live is None:
            live = self._live[cid] = _Live({}, {}, 0, rec.charged if rec else 0)
        return live

    def _new_record(self, cid: bytes, chain_id: int, config: ChannelConfig) -> ChannelRecord:
        self._db.execute(
            "INSERT INTO channels (channel_id, chain_id, settlement, config, signed_floor,"
            " signed_max, signature, charged, balance)"
            " VALUES (?, ?, ?, ?, '0', '0', NULL, '0', '0')",
            (cid, chain_id, self.settlement, json.dumps(config.to_json())),
        )
        return ChannelRecord(cid, chain_id, self.settlement, config, 0, 0, None, 0, 0)

    def _halt(self, rec: ChannelRecord | None, reason: str) -> None:
        if rec is not None:
            self._db.execute(
                "UPDATE channels SET halted = ? WHERE channel_id = ?", (reason, rec.channel_id)
            )

    def _deposit_size(self, requirements: PaymentRequirements, needed: int) -> int:
        wanted = self.deposit_amount or self.deposit_requests * requirements.amount
        return max(needed, wanted, requirements.extra.min_deposit or 0)

    def _deposit(self, requirements: PaymentRequirements, cid: bytes, amount: int) -> Deposit:
        valid_before = int(self._clock()) + max(requirements.max_timeout_seconds, 60)
        salt = os.urandom(32)
        digest = receive_with_authorization_digest(
            requirements.chain_id,
            requirements.asset,
            requirements.extra.name,
            requirements.extra.version,
            from_=self.signer.address_bytes,
            to=self.collector,
            value=amount,
            valid_after=0,
            valid_before=valid_before,
            nonce=erc3009_deposit_nonce(cid, salt),
        )
        auth = Erc3009Authorization(0, valid_before, salt, self.signer.sign_digest(digest))
        return Deposit(amount, auth)

    def _check_response(
        self,
        payment: Payment,
        response: SettleResponse,
        request_digest: bytes | None,
        result_digest: bytes | None = None,
        require_receipt: bool | None = None,
    ) -> tuple[int, int, int]:
        """(chargedAmount, chargedCumulativeAmount, balance) of a verified paid answer."""
        fail = _failer(ErrorCode.INVALID_PAYLOAD)
        if not response.success:
            raise fail("success", f"is false ({response.error_reason})")
        extra = response.extra
        if extra is None or extra.charged_amount is None:
            raise fail("extra.chargedAmount", "is required on a paid answer")
        cs = extra.channel_state
        if cs is None or cs.charged_cumulative_amount is None:
            raise fail("extra.channelState.chargedCumulativeAmount", "is required")
        charged, reported = extra.charged_amount, cs.charged_cumulative_amount
        if charged > payment.price:
            raise fail("extra.chargedAmount", f"{charged} exceeds the price {payment.price}")
        if cs.channel_id != payment.channel_id:
            raise fail("extra.channelState.channelId", "is not this payment's channel")
        if response.network != payment.requirements.network:
            raise fail("network", f"{response.network} is not {payment.requirements.network}")
        if payment.deposit_amount is not None and response.amount not in (
            None,
            payment.deposit_amount,
        ):
            raise fail("amount", f"deposited {response.amount}, signed {payment.deposit_amount}")
        receipt = extra.receipt
        if receipt is None:
            if self.require_receipt if require_receipt is None else require_receipt:
                raise fail("extra.receipt", "is required (require_receipt=True)")
            return charged, reported, cs.balance
        verify_receipt(
            receipt,
            payment.requirements.chain_id,
            self.settlement,
            payment.requirements.extra.receiver_authorizer,
        )
        r = receipt.receipt
        if r.channel_id != payment.channel_id:
            raise fail("extra.receipt.channelId", "is not this payment's channel")
        if r.charged_amount != charged or r.cumulative_charged != reported:
            raise fail(
                "extra.receipt", "charge figures differ from extra.chargedAmount/channelState"
            )
        if request_digest is not None and r.request_digest != request_digest:
            raise fail("extra.receipt.requestDigest", "is not the digest of the request sent")
        if result_digest is not None and r.result_digest != result_digest:
            raise fail("extra.receipt.resultDigest", "is not the digest of the answer received")
        return charged, reported, cs.balance

    def _settle_refund(self, payment: Payment, response: SettleResponse) -> ChannelRecord:
        cid = payment.channel_id
        with self._lock, self._transaction():
            rec = self.channel(cid)
            assert rec is not None
            if not response.success:
                return rec
            refunded = response.amount or 0
            cs = response.extra.channel_state if response.extra else None
            balance = cs.balance if cs is not None else max(rec.balance - refunded, rec.charged)
            self._db.execute(
                "UPDATE channels SET balance = ? WHERE channel_id = ?", (str(balance), cid)
            )
            return replace(rec, balance=balance)


def _failer(code: ErrorCode) -> Callable[[str, str], PaymentError]:
    return lambda field, message: PaymentError(code, field, message)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: several payer processes may share one file."""

    __slots__ = ("_db", "_owner")

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._owner = True
        else:
            self._owner = False

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._owner:
            return
        self._db.execute(
            "ROLLBACK" if exc_type is not None and exc_type is not ChannelHalted else "COMMIT"
        )


def _record(row: tuple) -> ChannelRecord:
    cid, chain_id, settlement, config, floor, smax, sig, charged, balance, halted = row
    c = json.loads(config)
    cfg = ChannelConfig(
        to_address(c["payer"]),
        to_address(c["payerAuthorizer"]),
        to_address(c["receiver"]),
        to_address(c["receiverAuthorizer"]),
        to_address(c["token"]),
        int(c["withdrawDelay"]),
        bytes.fromhex(c["salt"][2:]),
    )
    return ChannelRecord(
        cid,
        chain_id,
        settlement,
        cfg,
        int(floor),
        int(smax),
        sig,
        int(charged),
        int(balance),
        halted,
    )


# --- the HTTP shell moved to channels/client.py; these names stay importable from here ----

_MOVED = {"PaidResponse", "PaymentClient"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # lazily: client imports this module, and aiohttp only when used
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'channels.sdk.payer' has no attribute {name!r}")
