"""Idempotency-Key at the gateway: a retry of a committed request is answered from the store and
charged once; the same key on a different request is refused (422) and charges nothing; an
answer lost because the client went away after the commit is recovered by a retry.

Real sockets, anvil with our contracts, the null model, our payer core signing the payments.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import PAYMENTS
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, paid_config

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]

JPEG = {"Content-Type": "image/jpeg"}


async def _terms(s: aiohttp.ClientSession, url: str, jpeg: bytes) -> channels.PaymentRequirements:
    async with s.post(url + "/v1/classify", data=jpeg, headers=JPEG) as r:
        assert r.status == 402
        return channels.parse_payment_required(r.headers["PAYMENT-REQUIRED"]).accepts[0]


async def _charged(app, payment) -> tuple[int, int]:
    """(chargedCumulativeAmount, reserved) of the payment's channel in the gateway's ledger."""
    view = await app[PAYMENTS].channel_view("0x" + payment.channel_id.hex())
    return int(view["chargedCumulativeAmount"]), int(view["reserved"])


def _payer(tmp_path: Path, key: str) -> Payer:
    return Payer(channels.Signer(key), tmp_path / "payer.sqlite", deposit_amount=50 * PRICE,
                 salt=os.urandom(32))


async def test_same_key_same_request_is_replayed_and_charged_once(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path
) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        payer = _payer(tmp_path, DEV_KEYS[5])
        first = payer.pay(await _terms(s, url, jpeg))
        headers = {**JPEG, "PAYMENT-SIGNATURE": first.header, "Idempotency-Key": "pay_same-request-0001"}
        async with s.post(url + "/v1/classify?top_k=3", data=jpeg, headers=headers) as r:
            assert r.status == 200, await r.text()
            body, paid = await r.read(), r.headers["PAYMENT-RESPONSE"]
            assert "Idempotent-Replayed" not in r.headers
        for _ in range(2):  # the very same request again: the stored answer, byte for byte
            async with s.post(url + "/v1/classify?top_k=3", data=jpeg, headers=headers) as r:
                assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true"
                assert await r.read() == body and r.headers["PAYMENT-RESPONSE"] == paid
        settled = channels.parse_payment_response(paid)
        assert settled.extra.charged_amount == PRICE
        assert settled.extra.channel_state.charged_cumulative_amount == PRICE
        assert await _charged(app, first) == (PRICE, 0)  # one charge for three answers
        payer.close()


async def test_same_key_different_request_is_refused_and_charges_nothing(
    make_config, anvil, null_classifier, jpeg, png, tmp_path: Path
) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        payer = _payer(tmp_path, DEV_KEYS[5])
        offer = await _terms(s, url, jpeg)
        first = payer.pay(offer)
        key = {"Idempotency-Key": "pay_reused-key-000001"}
        async with s.post(url + "/v1/classify", data=jpeg,
                          headers={**JPEG, **key, "PAYMENT-SIGNATURE": first.header}) as r:
            assert r.status == 200, await r.text()
            payer.settle(first, channels.parse_payment_response(r.headers["PAYMENT-RESPONSE"]))
        # another image, another query, under the same key, each with a good fresh payment
        for path, body, kind in (("/v1/classify", png, "image/png"),
                                 ("/v1/classify?top_k=2", jpeg, "image/jpeg")):
            second = payer.pay(offer)
            async with s.post(url + path, data=body, headers={
                    "Content-Type": kind, **key, "PAYMENT-SIGNATURE": second.header}) as r:
                assert r.status == 422, await r.text()
                err = await r.json()
                assert "Idempotent-Replayed" not in r.headers and "PAYMENT-RESPONSE" not in r.headers
            payer.release(second)
            assert err["error"] == "idempotency_key_reused"
            assert "Idempotency-Key" in err["message"] and "new key" in err["message"]
            assert await _charged(app, first) == (PRICE, 0)  # nothing charged, nothing held
        # a new key for the new request is served and charged as usual
        third = payer.pay(offer)
        async with s.post(url + "/v1/classify", data=png, headers={
                "Content-Type": "image/png", "Idempotency-Key": "pay_fresh-key-0000002",
                "PAYMENT-SIGNATURE": third.header}) as r:
            assert r.status == 200, await r.text()
        assert await _charged(app, first) == (2 * PRICE, 0)
        payer.close()


async def _send_and_hang_up(url: str, path: str, headers: dict[str, str], body: bytes) -> None:
    """A raw HTTP/1.1 client that sends a whole request and closes the socket without reading
    a byte of the answer: the crash window of a client killed while its request ran."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_answer_lost_after_the_commit_is_recovered_by_a_retry(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path
) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        payer = _payer(tmp_path, DEV_KEYS[6])
        payment = payer.pay(await _terms(s, url, jpeg))
        headers = {**JPEG, "PAYMENT-SIGNATURE": payment.header, "Idempotency-Key": "pay_lost-answer-00001"}
        await _send_and_hang_up(url, "/v1/classify", headers, jpeg)
        for _ in range(200):  # the gateway finishes the request the client walked away from
            view = await app[PAYMENTS].channel_view("0x" + payment.channel_id.hex())
            if view is not None and view["chargedCumulativeAmount"] == str(PRICE) and view["reserved"] == "0":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the abandoned request was never committed: {view}")
        # the client comes back with the same key and the same payment: the lost answer
        async with s.post(url + "/v1/classify", data=jpeg, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Idempotent-Replayed"] == "true"
            settled = channels.parse_payment_response(r.headers["PAYMENT-RESPONSE"])
            body = await r.json()
        assert body["results"] and settled.extra.channel_state.charged_cumulative_amount == PRICE
        record = payer.settle(payment, settled)
        assert record.charged == PRICE and await _charged(app, payment) == (PRICE, 0)
        receipt = json.loads(base64.b64decode(r.headers["PAYMENT-RESPONSE"]))["extra"]["receipt"]
        assert receipt["cumulativeCharged"] == str(PRICE)
        payer.close()
