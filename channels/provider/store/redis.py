"""Redis store: one ledger shared by N gateway processes (and Redis Cluster ready).

ONE source of rules. Each transition loads the channel, runs the pure Python transition from
`channels.protocol.ledger`, and writes the new state with ONE Lua script that compares-and-sets a version
field (and, in the same atomic step, the Idempotency-Key record). On a conflict the script
returns the current state and the transition re-runs on it. Why not the rules in Lua: a second
implementation of money rules would have to be kept equal to the first forever (and Lua 5.1
numbers are doubles, exact only to 2**53, while amounts are uint128); CAS keeps the rules in
one place by construction, at the price of a retry under contention on one channel, which the
4-process test exercises. Each process caches the last (version, state) it saw per channel and
runs one transition per channel at a time, so the usual transition is ONE round trip (the
EVALSHA); a stale cache costs a conflict + retry. Fairness: optimistic retries starve the loser
(the winner's cache is always fresh), so after `turn_after` conflicts in a row a store takes the
channel's "turn" key inside the CAS script; while another store holds the turn every other CAS
on that channel fails, so the starving one gets through (the turn expires after
`turn_ttl_ms` if its holder dies).

Keys (all keys of one channel share the hash tag {<channel id hex>}, so each script touches
one slot and runs unchanged on Redis Cluster):

    <prefix>:<chain_id>:<contract>:ch:{<cid>}            hash  v=version, s=state JSON
    <prefix>:<chain_id>:<contract>:idem:{<cid>}:<key>    string, idempotency record (PX ttl)
    <prefix>:<chain_id>:<contract>:turn:{<cid>}          string, the fairness turn (PX ttl)
    <prefix>:<chain_id>:<contract>:channels              set of channel ids (listing)
    <prefix>:<chain_id>:<contract>:kv:<namespace>        hash, the generic key/value

Only single-key commands and one-channel scripts are used, so a Redis Cluster
(`?cluster=yes`, redis-py's RedisCluster: MOVED/ASK followed, SCAN over every master) runs the
same code: the kv hash, the channel index set and the settler lease are one key each.

Durability is Redis's: with `appendonly yes` + `appendfsync always` a commit is on disk when it
returns, like SQLite's. `open` checks that on every master and refuses a server that could lose
an acknowledged charge unless the URL says `durability=relaxed` (see `redis_conn`).

    >>> store = await RedisStore.open("redis://127.0.0.1:6379/0?prefix=paychan",
    ...                               chain_id=8453, contract=settlement)
    >>> store = await RedisStore.open("redis://10.0.0.1:7000?cluster=yes&prefix=paychan", ...)
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import ClusterError, TryAgainError

from channels.protocol import (
    ChannelState,
    LedgerError,
    LedgerPolicy,
    Reservation,
    UnknownReservation,
)

from ._codec import IdempotencyRecord, decode_idem, decode_state, encode_idem, encode_state
from .base import Store, T, Transition, _IdemOp
from .redis_conn import NotDurable, check_durability, connect, is_redis_outage, parse_redis_url

__all__ = ["ChannelContended", "NotDurable", "RedisStore"]

log = logging.getLogger("paychan.store")

# KEYS[1] state hash, KEYS[2] the channel's turn key (fairness), KEYS[3] idempotency key (optional)
# ARGV[1] expected version ('' = do not touch the state), ARGV[2] new state JSON,
# ARGV[3] idem op ('' | 'set' | 'drop'), ARGV[4] record JSON, ARGV[5] ttl ms, ARGV[6] request id,
# ARGV[7] this store's token, ARGV[8] '1' = take the turn on conflict, ARGV[9] turn ttl ms.
# Returns {2} (nothing written) for a 'set' whose key another request took over (see _TAKEOVER).
_CAS = """
if ARGV[3] == 'set' then
  local cur = redis.call('GET', KEYS[3])
  if cur and cjson.decode(cur).r ~= ARGV[6] then return {2} end
end
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[1], 'v') or '0'
  local turn = redis.call('GET', KEYS[2])
  if v ~= ARGV[1] or (turn and turn ~= ARGV[7]) then
    if ARGV[8] == '1' and not turn then redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[9]) end
    return {0, v, redis.call('HGET', KEYS[1], 's') or ''}
  end
  if turn then redis.call('DEL', KEYS[2]) end
  v = tostring(tonumber(v) + 1)
  redis.call('HSET', KEYS[1], 'v', v, 's', ARGV[2])
end
if ARGV[3] == 'set' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
elseif ARGV[3] == 'drop' then
  local cur = redis.call('GET', KEYS[3])
  if cur then
    local rec = cjson.decode(cur)
    if rec.b == cjson.null and rec.r == ARGV[6] then redis.call('DEL', KEYS[3]) end
  end
