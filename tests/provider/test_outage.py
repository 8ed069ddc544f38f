"""Stop anvil for 10 s in the middle of a run and start it again from its saved state: the
watcher and the settler ride out the outage and finish the job with no manual step."""

from __future__ import annotations

import asyncio
import time

import pytest
from chain_env import PRICE, PROVIDER_KEY, ChainEnv

import channels
from channels.provider import ChainSync, SettlerPolicy

pytestmark = pytest.mark.slow


async def _wait_balance(env: ChainEnv, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while await env.token_balance(env.provider.address) != expected:
        assert time.monotonic() < deadline, (
            f"provider holds {await env.token_balance(env.provider.address)}"
        )
        await asyncio.sleep(0.1)


async def test_anvil_down_for_10s_then_restarted_from_state(env: ChainEnv) -> None:
    a, b = await env.open_channel(), await env.open_channel()
    before = await env.token_balance(env.provider.address)
    policy = SettlerPolicy(claim_threshold=10 * PRICE, claim_after_s=10**9, interval_s=0.2)
    sync = ChainSync(
        env.chain,
        env.store,
        authorizer=channels.Signer(PROVIDER_KEY),
        receiver=env.provider.address,
        token=env.deployment.token,
        policy=policy,
        start_block=0,
        poll_s=0.1,
    )
    sync.start()
    try:
        first = await env.charge(a, 12)
        await _wait_balance(env, before + first)

        await asyncio.to_thread(env.node.stop)  # graceful: anvil writes its state file
        stopped_at = time.monotonic()
        charged_a = await env.charge(a, 15)  # the ledger keeps charging while the chain is away
        charged_b = await env.charge(b, 10)
        while time.monotonic() - stopped_at < 10:
            await asyncio.sleep(0.2)
        assert env.chain.rpc_failures > 0  # it saw the outage (and kept running)
        assert not sync._task.done()
        await asyncio.to_thread(env.node.start)

        await _wait_balance(env, before + charged_a + charged_b)

        async def caught_up() -> bool:
            cursor = await sync.watcher.cursor()
            return cursor is not None and cursor[0] >= await env.chain.block_number()

        deadline = time.monotonic() + 30
        while not await caught_up():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await sync.stop()
    assert (await env.store.get(env.cid(a))).total_claimed == charged_a
    assert (await env.store.get(env.cid(b))).total_claimed == charged_b
    assert (await env.chain.read_channel(env.cid(a))).total_claimed == charged_a
    assert not await env.chain.journal.pending()
    assert sync.last_error is None
