"""The payer SDK (`channels.PaymentClient`) against a real paid gateway: anvil with our
contracts, the real tf_efficientnet_lite0, real sockets (fixture `paid_gateway`, tests/conftest.py).

Every test pays from its own channel (a fresh salt), so tests share the chain without
sharing state. Keys are the well-known anvil dev keys.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import channels
from channels import InputError, PaymentClient, ReceiptInvalid, RequestFailed
from contracts import DEV_KEYS, artifact
from tests.sdk.gateway_thread import PRICE, PROVIDER_KEY, evm_increase_time

pytestmark = pytest.mark.anvil


def client_for(url: str, tmp_path: Path, key: str = DEV_KEYS[1], **kwargs) -> PaymentClient:
    return PaymentClient.from_key(key, tmp_path / "payer.sqlite", base_url=url,
                                  salt=os.urandom(32), **kwargs)


async def gateway_view(url: str, channel_id: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/channels/{channel_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_classify_pays_once_and_returns_verified_predictions(paid_gateway, cat_jpeg, tmp_path) -> None:
    async with client_for(paid_gateway.url, tmp_path) as client:
        first = await client.classify(cat_jpeg, top_k=3)
        second = await client.classify(cat_jpeg.read_bytes())
        models = await client.models()

    assert first.top.group == "cat" and first.top.label in ("tiger cat", "tabby", "Egyptian cat")
    # The animal answer leads: every cat class summed, so more than the top class alone.
    assert first.animal.group == "cat" and first.animal.is_animal
    assert first.animal.probability > first.top.probability
    assert first.to_json()["animal"] == first.animal.to_json()
    assert len(first.predictions) == 3 and len(second.predictions) == 5
    assert first.predictions[0].score >= first.predictions[1].score
    assert first.image == str(cat_jpeg) and second.image is None
    # the first request opened the channel with the default deposit: 10 x the price
    assert first.deposit_tx and first.deposited == 10 * PRICE and second.deposit_tx is None
    assert (first.charged, first.cumulative_charged) == (PRICE, PRICE)
    assert (second.charged, second.cumulative_charged, second.remaining) == (PRICE, 2 * PRICE, 8 * PRICE)
    assert first.receipt_verified and first.model_version == models[0]["version"]
    provider = channels.Signer(PROVIDER_KEY).address
    channels.verify_receipt(second.receipt, 31337, paid_gateway.anvil.deployment.settlement, provider)
    assert second.receipt.receipt.cumulative_charged == 2 * PRICE
    view = await gateway_view(paid_gateway.url, second.channel_id)
    assert view["chargedCumulativeAmount"] == str(2 * PRICE) and view["reserved"] == "0"


async def test_small_deposit_is_topped_up_on_the_same_channel(paid_gateway, cat_jpeg, tmp_path) -> None:
    async with client_for(paid_gateway.url, tmp_path, deposit=2 * PRICE) as client:
        results = [await client.classify(cat_jpeg, top_k=1) for _ in range(5)]
        record = await client.channel()
    deposits = [r.deposited for r in results]
    assert deposits == [2 * PRICE, None, 2 * PRICE, None, 2 * PRICE]  # each when the balance ran out
    assert {r.channel_id for r in results} == {"0x" + record.channel_id.hex()}
    assert [r.cumulative_charged for r in results] == [PRICE * k for k in range(1, 6)]
    assert record.balance == 6 * PRICE and record.charged == 5 * PRICE


async def test_eight_concurrent_classifications_on_one_channel(paid_gateway, cat_jpeg, tmp_path) -> None:
    async with client_for(paid_gateway.url, tmp_path, key=DEV_KEYS[2], deposit_requests=50) as client:
        results = await asyncio.gather(*(client.classify(cat_jpeg, top_k=1) for _ in range(8)))
        record = await client.channel()
    # one deposit opened the channel; every image was charged exactly once
    assert sum(r.deposited is not None for r in results) == 1
    assert results[0].deposited == 50 * PRICE or any(r.deposited == 50 * PRICE for r in results)
    assert all(r.charged == PRICE for r in results)
    assert sorted(r.cumulative_charged for r in results) == [PRICE * k for k in range(1, 9)]
    view = await gateway_view(paid_gateway.url, results[0].channel_id)
    assert view["chargedCumulativeAmount"] == str(8 * PRICE) and view["reserved"] == "0"
    assert record.charged == 8 * PRICE


async def test_bad_input_costs_nothing(paid_gateway, cat_jpeg, tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    async with client_for(paid_gateway.url, tmp_path, key=DEV_KEYS[3]) as client:
        for image, what in ((tmp_path / "missing.jpg", "no such file"), (text, "not a JPEG"),
                            (tmp_path, "is a folder"), (b"", "is empty"), (42, "path or bytes")):
            with pytest.raises(InputError, match=what):
                await client.classify(image)
        for top_k in (0, 1001, "3"):
            with pytest.raises(InputError, match="top_k"):
                await client.classify(cat_jpeg, top_k=top_k)
        assert client.payer.channels() == []  # nothing was signed, nothing was sent
        paid = await client.classify(cat_jpeg)
        # the gateway refuses these before any money moves: a top_k over its cap (20), a
        # truncated JPEG (it passes our first-bytes check, the decoder rejects it)
        with pytest.raises(RequestFailed) as over:
            await client.classify(cat_jpeg, top_k=50)
        assert over.value.status == 400 and over.value.code == "bad_top_k"
        with pytest.raises(RequestFailed) as broken:
            await client.classify(cat_jpeg.read_bytes()[:2000])
        assert broken.value.status in (415, 422)
        again = await client.classify(cat_jpeg)
    assert again.cumulative_charged == paid.cumulative_charged + PRICE
    view = await gateway_view(paid_gateway.url, again.channel_id)
    assert view["chargedCumulativeAmount"] == str(2 * PRICE)


async def test_tampered_answer_raises_receipt_invalid_and_halts(paid_gateway, cat_jpeg, tmp_path) -> None:
    """A real proxy between client and gateway edits the answer: the receipt's resultDigest no
    longer matches, classify raises ReceiptInvalid and the channel signs nothing more."""
    async with aiohttp.ClientSession() as upstream:

        async def forward(request: web.Request) -> web.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with upstream.request(request.method, paid_gateway.url + request.path_qs,
                                        data=await request.read(), headers=headers) as r:
                body = await r.read()
                if r.status == 200 and request.path == "/v1/classify":
                    body = body.replace(b'"probability":0.', b'"probability":0.9', 1)
                keep = {k: v for k, v in r.headers.items()
                        if k.upper() in ("PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "CONTENT-TYPE")}
                return web.Response(status=r.status, body=body, headers=keep)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        from tests.gateway.serving import serve

        async with serve(app) as proxy, client_for(proxy, tmp_path, key=DEV_KEYS[4]) as client:
            with pytest.raises(ReceiptInvalid, match="resultDigest"):
                await client.classify(cat_jpeg)
            with pytest.raises(channels.sdk.ChannelHalted):
                await client.classify(cat_jpeg)


def test_sync_client_for_scripts(paid_gateway, cat_jpeg, tmp_path) -> None:
    with channels.SyncPaymentClient.from_key(DEV_KEYS[5], tmp_path / "p.sqlite", salt=os.urandom(32),
                                             base_url=paid_gateway.url) as client:
        one = client.classify(cat_jpeg, top_k=2)
        many = client.classify_many([cat_jpeg] * 3, top_k=1)
        status = client.channel_status()
    assert one.top.group == "cat" and len(one.predictions) == 2
    assert [m.charged for m in many] == [PRICE] * 3
    assert status["chargedCumulativeAmount"] == str(4 * PRICE)


async def test_withdraw_initiate_then_finalize_after_the_delay(paid_gateway, cat_jpeg, tmp_path) -> None:
    """The timed escape hatch on a chain of its own (its clock jumps 15 minutes)."""
    key = DEV_KEYS[6]
    payer_address = channels.Signer(key).address
    with paid_gateway.isolated() as (node, url):
        token = node.w3.eth.contract(address=node.deployment.token, abi=artifact("TestUSDC")["abi"])
        async with client_for(url, tmp_path, key=key, rpc_url=node.url) as client:
            paid = await client.classify(cat_jpeg, top_k=1)
            before = await token.functions.balanceOf(payer_address).call()
            started = await client.withdraw()
            assert started.amount == 9 * PRICE and not started.finalized  # balance - charged
            with pytest.raises(channels.sdk.ChainError, match="WithdrawDelayNotElapsed"):
                await client.finalize_withdraw()
            evm_increase_time(node, 901)
            done = await client.finalize_withdraw()
            record = await client.channel(paid.channel_id)
        after = await token.functions.balanceOf(payer_address).call()
    assert done.finalized and done.amount == 9 * PRICE and done.balance == PRICE
    assert after - before == 9 * PRICE
    assert record.balance == PRICE and record.charged == PRICE


async def test_refund_returns_the_unspent_balance(paid_gateway, cat_jpeg, tmp_path) -> None:
    async with client_for(paid_gateway.url, tmp_path, key=DEV_KEYS[7]) as client:
        paid = await client.classify(cat_jpeg, top_k=1)
        settlement = await client.refund(amount=3 * PRICE)
        assert settlement.success and settlement.amount == 3 * PRICE
        rest = await client.refund()
        assert rest.amount == 6 * PRICE
        record = await client.channel()
    assert record.balance == PRICE and record.charged == PRICE == paid.cumulative_charged

