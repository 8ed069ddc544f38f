"""Sending the provider's transactions: estimate, price, sign, journal, broadcast, follow.

One key sends everything. Each transaction is estimated (with headroom), signed, recorded in
the `TxJournal` BEFORE it is broadcast, then followed to its receipt: fees are bumped when it
sits unmined, RPC failures are retried with backoff, and a receipt with status 0 raises
`TxReverted`. `ChainClient` sends through one `TxSender`::

    sender = TxSender(w3, provider_key, journal=TxJournal(store), policy=TxPolicy(),
                      revert_reason=lambda exc: str(exc))
    result = await sender.transact("settle", calldata, to=settlement)   # TxResult
    await sender.recover()                       # finish what a previous run left pending

Nonces are reserved by creating the journal entry atomically (`kv_cas`), so several gateway
processes sharing one Redis store never hand out the same nonce.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound
from web3.types import TxParams, Wei

from channels.protocol import checksum_address

from .chain_health import ChainHealth
from .tx_outcomes import (
    SimulationFailed,
    TxFailed,
    TxPolicy,
    TxResult,
    TxReverted,
    TxTimeout,
    is_transport_error,
)
from .txjournal import DROPPED, MINED, REVERTED, Attempt, JournalEntry, TxJournal

__all__ = ["TxSender"]

log = logging.getLogger("paychan.chain")
T = TypeVar("T")

_RECEIPT_LAG_POLLS = 8  # x TxPolicy.poll_s: ~2 s by default


def _hex(b: bytes | str) -> str:
    return b if isinstance(b, str) else "0x" + bytes(b).hex()


# --------------------------------------------------------------------------- the sender


@dataclass(slots=True)
class _Nonces:
    hint: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)



class TxSender:
    """The one key that sends the provider's transactions, and the node it talks to.

    `journal` is where every signed transaction is recorded before it is sent;
    `revert_reason` turns a failed estimate into the contract's error name (ChainClient's).
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        key: str,
        *,
        journal: TxJournal,
        policy: TxPolicy,
        revert_reason: Callable[[BaseException], str],
    ) -> None:
        self.w3 = w3
        self._account = Account.from_key(key)
        self.address: ChecksumAddress = self._account.address
        self.journal = journal
        self.policy = policy
        self._revert_reason = revert_reason
        self._nonces = _Nonces()
        self._chain_id: int | None = None
        self._send_lock = asyncio.Lock()  # one signer: sign + journal + broadcast in order
        self.rpc_failures = 0  # transport failures retried so far (outages show here)
        self.health: ChainHealth | None = None  # told of every call that reached the node or not

    async def rpc(
        self, call: Callable[[], Awaitable[T]], *, what: str, deadline_s: float | None = None
    ) -> T:
        """Run an RPC call, retrying transport failures with exponential backoff (with jitter)
        until `deadline_s` (default: the receipt timeout) has passed."""
        deadline = time.monotonic() + (
            deadline_s if deadline_s is not None else self.policy.receipt_timeout_s
        )
        delay = self.policy.backoff_s
        while True:
            try:
                got = await call()
            except Exception as exc:
                if self.health is not None and is_transport_error(exc):
                    self.health.failed()
                if not is_transport_error(exc) or time.monotonic() + delay > deadline:
                    raise
                self.rpc_failures += 1
                log.warning(
                    "%s: node unreachable (%s: %s); retrying in %.2fs",
                    what,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay * (0.75 + random.random() / 2))
                delay = min(delay * 2, self.policy.backoff_max_s)
                continue
            if self.health is not None:
                self.health.seen()
            return got

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(await self.rpc(lambda: self.w3.eth.chain_id, what="eth_chainId"))
        return self._chain_id

    async def transact(
        self,
        kind: str,
        data: bytes,
        *,
        to: str,
        gas: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> TxResult:
        """Estimate, sign, journal, send and follow one transaction to a successful receipt.

            result = await sender.transact("settle", calldata, to=settlement_address)

        Raises SimulationFailed (estimate reverted: nothing sent), TxReverted (status 0),
        TxTimeout (still pending after receipt_timeout_s; the journal keeps it).
        """
        tx: TxParams = {
            "from": self.address,
            "to": to_checksum_address(to),
            "data": HexStr(_hex(data)),
            "value": Wei(0),
        }
        if gas is None:
            try:
                estimate = await self.rpc(
                    lambda: self.w3.eth.estimate_gas(tx), what=f"estimate {kind}", deadline_s=60
                )
            except Exception as exc:
                if is_transport_error(exc):
                    raise
                raise SimulationFailed(kind, self._revert_reason(exc)) from None
            gas = int(estimate * self.policy.gas_headroom) + self.policy.gas_extra
        entry = await self._sign_and_send(kind, tx, gas, meta or {})
        return await self.wait(entry)

    # --- signing, journaling, broadcasting ---------------------------------------------------

    async def _fees(self, floor: tuple[int, int] | None = None) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas); above `floor` x bump_factor when replacing."""
        block = await self.rpc(
            lambda: self.w3.eth.get_block("latest"), what="latest block", deadline_s=60
        )
        base = int(block.get("baseFeePerGas") or 0)
        prio = self.policy.priority_fee
        if prio is None:
            try:
                prio = int(await self.w3.eth.max_priority_fee)
            except Exception:  # noqa: BLE001 - nodes without eth_maxPriorityFeePerGas: a modest 1 gwei tip
                prio = 10**9
        max_fee = 2 * base + prio
        if floor is not None:
            f = self.policy.bump_factor
            prio = max(prio, int(floor[1] * f) + 1)
            max_fee = max(max_fee, int(floor[0] * f) + 1, prio)
        if self.policy.max_fee_cap is not None:
            max_fee = min(max_fee, self.policy.max_fee_cap)
            prio = min(prio, max_fee)
        return max_fee, prio

    def _sign(
        self, tx: TxParams, nonce: int, gas: int, fees: tuple[int, int], chain_id: int
    ) -> Attempt:
        body: dict[str, Any] = {
            **tx,
            "nonce": nonce,
            "gas": gas,
            "chainId": chain_id,
            "maxFeePerGas": fees[0],
            "maxPriorityFeePerGas": fees[1],
            "type": 2,
        }
        signed = self._account.sign_transaction(body)
        return Attempt(
            _hex(signed.hash), _hex(signed.raw_transaction), fees[0], fees[1], time.time()
        )

    async def _reserve_nonce(self, entry_for: Callable[[int], JournalEntry]) -> JournalEntry:
        """Create the journal entry at the lowest free nonce (atomic across processes)."""
        kv = self.journal.kv
        async with self._nonces.lock:
            if self._nonces.hint is None:
                self._nonces.hint = await self._chain_nonce("pending")
            nonce = self._nonces.hint
            while True:
                entry = entry_for(nonce)
                cas = getattr(kv, "kv_cas", None)
                if cas is not None:
                    ok = await cas(self.journal.namespace, entry.key, None, entry.to_bytes())
                else:  # a plain key/value: this process is the only sender
                    ok = await kv.kv_get(self.journal.namespace, entry.key) is None
                    if ok:
                        await self.journal.put(entry)
                if ok:
                    self._nonces.hint = nonce + 1
                    return entry
                nonce += 1

    async def _chain_nonce(self, block: Literal["latest", "pending"]) -> int:
        return int(
            await self.rpc(
                lambda: self.w3.eth.get_transaction_count(self.address, block),
                what="eth_getTransactionCount",
            )
        )

    async def _sign_and_send(
        self, kind: str, tx: TxParams, gas: int, meta: dict[str, Any]
    ) -> JournalEntry:
        chain_id = await self.chain_id()
        for _ in range(5):  # "nonce too low": someone else used it; take the next one
            fees = await self._fees()
            async with self._send_lock:
                entry = await self._reserve_nonce(
                    lambda n: JournalEntry.new(
                        self.address, n, kind, {**meta, "to": tx["to"], "gas": gas}
                    )
                )
                attempt = self._sign(tx, entry.nonce, gas, fees, chain_id)
                entry = entry.with_attempt(attempt)
                await self.journal.put(entry)  # durable BEFORE the node sees it
                try:
                    await self._broadcast(attempt)
                except _NonceUsed:
                    await self.journal.put(entry.finished(DROPPED))
                    self._nonces.hint = await self._chain_nonce("pending")
                    continue
                log.info("%s sent: %s (nonce %d, gas %d)", kind, attempt.tx_hash, entry.nonce, gas)
                return entry
        raise TxFailed(
            kind,
            "the sending key's nonce keeps being taken by another sender; "
            "give the gateway a key nothing else uses",
        )

    async def _broadcast(self, attempt: Attempt) -> None:
        """Send the signed bytes; "already known" counts as sent."""
        raw = bytes.fromhex(attempt.raw[2:])
        try:
            await self.rpc(
                lambda: self.w3.eth.send_raw_transaction(raw),
                what="eth_sendRawTransaction",
                deadline_s=self.policy.receipt_timeout_s,
            )
        except Exception as exc:
            if is_transport_error(exc):
                raise
            msg = str(exc).lower()
            if (
                "already known" in msg
                or "known transaction" in msg
                or "already imported" in msg
                or "already exists" in msg
            ):
                return
            if "nonce too low" in msg or "nonce is too low" in msg or "invalid nonce" in msg:
                raise _NonceUsed(str(exc)) from None
            if "underpriced" in msg:  # a replacement the pool refuses: the earlier attempt stays
                log.warning(
                    "replacement %s refused (%s); keeping the earlier attempt", attempt.tx_hash, exc
                )
                return
            raise

    # --- receipts, bumping, recovery ---------------------------------------------------------

    async def _receipt(self, tx_hash: str) -> Any | None:
        try:
            return await self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    async def wait(self, entry: JournalEntry, *, timeout_s: float | None = None) -> TxResult:
        """Follow a journaled transaction to its receipt (bumping fees while it sits unmined)."""
        deadline = time.monotonic() + (
            timeout_s if timeout_s is not None else self.policy.receipt_timeout_s
        )
        last_sent = time.monotonic()
        delay = self.policy.poll_s
        while True:
            try:
                for h in reversed(entry.hashes):
                    receipt = await self._receipt(h)
                    if receipt is not None:
                        return await self._finish(entry, h, receipt)
                if not entry.hashes:
                    raise TxFailed(entry.kind, "journal entry has no signed attempt")
                # Nothing mined: is the nonce used by something that is not ours?
                if await self._chain_nonce("latest") > entry.nonce:
                    # Receipts can lag the nonce on some nodes (anvil under load): before calling
                    # a mined transaction dropped, give its receipt a few polls to appear.
                    for _ in range(_RECEIPT_LAG_POLLS):
                        await asyncio.sleep(self.policy.poll_s)
                        for h in reversed(entry.hashes):
                            receipt = await self._receipt(h)
                            if receipt is not None:
                                return await self._finish(entry, h, receipt)
                    await self.journal.put(entry.finished(DROPPED))
                    raise TxFailed(
                        entry.kind,
                        f"nonce {entry.nonce} was used by a transaction not in the journal",
                        entry=entry,
                    )
                if time.monotonic() - last_sent >= self.policy.bump_after_s:
                    entry = await self._bump(entry)
                    last_sent = time.monotonic()
                delay = self.policy.poll_s
            except Exception as exc:
                if not is_transport_error(exc):
                    raise
                log.warning(
                    "waiting for %s %s: node unreachable (%s); retrying",
                    entry.kind,
                    entry.hashes[-1] if entry.hashes else "?",
                    exc,
                )
                delay = min(max(delay * 2, self.policy.backoff_s), self.policy.backoff_max_s)
                # The node may have restarted without its mempool: resend the same bytes once it answers.
                last_sent = min(last_sent, time.monotonic() - self.policy.bump_after_s / 2)
            if time.monotonic() >= deadline:
                raise TxTimeout(
                    entry.kind,
                    f"no receipt for {entry.hashes[-1]} within the timeout; "
                    "it stays in the journal (recover() finishes it)",
                    entry=entry,
                )
            await asyncio.sleep(delay)

    async def _bump(self, entry: JournalEntry) -> JournalEntry:
        """Rebroadcast the latest bytes (a node that lost its mempool gets them again), and, if
        the fees are below the market or the last bump, re-sign the same nonce above them."""
        last = entry.attempts[-1]
        try:
            await self._broadcast(last)
        except _NonceUsed:
            return entry  # mined meanwhile, or taken: the next poll sorts it out
        fees = await self._fees(floor=(last.max_fee_per_gas, last.max_priority_fee_per_gas))
        if fees[0] <= last.max_fee_per_gas:  # at the cap: nothing higher to offer
            return entry
        gas = int(entry.meta.get("gas") or 0)
        to = entry.meta.get("to")
        raw_tx = _decode_raw(last.raw)
        tx: TxParams = {
            "from": self.address,
            "to": to or raw_tx["to"],
            "data": raw_tx["data"],
            "value": Wei(0),
        }
        async with self._send_lock:
            attempt = self._sign(tx, entry.nonce, gas or raw_tx["gas"], fees, await self.chain_id())
            entry = entry.with_attempt(attempt)
            await self.journal.put(entry)
            try:
                await self._broadcast(attempt)
            except _NonceUsed:
                return entry
        log.info(
            "%s nonce %d bumped to maxFee %d (tx %s)",
            entry.kind,
            entry.nonce,
            fees[0],
            attempt.tx_hash,
        )
        return entry

    async def _finish(self, entry: JournalEntry, tx_hash: str, receipt: Any) -> TxResult:
        ok = int(receipt["status"]) == 1
        done = entry.finished(
            MINED if ok else REVERTED,
            mined_hash=tx_hash,
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
        )
        await self.journal.put(done)
        if not ok:
            raise TxReverted(
                entry.kind,
                f"reverted in {tx_hash} (gasUsed {receipt['gasUsed']})",
                receipt=receipt,
                entry=done,
            )
        return TxResult(tx_hash, receipt, done)

    async def recover(self, *, timeout_s: float | None = None) -> list[TxResult | TxFailed]:
        """Finish every pending transaction a previous run of this key left in the journal:
        each is looked up by hash and marked done, or its same signed bytes are rebroadcast and
        followed to a receipt. Returns one TxResult or TxFailed per pending entry, nonce order."""
        out: list[TxResult | TxFailed] = []
        for entry in await self.journal.pending(self.address):
            log.info(
                "recovering %s nonce %d (%s)",
                entry.kind,
                entry.nonce,
                entry.hashes[-1] if entry.hashes else "-",
            )
            try:
                found = None
                for h in reversed(entry.hashes):
                    receipt = await self.rpc(functools.partial(self._receipt, h), what="receipt")
                    if receipt is not None:
                        found = (h, receipt)
                        break
                if found is None and entry.attempts:
                    try:
                        await self._broadcast(entry.attempts[-1])
                    except _NonceUsed:
                        pass  # wait() decides: mined under another of our hashes, or dropped
                out.append(
                    await self._finish(entry, *found)
                    if found
                    else await self.wait(entry, timeout_s=timeout_s)
                )
            except TxFailed as exc:
                out.append(exc)
        self._nonces.hint = None  # re-read: the chain and the journal are settled now
        return out


class _NonceUsed(Exception):
    pass


def _decode_raw(raw_hex: str) -> dict[str, Any]:
    """to / data / gas of a signed EIP-1559 transaction (for re-signing a fee bump)."""
    from hexbytes import HexBytes

    d = TypedTransaction.from_bytes(HexBytes(raw_hex)).as_dict()
    to = d.get("to")
    return {
        "to": checksum_address(bytes(to)) if to else None,
        "data": _hex(bytes(d["data"])),
        "gas": int(d["gas"]),
    }
