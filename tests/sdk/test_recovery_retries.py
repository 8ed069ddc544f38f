"""The SDK's retries: a paid answer lost after the gateway committed it (the crash window) is
asked for again with the same Idempotency-Key and the same payment, and the gateway replays
it: recovered, charged once. Real sockets through a raw HTTP proxy that cuts connections
(tests/sdk/proxies.py), the real gateway and model (fixture ``paid_gateway``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest
from aiohttp import web

import channels
from channels import GatewayUnreachable, PaymentClient
from contracts import DEV_KEYS
from tests.gateway.serving import serve
from tests.sdk.gateway_thread import PRICE
from tests.sdk.proxies import LossyProxy

pytestmark = pytest.mark.anvil


def client_for(url: str, tmp_path: Path, key: str, **kwargs) -> PaymentClient:
    return PaymentClient.from_key(key, tmp_path / "payer.sqlite", base_url=url, salt=os.urandom(32),
                                  retry_backoff_s=0.05, **kwargs)


def drop_first(key: str, attempt: int) -> str:
    return "drop" if attempt == 0 else "forward"


async def test_eight_lost_answers_are_recovered_and_charged_once(paid_gateway, cat_jpeg, tmp_path) -> None:
    """Every answer of 8 concurrent paid images is lost once after the gateway charged it
    (the worst case of a killed connection: a SIGKILL loses 1-3 of 8 in flight)."""
    async with LossyProxy(paid_gateway.url, drop_first) as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[5], deposit_requests=20) as client:
        results = await asyncio.gather(*(client.classify(cat_jpeg, top_k=1) for _ in range(8)))
        record = await client.channel()
    seen = proxy.seen
    keys = {s.key for s in seen}
    assert len(keys) == 8 and all(k.startswith("pay_") and len(k) == 36 for k in keys)
    for key in keys:  # each: dropped once after a 200, then the same bytes again, replayed
        first, again = proxy.attempts(key)
        assert (first.action, first.status, again.action, again.status) == ("drop", 200, "forward", 200)
        assert again.signature == first.signature  # the same payment, not a second one
    assert client.resent == 8
    assert sorted(r.cumulative_charged for r in results) == [PRICE * k for k in range(1, 9)]
    assert all(r.charged == PRICE for r in results)
    view = paid_gateway.channel_view(paid_gateway.url, results[0].channel_id)
    assert view["chargedCumulativeAmount"] == str(8 * PRICE) and view["reserved"] == "0"
    assert record.charged == 8 * PRICE  # the payer's books agree: one charge per image


async def test_an_answer_cut_mid_body_is_recovered(paid_gateway, cat_jpeg, tmp_path) -> None:
    plan = lambda key, attempt: "cut" if attempt == 0 else "forward"  # noqa: E731
    async with LossyProxy(paid_gateway.url, plan) as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[6]) as client:
        first = await client.classify(cat_jpeg, top_k=1)
        second = await client.classify(cat_jpeg, top_k=1)
    assert [(s.action, s.status) for s in proxy.seen] == [("cut", 200), ("forward", 200)] * 2
    assert (first.cumulative_charged, second.cumulative_charged) == (PRICE, 2 * PRICE)


async def test_transient_503_is_retried_with_the_same_payment(paid_gateway, cat_jpeg, tmp_path) -> None:
    plan = lambda key, attempt: "503" if attempt < 2 else "forward"  # noqa: E731
    async with LossyProxy(paid_gateway.url, plan) as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[6]) as client:
        result = await client.classify(cat_jpeg, top_k=1)
    [key] = {s.key for s in proxy.seen}
    attempts = proxy.attempts(key)
    assert [a.action for a in attempts] == ["503", "503", "forward"]
    assert len({a.signature for a in attempts}) == 1 and client.resent == 2
    assert (result.charged, result.cumulative_charged) == (PRICE, PRICE)


async def test_without_retries_the_lost_answer_stays_lost(paid_gateway, cat_jpeg, tmp_path) -> None:
    """retries=0, the behaviour before: the answer is paid for but never received."""
    dropped: list[str] = []

    def drop_once(key: str, attempt: int) -> str:
        if dropped:
            return "forward"
        dropped.append(key)
        return "drop"

    async with LossyProxy(paid_gateway.url, drop_once) as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[7], retries=0) as client:
        with pytest.raises(GatewayUnreachable):
            await client.classify(cat_jpeg, top_k=1)
        [lost] = proxy.seen
        assert (lost.action, lost.status) == ("drop", 200)  # charged at the gateway
        # the next image pays on top of it: the payer counted the lost one as maybe charged
        later = await client.classify(cat_jpeg, top_k=1)
    assert later.cumulative_charged == 2 * PRICE


async def test_retries_give_up_after_the_bound(paid_gateway, cat_jpeg, tmp_path) -> None:
    async with LossyProxy(paid_gateway.url, lambda key, attempt: "503") as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[8], retries=2) as client:
        with pytest.raises(channels.RequestFailed) as failed:
            await client.classify(cat_jpeg, top_k=1)
        assert failed.value.status == 503
    assert len(proxy.seen) == 3 and client.resent == 2  # one try + two resends, then the 503


async def test_generic_requests_ask_again_only_a_server_known_to_replay(paid_gateway, cat_jpeg,
                                                                       tmp_path) -> None:
    """`post()` may reach any x402 server: a lost answer is asked for again only once the
    server proved it replays by key (its answers carry our signed receipt); before, a resend
    could be served and charged a second time by a server that ignores the key."""
    spared = "pay_spared-by-the-proxy-0000000000"

    def plan(key: str, attempt: int) -> str:  # every first attempt is lost, but `spared`'s
        return "forward" if key == spared or attempt else "drop"

    jpeg = {"Content-Type": "image/jpeg", "Idempotency-Key": spared}
    async with LossyProxy(paid_gateway.url, plan) as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[4]) as client:
        url = proxy.url + "/v1/classify"
        lost = client.post(url, data=cat_jpeg.read_bytes(), headers={"Content-Type": "image/jpeg"})
        with pytest.raises(GatewayUnreachable):
            await lost  # unknown server: not sent again (it was charged, the price is counted)
        assert client.resent == 0
        first = await client.post(url, data=cat_jpeg.read_bytes(), headers=jpeg)  # its own key
        assert first.status == 200 and first.settlement.extra.receipt is not None
        again = await client.post(url, data=cat_jpeg.read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert again.status == 200 and client.resent == 1  # now known: dropped once, replayed
    assert again.settlement.extra.channel_state.charged_cumulative_amount == 3 * PRICE
    assert [s.action for s in proxy.seen] == ["drop", "forward", "drop", "forward"]


async def test_payment_identifier_extension_is_echoed_when_declared(paid_gateway, cat_jpeg, tmp_path) -> None:
    """A server whose 402 declares x402's `payment-identifier` extension gets the
    Idempotency-Key as `extensions.payment-identifier.info.id` too; ours (which keys on the
    header) gets the payload without it."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(paid_gateway.url + "/v1/pricing") as r:
        accepts = (await r.json())["accepts"]
    declared = {"payment-identifier": {"info": {"required": False}, "schema": {"type": "object"}}}
    got: list[tuple[str, dict]] = []

    async def resource(request: web.Request) -> web.Response:
        header = request.headers.get("PAYMENT-SIGNATURE")
        if header is None:
            required = {"x402Version": 2, "accepts": accepts, "extensions": declared}
            text = json.dumps(required)
            return web.Response(status=402, text=text, content_type="application/json",
                                headers={"PAYMENT-REQUIRED": base64.b64encode(text.encode()).decode()})
        got.append((request.headers["Idempotency-Key"], json.loads(base64.b64decode(header))))
        return web.json_response({"error": "bad_request", "message": "a test server"}, status=400)

    app = web.Application()
    app.router.add_post("/paid", resource)
    async with serve(app) as url, client_for(url, tmp_path, DEV_KEYS[9]) as client:
        answer = await client.post(url + "/paid", data=b"{}")
        assert answer.status == 400
    [(key, payload)] = got
    ext = payload["extensions"]["payment-identifier"]
    assert ext["info"] == {"required": False, "id": key} and ext["schema"] == {"type": "object"}

    async with LossyProxy(paid_gateway.url, lambda k, a: "forward") as proxy, \
            client_for(proxy.url, tmp_path, DEV_KEYS[9]) as client:
        await client.classify(cat_jpeg, top_k=1)
    [sent] = proxy.seen
    assert "extensions" not in json.loads(base64.b64decode(sent.signature))
    assert sent.key.startswith("pay_")
