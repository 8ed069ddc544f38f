"""The SQLite writer process of a `SqliteStore` (run as a script: it imports only the stdlib).

    python -I _sqlite_writer.py PATH [LOCK_FD]

It reads transactions from stdin, each a 4-byte little-endian length and a pickled list of
``(sql, params)`` statements, runs each as ONE durable transaction (WAL, synchronous=FULL)
and answers one line per transaction on stdout: ``ok`` once it is on disk, or ``error
REASON`` (the transaction was rolled back). It exits at the end of stdin, that is when its
gateway closes the store or dies: what it had read is committed first. SIGINT and SIGTERM
are ignored, so a Ctrl-C or a stop sent to the whole process group leaves it running until
the gateway has flushed and closed the store.

``LOCK_FD`` is the store's owner lock (an exclusive ``flock`` on ``PATH.lock``), inherited
from the gateway: the same open file, so the lock stays held while this process lives, even
after its gateway died, and nobody else opens the file before the last commit is on disk.

A process, not a thread, because a writer thread needs the GIL several times per
transaction and each take stalls the event loop (measured: about 20 µs per paid request).
The pickle never leaves the pipe between the gateway and its own child.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import sqlite3
import struct
import sys
from typing import BinaryIO


def _commit(conn: sqlite3.Connection, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    if len(statements) == 1:  # autocommit: one transaction, two fewer round trips
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


def _read(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if len(data) == n else None


def main(path: str, lock_fd: int | None = None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if lock_fd is not None:
        # Already ours (the same open file as the gateway's): this confirms it, and fails
        # loudly, before any write, if we were started without it.
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
    source = sys.stdin.buffer
    try:
        while (head := _read(source, 4)) is not None:
            blob = _read(source, struct.unpack("<I", head)[0])
            if blob is None:  # the gateway died mid-write: that transaction was never acked
                break
            try:
                _commit(conn, pickle.loads(blob))
                answer = b"ok\n"
            except Exception as exc:  # noqa: BLE001 - reported to the gateway, which stops writing
                reason = repr(exc)[:2000].encode("utf-8", "replace").replace(b"\n", b" ")
                answer = b"error " + reason + b"\n"
            os.write(1, answer)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))