end
return {1, redis.call('HGET', KEYS[1], 'v') or '0'}
"""

# KEYS[1] idem key; ARGV[1] new pending record, ARGV[2] now, ARGV[3] pending timeout s, ARGV[4] ttl ms
_BEGIN = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local rec = cjson.decode(cur)
  if rec.b ~= cjson.null or (tonumber(ARGV[2]) - rec.t) < tonumber(ARGV[3]) then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return false
"""

# KEYS[1] idem key; ARGV[1] the pending record seen (its owner's heartbeat gone), ARGV[2] ours,
# ARGV[3] ttl ms. Takes the key only if it still holds exactly what was seen (or nothing).
_TAKEOVER = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"""

# KEYS[1] kv hash; ARGV[1] field, ARGV[2] expected ('' with ARGV[3]=='0': absent), ARGV[4] value,
# ARGV[5] '1' = delete
_KV_CAS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
if ARGV[5] == '1' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[4]) end
return 1
"""


class ChannelContended(RuntimeError):
    """A transition kept losing the compare-and-set for `contention_timeout_s`."""


def split_redis_url(url: str) -> tuple[str, str]:
    """`redis://h:p/db?prefix=x` -> (url without paychan's parameters, prefix; default "paychan")."""
    parsed = parse_redis_url(url)
    return parsed.bare, parsed.prefix


