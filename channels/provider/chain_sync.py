"""Recovery + watcher + settler as one background service, under one lease (`ChainSync`)::

    sync = ChainSync(chain, store, authorizer=Signer(key), receiver=addr, token=token,
                     lease=lease_for(store_url, chain_id=8453, settlement=addr))
    app.cleanup_ctx.append(sync.cleanup_ctx)          # aiohttp: start on startup, stop on cleanup
    report = await sync.settler.run_once(force=True)  # "settle now"

`channels.provider.open_provider` builds one from a `ProviderConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from channels.protocol import Signer

from .chain import ChainClient
from .lease import Lease, LocalLease
from .settler import SettlementReport, Settler, SettlerPolicy
from .tx_outcomes import is_transport_error
from .watcher import Watcher

__all__ = ["ChainSync"]

log = logging.getLogger("paychan.settler")


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
        self._prober: asyncio.Task[None] | None = None
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

    async def _probe(self) -> None:
        """Tell `chain.health` whether the node answers, every `poll_s`, where nothing else
        does: in a process without the lease, and while the node is failing (the leader's
        calls then sit in their backoff, so a node that is back would be seen late)."""
        health = self.chain.health
        assert health is not None
        while True:
            await asyncio.sleep(self.watcher.poll_s)
            if self.leader and not health.failing:
                continue  # the leader's watcher calls keep it told
            with contextlib.suppress(Exception):  # a failure is recorded by the call itself
                async with asyncio.timeout(max(2.0, self.watcher.poll_s)):
                    await self.chain.rpc(lambda: self.chain.w3.eth.block_number,
                                         what="eth_blockNumber", deadline_s=0)

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
        if self.chain.health is not None and (self._prober is None or self._prober.done()):
            self.chain.health.start()  # from now on someone polls the node
            self._prober = asyncio.get_running_loop().create_task(
                self._probe(), name="paychan-chain-probe"
            )
        return self._task

    async def stop(self) -> None:
        for task in (self._task, self._keepalive, self._prober):
            if task is not None:
                await _cancel(task)
        self._task = self._keepalive = self._prober = None
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
