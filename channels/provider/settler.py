"""Claim what the ledger has charged, in as few transactions as the batch limit allows, then settle.

When to claim (any one is enough; then every claimable channel goes, up to `batch_size`
rows per `claimWithSignature`):
- a withdrawal is pending on a channel with unclaimed charges (at once: the payer could
  finalize after the delay and take the unclaimed value with them);
- the oldest unclaimed charge is older than `claim_after_s`;
- the unclaimed total reaches `claim_threshold`.
Each row claims exactly the charged total (`min(charged, balance)`), never the signed ceiling.
After the claims, `settle(receiver, token)` sweeps the claimed value to the receiver::

    settler = Settler(chain, store, authorizer=Signer(key), receiver=addr, token=token)
    report = await settler.run_once(force=True)       # SettlementReport: claims, settle, gas

Exactly one settler acts at a time (channels/provider/lease.py); `ChainSync`
(channels/provider/chain_sync.py) runs recovery, the watcher and the settler under that lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from web3.logs import DISCARD

from channels.protocol import (
    Claimed,
    ClaimRow,
    ClaimTarget,
    Signer,
    checksum_address,
    claim_batch,
    sign_claim_batch,
)

from .chain import ChainClient
from .tx_outcomes import SimulationFailed, TxFailed, TxResult
from .watcher import ChainEvent

__all__ = ["MAX_BATCH", "SettlementReport", "Settler", "SettlerPolicy", "claim_reason"]

log = logging.getLogger("paychan.settler")

MAX_BATCH = 100  # rows per claimWithSignature (the x402 reference's DEFAULT_MAX_CLAIMS_PER_BATCH)


@dataclass(frozen=True, slots=True)
class SettlerPolicy:
    """When and how to claim. Amounts are token base units (6 decimals for USDC)."""

    claim_after_s: float = 3600.0  # T: claim once the oldest unclaimed charge is this old
    claim_threshold: int = 1_000_000  # ... or once this much is unclaimed (1 USDC)
    batch_size: int = MAX_BATCH
    interval_s: float = 5.0  # how often the conditions are checked
    settle: bool = True  # sweep claimed value to the receiver after claiming
    settle_min: int = 1  # ... when at least this much is claimed but unsettled

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}, got {self.batch_size}")


@dataclass(slots=True)
class SettlementReport:
    """What one settler round did."""

    reason: str | None = (
        None  # why it claimed ("withdrawal", "age", "threshold", "forced"); None: nothing due
    )
    claims: list[TxResult] = field(default_factory=list)
    channels: int = 0
    claimed: int = 0  # units newly claimed (sum of Claimed.claimAmount)
    settle: TxResult | None = None
    settled: int = 0  # units swept to the receiver
    skipped: list[bytes] = field(default_factory=list)  # channels that could not be claimed now

    @property
    def gas_used(self) -> int:
        return sum(r.gas_used for r in self.claims) + (self.settle.gas_used if self.settle else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "channels": self.channels,
            "claimed": self.claimed,
            "settled": self.settled,
            "claim_txs": [r.tx_hash for r in self.claims],
            "settle_tx": self.settle.tx_hash if self.settle else None,
            "gas_used": self.gas_used,
            "skipped": ["0x" + c.hex() for c in self.skipped],
        }


# --------------------------------------------------------------------------- the settler


def claim_reason(targets: Sequence[ClaimTarget], now: float, policy: SettlerPolicy) -> str | None:
    """Why a claim is due now ("withdrawal", "age", "threshold"), or None. Pure.

    >>> claim_reason(await store.claim_targets(), time.time(), SettlerPolicy())
    """
    if not targets:
        return None
    if any(t.withdraw_deadline is not None for t in targets):
        return "withdrawal"
    oldest = min(
        (t.unclaimed_since for t in targets if t.unclaimed_since is not None), default=None
    )
    if oldest is not None and now - oldest >= policy.claim_after_s:
        return "age"
    if sum(t.unclaimed for t in targets) >= policy.claim_threshold:
        return "threshold"
    return None


class Settler:
    """Claims the store's charged vouchers and settles them to `receiver` (see module doc).

    `authorizer` signs ClaimBatch: it must be the channels' receiverAuthorizer.
    """

    def __init__(
        self,
        chain: ChainClient,
        store: Any,
        *,
        authorizer: Signer,
        receiver: str,
        token: str,
        policy: SettlerPolicy | None = None,
        clock: Any = time.time,
    ) -> None:
        self.chain = chain
        self.store = store
        self.authorizer = authorizer
        self.receiver = checksum_address(receiver)
        self.token = checksum_address(token)
        self.policy = policy or SettlerPolicy()
        self.clock = clock
        self.wake = asyncio.Event()  # set by the watcher when a withdrawal starts
        self._lock = asyncio.Lock()  # one round at a time in this process
        # Called with every round's report that moved money (metrics, logs); errors are logged.
        self.listeners: list[Callable[[SettlementReport], None]] = []

    def on_chain_event(self, event: ChainEvent) -> None:
        """Watcher listener: a withdrawal starting on one of our channels wakes the settler."""
        if event.name == "WithdrawInitiated":
            self.wake.set()

    def due(self, targets: Sequence[ClaimTarget], now: float) -> str | None:
        """Why these targets should be claimed now, or None (see `claim_reason`)."""
        return claim_reason(targets, now, self.policy)

    async def claimable(self) -> list[ClaimTarget]:
        """The store's claim targets this settler can sign for, minus channels a pending claim covers."""
        busy: set[str] = set()
        for entry in await self.chain.journal.pending(self.chain.address):
            if entry.kind == "claim":
                busy.update(c for c, _ in entry.meta.get("channels", []))
        me = self.authorizer.address_bytes
        return [
            t
            for t in await self.store.claim_targets()
            if t.config is not None
            and bytes(t.config.receiver_authorizer) == me
            and "0x" + t.channel_id.hex() not in busy
        ]

    async def run_once(self, *, force: bool = False, now: float | None = None) -> SettlementReport:
        """Claim (if due, or `force`) and settle. Safe to call at any time; rounds never overlap."""
        async with self._lock:
            report = SettlementReport()
            targets = await self.claimable()
            reason = (
                "forced"
                if force and targets
                else self.due(targets, self.clock() if now is None else now)
            )
            if reason is not None:
                report.reason = reason
                for start in range(0, len(targets), self.policy.batch_size):
                    await self._claim_batch(targets[start : start + self.policy.batch_size], report)
            if self.policy.settle:  # also sweeps claims a previous run landed but did not settle
                await self._settle(report)
            if report.claims or report.settle is not None:
                for fn in self.listeners:
                    try:
                        fn(report)
                    except Exception:  # a listener's bug must not fail a round that landed
                        log.exception("settler listener failed")
            return report

    async def _claim_batch(self, batch: Sequence[ClaimTarget], report: SettlementReport) -> None:
        for attempt in range(2):
            try:
                result = await self._send_claim(batch)
                break
            except SimulationFailed as exc:
                if attempt:
                    if len(batch) > 1:
                        # One bad row reverts the whole batch: halve it until the bad rows
                        # stand alone, so every good channel is still claimed this round.
                        half = len(batch) // 2
                        await self._claim_batch(batch[:half], report)
                        await self._claim_batch(batch[half:], report)
                        return
                    log.error(
                        "claim of channel 0x%s still fails after a resync (%s); skipping it",
                        batch[0].channel_id.hex(),
                        exc.reason,
                    )
                    report.skipped.extend(t.channel_id for t in batch)
                    return
                # The store is behind the chain (a withdrawal finalized, a claim landed...): re-read
                # each channel, mirror it, and rebuild the rows from the corrected ledger.
                log.warning(
                    "claim simulation failed (%s): re-reading %d channel(s)", exc.reason, len(batch)
                )
                ids = {t.channel_id for t in batch}
                for cid in ids:
                    await self.store.apply_fact(cid, (await self.chain.read_channel(cid)).fact())
                batch = [t for t in await self.claimable() if t.channel_id in ids]
                if not batch:
                    return
        await self.apply_claims(result, report)

    async def _send_claim(self, batch: Sequence[ClaimTarget]) -> TxResult:
        chain_id = await self.chain.chain_id()
        # claimable() only keeps targets with a config: the contract needs it in every row.
        rows = [
            ClaimRow(t.config, t.max_claimable, t.signature, t.total_claimed)
            for t in batch
            if t.config is not None
        ]
        signed = claim_batch(rows, chain_id, self.chain.settlement_address)
        return await self.chain.claim(signed.rows, sign_claim_batch(self.authorizer, signed))

    async def apply_claims(self, result: TxResult, report: SettlementReport | None = None) -> int:
        """Mirror a mined claim's Claimed events into the store; returns the units claimed."""
        claimed = 0
        events = self.chain.settlement.events.Claimed().process_receipt(
            result.receipt, errors=DISCARD
        )
        for ev in events:
            cid = bytes(ev["args"]["channelId"])
            await self.store.apply_fact(cid, Claimed(int(ev["args"]["newTotalClaimed"])))
            claimed += int(ev["args"]["claimAmount"])
        if report is not None:
            report.claims.append(result)
            report.channels += len(events)
            report.claimed += claimed
        log.info(
            "claimed %d on %d channel(s) in %s (gas %d)",
            claimed,
            len(events),
            result.tx_hash,
            result.gas_used,
        )
        return claimed

    async def _settle(self, report: SettlementReport) -> None:
        claimed, settled = await self.chain.receiver_totals(self.receiver, self.token)
        if claimed - settled < self.policy.settle_min:
            return
        result = await self.chain.settle(self.receiver, self.token)
        report.settle = result
        report.settled = sum(
            int(ev["args"]["amount"])
            for ev in self.chain.settlement.events.Settled().process_receipt(
                result.receipt, errors=DISCARD
            )
        )
        log.info("settled %d to %s in %s", report.settled, self.receiver, result.tx_hash)

    async def recover(self) -> list[TxResult | TxFailed]:
        """Finish the journal's pending transactions (a previous run's) and mirror their claims."""
        results = await self.chain.recover()
        for r in results:
            if isinstance(r, TxResult) and r.entry.kind == "claim":
                await self.apply_claims(r)
        return results
