"""Cooperative refunds sent to the paid resource itself, as the batch-settlement spec has it:
the client posts its refund payload as ``PAYMENT-SIGNATURE`` to ``/v1/classify`` (no image);
the gateway claims what was charged, refunds the rest, and answers with ``PAYMENT-RESPONSE``
and no resource. Real sockets, anvil, our SDK; the null model (refunds never reach it).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import aiohttp
import pytest

import channels
from channels import PaymentClient
from channels.sdk import PaymentRefused
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import PAYMENTS
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, onchain_channel, paid_config

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]


def client_for(url: str, tmp_path: Path, key: str) -> PaymentClient:
    return PaymentClient.from_key(key, tmp_path / "payer.sqlite", base_url=url, salt=os.urandom(32))


async def test_refund_on_the_paid_route_claims_charges_and_returns_the_rest(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path
) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, client_for(url, tmp_path, DEV_KEYS[8]) as client:
        paid = await client.classify(jpeg, top_k=1)  # opens the channel with a deposit
        deposit = paid.deposited
        cid = paid.channel_id if isinstance(paid.channel_id, bytes) else bytes.fromhex(paid.channel_id[2:])
        part = await client.refund(url + "/v1/classify", 3 * PRICE)
        assert part.success and part.amount == 3 * PRICE and part.transaction
        # the charge was claimed in the refund's transaction: the provider keeps it
        balance, total_claimed = await onchain_channel(anvil, cid)
        assert (balance, total_claimed) == (deposit - 3 * PRICE, PRICE)
        rest = await client.refund(url + "/v1/classify")
        assert rest.success and rest.amount == deposit - 4 * PRICE
        assert await onchain_channel(anvil, cid) == (PRICE, PRICE)
        view = await app[PAYMENTS].channel_view("0x" + cid.hex())
        assert int(view["chargedCumulativeAmount"]) == PRICE  # refunds charge nothing
        # nothing left: a 402 with the spec's code, the failed settlement attached
        with pytest.raises(PaymentRefused) as refused:
            await client.refund(url + "/v1/classify")
        assert refused.value.code == str(channels.ErrorCode.REFUND_NO_BALANCE)


async def test_refund_answer_is_the_payment_response_alone(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path
) -> None:
    """Raw HTTP: no body is read, the answer is the settlement (no predictions), and a refund
    signed by someone else is a 402 that charges and refunds nothing."""
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, client_for(url, tmp_path, DEV_KEYS[9]) as client:
        await client.classify(jpeg, top_k=1)
        offer = await client._offer_for(url + "/v1/classify")
        good = client.payer.refund(offer, PRICE)
        raw = json.loads(base64.b64decode(good.header))
        sig = raw["payload"]["voucher"]["signature"]
        raw["payload"]["voucher"]["signature"] = sig[:-4] + ("1b" if sig[-2:] == "1c" else "1c")
        bad = base64.b64encode(json.dumps(raw).encode()).decode()
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/classify", headers={"PAYMENT-SIGNATURE": bad}) as r:
                assert r.status == 402
                required = channels.parse_payment_required(r.headers["PAYMENT-REQUIRED"])
                assert required.error == str(channels.ErrorCode.VOUCHER_SIGNATURE)
            async with s.post(url + "/v1/classify", headers={"PAYMENT-SIGNATURE": good.header}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
                settled = channels.parse_payment_response(r.headers["PAYMENT-RESPONSE"])
        assert settled.success and settled.amount == PRICE and "results" not in body
        assert body["success"] is True and body["amount"] == str(PRICE)


async def test_facilitator_settle_never_signs_a_refund_over_unclaimed_charges(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path
) -> None:
    """POST /facilitator/settle with a server-enriched refund (amount, refundNonce, no
    authorizer signatures) for one of our channels: our key signs it only when the payer's
    zero-charge voucher asks for it, and only against our ledger, so the charges are claimed
    first. Before, it signed the amount asked for: a payer could take back everything it had
    been charged, and anyone could close anyone's channel."""
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url, client_for(url, tmp_path, DEV_KEYS[6]) as client:
        for _ in range(3):
            paid = await client.classify(jpeg, top_k=1)
        cid = paid.channel_id if isinstance(paid.channel_id, bytes) else bytes.fromhex(paid.channel_id[2:])
        balance, _ = await onchain_channel(anvil, cid)
        offer = await client._offer_for(url + "/v1/classify")
        signed = client.payer.refund(offer).payload.payload
        assert isinstance(signed, channels.protocol.RefundPayload)
        enriched = {
            "type": "refund",
            "channelConfig": client.payer.channel_config(offer).to_json(),
            "voucher": signed.voucher.to_json(),  # the payer asked: its zero-charge voucher
            "amount": str(balance),
            "refundNonce": "0",
        }
        body = {
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "payload": enriched},
            "paymentRequirements": offer.to_json(),
        }
        async with aiohttp.ClientSession() as s:
            # Without the payer's voucher, or with another key's, nobody may close the channel.
            other = channels.Signer(DEV_KEYS[5]).sign_digest(bytes(32))
            for voucher in (None, {**signed.voucher.to_json(), "signature": "0x" + other.hex()}):
                forged = {**body, "paymentPayload": {"x402Version": 2,
                                                     "payload": {**enriched, "voucher": voucher}}}
                async with s.post(url + "/facilitator/settle", json=forged) as r:
                    refused = await r.json()
                assert refused["success"] is False and "refund" not in refused.get("transaction", "")
                assert refused["errorReason"] in (str(channels.ErrorCode.REFUND_PAYLOAD),
                                                  str(channels.ErrorCode.VOUCHER_SIGNATURE))
            assert await onchain_channel(anvil, cid) == (balance, 0)
            async with s.post(url + "/facilitator/settle", json=body) as r:
                answer = await r.json()
        assert answer["success"] is True, answer
        assert int(answer["amount"]) == balance - 3 * PRICE
        assert await onchain_channel(anvil, cid) == (3 * PRICE, 3 * PRICE)
