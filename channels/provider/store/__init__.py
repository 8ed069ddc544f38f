"""Durable channel ledgers behind one async interface; `open_store(url)` picks the backend.

>>> store = await open_store("sqlite:///var/lib/paychan/ledger.sqlite3",
...                          chain_id=8453, contract=settlement)
>>> store = await open_store("redis://127.0.0.1:6379/0?prefix=paychan",
...                          chain_id=8453, contract=settlement)
>>> store = await open_store("redis://10.0.0.1:7000?cluster=yes&prefix=paychan",
...                          chain_id=8453, contract=settlement)   # a Redis Cluster
>>> store = await open_store("memory://", chain_id=31337, contract=settlement)
"""

from __future__ import annotations

from channels.protocol import LedgerPolicy

from ._codec import IdempotencyRecord
from .base import Store
from .memory import MemoryStore
from .redis import ChannelContended, NotDurable, RedisStore
from .redis_conn import is_redis_outage
from .sqlite import SqliteStore

__all__ = [
    "ChannelContended",
    "IdempotencyRecord",
    "MemoryStore",
    "NotDurable",
    "RedisStore",
    "SqliteStore",
    "Store",
    "is_redis_outage",
    "open_store",
]


async def open_store(
    url: str, *, chain_id: int, contract: str | bytes, policy: LedgerPolicy | None = None
) -> Store:
    """Open the store a URL names, namespaced by (chain_id, settlement contract).

    `sqlite:///relative.db`, `sqlite:////abs/path.db` (SQLAlchemy style: the path is what
    follows `sqlite:///`), `redis://host:port/db?prefix=name` (also rediss://, unix://;
    `&cluster=yes` for a Redis Cluster; the server must fsync every write unless
    `&durability=relaxed`, see `redis_conn`), `memory://` (no durability; tests and demos).
    """
    if isinstance(contract, bytes):
        contract = "0x" + contract.hex()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path:
            raise ValueError(f"store url {url!r}: name a file, e.g. sqlite:///ledger.sqlite3")
        return await SqliteStore.open(path, chain_id=chain_id, contract=contract, policy=policy)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return await RedisStore.open(url, chain_id=chain_id, contract=contract, policy=policy)
    if url in ("memory", "memory://"):
        return MemoryStore(chain_id=chain_id, contract=contract, policy=policy)
    raise ValueError(
        f"store url {url!r}: use sqlite:///PATH, redis://HOST:PORT/DB?prefix=NAME or memory://"
    )
