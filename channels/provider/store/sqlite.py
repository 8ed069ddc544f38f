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

One owner per file, enforced: `open()` takes an exclusive ``flock`` on ``PATH.lock`` (and
writes its pid there) before it reads the file, and the writer process inherits that lock,
so it is held until both the owner and its writer are gone. The kernel drops it when they
die, so a crashed gateway never blocks the next open. A second open, in this process or
another, raises `LedgerLocked` naming the owner; `ledger_holder(path)` asks without
opening::

    >>> ledger_holder("ledger.sqlite3")
    LockHolder(pid=4242, command='/usr/bin/python3 /usr/local/bin/paychan serve ...')
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from channels.protocol import LedgerPolicy
from ._codec import decode_idem, decode_state, encode_idem, encode_state
from .memory import MemoryStore, Write

__all__ = ["LedgerLocked", "LockHolder", "SqliteStore", "ledger_holder", "lock_path"]

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


# How long open() waits for a lock whose owner has died: its orphaned writer is committing
# what it had read and exits as soon as it has (milliseconds; seconds on a slow disk).
_ORPHAN_WAIT_S = 10.0


# ------------------------------------------------------------------------------ the owner lock


@dataclass(frozen=True, slots=True)
class LockHolder:
    """The process that owns a SQLite ledger, as far as it can be known."""

    pid: int | None  # None: the lock file names no process (an owner that is starting)
    command: str | None = None  # its command line, where /proc shows it

    def describe(self) -> str:
        """``"process 4242 (paychan serve --store ...)"``, or ``"another process"``."""
        if self.pid is None:
            return "another process"
        return f"process {self.pid}" + (f" ({self.command})" if self.command else "")


class LedgerLocked(RuntimeError):
    """Another process (or another store in this one) owns this SQLite ledger file.

        try:
            store = await SqliteStore.open("ledger.sqlite3", chain_id=1, contract=settlement)
        except LedgerLocked as exc:
            print(exc.holder.pid, exc)   # the owner, and a message naming the file and the fix
    """

    def __init__(self, path: str | Path, holder: LockHolder) -> None:
        self.path = Path(path)
        self.holder = holder
        super().__init__(
            f"{self.path}: this SQLite ledger is open in {holder.describe()}, which holds its "
            f"owner lock {lock_path(self.path)}; a SQLite ledger has exactly one writer, so stop "
            "that process first (or use a Redis store to share one ledger between processes)"
        )


def lock_path(path: str | Path) -> Path:
    """The owner-lock file of the ledger at ``path``.

        lock_path("ledger.sqlite3")   # Path("ledger.sqlite3.lock")
    """
    return Path(f"{path}.lock")


def ledger_holder(path: str | Path) -> LockHolder | None:
    """The live process that owns the ledger at ``path``; None when nothing holds it.

        if (holder := ledger_holder("ledger.sqlite3")) is not None:
            sys.exit(f"in use by {holder.describe()}")

    Opens nothing but the lock file (never creates it). A lock still held only by the
    orphaned writer of a dead owner counts as free: `SqliteStore.open` waits for that writer.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            # Shared, and dropped at once: two probes never block each other.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            return holder if _alive(holder.pid) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


async def _acquire_lock(path: Path, *, orphan_wait_s: float = _ORPHAN_WAIT_S) -> int:
    """Take the owner lock of the ledger at ``path`` and record our pid; the locked fd.

    Raises LedgerLocked at once while the owner lives; waits (bounded) while only the
    orphaned writer of a dead owner still holds it.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + orphan_wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(fd)
                if _alive(holder.pid) or time.monotonic() >= deadline:
                    raise LedgerLocked(path, holder) from None
                await asyncio.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    except BaseException:
        os.close(fd)  # drops the lock too, if we had taken it
        raise


def _read_holder(fd: int) -> LockHolder:
    """The owner a lock file names (its pid, written by the owner after locking)."""
    try:
        pid: int | None = int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
    except ValueError:
        return LockHolder(None)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or another user's process
        return LockHolder(pid)
    command = " ".join(raw.decode("utf-8", "replace").replace("\0", " ").split())  # one line
    return LockHolder(pid, (command[:157] + "...") if len(command) > 160 else command or None)


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running process (a zombie is not; unknown counts as alive)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


# ------------------------------------------------------------------------------ the store


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
        self._lock_fd: int | None = None  # the owner lock (see the module doc) while open
        self.transactions = 0  # fsynced transactions so far (group-commit efficiency)

    @classmethod
    async def open(
        cls, path: str | Path, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None
    ) -> SqliteStore:
        """Take the owner lock, open (creating it if needed) and load the file; starts the
        writer process. Raises LedgerLocked when another process owns the file."""
        store = cls(path, chain_id=chain_id, contract=contract, policy=policy)
        # Locked before reading: an owner's in-memory state must be the file's only writer.
        lock_fd = store._lock_fd = await _acquire_lock(store.path)
        try:
            await asyncio.to_thread(store._load)
            store._loop = asyncio.get_running_loop()
            # The writer shares the lock (same open file), so a dead gateway's file stays
            # locked until its writer has committed what it had read and exited.
            store._writer = subprocess.Popen(
                [sys.executable, "-I", str(_WRITER), str(store.path), str(lock_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, pass_fds=(lock_fd,),
            )
        except BaseException:
            store._release_lock()
            raise
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
                rec = decode_idem(raw)
                # A pending marker on disk belongs to a process that died mid-request (one
                # process owns the file): its request was never charged, so its retry must
                # run now, not wait 409s until the marker times out.
                if rec.done:
                    self._idem[(bytes(cid), key)] = rec
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
            try:
                await asyncio.to_thread(writer.wait)
                writer.stdout.close()  # type: ignore[union-attr]
            finally:
                self._release_lock()  # after the writer's last commit: the next owner may open

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
