"""The same chain-sync objects on the embedded py-evm chain (what `paychan demo` runs on)."""

from __future__ import annotations

from types import SimpleNamespace

from chain_env import PAYER_KEYS, ChainEnv, provider_config

import channels
from channels.provider import TxPolicy, open_provider
from contracts import embedded_chain


async def test_deposit_claim_settle_refund_on_the_embedded_chain() -> None:
    emb = embedded_chain()
    d = emb.deployment
    provider = await open_provider(
        emb.w3, provider_config(d, "memory://", policy=TxPolicy(poll_s=0.01), start_block=0)
    )
    store, chain, fac, sync = provider.store, provider.chain, provider.facilitator, provider.sync
    env = ChainEnv(SimpleNamespace(deployment=d), emb.w3, store, chain, fac, "memory://", None)  # type: ignore[arg-type]
    cfg = await env.open_channel(100_000)
    charged = await env.charge(cfg, 4)
    assert await sync.watcher.poll_once() == 1  # the deposit, seen again from the chain: idempotent
    before = await env.token_balance(env.provider.address)
    report = await sync.settler.run_once(force=True)
    assert (report.claimed, report.settled, len(report.claims)) == (charged, charged, 1)
    assert await env.token_balance(env.provider.address) - before == charged
    refund = await fac.refund(
        channels.protocol.RefundPayload(cfg, env.voucher(PAYER_KEYS[0], cfg, charged)), env.requirements()
    )
    assert refund.success and refund.amount == 100_000 - charged
