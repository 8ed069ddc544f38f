"""What the provider earned, from the ledger and the chain, and the metrics that follow it.

``earnings_summary`` is the one definition of the numbers (``paychan earnings``,
``GET /admin/earnings`` and the console all print it)::

    summary = await earnings_summary(store, chain, receiver=addr, token=token)
    summary["earned"] == summary["claimed"] + summary["unclaimed"]

- ``charged``: what the ledger charged on every channel it knows (vouchers in hand);
- ``claimed`` / ``settled``: the settlement contract's ``receivers(receiver, token)`` totals,
  whoever sent the claims (our settler, a refund's claim-first, ``paychan settle``, anyone);
- ``unclaimed``: charged, claimable (within the balance) and not yet claimed (the ledger);
- ``at_risk``: the unclaimed part on channels whose payer has started a withdrawal;
- ``unclaimable``: charged beyond a channel's balance (a withdrawal took it; never claimable);
- ``earned`` = ``claimed + unclaimed``: after a settle, the receiver's settled tokens plus
  what the ledger can still claim.

``Accounting`` (``accounting_ctx``, one per paying gateway) wires the rest: the usage log
(``gateway.usage``) fed by every committed charge, ``paychan_claimed_amount_total`` and
``paychan_settled_amount_total`` counted from the chain's Claimed / Settled events, as the
watcher applies them (whoever sent the transaction) or as our settler's receipts show them,
each log once (by transaction and log index: a replay after a reorg counts nothing), the signing
key's gas balance gauge, the settler's recent transactions and an earnings history sampled
for the console's plot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from channels.protocol import checksum_address
from gateway.config import GatewayConfig
from gateway.keys import ACCOUNTING, CONFIG, METRICS, MODEL_VERSION_HASH, PAYMENTS, UPLOADS
from gateway.metrics import GatewayMetrics, Gauge
from gateway.usage import UsageIndex, UsageLog, UsageRow, usage_log_path

if TYPE_CHECKING:  # web3: loaded with the payment gate
    from channels.provider import ChainClient, ChainEvent, SettlementReport
    from gateway.payments import Hold, PaymentGate

__all__ = ["Accounting", "SettlerTx", "accounting_ctx", "channel_rows",
           "earnings_summary"]

log = logging.getLogger("paychan.earnings")

_HISTORY = 1440  # samples kept for the console's plot (a day at one a minute)
_SEEN = 4096  # chain events remembered for deduplication (far more than a reorg replays)


async def earnings_summary(store: Any, chain: ChainClient, *, receiver: str, token: str,
                           states: list[Any] | None = None) -> dict[str, Any]:
    """The provider's earnings now, as JSON-ready ints (see the module doc for each field)."""
    if states is None:
        states = await store.channels()
    claimed, settled = await chain.receiver_totals(receiver, token)
    charged = unclaimed = at_risk = unclaimable = reserved = 0
    for s in states:
        charged += s.charged
        unclaimed += s.unclaimed
        reserved += s.reserved
        unclaimable += max(0, s.charged - s.balance)
        if s.withdraw_requested_at:
            at_risk += s.unclaimed
    return {
        "receiver": checksum_address(receiver),
        "token": checksum_address(token),
        "settlement": chain.settlement_address,
        "channels": len(states),
        "charged": charged,
        "claimed": claimed,
        "settled": settled,
        "claimed_unsettled": claimed - settled,
        "unclaimed": unclaimed,
        "at_risk": at_risk,
        "unclaimable": unclaimable,
        "reserved": reserved,
        "earned": claimed + unclaimed,
    }


