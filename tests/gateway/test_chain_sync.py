"""The gateway's chain side: deposits through the in-process facilitator, claims and settles
through ChainSync, on the embedded py-evm chain (what `paychan demo` runs) and on anvil.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider (receiver,
receiver authorizer and gas payer), the others are payers.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS, embedded_chain
from gateway.app import create_app
from gateway.keys import PAYMENTS, SETTLER
from tests.gateway.serving import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

PRICE = 1000
JPEG = {"Content-Type": "image/jpeg"}


async def test_gateway_on_the_embedded_chain_deposits_charges_and_settles(
    make_config, null_classifier, jpeg, tmp_path: Path
) -> None:
    """create_app(..., chain=EmbeddedChain): a payer opens a channel, pays 5 requests;
    settle_now claims and settles exactly what was charged, and the receiver is paid it."""
    emb = embedded_chain()
    token = emb.deployment.token
    config = make_config(payment=True, key=DEV_KEYS[0], token=token, price=PRICE, model="null",
                         settler=True, chain_poll_s=0.1)
    app = create_app(config, classifier=null_classifier, chain=emb)
    provider = channels.Signer(DEV_KEYS[0]).address
    payer = Payer(channels.Signer(DEV_KEYS[1]), tmp_path / "payer.sqlite", deposit_amount=100 * PRICE)  # = minDeposit
    async with serve(app) as url, channels.PaymentClient(payer) as client:
        gate = app[PAYMENTS]
        assert app[SETTLER] is gate.sync  # the watcher + settler loop runs with the app
        before = await gate.chain.token_balance(token, provider)
        answers = [await client.post(url + "/v1/classify", data=jpeg, headers=JPEG) for _ in range(5)]
        assert [a.status for a in answers] == [200] * 5, answers[0].body[:300]
        assert answers[0].settlement.transaction.startswith("0x")  # the deposit, on-chain
        cid = answers[0].payment.channel_id
        assert (await gate.chain.read_channel(cid)).balance == 100 * PRICE

        result = await gate.settle_now()
        assert result["reason"] == "forced"
        assert (result["claimed"], result["settled_amount"], result["channels"]) == (5 * PRICE, 5 * PRICE, 1)
        assert result["claims"] == [{"channel": "0x" + cid.hex(), "amount": 5 * PRICE,
                                     "total_claimed": 5 * PRICE, "tx": result["claim_txs"][0]}]
        assert result["settle_tx"].startswith("0x") and result["gas_used"] > 0
        assert await gate.chain.token_balance(token, provider) - before == 5 * PRICE
        assert (await gate.chain.read_channel(cid)).total_claimed == 5 * PRICE

        again = await gate.settle_now()  # nothing new: no transaction at all
        assert (again["claimed"], again["claim_txs"], again["settle_tx"]) == (0, [], None)

        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            async with s.get(url + "/facilitator/supported") as r:
                supported = await r.json()
        assert f"paychan_claimed_amount_total {5 * PRICE}" in text
        assert f"paychan_settled_amount_total {5 * PRICE}" in text
        assert "paychan_settler_leader 1" in text  # single process: the local lease is always held
        assert supported["kinds"][0]["network"] == f"eip155:{emb.deployment.chain_id}"
        assert supported["kinds"][0]["extra"]["receiverAuthorizer"] == provider


async def test_create_app_rejects_a_chain_without_web3(make_config, null_classifier) -> None:
    config = make_config(payment=True, key=DEV_KEYS[0], token=embedded_chain().deployment.token)
    with pytest.raises(TypeError, match="chain: expected an AsyncWeb3"):
        async with serve(create_app(config, classifier=null_classifier, chain=object())):
            pass


async def test_facilitator_routes_can_be_switched_off(make_config, null_classifier) -> None:
    emb = embedded_chain()
    config = make_config(payment=True, key=DEV_KEYS[0], token=emb.deployment.token, facilitator=False)
    async with serve(create_app(config, classifier=null_classifier, chain=emb)) as url:
        async with aiohttp.ClientSession() as s, s.get(url + "/facilitator/supported") as r:
            assert r.status == 404


@pytest.mark.anvil
@pytest.mark.redis
async def test_two_gateways_on_one_redis_ledger_settle_through_one_lease(
    make_config, anvil, null_classifier, redis_url: str
) -> None:
    """Two gateways (as `serve --workers 2` runs them) on one Redis ledger, both with the
    settler on: exactly one holds the lease; when it stops, the other takes over."""
    config = make_config(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token,
                         rpc_url=anvil.url, store=redis_url, settler=True, chain_poll_s=0.05,
                         settler_lease_ttl_s=2.0)
    first, second = (create_app(config, classifier=null_classifier) for _ in range(2))
    async with contextlib.AsyncExitStack() as outer:
        inner = contextlib.AsyncExitStack()
        await inner.enter_async_context(serve(first))
        try:
            assert await _becomes_leader(first)
            await outer.enter_async_context(serve(second))
            for _ in range(20):  # the second keeps asking; the lease stays where it is
                await asyncio.sleep(0.05)
                assert first[SETTLER].leader and not second[SETTLER].leader
        finally:
            await inner.aclose()  # the first stops and releases the lease
        assert await _becomes_leader(second)


async def _becomes_leader(app) -> bool:
    for _ in range(1000):
        if app[SETTLER].leader:
            return True
        await asyncio.sleep(0.01)
    return False
