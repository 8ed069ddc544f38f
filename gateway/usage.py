"""The usage log: one JSON line per paid answer, appended after its charge is durable.

The ledger store holds each channel's charged *total*; this file holds the *rows* behind it,
for accounting and the operator console (``time, channel, payer, images, charge, model,
receipt``). It is never the source of truth for money: a row lost to a crash (the last second
of buffered rows) loses no charge, the ledger still has it. Rows are buffered in memory and
written by a background flush (one ``write`` + ``fsync`` per ``flush_s``), so a paid answer
never waits for this file::

    log = UsageLog(Path("paychan-gateway.sqlite3.usage.jsonl"))
    await log.start()                          # the flush task
    log.record(UsageRow(time.time(), channel_hex, payer, 1, 1000, version_hex, "5000"))
    await log.close()                          # the last rows, fsynced

    for row in read_usage(path, since=t0, until=t1):    # `paychan usage export`
        print(row.to_json())

``receipt`` is the receipt's ``cumulativeCharged``: each charge raises it, so with the channel
it names exactly one signed receipt (the payer's copy says the same number).
Several processes (``--workers N``) may append to one file: each flush is one ``O_APPEND``
write of whole lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CSV_FIELDS", "UsageIndex", "UsageLog", "UsageRow", "read_usage", "usage_log_path",
           "write_csv"]

log = logging.getLogger("paychan.usage")

CSV_FIELDS = ("time", "channel", "payer", "images", "charge", "model", "receipt")


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One paid answer. ``charge`` in token units; ``model`` the 0x sha256 of the weights."""

    time: float
    channel: str
    payer: str
    images: int
    charge: int
    model: str
    receipt: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UsageRow:
        return cls(float(d["time"]), str(d["channel"]), str(d["payer"]), int(d["images"]),
                   int(d["charge"]), str(d["model"]), str(d["receipt"]))


def usage_log_path(configured: Path | None, store_url: str) -> Path | None:
    """Where the usage log goes: ``configured``, else next to a SQLite ledger
    (``<ledger>.usage.jsonl``), else nowhere (a Redis or memory ledger: set ``--usage-log``).

        usage_log_path(None, "sqlite:///data/ledger.sqlite3")  # data/ledger.sqlite3.usage.jsonl
    """
    if configured is not None:
        return configured
    if store_url.startswith("sqlite:///"):
        return Path(store_url[len("sqlite:///"):].split("?", 1)[0] + ".usage.jsonl")
    return None


class UsageLog:
    """Buffered, append-only writer of ``UsageRow`` lines (see the module doc)."""

    def __init__(self, path: Path, *, flush_s: float = 1.0) -> None:
        self.path = path
        self.flush_s = flush_s
        self._buffer: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self.written = 0  # rows on disk
        self.dropped = 0  # rows lost to a write error (logged; the ledger still has the money)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if _torn(self.path):  # a crash cut the last line: the next row starts on its own line
            os.write(self._fd, b"\n")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="paychan-usage-log")

    def record(self, row: UsageRow) -> None:
        """Queue one row; costs a json.dumps on the caller's path, nothing else."""
        self._buffer.append(json.dumps(row.to_json(), separators=(",", ":")).encode() + b"\n")

    async def flush(self) -> None:
        """Write and fsync what is buffered (in a thread: the loop never waits for the disk)."""
        if not self._buffer or self._fd is None:
            return
        lines, self._buffer = self._buffer, []
        try:
            await asyncio.to_thread(self._write, self._fd, b"".join(lines))
            self.written += len(lines)
        except OSError as exc:
            self.dropped += len(lines)
            log.error("usage log %s: %d row(s) not written (%s); the ledger keeps the charges",
                      self.path, len(lines), exc)

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _torn(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read_usage(path: Path, *, since: float | None = None, until: float | None = None) -> Iterator[UsageRow]:
    """The rows of ``path`` with ``since <= time < until``, in file order. A torn last line
    (a crash mid-write) is skipped."""
    with path.open("rb") as f:
        for line in f:
            row = _parse(line)
            if row is None:
                continue
            if since is not None and row.time < since:
                continue
            if until is not None and row.time >= until:
                continue
            yield row


def _parse(line: bytes) -> UsageRow | None:
    if not line.endswith(b"\n"):
        return None
    try:
        return UsageRow.from_json(json.loads(line))
    except (ValueError, KeyError, TypeError):
        return None


def write_csv(rows: Iterable[UsageRow], out: io.TextIOBase | Any) -> int:
    """Write ``rows`` as CSV with a header (``CSV_FIELDS``); returns how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    n = 0
    for row in rows:
        writer.writerow([f"{row.time:.3f}", row.channel, row.payer, row.images, row.charge,
                         row.model, row.receipt])
        n += 1
    return n


@dataclass(slots=True)
class _ChannelUse:
    requests: int = 0
    images: int = 0
    last: float = 0.0


@dataclass(slots=True)
class UsageIndex:
    """Per-channel requests, images and last use, read incrementally from a usage log (the
    console refreshes it per page: only the bytes appended since are read)::

        index = UsageIndex(path); index.refresh(); index.channels["0x5e1f.."].last
    """

    path: Path
    channels: dict[str, _ChannelUse] = field(default_factory=dict)
    offset: int = 0

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # being written: read it next time
                    self.offset += len(line)
                    row = _parse(line)
                    if row is None:
                        continue
                    use = self.channels.setdefault(row.channel, _ChannelUse())
                    use.requests += 1
                    use.images += row.images
                    use.last = max(use.last, row.time)
        except FileNotFoundError:
            return
