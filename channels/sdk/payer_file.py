"""The payer's SQLite file: one row per channel (`ChannelRecord`), amounts as decimal text.

A signed ceiling is on disk (synchronous=FULL, BEGIN IMMEDIATE ... COMMIT) before its voucher
leaves, so a restarted payer never signs below a voucher the server holds::

    >>> file = PayerFile("payer.sqlite")
    >>> with file.transaction():
    ...     rec = file.record(cid) or file.insert(cid, 31337, settlement, config)
    ...     file.update(cid, signed_floor=4000, signed_max=4000, signature=sig)
    >>> PayerFile.read_records("payer.sqlite")          # read-only, no key needed
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..protocol import ChannelConfig, to_address
from .errors import ChannelHalted
from .models import ChannelRecord

__all__ = ["PayerFile"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id   BLOB PRIMARY KEY,
    chain_id     INTEGER NOT NULL,
    settlement   BLOB NOT NULL,
    config       TEXT NOT NULL,
    signed_floor TEXT NOT NULL,
    signed_max   TEXT NOT NULL,
    signature    BLOB,
    charged      TEXT NOT NULL,
    balance      TEXT NOT NULL,
    halted       TEXT
)
"""
_AMOUNTS = frozenset({"signed_floor", "signed_max", "charged", "balance"})  # stored as text
_OTHERS = frozenset({"signature", "halted"})


class PayerFile:
    """One payer's channels in a SQLite file (":memory:" for a throwaway payer)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a signed ceiling is on disk before it leaves
        self._db.execute(_SCHEMA)

    def record(self, cid: bytes) -> ChannelRecord | None:
        """The stored record of a channel, or None."""
        row = self._db.execute("SELECT * FROM channels WHERE channel_id = ?", (cid,)).fetchone()
        return None if row is None else _record(row)

    def records(self) -> list[ChannelRecord]:
        """Every channel in the file, oldest first."""
        return [_record(r) for r in self._db.execute("SELECT * FROM channels ORDER BY rowid")]

    @staticmethod
    def read_records(path: str | Path) -> list[ChannelRecord]:
        """The channels of a payer file, opened read-only (FileNotFoundError: no such file,
        ValueError: not a payer file)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no payer state file at {path}")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT * FROM channels ORDER BY rowid").fetchall()
        except sqlite3.DatabaseError as exc:  # another file, or not SQLite at all
            raise ValueError(f"{path} is not a payer state file ({exc})") from None
        finally:
            db.close()
        return [_record(r) for r in rows]

    def insert(
        self, cid: bytes, chain_id: int, settlement: bytes, config: ChannelConfig
    ) -> ChannelRecord:
        """A new channel with nothing signed, charged or deposited yet."""
        self._db.execute(
            "INSERT INTO channels (channel_id, chain_id, settlement, config, signed_floor,"
            " signed_max, signature, charged, balance)"
            " VALUES (?, ?, ?, ?, '0', '0', NULL, '0', '0')",
            (cid, chain_id, settlement, json.dumps(config.to_json())),
        )
        return ChannelRecord(cid, chain_id, settlement, config, 0, 0, None, 0, 0)

    def update(self, cid: bytes, **columns: int | bytes | str | None) -> None:
        """Set some columns of a channel's row (amounts as ints: stored as decimal text, since
        uint128 does not fit SQLite's INTEGER).

            >>> file.update(cid, charged=5000, balance=10_000)
        """
        unknown = set(columns) - _AMOUNTS - _OTHERS
        if unknown:
            raise ValueError(f"no such payer column: {sorted(unknown)}")
        names = ", ".join(f"{name} = ?" for name in columns)
        values = [str(v) if name in _AMOUNTS else v for name, v in columns.items()]
        self._db.execute(f"UPDATE channels SET {names} WHERE channel_id = ?", (*values, cid))

    def transaction(self) -> _Tx:
        """BEGIN IMMEDIATE ... COMMIT around a block (joins one already open)."""
        return _Tx(self._db)

    def close(self) -> None:
        self._db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: several payer processes may share one file. A halt
    (ChannelHalted) commits: the halted mark must stay."""

    __slots__ = ("_db", "_owner")

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._owner = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._owner = True
        else:
            self._owner = False

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._owner:
            return
        self._db.execute(
            "ROLLBACK" if exc_type is not None and exc_type is not ChannelHalted else "COMMIT"
        )


def _record(row: tuple[Any, ...]) -> ChannelRecord:
    cid, chain_id, settlement, config, floor, smax, sig, charged, balance, halted = row
    c = json.loads(config)
    cfg = ChannelConfig(
        to_address(c["payer"]),
        to_address(c["payerAuthorizer"]),
        to_address(c["receiver"]),
        to_address(c["receiverAuthorizer"]),
        to_address(c["token"]),
        int(c["withdrawDelay"]),
        bytes.fromhex(c["salt"][2:]),
    )
    return ChannelRecord(
        cid, chain_id, settlement, cfg, int(floor), int(smax), sig, int(charged), int(balance),
        halted,
    )
