"""Many channels with charges are claimed in the fewest claimWithSignature transactions the
100-row batch limit allows, each row claiming exactly that channel's charged total."""

from __future__ import annotations

import math

import pytest
from chain_env import PRICE, PROVIDER_KEY, ChainEnv

import channels
from channels.provider import MAX_BATCH, Settler, SettlerPolicy

pytestmark = pytest.mark.slow


async def test_120_channels_claimed_in_two_transactions(env: ChainEnv) -> None:
    n = 120
    configs = [await env.open_channel(100_000) for _ in range(n)]
    charged = {env.cid(c): await env.charge(c, 1 + i % 4) for i, c in enumerate(configs)}
    before = await env.token_balance(env.provider.address)
    settler = Settler(
        env.chain,
        env.store,
        authorizer=channels.Signer(PROVIDER_KEY),
        receiver=env.provider.address,
        token=env.deployment.token,
        policy=SettlerPolicy(claim_threshold=PRICE),
    )
    report = await settler.run_once()

    assert report.reason == "threshold"
    assert len(report.claims) == math.ceil(n / MAX_BATCH) == 2
    assert report.channels == n and report.claimed == sum(charged.values())
    assert report.settled == sum(charged.values())
    assert await env.token_balance(env.provider.address) - before == sum(charged.values())
    for cid, amount in charged.items():
        assert (
            await env.chain.read_channel(cid)
        ).total_claimed == amount  # charged, not the signed ceiling
        assert (await env.store.get(cid)).unclaimed == 0
    # nothing left: the next round sends nothing
    again = await settler.run_once(force=True)
    assert again.claims == [] and again.settle is None


async def test_claim_rows_follow_the_chain_when_the_store_is_behind(env: ChainEnv) -> None:
    """A withdrawal finalized behind the ledger's back: the claim's simulation fails, the settler
    re-reads the channels and claims what the chain still holds."""
    from chain_env import PAYER_KEYS, WITHDRAW_DELAY

    from channels.provider import config_tuple

    ok, gone = await env.open_channel(10_000), await env.open_channel(10_000)
    await env.charge(ok, 2)
    await env.charge(gone, 3)
    await env.payer_send(PAYER_KEYS[0], "initiateWithdraw", config_tuple(gone), 10_000)
    await env.node.advance_time(WITHDRAW_DELAY + 1)
    await env.payer_send(
        PAYER_KEYS[0], "finalizeWithdraw", config_tuple(gone)
    )  # the store never heard
    settler = Settler(
        env.chain,
        env.store,
        authorizer=channels.Signer(PROVIDER_KEY),
        receiver=env.provider.address,
        token=env.deployment.token,
    )
    report = await settler.run_once(force=True)
    assert report.claimed == 2 * PRICE and report.channels == 1
    assert (await env.store.get(env.cid(gone))).balance == 0
