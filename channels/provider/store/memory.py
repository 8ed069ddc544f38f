"""An in-process store: the authoritative state of one gateway process, in dicts.

`SqliteStore` extends it with durable write-through; on its own (`memory://`) it is for
tests and demos that need no durability.

    >>> store = MemoryStore(chain_id=31337, contract=settlement)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.protocol import ChannelState, LedgerPolicy
from ._codec import IdempotencyRecord
from .base import Store, T, Transition, _IdemOp

__all__ = ["MemoryStore"]

# A write handed to the persistence hook: ("state", cid, ChannelState) | ("idem", cid, key,
# record|None) | ("kv", namespace, key, bytes|None)
Write = tuple[Any, ...]


class MemoryStore(Store):
    """Single-process store. Every transition runs on the event loop thread without awaiting,
    so per channel it is atomic by construction (no await between read and write)."""

    def __init__(self, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None) -> None:
        self.chain_id = chain_id
        self.contract = contract.lower()
        self.policy = policy or LedgerPolicy()
        self._states: dict[bytes, ChannelState] = {}
        self._idem: dict[tuple[bytes, str], IdempotencyRecord] = {}
        self._kv: dict[tuple[str, str], bytes] = {}
        # channels changed by non-durable transitions (accept, release, expire) and not yet
        # written: the next durable write of the channel, flush() or close() writes them
        self._dirty: set[bytes] = set()
        self._begun = 0

    # persistence hooks (no-ops here) ---------------------------------------------------------

    _persists = False

    def _write(self, writes: list[Write]) -> Any:
        """Queue writes; returns an awaitable that resolves when they are durable (None: at
        once; awaiting nothing keeps a commit of this store free of any suspension)."""
        return None

    @staticmethod
    async def _durable(token: Any) -> None:
        if token is not None:
            await token

    # Store -----------------------------------------------------------------------------------

    async def _transact(
        self, channel_id: bytes, fn: Transition[T], *, idem: _IdemOp | None = None, durable: bool,
        decided: Callable[[T], object] | None = None,
    ) -> T:
        old = self._states.get(channel_id)
        new, result = fn(old)
        changed = new is not None and new is not old
        writes: list[Write] = []
        if changed and durable:
            writes.append(("state", channel_id, new))
        drop_idem = False
        if idem is not None:
            if idem.kind == "set":
                writes.append(("idem", channel_id, idem.key, idem.record))
            else:
                cur = self._idem.get((channel_id, idem.key))
                drop_idem = cur is not None and not cur.done and cur.request_id == idem.request_id
                if drop_idem:
                    writes.append(("idem", channel_id, idem.key, None))
        # Queued before anything is applied: a store that can no longer write (its SQLite
        # writer died) raises here, and the transition has not happened.
        token = self._write(writes) if writes else None
        if changed:
            self._states[channel_id] = new  # type: ignore[assignment]
            if durable:
                self._dirty.discard(channel_id)
            elif self._persists:
                self._dirty.add(channel_id)
        if idem is not None:
            if idem.kind == "set":
                self._idem[(channel_id, idem.key)] = idem.record  # type: ignore[assignment]
            elif drop_idem:
                del self._idem[(channel_id, idem.key)]
        if decided is not None:
            decided(result)
        if durable and token is not None:
            await token
        return result

    async def get(self, channel_id: bytes) -> ChannelState | None:
        return self._states.get(channel_id)

    async def channels(self) -> list[ChannelState]:
        return list(self._states.values())

    async def begin_idempotent(
        self, channel_id: bytes, key: str, request_id: str, now: float, *, digest: str = ""
    ) -> IdempotencyRecord | None:
        k = (channel_id, key)
        cur = self._idem.get(k)
        if cur is not None and (
            cur.done or now - cur.created_at < self.policy.reservation_timeout_s
        ):
            return cur
        rec = IdempotencyRecord(request_id, now, None, digest)
        self._idem[k] = rec
        writes: list[Write] = [("idem", channel_id, key, rec)]
        self._begun += 1
        if self._begun % 1024 == 0:  # now and then, forget answers past the replay window
            old = [
                k2 for k2, r in self._idem.items() if now - r.created_at > self.idempotency_ttl_s
            ]
            for cid2, key2 in old:
                del self._idem[(cid2, key2)]
                writes.append(("idem", cid2, key2, None))
        self._write(writes)
        return None

    async def get_idempotent(self, channel_id: bytes, key: str) -> IdempotencyRecord | None:
        return self._idem.get((channel_id, key))

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        return self._kv.get((namespace, key))

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        self._kv[(namespace, key)] = bytes(value)
        await self._durable(self._write([("kv", namespace, key, bytes(value))]))

    async def kv_cas(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        if self._kv.get((namespace, key)) != expected:
            return False
        if value is None:
            self._kv.pop((namespace, key), None)
        else:
            self._kv[(namespace, key)] = bytes(value)
        await self._durable(self._write([("kv", namespace, key, value)]))
        return True

    async def kv_delete(self, namespace: str, key: str) -> None:
        if self._kv.pop((namespace, key), None) is not None:
            await self._durable(self._write([("kv", namespace, key, None)]))

    async def kv_items(self, namespace: str) -> dict[str, bytes]:
        return {k: v for (ns, k), v in self._kv.items() if ns == namespace}

    async def close(self) -> None:
        return None