def channel_rows(states: list[Any], index: UsageIndex | None, now: float) -> list[dict[str, Any]]:
    """One JSON row per channel for the console: payer, balance, charged, claimed, unclaimed,
    last use and requests (from the usage log), withdrawal state; most charged first."""
    rows = []
    for s in states:
        cid = "0x" + s.channel_id.hex()
        use = index.channels.get(cid) if index is not None else None
        deadline = s.withdraw_deadline
        if deadline is None:
            withdrawal = "none"
        elif deadline > now:
            withdrawal = "pending"
        else:
            withdrawal = "finalizable"
        rows.append({
            "channel": cid,
            "payer": checksum_address(s.config.payer) if s.config is not None else None,
            "balance": s.balance,
            "charged": s.charged,
            "claimed": s.total_claimed,
            "unclaimed": s.unclaimed,
            "in_flight": len(s.reservations),
            "requests": use.requests if use else 0,
            "last_use": use.last if use and use.last else None,
            "withdrawal": withdrawal,
            "withdraw_deadline": deadline,
        })
    rows.sort(key=lambda r: (-r["charged"], r["channel"]))
    return rows


@dataclass(frozen=True, slots=True)
class SettlerTx:
    """One transaction a settler round sent: what, how much, and what it cost."""

    time: float
    kind: str  # "claim" | "settle"
    tx_hash: str
    block: int
    amount: int
    channels: int
    gas_used: int
    fee_wei: int

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "tx": self.tx_hash, "block": self.block,
                "amount": self.amount, "channels": self.channels, "gas_used": self.gas_used,
                "fee_wei": self.fee_wei}


