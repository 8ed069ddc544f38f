"""SQLite store: the default, for one gateway process.

The process's channel states live in memory (authoritative: one process owns the file) and
every change is written through to SQLite by ONE writer thread that group-commits. The event
loop gathers the writes: those made in one loop tick, and all those made while the writer
is busy with the previous transaction, go to the writer together as the next transaction.
So the event loop never blocks on the disk (a transition costs a dict update and a list
append), under load one fsync covers many requests, and the writer wakes, and takes the GIL,
once per transaction rather than once per request: each take stalls the event loop thread
for a context switch, which cost more than the transition itself. A lone request is
committed at once, with no added delay. WAL + synchronous=FULL: when `commit()` returns, the charge,
the voucher that covers it and the Idempotency-Key answer are on disk. `accept`, `release` and
`expire` only mark the channel dirty (they charge nothing, so losing them in a crash loses no
money): its next commit, `flush()` or `close()` writes the whole channel state.

Requests in flight (reservations) are not written: one process owns the file, so after a
restart nothing is in flight, and holds restored from disk would only block the channel's
headroom (CHANNEL_BUSY) until they expired. The voucher that covers every charge is written.

    >>> store = await SqliteStore.open("ledger.sqlite3", chain_id=31337, contract=settlement)
    >>> await store.commit(cid, "req-1", 1000, now)   # returns after the fsync

Not for several processes on one file (their in-memory states would diverge): use Redis.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..ledger import LedgerPolicy
from ._codec import decode_idem, decode_state, encode_idem, encode_state
from .memory import MemoryStore, Write

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    ns TEXT NOT NULL, channel_id BLOB NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (ns, channel_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    ns TEXT NOT NULL, channel_id BLOB NOT NULL, key TEXT NOT NULL, record BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (ns, channel_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, space TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ns, space, key)) WITHOUT ROWID;
"""


