"""Follow the settlement contract's events into the ledger store, from a durable block cursor.

Only blocks `confirmations` deep are read (0 on dev chains), so a reorg shallower than that
is never seen. The cursor (block number + hash) is stored in the store's key/value space
after each batch of blocks; on restart the watcher resumes from it. If the block under the
cursor no longer has the stored hash (a reorg deeper than the confirmations, or a dev chain
restarted from a state dump), it rewinds `reorg_rewind` blocks, replays them, and re-reads
every known channel from the chain, so no fact from an orphaned block survives.
RPC failures back off exponentially and the loop carries on when the node answers again::

    watcher = Watcher(chain, store, receiver=provider_address, confirmations=0)
    applied = await watcher.poll_once()      # or: await watcher.run() (until cancelled)

Which fact each event becomes is the pure `channels.protocol.fact_of_event`; the watcher
polls, decodes, reads the channel at the event's block when that mapping needs it
(`needs_snapshot`), and applies the fact.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.protocol import (
    SETTLEMENT_EVENTS,
    ChainFact,
    ChannelConfig,
    channel_config_of,
    checksum_address,
    fact_of_event,
    keccak256,
    needs_snapshot,
)

from .chain import ChainClient
from .tx_outcomes import is_transport_error

__all__ = ["ChainEvent", "Watcher"]

log = logging.getLogger("paychan.watcher")

_CURSOR_NS = "watcher"


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """What listeners are told after a fact has been applied."""

    name: str  # the contract event's name
    channel_id: bytes | None
    fact: ChainFact | None
    block_number: int
    tx_hash: str
    args: dict[str, Any]
    log_index: int = -1  # with tx_hash, names the log once (a replay after a rewind repeats it)


Listener = Callable[[ChainEvent], None]


class Watcher:
    """Reads settlement events from a stored cursor and applies them to `store`.

    receiver: only channels paying this address are picked up when they are created (None:
    every channel); channels the store already knows are always followed.
    start_block: where a watcher with no stored cursor begins (None: the current safe head).
    """

    def __init__(
        self,
        chain: ChainClient,
        store: Any,
        *,
        receiver: str | None = None,
        confirmations: int = 0,
        start_block: int | None = None,
        poll_s: float = 1.0,
        max_blocks: int = 2000,
        reorg_rewind: int = 64,
        cursor_key: str = "cursor",
    ) -> None:
        self.chain = chain
        self.store = store
        self.receiver = checksum_address(receiver) if receiver else None
        self.confirmations = confirmations
        self.start_block = start_block
        self.poll_s = poll_s
        self.max_blocks = max_blocks
        self.reorg_rewind = reorg_rewind
        self.cursor_key = cursor_key
        self.listeners: list[Listener] = []
        self.reorgs = 0  # how many times the cursor's block changed under us
        c = chain.settlement
        self._events = {
            "0x" + keccak256(_signature(c, name).encode()).hex(): getattr(c.events, name)()
            for name in SETTLEMENT_EVENTS
        }
        self._configs: dict[bytes, ChannelConfig] = {}

    # --- cursor -------------------------------------------------------------------------------

    async def cursor(self) -> tuple[int, str] | None:
        """(block number, block hash) processed last, or None before the first run."""
        raw = await self.store.kv_get(_CURSOR_NS, self.cursor_key)
        if raw is None:
            return None
        d = json.loads(raw)
        return int(d["block"]), str(d["hash"])

    async def _save_cursor(self, block: int, block_hash: str) -> None:
        await self.store.kv_put(
            _CURSOR_NS, self.cursor_key, json.dumps({"block": block, "hash": block_hash}).encode()
        )

    async def _block_hash(self, number: int) -> str | None:
        try:
            block = await self.chain.w3.eth.get_block(number)
        except Exception as exc:
            if is_transport_error(exc):
                raise
            return None  # the chain is shorter than the cursor now
        return "0x" + bytes(block["hash"]).hex()

    # --- one step -----------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Apply every event from the cursor up to the safe head; returns how many were applied."""
        head = await self.chain.block_number()
        safe = head - self.confirmations
        if safe < 0:
            return 0
        cur = await self.cursor()
        resync = False
        if cur is None:
            start = self.start_block if self.start_block is not None else safe + 1
            if start > safe:
                await self._save_cursor(safe, await self._block_hash(safe) or "")
                return 0
            frm = start
        else:
            block, block_hash = cur
            if block > safe or await self._block_hash(block) != block_hash:
                self.reorgs += 1
                frm = max(0, min(block, safe) - self.reorg_rewind + 1)
                log.warning(
                    "block %d changed under the cursor (reorg or restarted chain): replaying from %d and "
                    "re-reading every channel",
                    block,
                    frm,
                )
                resync = True
            else:
                frm = block + 1
        applied = 0
        while frm <= safe:
            to = min(safe, frm + self.max_blocks - 1)
            logs = await self.chain.rpc(
                functools.partial(
                    self.chain.w3.eth.get_logs,
                    {"address": self.chain.settlement_address, "fromBlock": frm, "toBlock": to},
                ),
                what="eth_getLogs",
                deadline_s=60,
            )
            for entry in sorted(logs, key=lambda e: (int(e["blockNumber"]), int(e["logIndex"]))):
                applied += await self._apply(entry)
            if resync and to == safe:
                await self._resync(safe)
            await self._save_cursor(to, await self._block_hash(to) or "")
            frm = to + 1
        return applied

    async def _resync(self, block: int) -> None:
        for st in await self.store.channels():
            onchain = await self.chain.read_channel(st.channel_id, block)
            await self.store.apply_fact(st.channel_id, onchain.fact())

    async def _apply(self, entry: Any) -> int:
        topics = entry.get("topics") or []
        if not topics:
            return 0
        ev = self._events.get("0x" + bytes(topics[0]).hex())
        if ev is None:
            return 0
        decoded = ev.process_log(entry)
        name, args = decoded["event"], dict(decoded["args"])
        block = int(entry["blockNumber"])
        tx_hash = "0x" + bytes(entry["transactionHash"]).hex()
        cid = bytes(args["channelId"]) if "channelId" in args else None
        if name == "ChannelCreated":
            cfg = channel_config_of(args["config"])
            if self.receiver is None or checksum_address(cfg.receiver) == self.receiver:
                self._configs[cid] = cfg  # type: ignore[index]
            return 0
        if name in ("Settled", "ChannelClosed"):
            self._notify(ChainEvent(name, cid, None, block, tx_hash, args, int(entry["logIndex"])))
            return 0
        assert cid is not None
        config = self._configs.pop(cid, None)
        state = await self.store.get(cid)
        if state is None and config is None:
            return 0  # not ours
        delay = (
            state.config.withdraw_delay
            if state is not None and state.config is not None
            else (state.withdraw_delay if state is not None else 0)
        ) or 0
        snapshot = (
            (await self.chain.read_channel(cid, block)).snapshot()
            if needs_snapshot(name, withdraw_delay=delay)
            else None
        )
        fact: ChainFact | None = fact_of_event(name, args, withdraw_delay=delay, snapshot=snapshot)
        if fact is None:
            return 0
        await self.store.apply_fact(cid, fact, config=config)
        self._notify(ChainEvent(name, cid, fact, block, tx_hash, args, int(entry["logIndex"])))
        return 1

    def _notify(self, event: ChainEvent) -> None:
        for fn in self.listeners:
            try:
                fn(event)
            except Exception:  # a listener's bug must not stop the chain from being followed
                log.exception("watcher listener failed on %s", event.name)

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """poll_once every `poll_s`, backing off (up to 30 s) while the node cannot be reached."""
        delay = self.poll_s
        while True:
            try:
                await self.poll_once()
                delay = self.poll_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(max(delay * 2, 0.5), 30.0)
                if is_transport_error(exc):
                    log.warning("watcher: node unreachable (%s); retrying in %.1fs", exc, delay)
                else:
                    log.exception("watcher: poll failed; retrying in %.1fs", delay)
            await asyncio.sleep(delay * (0.9 + random.random() / 5))


def _signature(contract: Any, name: str) -> str:
    for item in contract.abi:
        if item["type"] == "event" and item["name"] == name:
            return f"{name}({','.join(_abi_type(i) for i in item['inputs'])})"
    raise KeyError(f"event {name} is not in the settlement ABI")


def _abi_type(item: dict[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + kind[5:]
    return kind
