"""Who may run the settler: exactly one process at a time.

`RedisLease` (SET NX PX, renewed by its holder) across gateway processes sharing a Redis
store; `LocalLease` for the single SQLite process; `lease_for(store_url)` picks one::

    lease = lease_for("redis://127.0.0.1:6379/0?prefix=paychan", chain_id=8453, settlement=addr)
    if await lease.acquire():      # ours now (renews when already held)
        ...
    await lease.release()
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

__all__ = ["Lease", "LocalLease", "RedisLease", "lease_for"]


class Lease(Protocol):
    """Who may act: `await lease.acquire()` takes or renews it (True: ours now)."""

    async def acquire(self) -> bool: ...
    async def release(self) -> None: ...


class LocalLease:
    """The single-process lease (SQLite stores): always held."""

    renew_every_s: float | None = None

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A Redis lease with a TTL: `SET key token NX PX ttl`, renewed only by its holder.

    A holder that dies stops renewing; another process takes over within `ttl_s`.
    """

    def __init__(self, client: Any, key: str, ttl_s: float = 15.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.renew_every_s: float | None = (
            ttl_s / 3
        )  # a claim can wait on a receipt longer than the TTL
        self.token = secrets.token_hex(16)
        self.held = False

    @classmethod
    def from_url(cls, url: str, key: str, ttl_s: float = 15.0) -> RedisLease:
        """`url`: a Redis URL; `?cluster=yes` for a Redis Cluster (the lease is one key)."""
        from .store.redis_conn import connect, parse_redis_url

        return cls(connect(parse_redis_url(url)), key, ttl_s)

    async def acquire(self) -> bool:
        if self.held and await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            return True
        self.held = bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    async def release(self) -> None:
        if self.held:
            await self.client.eval(_RELEASE, 1, self.key, self.token)
        self.held = False

    async def close(self) -> None:
        await self.release()
        await self.client.aclose()


def lease_for(store_url: str, *, chain_id: int, settlement: str, ttl_s: float = 15.0) -> Lease:
    """The lease that fits a store URL: Redis (shared by processes) or local (one process)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        from .store.redis_conn import connect, parse_redis_url

        parsed = parse_redis_url(store_url)  # cluster=yes: a RedisCluster client, the same key
        key = f"{parsed.prefix}:{chain_id}:{settlement.lower()}:settler-lease"
        return RedisLease(connect(parsed), key, ttl_s)
    return LocalLease()
