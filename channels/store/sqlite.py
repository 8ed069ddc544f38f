"""SQLite store: the default, for one gateway process.

The process's channel states live in memory (authoritative: one process owns the file) and
every change is written through to SQLite by ONE writer process (``_sqlite_writer.py``, the
store's child) that group-commits. The event loop gathers the writes: those made in one loop
tick, and all those made while the writer is busy with the previous transaction, go to the
writer together as the next transaction, down a pipe; the writer answers on another pipe,
which the loop watches. So the event loop never blocks on the disk (a transition costs a dict
update and a list append), under load one fsync covers many requests, and nothing else in
this process competes for the GIL: a writer *thread* took it several times per transaction,
and each take stalled the event loop (about 20 µs per paid request, measured with
bench/gateway.py). A lone request is committed at once, with no added delay.
WAL + synchronous=FULL: when `commit()` returns, the charge, the voucher that covers it and
the Idempotency-Key answer are on disk. `accept`, `release` and `expire` only mark the
channel dirty (they charge nothing, so losing them in a crash loses no money): its next
commit, `flush()` or `close()` writes the whole channel state.

Requests in flight (reservations) are not written: one process owns the file, so after a
restart nothing is in flight, and holds restored from disk would only block the channel's
headroom (CHANNEL_BUSY) until they expired. The voucher that covers every charge is written.

    >>> store = await SqliteStore.open("ledger.sqlite3", chain_id=31337, contract=settlement)
    >>> await store.commit(cid, "req-1", 1000, now)   # returns after the fsync

The store is bound to the event loop that opened it (the writer's answers arrive there).
If the writer fails (disk full, killed), every waiting and later write raises RuntimeError
naming the cause. Not for several processes on one file (their in-memory states would
diverge): use Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..ledger import LedgerPolicy
from ._codec import decode_idem, decode_state, encode_idem, encode_state
from .memory import MemoryStore, Write

__all__ = ["SqliteStore"]

_WRITER = Path(__file__).with_name("_sqlite_writer.py")
log = logging.getLogger("paychan.store")

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
        # Gathered on the event loop (see the module doc): the writes not yet handed to the
        # writer and the one future their writers wait on, whether the writer holds a
        # transaction, whether a hand-over is due.
        self._gathered: list[list[Write]] = []
        self._gathered_done: asyncio.Future[None] | None = None
        self._writing = False
        self._handover_due = False
        self._writer: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: asyncio.Future[None] | None = None  # the transaction the writer holds
        self._answers = b""  # the writer's answer lines, as far as read
        self._failed: BaseException | None = None
        self.transactions = 0  # fsynced transactions so far (group-commit efficiency)

    @classmethod
    async def open(
        cls, path: str | Path, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None
    ) -> SqliteStore:
        """Open (creating it if needed) and load the file; starts the writer process."""
        store = cls(path, chain_id=chain_id, contract=contract, policy=policy)
        await asyncio.to_thread(store._load)
        store._loop = asyncio.get_running_loop()
        store._writer = subprocess.Popen(
            [sys.executable, "-I", str(_WRITER), str(store.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        store._loop.add_reader(store._writer.stdout.fileno(), store._on_answer)  # type: ignore[union-attr]
        return store

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (a child of this process); None when closed."""
        return self._writer.pid if self._writer is not None else None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")  # the writer process writes under the same modes
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
            raise RuntimeError(str(self._failed))  # a fresh error: it names the file and the cause
        if self._writer is None:
            raise RuntimeError("SqliteStore is not open: use `await SqliteStore.open(path, ...)`")
        fut = self._gathered_done
        if fut is None:
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                raise RuntimeError(
                    "SqliteStore: used from another event loop than the one that opened it; "
                    "open the store in the loop that uses it"
                )
            fut = self._gathered_done = loop.create_future()
            if not self._writing and not self._handover_due:
                self._handover_due = True
                loop.call_soon(self._hand_over)  # after this tick's other writes
        self._gathered.append(writes)
        return fut

    def _hand_over(self) -> None:
        """On the loop: send every gathered write to the writer as one transaction."""
        self._handover_due = False
        if self._writing or not self._gathered:
            return
        group, done = self._gathered, self._gathered_done
        self._gathered, self._gathered_done = [], None
        assert done is not None
        if self._failed is not None:
            done.set_exception(RuntimeError(str(self._failed)))
            return
        try:
            statements = self._statements([w for writes in group for w in writes])
            blob = pickle.dumps(statements, protocol=pickle.HIGHEST_PROTOCOL) if statements else b""
        except BaseException as exc:  # noqa: BLE001 - an unencodable write fails its waiters only
            done.set_exception(exc)
            return
        if not blob:  # nothing to write (close() waiting for the writer to go idle)
            done.set_result(None)
            return
        self._writing, self._in_flight = True, done
        try:
            # Blocking, and brief: the writer is idle, reading, so the pipe drains as we write.
            data = memoryview(struct.pack("<I", len(blob)) + blob)
            fd = self._writer.stdin.fileno()  # type: ignore[union-attr]
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:  # the writer is gone (killed): its answer pipe says so too
            self._fail(RuntimeError(f"cannot reach the SQLite writer process of {self.path} ({exc})"))

    def _on_answer(self) -> None:
        """On the loop, when the writer answers: a transaction is durable (or failed)."""
        data = os.read(self._writer.stdout.fileno(), 4096)  # type: ignore[union-attr]
        if not data:
            code = self._writer.poll()  # type: ignore[union-attr]
            self._fail(RuntimeError(f"the SQLite writer process of {self.path} exited (code {code})"))
            return
        self._answers += data
        while b"\n" in self._answers:
            line, _, self._answers = self._answers.partition(b"\n")
            done, self._in_flight = self._in_flight, None
            if line == b"ok":
                self.transactions += 1
                self._written(done, None)
            else:
                reason = line.decode("utf-8", "replace").removeprefix("error ")
                self._fail(RuntimeError(f"the SQLite writer of {self.path} failed: {reason}"), done)

    def _fail(self, exc: BaseException, done: asyncio.Future[None] | None = None) -> None:
        """The writer failed: this write, the one it held and every later one raise ``exc``."""
        self._failed = exc
        done = done or self._in_flight
        self._in_flight = None
        if self._loop is not None and self._writer is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._writer.stdout.fileno())  # type: ignore[union-attr]
        if done is not None:
            self._written(done, exc)
        else:
            self._writing = False

    def _written(self, done: asyncio.Future[None] | None, exc: BaseException | None) -> None:
        """On the loop: a transaction is durable (or failed); hand over what gathered meanwhile."""
        self._writing = False
        if done is not None and not done.done():
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

    # lifecycle --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every channel changed since its last durable write, and wait for the disk."""
        dirty, self._dirty = self._dirty, set()
        await self._write([("state", cid, self._states[cid]) for cid in dirty])

    async def close(self) -> None:
        """Flush, then stop the writer process (it commits what it holds and exits).

        After a writer failure nothing more can be written: the file holds every commit that
        returned, and close() only logs the failure and stops."""
        writer = self._writer
        if writer is None:
            return
        if self._failed is not None:
            log.error("%s: closed after its writer failed (%s); the file holds every commit "
                      "that returned before that", self.path, self._failed)
        try:
            if self._failed is None:
                await self.flush()
                while self._writing or self._gathered:  # written meanwhile by other tasks
                    await self._write([])
        finally:
            self._writer = None
            if self._failed is None and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(writer.stdout.fileno())  # type: ignore[union-attr]
            writer.stdin.close()  # type: ignore[union-attr]  # end of input: the writer exits
            await asyncio.to_thread(writer.wait)
            writer.stdout.close()  # type: ignore[union-attr]
