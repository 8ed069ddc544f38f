"""The gateway as a facilitator: /verify, /settle, /supported over real HTTP, and the in-process
deposit and refund paths (refund claims every charged unit first, in the same transaction)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from chain_env import PAYER_KEYS, PRICE, ChainEnv

import channels
from gateway.facilitator_routes import facilitator_app


@pytest.fixture
async def http(env: ChainEnv) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    app = web.Application()
    app.add_subapp("/facilitator", facilitator_app(env.facilitator))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{port}/facilitator"
    await runner.cleanup()


def _body(
    env: ChainEnv, payload: Any, requirements: channels.PaymentRequirements | None = None
) -> dict[str, Any]:
    reqs = requirements or env.requirements()
    return {
        "x402Version": 2,
        "paymentPayload": channels.protocol.PaymentPayload(reqs, payload).to_json(),
        "paymentRequirements": reqs.to_json(),
    }


async def _post(http: tuple[aiohttp.ClientSession, str], path: str, body: Any) -> dict[str, Any]:
    session, base = http
    async with session.post(base + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_supported(env: ChainEnv, http) -> None:
    session, base = http
    async with session.get(base + "/supported") as resp:
        got = await resp.json()
    assert got["kinds"] == [
        {
            "x402Version": 2,
            "scheme": "batch-settlement",
            "network": "eip155:31337",
            "extra": {"receiverAuthorizer": env.provider.address},
        }
    ]
    assert got["signers"] == {"eip155:*": [env.chain.address]}


async def test_verify_then_settle_a_deposit_over_http(env: ChainEnv, http) -> None:
    cfg = env.config()
    payload = env.deposit_payload(PAYER_KEYS[0], cfg, 300_000, ceiling=PRICE)
    verdict = await _post(http, "/verify", _body(env, payload))
    assert verdict["isValid"] is True, verdict
    assert verdict["payer"] == channels.protocol.checksum_address(cfg.payer)
    assert (
        verdict["extra"]["balance"] == "0"
        and verdict["extra"]["channelId"] == "0x" + env.cid(cfg).hex()
    )

    forged = channels.protocol.DepositPayload(
        cfg, channels.protocol.Voucher(payload.voucher.channel_id, PRICE, b"\x01" * 65), payload.deposit
    )
    bad = await _post(http, "/verify", _body(env, forged))
    assert bad["isValid"] is False and bad["invalidReason"] == channels.ErrorCode.VOUCHER_SIGNATURE

    too_much = env.deposit_payload(PAYER_KEYS[0], cfg, 300_000, ceiling=300_001)
    over = await _post(http, "/verify", _body(env, too_much))
    assert over["invalidReason"] == channels.ErrorCode.CUMULATIVE_EXCEEDS_BALANCE

    done = await _post(http, "/settle", _body(env, payload))
    assert done["success"] is True, done
    assert done["amount"] == "300000" and done["transaction"].startswith("0x")
    assert done["extra"]["channelState"]["balance"] == "300000"
    assert (await env.store.get(env.cid(cfg))).balance == 300_000  # mirrored into the ledger

    replay = await _post(
        http, "/settle", _body(env, payload)
    )  # the same ERC-3009 authorization again
    assert replay["success"] is False
    assert replay["errorReason"] in {
        channels.ErrorCode.DEPOSIT_SIMULATION_FAILED,
        channels.ErrorCode.DEPOSIT_TRANSACTION_FAILED,
    }

    voucher = channels.protocol.VoucherPayload(cfg, env.voucher(PAYER_KEYS[0], cfg, 5 * PRICE))
    ok = await _post(http, "/verify", _body(env, voucher))
    assert ok["isValid"] is True and ok["extra"]["balance"] == "300000"


async def test_claim_and_settle_actions_over_http(env: ChainEnv, http) -> None:
    """What a reference x402 server sends: claims (we sign as receiverAuthorizer), then settle."""
    cfg = await env.open_channel(100_000)
    v = env.voucher(PAYER_KEYS[0], cfg, 9 * PRICE)
    reqs = env.requirements()
    claim = {
        "type": "claim",
        "claims": [
            {
                "voucher": {
                    "channel": cfg.to_json(),
                    "maxClaimableAmount": str(v.max_claimable_amount),
                },
                "signature": "0x" + v.signature.hex(),
                "totalClaimed": str(7 * PRICE),
            }
        ],
    }
    body = {
        "x402Version": 2,
        "paymentPayload": {"x402Version": 2, "accepted": reqs.to_json(), "payload": claim},
        "paymentRequirements": reqs.to_json(),
    }
    got = await _post(http, "/settle", body)
    assert got["success"] is True and got["amount"] == str(7 * PRICE), got
    assert (await env.chain.read_channel(env.cid(cfg))).total_claimed == 7 * PRICE

    before = await env.token_balance(env.provider.address)
    body["paymentPayload"]["payload"] = {
        "type": "settle",
        "receiver": env.provider.address,
        "token": env.deployment.token,
    }
    got = await _post(http, "/settle", body)
    assert got["success"] is True and got["amount"] == str(7 * PRICE)
    assert await env.token_balance(env.provider.address) - before == 7 * PRICE
    again = await _post(http, "/settle", body)
    assert again["errorReason"] == channels.ErrorCode.NOTHING_TO_SETTLE

    body["paymentPayload"]["payload"] = {"type": "teleport"}
    odd = await _post(http, "/settle", body)
    assert (
        odd["success"] is False and odd["errorReason"] == channels.ErrorCode.UNKNOWN_SETTLE_ACTION
    )


async def test_refund_keeps_every_charged_unit_for_the_provider(env: ChainEnv) -> None:
    deposit = 200_000
    cfg = await env.open_channel(deposit)
    charged = await env.charge(cfg, 7)
    payer = channels.Signer(PAYER_KEYS[0]).address
    payer_before = await env.token_balance(payer)
    refund = channels.protocol.RefundPayload(cfg, env.voucher(PAYER_KEYS[0], cfg, charged))
    answer = await env.facilitator.refund(refund, env.requirements())
    assert answer.success, answer
    assert answer.amount == deposit - charged
    assert await env.token_balance(payer) - payer_before == deposit - charged
    onchain = await env.chain.read_channel(env.cid(cfg))
    assert (onchain.balance, onchain.total_claimed, onchain.refund_nonce) == (charged, charged, 1)
    snap = answer.extra.channel_state
    assert (snap.balance, snap.total_claimed, snap.charged_cumulative_amount) == (
        charged,
        charged,
        charged,
    )
    (entry,) = [e for e in await env.chain.journal.entries() if e.kind == "refund"]
    assert entry.meta["with_claim"] is True  # claim + refund in one multicall transaction

    nothing = await env.facilitator.refund(refund, env.requirements())
    assert not nothing.success and nothing.error_reason == channels.ErrorCode.REFUND_NO_BALANCE


async def test_the_x402_reference_facilitator_client_talks_to_us(env: ChainEnv, http) -> None:
    """x402's own HTTPFacilitatorClient (what reference x402 servers use) against our endpoints."""
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient
    from x402.schemas import PaymentPayload, PaymentRequirements

    _, base = http
    client = HTTPFacilitatorClient(FacilitatorConfig(url=base))
    try:
        supported = await asyncio.to_thread(
            client.get_supported
        )  # sync call: keep our loop serving
        assert [(k.scheme, k.network) for k in supported.kinds] == [
            ("batch-settlement", "eip155:31337")
        ]
        cfg = env.config()
        body = _body(env, env.deposit_payload(PAYER_KEYS[0], cfg, 150_000))
        payload = PaymentPayload.model_validate(body["paymentPayload"])
        requirements = PaymentRequirements.model_validate(body["paymentRequirements"])
        verdict = await client.verify(payload, requirements)
        assert verdict.is_valid, verdict
        settled = await client.settle(payload, requirements)
        assert settled.success and settled.amount == "150000", settled
        assert (await env.chain.read_channel(env.cid(cfg))).balance == 150_000
    finally:
        await client.aclose()