class Accounting:
    """The usage log, the chain-truth metrics, the gas balance, recent settler transactions
    and the earnings history of one paying gateway (see the module doc)."""

    def __init__(self, config: GatewayConfig, gate: PaymentGate, metrics: GatewayMetrics,
                 *, sample_s: float = 60.0) -> None:
        self.gate = gate
        self.metrics = metrics
        self.receiver = gate.sync.settler.receiver
        self.token = gate.sync.settler.token
        self._receiver_bytes = bytes.fromhex(self.receiver[2:])
        self._token_bytes = bytes.fromhex(self.token[2:])
        self.sample_s = sample_s
        path = usage_log_path(config.usage_log, config.store)
        self.usage = UsageLog(path) if path is not None else None
        self.index = UsageIndex(path) if path is not None else None
        self.history: collections.deque[tuple[float, int, int, int, int]] = collections.deque(maxlen=_HISTORY)
        self.transactions: collections.deque[SettlerTx] = collections.deque(maxlen=50)
        self.gas_balance: int | None = None
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._payers: dict[bytes, str] = {}
        metrics.add(Gauge("paychan_signer_gas_balance_wei",
                          "Native balance (wei) of the key that signs and pays for claims and settles.",
                          read=lambda: float(self.gas_balance or 0)))
        gate.sync.watcher.listeners.append(self.on_chain_event)
        gate.sync.settler.listeners.append(self.on_settlement)
        gate.charge_listeners.append(self.on_charge)

    # ------------------------------------------------------------------ hooks (sync, cheap)

    def on_charge(self, hold: Hold, cumulative: int, request: web.Request) -> None:
        """A charge committed: queue its usage row (written by the log's flush task)."""
        if self.usage is None:
            return
        config = hold.payment.config
        payer = self._payers.get(config.payer)
        if payer is None:
            payer = self._payers[config.payer] = checksum_address(config.payer)
        uploads = request.get(UPLOADS)
        images = len(uploads) if uploads is not None else hold.amount // max(1, self.gate.terms.price)
        version = request.get(MODEL_VERSION_HASH)
        self.usage.record(UsageRow(time.time(), hold.payment.channel_hex, payer, images, hold.amount,
                                   "0x" + version.hex() if version else "", str(cumulative)))

    def on_chain_event(self, event: ChainEvent) -> None:
        """Watcher listener: count claimed and settled value from the chain's own events."""
        if event.name in ("WithdrawInitiated", "Deposited", "Refunded"):
            self._wake.set()
        self._count(event.name, event.args, event.tx_hash, event.log_index)

    def _count(self, name: str, args: Any, tx_hash: str, log_index: int) -> None:
        """Count one Claimed / Settled log once, whichever path sees it first: the watcher (any
        sender), or our settler's own receipts (at once, and where no watcher runs here)."""
        key = (tx_hash.lower(), log_index)
        if key in self._seen:
            return  # counted already (the other path, or a replay after a rewind)
        if name == "Claimed":
            self.metrics.claimed.inc((), int(args["claimAmount"]))
        elif name == "Settled":
            if (bytes.fromhex(str(args["receiver"])[2:]) != self._receiver_bytes
                    or bytes.fromhex(str(args["token"])[2:]) != self._token_bytes):
                return  # another receiver's sweep
            self.metrics.settled.inc((), int(args["amount"]))
        else:
            return
        self._seen[key] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        self._wake.set()

    def on_settlement(self, report: SettlementReport) -> None:
        """Settler listener: remember the round's transactions and their gas."""
        from web3.logs import DISCARD

        events = self.gate.chain.settlement.events
        now = time.time()
        for result in report.claims:
            claims = events.Claimed().process_receipt(result.receipt, errors=DISCARD)
            for ev in claims:
                self._count("Claimed", ev["args"], "0x" + bytes(ev["transactionHash"]).hex(),
                            int(ev["logIndex"]))
            self.transactions.append(SettlerTx(
                now, "claim", result.tx_hash, result.block_number,
                sum(int(ev["args"]["claimAmount"]) for ev in claims), len(claims),
                result.gas_used, _fee(result.receipt)))
        if report.settle is not None:
            r = report.settle
            for ev in events.Settled().process_receipt(r.receipt, errors=DISCARD):
                self._count("Settled", ev["args"], "0x" + bytes(ev["transactionHash"]).hex(),
                            int(ev["logIndex"]))
            self.transactions.append(SettlerTx(now, "settle", r.tx_hash, r.block_number,
                                               report.settled, 0, r.gas_used, _fee(r.receipt)))
        self._wake.set()

    # ------------------------------------------------------------------ reads

    async def summary(self, states: list[Any] | None = None) -> dict[str, Any]:
        """``earnings_summary`` plus the signing key and its gas balance (read now)."""
        from eth_utils.address import to_checksum_address

        chain = self.gate.chain
        out = await earnings_summary(self.gate.store, chain, receiver=self.receiver,
                                     token=self.token, states=states)
        self.gas_balance = int(await chain.w3.eth.get_balance(to_checksum_address(chain.address)))
        out["signer"] = chain.address
        out["gas_balance_wei"] = self.gas_balance
        out["chain_id"] = self.gate.terms.chain_id
        out["time"] = time.time()
        self._remember(out)
        return out

    def _remember(self, s: dict[str, Any]) -> None:
        point = (float(s["time"]), int(s["charged"]), int(s["claimed"]), int(s["settled"]),
                 int(s["at_risk"]))
        if self.history and point[0] - self.history[-1][0] < 1.0:
            self.history[-1] = point  # one point per second at most
        else:
            self.history.append(point)

    async def refresh_usage(self) -> None:
        """Make the rows queued so far readable, then read what was appended."""
        if self.usage is not None and self.index is not None:
            await self.usage.flush()
            await asyncio.to_thread(self.index.refresh)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        """Sample the earnings every ``sample_s``, and soon after money moved on chain (the
        first sample a few seconds after startup, not during it)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self.sample_s, 5.0)):
                await self._wake.wait()
        while True:
            try:
                await self.summary()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - chain or store down: /readyz says so
                log.warning("earnings sample failed: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sample_s):
                    await self._wake.wait()
            await asyncio.sleep(1.0)  # a burst of events makes one sample

    async def start(self) -> None:
        if self.usage is not None:
            await self.usage.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="paychan-earnings")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.usage is not None:
            await self.usage.close()


def _fee(receipt: Any) -> int:
    return int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0) or 0)


async def accounting_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context, after the payment gate's: start accounting, and on shutdown write the
    last usage rows (the in-flight paid requests have drained by then)."""
    accounting = app[ACCOUNTING] = Accounting(app[CONFIG], app[PAYMENTS], app[METRICS],
                                              sample_s=app[CONFIG].console_sample_s)
    await accounting.start()
    yield
    await accounting.close()
