"""Exactly one settler across processes sharing a Redis store: a TTL lease, taken over when the
holder stops renewing (real Redis, own DB number and key prefix)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from chain_env import PRICE, PROVIDER_KEY, ChainEnv, make_env

import channels
from channels.provider import ChainSync, RedisLease, SettlerPolicy, lease_for
from tests.polling import until

pytestmark = pytest.mark.redis
REDIS_DB = 12


async def test_redis_lease_is_exclusive_and_expires() -> None:
    key = f"chainsync-test:{uuid.uuid4().hex}:lease"
    a = RedisLease.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}", key, ttl_s=0.5)
    b = RedisLease.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}", key, ttl_s=0.5)
    try:
        assert await a.acquire() and not await b.acquire()
        assert await a.acquire()  # renewal by the holder
        await asyncio.sleep(0.7)  # a stops renewing (as if killed): the key expires
        assert await b.acquire() and not await a.acquire()
        await b.release()
        assert await a.acquire()
    finally:
        await a.close()
        await b.close()


async def test_two_gateways_on_one_redis_store_run_one_settler(anvil, tmp_path) -> None:
    url = f"redis://127.0.0.1:6379/{REDIS_DB}?prefix=chainsync-test-{uuid.uuid4().hex[:8]}&durability=relaxed"
    d = anvil.deployment
    gateways: list[ChainEnv] = [await make_env(anvil, tmp_path, store_url=url) for _ in range(2)]
    syncs = [
        ChainSync(
            g.chain,
            g.store,
            authorizer=channels.Signer(PROVIDER_KEY),
            receiver=g.provider.address,
            token=d.token,
            start_block=0,
            poll_s=0.1,
            lease=lease_for(url, chain_id=d.chain_id, settlement=d.settlement, ttl_s=1.0),
            policy=SettlerPolicy(claim_threshold=PRICE, interval_s=0.1),
        )
        for g in gateways
    ]
    try:
        cfg = await gateways[0].open_channel(100_000)
        cid = gateways[0].cid(cfg)
        for s in syncs:
            s.start()
        await asyncio.sleep(1.0)
        assert sum(s.leader for s in syncs) == 1
        leader = next(i for i, s in enumerate(syncs) if s.leader)
        follower = 1 - leader
        charged = await gateways[follower].charge(
            cfg, 4
        )  # charged by the gateway that does not settle

        async def claimed(amount: int) -> bool:
            return (await gateways[0].chain.read_channel(cid)).total_claimed == amount

        await until(lambda: claimed(charged), interval=0.1)

        syncs[
            leader
        ]._task.cancel()  # the leader dies without releasing: the follower takes over after the TTL
        more = await gateways[leader].charge(cfg, 3)
        await until(lambda: claimed(more), interval=0.1)
        assert syncs[follower].leader
        claims = [e for e in await gateways[0].chain.journal.entries() if e.kind == "claim"]
        # one claim per leader at least (the new leader may claim the 3 charges in two rounds
        # as they land); every one mined, and the exact total above: nothing claimed twice
        assert len(claims) >= 2 and all(e.status == "mined" for e in claims)
        assert (await gateways[1].store.get(cid)).total_claimed == more
    finally:
        for s in syncs:
            await s.stop()
        await gateways[0].store.drop_namespace()
        for g in gateways:
            await g.close()
