"""Fixtures for the chain-sync tests: a fresh anvil per test (with a state file) and the
provider's client, store and facilitator over it (see chain_env.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from chain_env import ChainEnv, make_env

from contracts import Anvil


@pytest.fixture
async def anvil(tmp_path: Path) -> AsyncIterator[Any]:
    node = Anvil(state=tmp_path / "anvil-state.json")
    node.start()
    yield node
    await node.close_w3()
    node.kill()


@pytest.fixture
async def env(anvil: Anvil, tmp_path: Path) -> AsyncIterator[ChainEnv]:
    e = await make_env(anvil, tmp_path)
    yield e
    await e.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A three-master Redis Cluster on free loopback ports for the whole session (see
    redis_cluster.py); its processes are stopped and their files deleted at the end."""
    from redis_cluster import HAVE_REDIS_SERVER, RedisClusterNodes

    if not HAVE_REDIS_SERVER:
        pytest.skip("redis-server / redis-cli not installed")
    cluster = RedisClusterNodes().start()
    yield cluster
    cluster.stop()
