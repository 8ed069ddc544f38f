"""``POST /admin/settle``: off by default (404), 401 without a Bearer token, 403 with a wrong
one, and with the right one the gateway's own settler claims exactly what was charged and
settles it to the provider: checked on anvil. Real sockets, real deposits.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig
from tests.gateway.serving import serve
from tests.gateway.test_paid import onchain_channel, token_balance

PRICE = 1000
TOKEN = "admin-" + "5f" * 16  # 38 characters
JPEG = {"Content-Type": "image/jpeg"}

on_anvil = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]


def _config(make_config, anvil, **overrides: Any) -> GatewayConfig:
    values = dict(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token, rpc_url=anvil.url,
                  price=PRICE, model="null", settler=True, chain_poll_s=0.2)
    values.update(overrides)
    return make_config(**values)


async def _post(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any, Any]:
    async with session.post(url + "/admin/settle", headers=headers) as r:
        body = await r.read()
        try:
            data = await r.json(content_type=None)
        except ValueError:
            data = body.decode()
        return r.status, data, r.headers


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.anvil
async def test_admin_routes_are_off_by_default(make_config, anvil, null_classifier) -> None:
    app = create_app(_config(make_config, anvil), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            status, _, _ = await _post(s, url, headers)
            assert status == 404  # no such route: nothing to probe, nothing to guess


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.anvil
async def test_admin_settle_needs_the_token_and_claims_what_was_charged(
        make_config, anvil, null_classifier, jpeg, tmp_path: Path) -> None:
    app = create_app(_config(make_config, anvil, admin_token=TOKEN), classifier=null_classifier)
    provider = channels.Signer(DEV_KEYS[0]).address
    payer = Payer(channels.Signer(DEV_KEYS[4]), tmp_path / "payer.sqlite", deposit_amount=100 * PRICE,
                  salt=os.urandom(32))
    async with serve(app) as url, channels.PaymentClient(payer) as client, aiohttp.ClientSession() as s:
        answers = [await client.post(url + "/v1/classify", data=jpeg, headers=JPEG) for _ in range(3)]
        assert [a.status for a in answers] == [200] * 3, answers[0].body[:300]
        cid = answers[0].payment.channel_id
        before = await token_balance(anvil, provider)

        status, data, headers = await _post(s, url, {})
        assert (status, data["error"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "--admin-token-file" in data["message"]
        status, data, _ = await _post(s, url, {"Authorization": f"Basic {TOKEN}"})
        assert (status, data["error"]) == (401, "unauthorized")
        for wrong in (TOKEN[:-1] + "0", TOKEN + "x", "x"):
            status, data, _ = await _post(s, url, {"Authorization": f"Bearer {wrong}"})
            assert (status, data["error"]) == (403, "forbidden")
        deposited, claimed = await onchain_channel(anvil, cid)
        assert deposited > 0 and claimed == 0  # the refused calls sent nothing

        status, data, _ = await _post(s, url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, data
        assert (data["claimed"], data["channels"], data["settled_amount"]) == (3 * PRICE, 1, 3 * PRICE)
        assert [(c["channel"], c["amount"], c["total_claimed"]) for c in data["claims"]] == [
            ("0x" + cid.hex(), 3 * PRICE, 3 * PRICE)]
        assert len(data["claim_txs"]) == 1 and data["settle_tx"].startswith("0x")
        assert data["gas_used"] > 0 and data["receiver"] == provider
        assert (data["chain_id"], data["settlement"]) == (31337, anvil.deployment.settlement)
        # on chain: the channel's claim and the provider's balance moved by exactly the charges
        assert await onchain_channel(anvil, cid) == (deposited, 3 * PRICE)
        assert await token_balance(anvil, provider) - before == 3 * PRICE

        status, data, _ = await _post(s, url, {"Authorization": f"bearer  {TOKEN} "})  # scheme: any case
        assert status == 200 and (data["claimed"], data["settle_tx"]) == (0, None)
        # still serving, and charging on top of what was claimed
        more = await client.post(url + "/v1/classify", data=jpeg, headers=JPEG)
        assert more.status == 200
        assert more.settlement.extra.channel_state.charged_cumulative_amount == 4 * PRICE


def test_the_admin_token_comes_from_a_file_and_must_not_be_guessable(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    config = GatewayConfig.load({"admin_token_file": path, "payment": False}, env={})
    assert config.admin_token == TOKEN and TOKEN not in repr(config)
    env = {"PAYCHAN_ADMIN_TOKEN": TOKEN}
    assert GatewayConfig.load({"payment": False}, env=env).admin_token == TOKEN
    assert GatewayConfig.load({"payment": False}, env={}).admin_token is None  # off by default
    for bad in ("short", "has a space in it ok", "é" * 20):
        with pytest.raises(ConfigError, match="admin_token: must be at least 16 printable ASCII"):
            GatewayConfig.load({"payment": False}, env={"PAYCHAN_ADMIN_TOKEN": bad})
    with pytest.raises(ConfigError, match="admin_token_file: cannot read"):
        GatewayConfig.load({"admin_token_file": tmp_path / "missing", "payment": False}, env={})
