"""A payer starts a timed withdrawal while charges are unclaimed: the settler (woken by the
watcher) claims before the delay ends, the provider gets every charged unit, and the payer
gets exactly the rest when the withdrawal finalizes."""

from __future__ import annotations

import asyncio

from chain_env import PAYER_KEYS, PROVIDER_KEY, WITHDRAW_DELAY, ChainEnv

import channels
from channels.provider import config_tuple
from channels.provider import ChainSync, SettlerPolicy
from tests.polling import until


async def test_withdrawal_with_unclaimed_charges_is_claimed_before_the_delay(env: ChainEnv) -> None:
    payer = PAYER_KEYS[0]
    deposit = 1_000_000
    cfg = await env.open_channel(deposit, payer)
    other = await env.open_channel(
        deposit, payer
    )  # charged too, no withdrawal: claimed in the same batch
    charged = await env.charge(cfg, 37)
    other_charged = await env.charge(other, 5)
    provider_before = await env.token_balance(env.provider.address)
    payer_before = await env.token_balance(channels.Signer(payer).address)

    # Neither the age nor the value threshold is due: only the withdrawal can trigger a claim.
    policy = SettlerPolicy(claim_after_s=10**9, claim_threshold=10**18, interval_s=3600)
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
        await until(lambda: _synced(sync), interval=0.05)
        assert (await env.store.get(env.cid(cfg))).total_claimed == 0  # nothing claimed yet
        receipt = await env.payer_send(payer, "initiateWithdraw", config_tuple(cfg), deposit)
        started = (await env.w3.eth.get_block(receipt["blockNumber"]))["timestamp"]

        async def claimed() -> bool:
            st = await env.store.get(env.cid(cfg))
            return st.total_claimed == charged and st.withdraw_requested_at == started

        await until(claimed, interval=0.05)
        await until(lambda: _settled(env, provider_before + charged + other_charged), interval=0.05)
    finally:
        await sync.stop()

    onchain = await env.chain.read_channel(env.cid(cfg))
    assert onchain.total_claimed == charged  # exactly the charged total, not the signed ceiling
    claim_entries = [e for e in await env.chain.journal.entries() if e.kind == "claim"]
    assert len(claim_entries) == 1 and claim_entries[0].status == "mined"
    claim_block = await env.w3.eth.get_block(claim_entries[0].block_number)
    assert claim_block["timestamp"] < started + WITHDRAW_DELAY  # landed inside the delay
    assert sorted(c for c, _ in claim_entries[0].meta["channels"]) == sorted(
        "0x" + env.cid(c).hex() for c in (cfg, other)
    )

    await env.node.advance_time(WITHDRAW_DELAY + 1)
    await env.payer_send(payer, "finalizeWithdraw", config_tuple(cfg))
    assert (
        await env.token_balance(channels.Signer(payer).address) - payer_before == deposit - charged
    )
    assert (
        await env.token_balance(env.provider.address) - provider_before == charged + other_charged
    )
    final = await env.chain.read_channel(env.cid(cfg))
    assert (
        final.balance == charged
        and final.total_claimed == charged
        and final.withdraw_requested_at == 0
    )


async def _synced(sync: ChainSync) -> bool:
    return sync.leader and sync.rounds >= 1


async def _settled(env: ChainEnv, expected: int) -> bool:
    return await env.token_balance(env.provider.address) == expected
