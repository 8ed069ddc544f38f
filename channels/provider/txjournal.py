"""A durable journal of the provider's own transactions: written BEFORE each send.

Every signed transaction (raw bytes + hash) is recorded under its sender and nonce before
it is broadcast, so a process that dies between sending and seeing the receipt neither
forgets the transaction nor sends a second one: on restart `ChainClient.recover()` looks
up each pending hash and either marks it done or rebroadcasts the SAME signed bytes.
Fee bumps are further attempts under the same nonce; whichever one is mined wins.

The journal lives in the ledger store's durable key/value facility (`Store.kv_*`, so a
Redis store shares it between gateway processes), or in a small SQLite file of its own::

    journal = TxJournal(store)                       # or TxJournal.sqlite("tx.sqlite3")
    entry = JournalEntry.new(sender, nonce, "claim", meta={"channels": [...]})
    await journal.put(entry.with_attempt(tx_hash, raw))   # durable before send_raw_transaction
    for entry in await journal.pending(): ...
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Attempt", "JournalEntry", "KeyValue", "SqliteKeyValue", "TxJournal"]

_NAMESPACE = "txjournal"

PENDING = "pending"
MINED = "mined"  # a receipt with status 1
REVERTED = "reverted"  # a receipt with status 0
DROPPED = "dropped"  # the nonce was used by a transaction this journal does not hold


class KeyValue(Protocol):
    """The durable key/value calls the journal needs (channels.Store has them)."""

    async def kv_get(self, namespace: str, key: str) -> bytes | None: ...
    async def kv_put(self, namespace: str, key: str, value: bytes) -> None: ...
    async def kv_delete(self, namespace: str, key: str) -> None: ...
    async def kv_items(self, namespace: str) -> dict[str, bytes]: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One signed version of the transaction (fee bumps add more under the same nonce)."""

    tx_hash: str  # 0x-hex
    raw: str  # 0x-hex signed transaction, rebroadcast as is
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One nonce of one sender: what it is for, every signed attempt, and how it ended."""

    sender: str
    nonce: int
    kind: str  # "deposit" | "claim" | "settle" | "refund" | ...
    meta: dict[str, Any] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    status: str = PENDING
    mined_hash: str | None = None
    block_number: int | None = None
    gas_used: int | None = None
    created_at: float = 0.0

    @classmethod
    def new(
        cls, sender: str, nonce: int, kind: str, meta: dict[str, Any] | None = None
    ) -> JournalEntry:
        return cls(sender, nonce, kind, dict(meta or {}), created_at=time.time())

    @property
    def key(self) -> str:
        return f"{self.sender.lower()}:{self.nonce:020d}"

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def hashes(self) -> tuple[str, ...]:
        return tuple(a.tx_hash for a in self.attempts)

    def with_attempt(self, attempt: Attempt) -> JournalEntry:
        return replace(self, attempts=(*self.attempts, attempt))

    def finished(
        self,
        status: str,
        *,
        mined_hash: str | None = None,
        block_number: int | None = None,
        gas_used: int | None = None,
    ) -> JournalEntry:
        return replace(
            self, status=status, mined_hash=mined_hash, block_number=block_number, gas_used=gas_used
        )

    def to_bytes(self) -> bytes:
        d = {
            "sender": self.sender,
            "nonce": self.nonce,
            "kind": self.kind,
            "meta": self.meta,
            "attempts": [
                [a.tx_hash, a.raw, a.max_fee_per_gas, a.max_priority_fee_per_gas, a.sent_at]
                for a in self.attempts
            ],
            "status": self.status,
            "mined_hash": self.mined_hash,
            "block_number": self.block_number,
            "gas_used": self.gas_used,
            "created_at": self.created_at,
        }
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> JournalEntry:
        d = json.loads(data)
        return cls(
            d["sender"],
            int(d["nonce"]),
            d["kind"],
            d.get("meta") or {},
            tuple(Attempt(h, r, int(f), int(p), float(t)) for h, r, f, p, t in d["attempts"]),
            d["status"],
            d.get("mined_hash"),
            d.get("block_number"),
            d.get("gas_used"),
            float(d.get("created_at") or 0.0),
        )


class SqliteKeyValue:
    """A minimal durable key/value file for when no ledger store is at hand (synchronous=FULL)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (ns TEXT, k TEXT, v BLOB, PRIMARY KEY (ns, k))"
        )
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self._db.execute(sql, args).fetchall())

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        rows = await self._run("SELECT v FROM kv WHERE ns=? AND k=?", (namespace, key))
        return bytes(rows[0][0]) if rows else None

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        await self._run(
            "INSERT OR REPLACE INTO kv (ns, k, v) VALUES (?, ?, ?)", (namespace, key, value)
        )

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._run("DELETE FROM kv WHERE ns=? AND k=?", (namespace, key))

    async def kv_cas(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        """Set (value None: delete) only if the current value is `expected` (None: absent)."""

        def cas() -> bool:
            with self._db:  # one transaction: read and write see the same row
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT v FROM kv WHERE ns=? AND k=?", (namespace, key)
                ).fetchone()
                if (bytes(row[0]) if row else None) != expected:
                    return False
                if value is None:
                    self._db.execute("DELETE FROM kv WHERE ns=? AND k=?", (namespace, key))
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO kv (ns, k, v) VALUES (?, ?, ?)",
                        (namespace, key, value),
                    )
                return True

        async with self._lock:
            return await asyncio.to_thread(cas)

    async def kv_items(self, namespace: str) -> dict[str, bytes]:
        return {
            k: bytes(v) for k, v in await self._run("SELECT k, v FROM kv WHERE ns=?", (namespace,))
        }

    def close(self) -> None:
        self._db.close()


class TxJournal:
    """Durable record of every transaction the provider key signs (see the module docstring).

    Finished entries are kept (they are the audit trail: which claim paid which channels)
    until `prune(older_than_s)` drops them.
    """

    def __init__(self, kv: KeyValue, namespace: str = _NAMESPACE) -> None:
        self.kv = kv
        self.namespace = namespace

    @classmethod
    def sqlite(cls, path: str | Path) -> TxJournal:
        """A journal in its own SQLite file: ``TxJournal.sqlite("var/tx.sqlite3")``."""
        return cls(SqliteKeyValue(path))

    async def put(self, entry: JournalEntry) -> None:
        """Write `entry` durably (returns after the store says it is on disk)."""
        await self.kv.kv_put(self.namespace, entry.key, entry.to_bytes())

    async def get(self, sender: str, nonce: int) -> JournalEntry | None:
        raw = await self.kv.kv_get(self.namespace, f"{sender.lower()}:{nonce:020d}")
        return JournalEntry.from_bytes(raw) if raw is not None else None

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest nonce first."""
        items = await self.kv.kv_items(self.namespace)
        return [JournalEntry.from_bytes(items[k]) for k in sorted(items)]

    async def pending(self, sender: str | None = None) -> list[JournalEntry]:
        return [
            e
            for e in await self.entries()
            if e.pending and (sender is None or e.sender.lower() == sender.lower())
        ]

    async def prune(self, older_than_s: float, *, now: float | None = None) -> int:
        """Drop finished entries created more than `older_than_s` ago; returns how many."""
        cutoff = (now if now is not None else time.time()) - older_than_s
        dropped = 0
        for e in await self.entries():
            if not e.pending and e.created_at < cutoff:
                await self.kv.kv_delete(self.namespace, e.key)
                dropped += 1
        return dropped
