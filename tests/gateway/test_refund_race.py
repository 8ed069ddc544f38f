"""A cooperative refund raced by paid requests on the same channel never serves an answer for
free (issue 13.1). Real sockets, anvil, the null model; SQLite with one gateway and Redis
with two gateways sharing the ledger (the refund on one, payers on both).

The attack: a refund is sent, and 5 ms later 8 concurrent payers replay one voucher signed
with a ceiling of the whole deposit (valid: a ceiling above charged + reserved + price is
headroom). Before the fix the refund's amounts were computed, then the chain was called
while the ledger went on accepting that voucher: 63-75 of 100 answers served free with
SQLite, 17-21 with Redis and 2 workers, their charges above the balance the refund left.

Every round checks: each 200 carries a charge the ledger holds (nothing uncharged), and once
the provider settles, the chain's totalClaimed equals that ledger charge (nothing unclaimable).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

import channels
from channels import PaymentClient
from channels.sdk import PaymentRefused
from channels.protocol import PaymentPayload, Voucher, VoucherPayload, encode_payment_signature
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import PAYMENTS
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, onchain_channel, paid_config

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil, pytest.mark.slow]

ROUNDS = 20
PAYERS = 8
REQUESTS = 100  # paid attempts per round, over all payers
DEPOSIT = 200 * PRICE


def _whole_deposit_voucher(client: PaymentClient, offer: channels.PaymentRequirements) -> str:
    """A PAYMENT-SIGNATURE whose voucher allows the whole deposit: the attacker's replayable
    voucher (each request is priced PRICE; the ledger accepts it while headroom lasts)."""
    payer = client.payer
    config = payer.channel_config(offer)
    cid = payer.channel_id(offer)
    digest = channels.voucher_digest(offer.chain_id, payer.settlement, cid, DEPOSIT)
    voucher = Voucher(cid, DEPOSIT, payer.voucher_signer.sign_digest(digest))
    return encode_payment_signature(PaymentPayload(offer, VoucherPayload(config, voucher), None))


async def _pay_until_done(
    session: aiohttp.ClientSession, urls: list[str], header: str, jpeg: bytes, budget: list[int]
) -> list[int]:
    """Replay the voucher until the budget is spent or the channel refuses for good; returns
    the charges of the answers served."""
    charges: list[int] = []
    i = 0
    while budget[0] > 0:
        budget[0] -= 1
        i += 1
        url = urls[i % len(urls)] + "/v1/classify"
        async with session.post(url, data=jpeg, headers={
            "PAYMENT-SIGNATURE": header, "Content-Type": "image/jpeg",
        }) as r:
            await r.read()
            if r.status == 200:
                charges.append(int(channels.parse_payment_response(
                    r.headers["PAYMENT-RESPONSE"]).extra.charged_amount))
                continue
            if r.status in (402, 429) and "channel_busy" in (
                r.headers.get("PAYMENT-REQUIRED", "") + await r.text()
                + _decoded_error(r.headers.get("PAYMENT-REQUIRED"))
            ):
                await asyncio.sleep(0.002)
                continue
            assert r.status == 402, (r.status, await r.text())
            return charges  # balance gone (refunded): nothing more to buy here
    return charges


def _decoded_error(header: str | None) -> str:
    return channels.parse_payment_required(header).error or "" if header else ""


async def _refund_until_done(client: PaymentClient, url: str) -> channels.protocol.SettleResponse:
    """The SDK's refund, retried while requests hold the channel (the spec's channel_busy)."""
    for _ in range(2_000):
        try:
            return await client.refund(url + "/v1/classify")
        except PaymentRefused as exc:
            if exc.code != str(channels.ErrorCode.CHANNEL_BUSY):
                raise
            await asyncio.sleep(0.005)
    raise AssertionError("the refund never got the channel")


async def _race_rounds(apps_urls: list[str], app, jpeg: bytes, tmp_path: Path, anvil) -> None:
    served_free = unclaimable = 0
    rounds: list[tuple[bytes, int]] = []
    async with aiohttp.ClientSession() as session:
        for n in range(ROUNDS):
            async with PaymentClient.from_key(
                DEV_KEYS[7], tmp_path / f"payer-{n}.sqlite", base_url=apps_urls[0],
                salt=os.urandom(32), deposit=DEPOSIT,
            ) as client:
                first = await client.classify(jpeg, top_k=1)  # opens the channel: one charge
                cid = bytes.fromhex(str(first.channel_id).removeprefix("0x")) if not isinstance(
                    first.channel_id, bytes) else first.channel_id
                offer = await client._offer_for(apps_urls[0] + "/v1/classify")
                header = _whole_deposit_voucher(client, offer)
                refund = asyncio.create_task(_refund_until_done(client, apps_urls[0]))
                await asyncio.sleep(0.005)
                budget = [REQUESTS]
                served = await asyncio.gather(*(
                    _pay_until_done(session, apps_urls, header, jpeg, budget) for _ in range(PAYERS)
                ))
                settled = await refund
                assert settled.success
                answered = PRICE + sum(map(sum, served))  # the opening request + the race
                view = await app[PAYMENTS].channel_view("0x" + cid.hex())
                served_free += max(0, answered - int(view["chargedCumulativeAmount"])) // PRICE
                rounds.append((cid, answered))
        await app[PAYMENTS].settle_now()
    for cid, answered in rounds:
        balance, total_claimed = await onchain_channel(anvil, cid)
        unclaimable += max(0, answered - total_claimed) // PRICE
        assert total_claimed <= balance
    assert (served_free, unclaimable) == (0, 0)
    # the race really ran: some rounds served answers around the refund
    assert sum(a for _, a in rounds) > ROUNDS * PRICE


async def test_refund_race_sqlite(make_config, anvil, null_classifier, jpeg, tmp_path: Path) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    async with serve(app) as url:
        await _race_rounds([url], app, jpeg, tmp_path, anvil)


@pytest.mark.redis
async def test_refund_race_redis_two_gateways(
    make_config, anvil, null_classifier, jpeg, tmp_path: Path, redis_url: str
) -> None:
    first = create_app(paid_config(make_config, anvil, model="null", store=redis_url),
                       classifier=null_classifier)
    second = create_app(paid_config(make_config, anvil, model="null", store=redis_url),
                        classifier=null_classifier)
    async with serve(first) as a, serve(second) as b:
        await _race_rounds([a, b], first, jpeg, tmp_path, anvil)
