"""4 OS processes (multiprocessing, spawn) accept and commit on the same channels through the real
Redis (the shared server, and the session's three-master Redis Cluster): every charge is counted
exactly once (no double charge, no lost charge) and a shared Idempotency-Key is charged by exactly
one process."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
import uuid

import pytest
import redis

from channels.protocol import AcceptInput, LedgerPolicy, Reservation, Synced
from channels.provider.store import open_store
from redis_cluster import HAVE_REDIS_SERVER

REDIS_DB = 11
CHAIN = 31337
CONTRACT = "0x" + "4c" * 20
CIDS = [bytes([i]) * 32 for i in (1, 2, 3)]
POLICY = LedgerPolicy(reservation_timeout_s=600, max_in_flight=1_000)
PROCS, TASKS, STEPS, SHARED_KEYS = 4, 6, 40, 12


def _up() -> bool:
    try:
        return bool(redis.Redis(db=REDIS_DB, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


async def _work(url: str, wid: int) -> dict:
    store = await open_store(url, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
    rng = random.Random(wid)
    charges: list[tuple[bytes, str, int, int]] = []  # (channel, request id, amount, cumulative)
    idem: dict[str, str] = {}

    async def task(t: int) -> None:
        for i in range(STEPS):
            cid, rid, price = rng.choice(CIDS), f"w{wid}-{t}-{i}", rng.randint(1, 1_000)
            got = await store.accept(
                AcceptInput(cid, 10**15, b"\x01" * 65, price, rid, time.time())
            )
            assert isinstance(got, Reservation), got
            if rng.random() < 0.2:
                await store.release(cid, rid)
            else:
                c = await store.commit(cid, rid, rng.randint(1, price), time.time())
                charges.append((cid, rid, c.amount, c.cumulative))

    async def shared(k: int) -> None:
        cid, key, rid = CIDS[0], f"shared-{k}", f"w{wid}-idem-{k}"
        rec = await store.begin_idempotent(cid, key, rid, time.time())
        if rec is not None:
            idem[key] = "done" if rec.done else "pending"
            return
        got = await store.accept(AcceptInput(cid, 10**15, b"\x01" * 65, 500, rid, time.time()))
        assert isinstance(got, Reservation)
        c = await store.commit(
            cid, rid, 500, time.time(), idempotency_key=key, response=rid.encode()
        )
        charges.append((cid, rid, c.amount, c.cumulative))
        idem[key] = "charged"

    await asyncio.gather(*(task(t) for t in range(TASKS)), *(shared(k) for k in range(SHARED_KEYS)))
    conflicts = store.conflicts
    await store.close()
    return {"charges": charges, "idem": idem, "conflicts": conflicts}


def _worker(url: str, wid: int) -> dict:
    return asyncio.run(_work(url, wid))


async def _setup(url: str) -> None:
    store = await open_store(url, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
    for cid in CIDS:
        await store.apply_fact(cid, Synced(balance=10**15, total_claimed=0))
    await store.close()


async def _final(url: str) -> dict:
    store = await open_store(url, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
    out = {cid: await store.get(cid) for cid in CIDS}
    out["idem"] = {
        f"shared-{k}": await store.get_idempotent(CIDS[0], f"shared-{k}")
        for k in range(SHARED_KEYS)
    }
    await store.close()
    return out


def _run(url: str) -> tuple[list[dict], dict]:
    asyncio.run(_setup(url))
    with multiprocessing.get_context("spawn").Pool(PROCS) as pool:
        results = pool.starmap(_worker, [(url, w) for w in range(PROCS)])
    return results, asyncio.run(_final(url))


@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    pytest.param("redis", marks=[
        pytest.mark.redis, pytest.mark.skipif(not _up(), reason="no Redis on 127.0.0.1:6379")]),
    pytest.param("redis-cluster", marks=pytest.mark.skipif(
        not HAVE_REDIS_SERVER, reason="no redis-server / redis-cli")),
])
def test_four_processes_no_double_no_lost_charge(backend: str, request: pytest.FixtureRequest):
    prefix = f"paychan-mp-{uuid.uuid4().hex[:12]}"
    if backend == "redis-cluster":  # a fresh prefix on the session's cluster, dropped with it
        results, final = _run(request.getfixturevalue("redis_cluster").url(prefix))
    else:
        try:
            results, final = _run(
                f"redis://127.0.0.1:6379/{REDIS_DB}?prefix={prefix}&durability=relaxed"
            )
        finally:
            r = redis.Redis(db=REDIS_DB)
            for k in r.scan_iter(match=f"{prefix}:*", count=500):
                r.delete(k)
            r.close()

    _check(results, final)


def _check(results: list[dict], final: dict) -> None:
    charges = [c for res in results for c in res["charges"]]
    assert len({rid for _, rid, _, _ in charges}) == len(charges)  # each request charged once
    for cid in CIDS:
        mine = sorted((cum, amount) for c, _, amount, cum in charges if c == cid)
        st = final[cid]
        # no lost charge: the stored cumulative is the sum of every reported charge
        assert st.charged == sum(a for _, a in mine)
        assert st.reservations == ()
        # no double charge: the reported cumulatives are one chain, each step exactly its amount
        prev = 0
        for cum, amount in mine:
            assert cum - prev == amount
            prev = cum
    for k in range(SHARED_KEYS):
        key = f"shared-{k}"
        winners = [wid for wid, res in enumerate(results) if res["idem"][key] == "charged"]
        assert len(winners) == 1
        rec = final["idem"][key]
        assert rec.done and rec.response == f"w{winners[0]}-idem-{k}".encode()
    # contention really happened across processes (informative, the counts vary run to run)
    print("CAS conflicts per process:", [res["conflicts"] for res in results])
