"""The Redis store refuses a server that could lose an acknowledged charge (issue 17): real
redis-server processes on free loopback ports with each fsync setting, one with CONFIG
disabled, and the session's Redis Cluster (every master is checked). Also: the cluster URL
for the settler lease, and bad URL parameters."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_cluster import HAVE_REDIS_SERVER, RedisServer

from channels.protocol import Synced
from channels.provider import lease_for
from channels.provider.store import NotDurable, open_store

pytestmark = pytest.mark.skipif(not HAVE_REDIS_SERVER, reason="no redis-server / redis-cli")
CONTRACT = "0x" + "4d" * 20


@pytest.fixture
def server(request) -> Iterator[RedisServer]:
    s = RedisServer(*request.param).start()
    yield s
    s.stop()


async def _open(url: str):
    return await open_store(url, chain_id=31337, contract=CONTRACT)


@pytest.mark.parametrize(
    "server", [("--appendonly", "no"), ("--appendonly", "yes", "--appendfsync", "everysec")],
    indirect=True, ids=["appendonly-no", "everysec"],
)
async def test_a_server_that_may_lose_charges_is_refused(server: RedisServer) -> None:
    with pytest.raises(NotDurable) as e:
        await _open(server.url + "?prefix=t")
    msg = str(e.value)
    assert f"127.0.0.1:{server.port}" in msg and "appendfsync always" in msg
    assert "appendonly yes" in msg and "durability=relaxed" in msg


@pytest.mark.parametrize(
    "server", [("--appendonly", "yes", "--appendfsync", "always")], indirect=True
)
async def test_appendonly_yes_appendfsync_always_opens(server: RedisServer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="paychan.store"):
        store = await _open(server.url + "?prefix=t")
        try:
            await store.apply_fact(b"\x01" * 32, Synced(balance=5, total_claimed=0))
            assert (await store.get(b"\x01" * 32)).balance == 5
        finally:
            await store.close()
    assert not caplog.records


@pytest.mark.parametrize("server", [("--appendonly", "no")], indirect=True)
async def test_relaxed_opens_with_a_loud_warning(server: RedisServer, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="paychan.store"):
        store = await _open(server.url + "?prefix=t&durability=relaxed")
        await store.close()
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and "NOT DURABLE" in rec.getMessage()
    assert "appendonly no" in rec.getMessage()


@pytest.mark.parametrize(
    "server", [("--appendonly", "yes", "--appendfsync", "always", "--rename-command", "CONFIG", "")],
    indirect=True,
)
async def test_config_disabled_is_said_and_trusted_or_relaxed_opens(
    server: RedisServer, caplog
) -> None:
    with pytest.raises(NotDurable, match="CONFIG GET is not available.*durability=trusted"):
        await _open(server.url + "?prefix=t")
    await (await _open(server.url + "?prefix=t&durability=trusted")).close()
    with caplog.at_level(logging.WARNING, logger="paychan.store"):
        store = await _open(server.url + "?prefix=t&durability=relaxed")
        await store.close()
    assert any("CONFIG GET is not available" in r.getMessage() for r in caplog.records)


async def test_every_cluster_master_is_checked(redis_cluster) -> None:
    weak = redis.Redis(port=redis_cluster.ports[1])
    weak.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(NotDurable, match=f"127.0.0.1:{redis_cluster.ports[1]}: appendonly yes, "
                                             "appendfsync everysec"):
            await _open(redis_cluster.url("t"))
        store = await _open(redis_cluster.url("t", durability="relaxed"))
        await store.close()
    finally:
        weak.config_set("appendfsync", "always")
        weak.close()
    store = await _open(redis_cluster.url("t"))
    await store.close()


async def test_the_settler_lease_works_on_the_cluster(redis_cluster) -> None:
    url = redis_cluster.url(f"lease-{uuid.uuid4().hex[:8]}")
    a = lease_for(url, chain_id=1, settlement="0x" + "ab" * 20, ttl_s=5)
    b = lease_for(url, chain_id=1, settlement="0x" + "ab" * 20, ttl_s=5)
    try:
        assert await a.acquire() and not await b.acquire()
        assert await a.acquire()  # renewal (a script on the lease's one key)
        await a.release()
        assert await b.acquire()
    finally:
        for lease in (a, b):
            await lease.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["durability=maybe", "cluster=perhaps", "prefix=a{b}"])
async def test_bad_redis_parameters_say_what_to_use(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        await _open(f"redis://127.0.0.1:1/0?{bad}")
