"""A Redis Cluster slot migration under load loses nothing and double-charges nothing: two stores
(two clients, so their compare-and-sets conflict) charge one busy channel, each charge with an
Idempotency-Key (so the channel's slot holds many keys), while the slot holding the channel is
moved to another master key by key (CLUSTER SETSLOT IMPORTING/MIGRATING + MIGRATE: the window
in which the client gets ASK and TRYAGAIN), then assigned to it (MOVED)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from channels.protocol import AcceptInput, LedgerPolicy, Reservation, Synced
from channels.provider.store import RedisStore, open_store

pytestmark = pytest.mark.slow
CONTRACT = "0x" + "4e" * 20
CID = b"\x5a" * 32
POLICY = LedgerPolicy(reservation_timeout_s=600, max_in_flight=1_000)


def _node_ids(ports: list[int]) -> dict[int, str]:
    r = redis.Redis(port=ports[0])
    out = {}
    for line in r.execute_command("CLUSTER", "NODES").decode().splitlines():
        node_id, addr = line.split()[:2]
        out[int(addr.split("@")[0].rsplit(":", 1)[1])] = node_id
    r.close()
    return out


def _owner(ports: list[int], slot: int) -> int:
    r = redis.Redis(port=ports[0])
    try:
        for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        r.close()
    raise AssertionError(f"slot {slot} has no owner")


def _migrate(ports: list[int], slot: int, pause_s: float) -> int:
    """Move `slot` to another master one key at a time; returns how many keys moved."""
    ids = _node_ids(ports)
    src_port = _owner(ports, slot)
    dst_port = next(p for p in ports if p != src_port)
    src, dst = redis.Redis(port=src_port), redis.Redis(port=dst_port)
    moved = 0
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src_port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst_port])
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
            src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for p in ports:
            r = redis.Redis(port=p)
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst_port])
            r.close()
    finally:
        src.close()
        dst.close()
    return moved


async def test_a_slot_migration_under_load_loses_and_doubles_nothing(redis_cluster) -> None:
    url = redis_cluster.url(f"migrate-{time.time_ns()}")
    stores = [await open_store(url, chain_id=31337, contract=CONTRACT, policy=POLICY)
              for _ in range(2)]
    a = stores[0]
    assert isinstance(a, RedisStore)
    await a.apply_fact(CID, Synced(balance=10**15, total_claimed=0))
    for i in range(200):  # fill the slot so the migration takes a while
        await a.accept(AcceptInput(CID, 10**15, b"\x01" * 65, 1, f"pre{i}", time.time()))
        await a.commit(CID, f"pre{i}", 1, time.time(), idempotency_key=f"pre{i}", response=b"x")
    probe = redis.Redis(port=redis_cluster.ports[0])
    slot = int(probe.execute_command("CLUSTER", "KEYSLOT", a._state_key(CID)))
    probe.close()
    before = _owner(redis_cluster.ports, slot)
    charges: list[tuple[str, int, int]] = []
    done = asyncio.Event()

    async def load(s: int, t: int) -> None:
        i = 0
        while not done.is_set():
            rid = f"s{s}-t{t}-{i}"
            got = await stores[s].accept(AcceptInput(CID, 10**15, b"\x01" * 65, 7, rid, time.time()))
            assert isinstance(got, Reservation), got
            c = await stores[s].commit(CID, rid, 7, time.time(), idempotency_key=rid, response=b"y")
            charges.append((rid, c.amount, c.cumulative))
            i += 1

    tasks = [asyncio.create_task(load(s, t)) for s in range(2) for t in range(3)]
    await asyncio.sleep(0.2)
    moved = await asyncio.to_thread(_migrate, redis_cluster.ports, slot, 0.005)
    await asyncio.sleep(0.5)  # keep charging after the slot moved (MOVED)
    done.set()
    await asyncio.gather(*tasks)
    assert _owner(redis_cluster.ports, slot) != before and moved > 200

    final = await stores[1].get(CID)
    for s in stores:
        await s.close()
    assert final is not None and final.reservations == ()
    assert len({rid for rid, _, _ in charges}) == len(charges) > 20
    assert final.charged == 200 + sum(amount for _, amount, _ in charges)  # nothing lost
    prev = 200  # nothing doubled: the reported cumulatives are one chain of 7s
    for cum in sorted(cum for _, _, cum in charges):
        assert cum - prev == 7
        prev = cum
    print(f"slot {slot}: {moved} keys moved under load, {len(charges)} charges during the run")
