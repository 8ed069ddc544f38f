"""Claim what the ledger has charged, in as few transactions as the batch limit allows, then settle.

When to claim (any one is enough; then every claimable channel goes, up to `batch_size`
rows per `claimWithSignature`):
- a withdrawal is pending on a channel with unclaimed charges (at once: the payer could
  finalize after the delay and take the unclaimed value with them);
- the oldest unclaimed charge is older than `claim_after_s`;
- the unclaimed total reaches `claim_threshold`.
Each row claims exactly the charged total (`min(charged, balance)`), never the signed ceiling.
After the claims, `settle(receiver, token)` sweeps the claimed value to the receiver.

Exactly one settler acts at a time: `RedisLease` (SET NX PX, renewed) across gateway
processes sharing a Redis store; `LocalLease` for the single SQLite process.
`ChainSync` runs recovery, the watcher and the settler under that lease::

    sync = ChainSync(chain, store, authorizer=Signer(key), receiver=addr, token=token,
                     lease=lease_for(store_url))
    app.cleanup_ctx.append(sync.cleanup_ctx)          # aiohttp: start on startup, stop on cleanup
    report = await sync.settler.run_once(force=True)  # "settle now"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from web3.logs import DISCARD

from .chain import ChainClient, ClaimRow, SimulationFailed, TxFailed, TxResult, is_transport_error
from ..protocol.eip712 import ClaimEntry, checksum_address, claim_batch_digest
from ..protocol.ledger import Claimed, ClaimTarget
from ..protocol.signing import Signer
from .watcher import ChainEvent, Watcher

__all__ = [
    "ChainSync",
    "Lease",
    "LocalLease",
    "RedisLease",
    "SettlementReport",
    "Settler",
    "SettlerPolicy",
    "claim_reason",
    "lease_for",
]

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


# --------------------------------------------------------------------------- leases


class Lease(Protocol):
    """Who may act: `await lease.acquire()` takes or renews it (True: ours now)."""

    async def acquire(self) -> bool: ...
    async def release(self) -> None: ...


class LocalLease:
    """The single-process lease (SQLite stores): always held."""

    renew_every_s: float | None = None

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A Redis lease with a TTL: `SET key token NX PX ttl`, renewed only by its holder.

    A holder that dies stops renewing; another process takes over within `ttl_s`.
    """

    def __init__(self, client: Any, key: str, ttl_s: float = 15.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.renew_every_s: float | None = (
            ttl_s / 3
        )  # a claim can wait on a receipt longer than the TTL
        self.token = secrets.token_hex(16)
        self.held = False

    @classmethod
    def from_url(cls, url: str, key: str, ttl_s: float = 15.0) -> RedisLease:
        import redis.asyncio as aioredis

        return cls(aioredis.from_url(url), key, ttl_s)

    async def acquire(self) -> bool:
        if self.held and await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            return True
        self.held = bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    async def release(self) -> None:
        if self.held:
            await self.client.eval(_RELEASE, 1, self.key, self.token)
        self.held = False

    async def close(self) -> None:
        await self.release()
        await self.client.aclose()


def lease_for(store_url: str, *, chain_id: int, settlement: str, ttl_s: float = 15.0) -> Lease:
    """The lease that fits a store URL: Redis (shared by processes) or local (one process)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        from .store.redis import split_redis_url

        base, prefix = split_redis_url(store_url)
        return RedisLease.from_url(
            base, f"{prefix}:{chain_id}:{settlement.lower()}:settler-lease", ttl_s
        )
    return LocalLease()


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
                    log.error(
                        "claim of %d channel(s) still fails after a resync (%s); skipping them",
                        len(batch),
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
        entries = [ClaimEntry(t.channel_id, t.max_claimable, t.total_claimed) for t in batch]
        signature = self.authorizer.sign_digest(
            claim_batch_digest(chain_id, self.chain.settlement_address, entries)
        )
        rows = [ClaimRow(t.config, t.max_claimable, t.signature, t.total_claimed) for t in batch]  # type: ignore[arg-type]
        return await self.chain.claim(rows, signature)

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


# --------------------------------------------------------------------------- the service


class ChainSync:
    """Recovery + watcher + settler as one background service, under one lease.

    Every `watcher.poll_s` the lease holder follows the chain; every `settler.policy.interval_s`
    (or at once when the watcher sees a withdrawal start) it runs a settler round. A process
    that gains the lease first finishes the journal's pending transactions.
    """

    def __init__(
        self,
        chain: ChainClient,
        store: Any,
        *,
        authorizer: Signer,
        receiver: str,
        token: str,
        lease: Lease | None = None,
        policy: SettlerPolicy | None = None,
        confirmations: int = 0,
        start_block: int | None = None,
        poll_s: float = 1.0,
        journal_retention_s: float = 7 * 86400.0,
    ) -> None:
        self.chain = chain
        self.journal_retention_s = journal_retention_s
        self.store = store
        self.lease: Lease = lease or LocalLease()
        self.watcher = Watcher(
            chain,
            store,
            receiver=receiver,
            confirmations=confirmations,
            start_block=start_block,
            poll_s=poll_s,
        )
        self.settler = Settler(
            chain, store, authorizer=authorizer, receiver=receiver, token=token, policy=policy
        )
        self.watcher.listeners.append(self.settler.on_chain_event)
        self.leader = False
        self.rounds = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._pruned_at = 0.0

    async def _keep_lease(self, every: float) -> None:
        """Renew the lease while a long step (a claim waiting on its receipt) runs."""
        while True:
            await asyncio.sleep(every)
            try:
                if self.leader and not await self.lease.acquire():
                    self.leader = False
                    log.warning("settler lease lost to another process")
            except Exception as exc:  # noqa: BLE001 - Redis unreachable: the main loop sees it too
                log.warning("settler lease renewal failed: %s", exc)

    async def _housekeeping(self) -> None:
        if time.monotonic() - self._pruned_at >= 3600:
            self._pruned_at = time.monotonic()
            dropped = await self.chain.journal.prune(self.journal_retention_s)
            if dropped:
                log.info("pruned %d finished journal entries", dropped)

    async def step(self) -> SettlementReport | None:
        """One pass: lease, recovery if newly leader, watcher, and a settler round when due."""
        if not await self.lease.acquire():
            self.leader = False
            return None
        if not self.leader:
            self.leader = True
            log.info("settler lease acquired: finishing pending transactions")
            await self.settler.recover()
        await self.watcher.poll_once()
        self.settler.wake.clear()
        report = await self.settler.run_once()
        self.rounds += 1
        return report

    async def run(self) -> None:
        """Loop `step` until cancelled; RPC outages back off (up to 30 s) and never end the loop."""
        next_round = 0.0
        delay = self.watcher.poll_s
        while True:
            try:
                if not await self.lease.acquire():
                    self.leader = False
                elif not self.leader:
                    await self.step()
                    next_round = time.monotonic() + self.settler.policy.interval_s
                else:
                    await self.watcher.poll_once()
                    if self.settler.wake.is_set() or time.monotonic() >= next_round:
                        self.settler.wake.clear()
                        await self.settler.run_once()
                        self.rounds += 1
                        next_round = time.monotonic() + self.settler.policy.interval_s
                        await self._housekeeping()
                delay = self.watcher.poll_s
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(max(delay * 2, 0.5), 30.0)
                if is_transport_error(exc):
                    log.warning("chain sync: node unreachable (%s); retrying in %.1fs", exc, delay)
                else:
                    log.exception("chain sync round failed; retrying in %.1fs", delay)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a stop()'s
            # cancellation that lands as the wait ends, and stop() then hangs forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * (0.9 + random.random() / 5)):
                    await self.settler.wake.wait()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="paychan-chain-sync"
            )
        return self._task

    async def stop(self) -> None:
        for task in (self._task, self._keepalive):
            if task is not None:
                await _cancel(task)
        self._task = self._keepalive = None
        await self.lease.release()
        close = getattr(self.lease, "close", None)
        if close is not None:
            await close()

    async def cleanup_ctx(self, app: Any) -> AsyncIterator[None]:
        """aiohttp: ``app.cleanup_ctx.append(sync.cleanup_ctx)`` runs it with the app."""
        self.start()
        yield
        await self.stop()


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again until it does.

    One cancel is not always enough: a library on the task's path (an HTTP client's timeout,
    a to_thread hop) may absorb a CancelledError that lands at the wrong moment, and the task
    then waits on its next future with nothing left to wake it; a repeated cancel reaches it
    there.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:  # stopping anyway: say why it died
        log.warning("%s had ended with %r", task.get_name(), task.exception())