class SqliteStore(MemoryStore):
    """A MemoryStore whose every change is durable in a SQLite file (see the module doc)."""

    _persists = True

    def __init__(
        self, path: str | Path, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None
    ) -> None:
        super().__init__(chain_id=chain_id, contract=contract, policy=policy)
        self.path = Path(path)
        self._ns = f"{chain_id}:{self.contract}"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Gathered on the event loop (see the module doc): the writes not yet handed to the
        # writer thread and the one future their writers wait on, whether the writer holds a
        # transaction, whether a hand-over is due.
        self._gathered: list[list[Write]] = []
        self._gathered_done: asyncio.Future[None] | None = None
        self._writing = False
        self._handover_due = False
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self.transactions = 0  # fsynced transactions so far (group-commit efficiency)

    @classmethod
    async def open(
        cls, path: str | Path, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None
    ) -> SqliteStore:
        """Open (creating it if needed) and load the file; starts the writer thread."""
        store = cls(path, chain_id=chain_id, contract=contract, policy=policy)
        await asyncio.to_thread(store._load)
        store._thread = threading.Thread(
            target=store._run, name=f"sqlite-writer:{path}", daemon=True
        )
        store._thread.start()
        return store

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
        conn.executescript(_SCHEMA)
        return conn

    def _load(self) -> None:
        conn = self._connect()
        try:
            # answers older than the idempotency window are no longer replayed: drop them
            cutoff = time.time() - self.idempotency_ttl_s
            conn.execute(
                "DELETE FROM idempotency WHERE ns=? AND created_at < ?", (self._ns, cutoff)
            )
            for cid, raw in conn.execute(
                "SELECT channel_id, state FROM channels WHERE ns=?", (self._ns,)
            ):
                self._states[bytes(cid)] = decode_state(raw)
            q = "SELECT channel_id, key, record FROM idempotency WHERE ns=?"
            for cid, key, raw in conn.execute(q, (self._ns,)):
                self._idem[(bytes(cid), key)] = decode_idem(raw)
            for space, key, value in conn.execute(
                "SELECT space, key, value FROM kv WHERE ns=?", (self._ns,)
            ):
                self._kv[(space, key)] = bytes(value)
        finally:
            conn.close()

    # persistence hooks ------------------------------------------------------------------------

    def _write(self, writes: list[Write]) -> asyncio.Future[None]:
        if self._failed is not None:
            raise RuntimeError(f"the SQLite writer of {self.path} failed: {self._failed!r}")
        if self._thread is None:
            raise RuntimeError("SqliteStore is not open: use `await SqliteStore.open(path, ...)`")
        fut = self._gathered_done
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._gathered_done = loop.create_future()
            if not self._writing and not self._handover_due:
                self._handover_due = True
                loop.call_soon(self._hand_over)  # after this tick's other writes
        self._gathered.append(writes)
        return fut

    def _hand_over(self) -> None:
        """On the loop: give every gathered write to the writer as one transaction."""
        self._handover_due = False
        if self._writing or not self._gathered:
            return
        group, done = self._gathered, self._gathered_done
        self._gathered, self._gathered_done = [], None
        self._writing = True
        self._queue.put((group, done))

    def _written(self, done: asyncio.Future[None], exc: BaseException | None) -> None:
        """On the loop: a transaction is durable (or failed); hand over what gathered meanwhile."""
        self._writing = False
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)
        if self._gathered:
            self._hand_over()

    def _statements(self, batch: list[Write]) -> list[tuple[str, tuple[Any, ...]]]:
        """The SQL for a batch of writes, in order; a channel's states coalesce to its last."""
        states: dict[bytes, Any] = {}
        rest: list[tuple[str, tuple[Any, ...]]] = []
        ns = self._ns
        for w in batch:
            kind = w[0]
            if kind == "state":
                states[w[1]] = w[2]  # coalesce: the last state of a channel wins
            elif kind == "idem":
                _, cid, key, rec = w
                if rec is None:
                    rest.append(("DELETE FROM idempotency WHERE ns=? AND channel_id=? AND key=?",
                                 (ns, cid, key)))
                else:
                    rest.append(("INSERT OR REPLACE INTO idempotency VALUES (?,?,?,?,?)",
                                 (ns, cid, key, encode_idem(rec), rec.created_at)))
            elif kind == "kv":
                _, space, key, value = w
                if value is None:
                    rest.append(("DELETE FROM kv WHERE ns=? AND space=? AND key=?", (ns, space, key)))
                else:
                    rest.append(("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, space, key, value)))
        out = [("INSERT OR REPLACE INTO channels(ns, channel_id, state) VALUES (?,?,?)",
                (ns, cid, encode_state(st, reservations=False))) for cid, st in states.items()]
        out.extend(rest)
        return out

    def _commit(self, conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """One durable transaction. A single statement runs as its own (autocommit)
        transaction: same atomicity and fsync, two fewer round trips into SQLite (each one
        releases and retakes the GIL, which the event loop thread then waits for)."""
        if len(statements) == 1:
            conn.execute(*statements[0])
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _run(self) -> None:
        conn = self._connect()
        try:
            while (item := self._queue.get()) is not None:
                group, done = item
                exc: BaseException | None = None
                try:
                    statements = self._statements([w for writes in group for w in writes])
                    if statements:
                        self._commit(conn, statements)
                        self.transactions += 1
                except BaseException as e:  # noqa: BLE001 - handed to every waiter
                    exc = self._failed = e
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                try:
                    done.get_loop().call_soon_threadsafe(self._written, done, exc)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    self._writing = False
        finally:
            conn.close()

    # lifecycle --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every channel changed since its last durable write, and wait for the disk."""
        dirty, self._dirty = self._dirty, set()
        await self._write([("state", cid, self._states[cid]) for cid in dirty])

    async def close(self) -> None:
        """Flush, stop the writer thread and close the file."""
        if self._thread is None:
            return
        await self.flush()
        while self._writing or self._gathered:  # written meanwhile by other tasks
            await self._write([])
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