class RedisStore(Store):
    """The shared, multi-process store (see the module doc)."""

    contention_timeout_s = 5.0  # give up (ChannelContended) after losing the CAS this long
    turn_after = 2  # conflicts in a row before this store claims the channel's turn
    turn_ttl_ms = 250  # a crashed turn holder blocks the channel at most this long
    migration_wait_s = 10.0  # Redis Cluster: how long a charge waits for its slot to migrate
    heartbeat_every_s = 1.0  # how often this process refreshes its heartbeat key
    heartbeat_ttl_ms = 5_000  # a dead process's pending Idempotency-Keys are free this long after

    def __init__(
        self,
        client: Any,  # redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster (bytes replies)
        *,
        chain_id: int,
        contract: str,
        prefix: str = "paychan",
        policy: LedgerPolicy | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.contract = contract.lower()
        self.policy = policy or LedgerPolicy()
        self.prefix = prefix
        self._r = client
        self._base = f"{prefix}:{chain_id}:{self.contract}"
        self._cas = client.register_script(_CAS)
        self._begin = client.register_script(_BEGIN)
        self._takeover = client.register_script(_TAKEOVER)
        self._kvcas = client.register_script(_KV_CAS)
        self._cache: dict[bytes, tuple[int, ChannelState | None]] = {}
        # one transition per channel at a time IN this process: tasks of one process never
        # conflict with each other, only with other processes
        self._locks: dict[bytes, asyncio.Lock] = {}
        self.conflicts = 0  # CAS retries so far (contention figure)
        self._token = uuid.uuid4().hex
        self.takeovers = 0  # pending Idempotency-Key markers taken over from dead owners
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False  # ends the heartbeat even where redis-py swallowed its cancel
        # Holds and pending markers whose release met a Redis outage (the gateway releases
        # what an outage interrupted): released by the heartbeat once Redis answers again, so
        # a resend by key is not kept waiting on them.
        self._orphans: dict[tuple[bytes, str], str | None] = {}

    @classmethod
    async def open(
        cls, url: str, *, chain_id: int, contract: str, policy: LedgerPolicy | None = None
    ) -> RedisStore:
        """Connect (`redis://host:port/db?prefix=...[&cluster=yes][&durability=...]`), check the
        server answers and keeps every acknowledged write (NotDurable if not)."""
        parsed = parse_redis_url(url)
        client = connect(parsed)
        try:
            await client.ping()
            await check_durability(client, parsed)
        except BaseException:
            await client.aclose()
            raise
        return cls(client, chain_id=chain_id, contract=contract, prefix=parsed.prefix, policy=policy)

    # keys ------------------------------------------------------------------------------------

    def _state_key(self, cid: bytes) -> str:
        return f"{self._base}:ch:{{{cid.hex()}}}"

    def _turn_key(self, cid: bytes) -> str:
        return f"{self._base}:turn:{{{cid.hex()}}}"

    def _idem_key(self, cid: bytes, key: str) -> str:
        return f"{self._base}:idem:{{{cid.hex()}}}:{key}"

    @property
    def _index_key(self) -> str:
        return f"{self._base}:channels"

    def _alive_key(self, owner: str) -> str:
        return f"{self._base}:alive:{owner}"

    def _kv_key(self, namespace: str) -> str:
        return f"{self._base}:kv:{namespace}"

    # transitions -----------------------------------------------------------------------------

    async def _read(self, cid: bytes) -> tuple[int, ChannelState | None]:
        v, s = await self._r.hmget(self._state_key(cid), ["v", "s"])
        got = (int(v or 0), decode_state(s) if s else None)
        self._cache[cid] = got
        return got

    async def _transact(
        self, channel_id: bytes, fn: Transition[T], *, idem: _IdemOp | None = None, durable: bool,
        decided: Callable[[T], object] | None = None,
    ) -> T:
        lock = self._locks.get(channel_id)
        if lock is None:
            lock = self._locks[channel_id] = asyncio.Lock()
        async with lock:
            result = await self._transact_locked(channel_id, fn, idem)
        if decided is not None:  # Redis answered: the result is final and already durable
            decided(result)
        return result

    async def _transact_locked(
        self, channel_id: bytes, fn: Transition[T], idem: _IdemOp | None
    ) -> T:
        cached = self._cache.get(channel_id)
        fresh = cached is None
        if cached is None:
            cached = await self._read(channel_id)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.contention_timeout_s
        conflicts = 0
        while True:
            ver, state = cached
            try:
                new, result = fn(state)
            except LedgerError:
                if fresh:
                    raise
                cached, fresh = await self._read(channel_id), True  # maybe only our cache was stale
                continue
            unchanged = new is None or new is state
            if unchanged and idem is None:
                if fresh:
                    return result
                cached, fresh = await self._read(channel_id), True
                if cached[0] == ver:
                    return result
                continue
            keys = [self._state_key(channel_id), self._turn_key(channel_id)]
            body = encode_state(new) if new is not None and not unchanged else b""
            args: list[Any] = ["" if unchanged else str(ver), body]
            if idem is not None:
                keys.append(self._idem_key(channel_id, idem.key))
                rec = encode_idem(idem.record) if idem.record is not None else b""
                owner_id = idem.request_id or (idem.record.request_id if idem.record else "")
                args += [idem.kind, rec, int(self.idempotency_ttl_s * 1000), owner_id]
            else:
                args += ["", b"", 0, ""]
            args += [self._token, "1" if conflicts >= self.turn_after else "0", self.turn_ttl_ms]
            if ver == 0 and not unchanged:
                await self._r.sadd(self._index_key, channel_id.hex())
            got = await self._cas_waiting_out_migrations(keys, args)
            if got[0] == 2:
                raise UnknownReservation(
                    f"channel 0x{channel_id.hex()}: the Idempotency-Key was taken over by a retry "
                    "(this process's heartbeat had lapsed); nothing charged"
                )
            if got[0] == 1:
                if not unchanged:
                    self._cache[channel_id] = (int(got[1]), new)
                return result
            self.conflicts += 1
            conflicts += 1
            cached, fresh = (int(got[1]), decode_state(got[2]) if got[2] else None), True
            self._cache[channel_id] = cached
            if loop.time() > give_up:
                raise ChannelContended(
                    f"channel 0x{channel_id.hex()}: lost the compare-and-set {conflicts} times in "
                    f"{self.contention_timeout_s} s; retry later"
                )
            if conflicts > self.turn_after:  # another store holds the turn: let it through
                await asyncio.sleep(random.uniform(0, min(0.02, 0.0005 * 2 ** min(conflicts, 6))))

    async def _cas_waiting_out_migrations(self, keys: list[str], args: list[Any]) -> Any:
        """The CAS script; on a Redis Cluster whose slot is being migrated, wait it out.

        While a slot migrates, a script on keys of which some have moved (or do not exist yet:
        the turn key, a new idempotency key) is refused with TRYAGAIN before it runs; redis-py
        retries that for well under a second, then raises. The slot of one busy channel can take
        longer, so this keeps retrying (with backoff) for `migration_wait_s`. A script that did
        run cannot be applied twice: its version check fails and the transition re-runs.
        """
        give_up = asyncio.get_running_loop().time() + self.migration_wait_s
        pause = 0.01
        while True:
            try:
                return await self._cas(keys=keys, args=args)
            except (TryAgainError, ClusterError):
                if asyncio.get_running_loop().time() + pause > give_up:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)

    # reads -------------------------------------------------------------------------------------

    async def get(self, channel_id: bytes) -> ChannelState | None:
        s = await self._r.hget(self._state_key(channel_id), "s")
        return decode_state(s) if s else None

    async def channels(self) -> list[ChannelState]:
        ids = sorted(await self._r.smembers(self._index_key))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for h in ids:
            pipe.hget(self._state_key(bytes.fromhex(h.decode())), "s")
        return [decode_state(s) for s in await pipe.execute() if s]

    # idempotency -------------------------------------------------------------------------------

    async def begin_idempotent(
        self, channel_id: bytes, key: str, request_id: str, now: float, *, digest: str = ""
    ) -> IdempotencyRecord | None:
        """Claim the key (see `Store.begin_idempotent`). A pending marker is also taken over,
        at once, when the process that wrote it is dead: its heartbeat key (refreshed every
        `heartbeat_every_s`, gone `heartbeat_ttl_ms` after the last refresh) has expired. The dead
        owner's hold is released first, so a commit of the old request that was merely late
        finds no reservation; one that landed first has replaced the marker with its answer,
        and the takeover's compare-and-set then fails and returns that answer to replay."""
        if self._heartbeat is None or self._heartbeat.done():
            # beat once before the first marker names us, so no one sees us without one
            await self._r.set(self._alive_key(self._token), b"1", px=self.heartbeat_ttl_ms)
            self._start_heartbeat()
        idem_key = self._idem_key(channel_id, key)
        ttl_ms = int(self.idempotency_ttl_s * 1000)
        rec = encode_idem(IdempotencyRecord(request_id, now, None, digest, self._token))
        got = await self._begin(
            keys=[idem_key],
            args=[rec, repr(now), repr(self.policy.reservation_timeout_s), ttl_ms],
        )
        if not got:
            return None
        seen = decode_idem(got)
        if seen.done or not seen.owner or seen.owner == self._token:
            return seen
        if await self._r.exists(self._alive_key(seen.owner)):
            return seen  # its owner is alive: the first request is still running
        await self.release(channel_id, seen.request_id)  # the dead owner's hold, if any
        taken = await self._takeover(keys=[idem_key], args=[got, rec, ttl_ms])
        if taken:
            return decode_idem(taken)  # its answer landed first (replay), or another retry won
        self.takeovers += 1
        return None

    async def _beat(self) -> None:
        """Keep this process's heartbeat key alive (pending markers name it as their owner)."""
        while not self._closed:
            await asyncio.sleep(self.heartbeat_every_s)
            while not self._closed:
                try:
                    await self._r.set(self._alive_key(self._token), b"1", px=self.heartbeat_ttl_ms)
                    if self._orphans:
                        await self._release_orphans()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - Redis away (restarting): beat again soon,
                    await asyncio.sleep(0.1)  # so a restarted Redis sees us again at once

    async def release(
        self, channel_id: bytes, request_id: str, *, idempotency_key: str | None = None
    ) -> Reservation | None:
        try:
            return await super().release(channel_id, request_id, idempotency_key=idempotency_key)
        except Exception as exc:
            if is_redis_outage(exc):
                self._orphans[(channel_id, request_id)] = idempotency_key
                self._start_heartbeat()
            raise

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name="paychan-redis-heartbeat"
            )

    async def _release_orphans(self) -> None:
        """Release what an outage left behind (a commit that did land makes this a no-op: its
        reservation is gone and its key holds the answer, which a release never drops)."""
        for (cid, request_id), key in list(self._orphans.items()):
            try:
                await super().release(cid, request_id, idempotency_key=key)
            except Exception as exc:
                if is_redis_outage(exc):
                    raise  # still away: the heartbeat tries again
                log.warning("releasing %s on 0x%s after an outage failed: %s", request_id,
                            cid.hex(), exc)  # it expires by itself after the timeout
            del self._orphans[(cid, request_id)]

    async def get_idempotent(self, channel_id: bytes, key: str) -> IdempotencyRecord | None:
        raw = await self._r.get(self._idem_key(channel_id, key))
        return decode_idem(raw) if raw else None

    # key/value ---------------------------------------------------------------------------------

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        got: bytes | None = await self._r.hget(self._kv_key(namespace), key)
        return got

    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        await self._r.hset(self._kv_key(namespace), key, value)

    async def kv_cas(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        args: list[str | bytes] = [
            key,
            expected or b"",
            "0" if expected is None else "1",
            value or b"",
            "1" if value is None else "0",
        ]
        return bool(await self._kvcas(keys=[self._kv_key(namespace)], args=args))

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._r.hdel(self._kv_key(namespace), key)

    async def kv_items(self, namespace: str) -> dict[str, bytes]:
        raw = await self._r.hgetall(self._kv_key(namespace))
        return {k.decode(): v for k, v in raw.items()}

    # lifecycle ---------------------------------------------------------------------------------

    async def drop_namespace(self) -> int:
        """Delete every key of this (prefix, chain, contract) namespace (tests, resets)."""
        n = 0
        async for k in self._r.scan_iter(match=f"{self._base}:*", count=500):
            n += await self._r.delete(k)
        self._cache.clear()
        return n

    async def close(self) -> None:
        # A cancel that lands inside a redis-py command can be swallowed there (seen with a
        # process resumed after SIGSTOP): the flag ends the loop at its next wake-up anyway.
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        await self._r.aclose()
