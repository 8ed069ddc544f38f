"""`/metrics` tells the truth about money: `paychan_claimed_amount_total` and
`paychan_settled_amount_total` follow the chain's Claimed / Settled events whoever sent them
(a payer's refund claims first; an outsider calls `settle` for our receiver; our own settler),
so they end equal to the contract's totals for the receiver. The inference histogram is
recorded, the signing key's gas balance is a gauge, and every series `/metrics` serves is
documented in docs/operations.md.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the receiver-authorizer,
the receiver a fresh address, #9 the outsider who settles.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk import PaymentClient
from contracts import DEV_KEYS, artifact
from contracts.transact import send_transaction
from gateway.app import create_app
from gateway.chain_setup import close_web3, connect_rpc
from tests.gateway.serving import serve
from tests.gateway.test_paid import _read

PRICE = 1000
TOKEN = "metrics-" + "4d" * 16
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]


async def _metrics(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _until(s: aiohttp.ClientSession, url: str, name: str, value: float) -> dict[str, float]:
    for _ in range(150):
        m = await _metrics(s, url)
        if m.get(name, 0) >= value:
            return m
        await asyncio.sleep(0.1)
    return await _metrics(s, url)


async def _outside_settle(anvil, receiver: str) -> None:
    """Anyone may sweep a receiver's claimed value to it: DEV_KEYS[9] does, not our key."""
    w3 = await connect_rpc(anvil.url)
    try:
        c = w3.eth.contract(address=anvil.deployment.settlement, abi=artifact("BatchSettlement")["abi"])
        data = c.functions.settle(receiver, anvil.deployment.token)._encode_transaction_data()
        await send_transaction(w3, DEV_KEYS[9], {"to": anvil.deployment.settlement, "data": data},
                               what="outside settle")
    finally:
        await close_web3(w3)


@pytest.mark.slow
async def test_claimed_and_settled_follow_the_chain_whoever_sent_them(
        make_config, anvil, null_classifier, jpeg, tmp_path: Path) -> None:
    receiver = channels.Signer(os.urandom(32)).address
    config = make_config(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token,
                         rpc_url=anvil.url, price=PRICE, model="null", settler=True,
                         chain_poll_s=0.2, claim_interval_s=3600.0, receiver=receiver,
                         admin_token=TOKEN, console_sample_s=0.5)
    app = create_app(config, classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s, \
            PaymentClient.from_key(DEV_KEYS[3], tmp_path / "a.sqlite", base_url=url, salt=os.urandom(32)) as a, \
            PaymentClient.from_key(DEV_KEYS[2], tmp_path / "b.sqlite", base_url=url, salt=os.urandom(32)) as b:
        for _ in range(3):
            await a.classify(jpeg, top_k=1)
        # 1. The payer's refund claims the 3 charges first, in its own transaction.
        refund = await a.refund(url + "/v1/classify")
        assert refund.success
        m = await _until(s, url, "paychan_claimed_amount_total", 3 * PRICE)
        assert (m["paychan_claimed_amount_total"], m["paychan_settled_amount_total"]) == (3 * PRICE, 0)
        # 2. Someone else settles our receiver: no settler round of ours saw it.
        await _outside_settle(anvil, receiver)
        m = await _until(s, url, "paychan_settled_amount_total", 3 * PRICE)
        assert m["paychan_settled_amount_total"] == 3 * PRICE
        # 3. Our own settler, through the admin route.
        for _ in range(2):
            await b.classify(jpeg, top_k=1)
        async with s.post(url + "/admin/settle", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["claimed"] == 2 * PRICE
        m = await _until(s, url, "paychan_settled_amount_total", 5 * PRICE)
        claimed, settled = await _read(anvil, anvil.deployment.settlement, "BatchSettlement",
                                       "receivers", receiver, anvil.deployment.token)
        assert (claimed, settled) == (5 * PRICE, 5 * PRICE)
        assert m["paychan_claimed_amount_total"] == claimed  # claimed never trails settled
        assert m["paychan_settled_amount_total"] == settled
        assert m["paychan_charged_amount_total"] == 5 * PRICE
        # the inference histogram is recorded: one observation per classification
        assert m["paychan_request_inference_seconds_count"] == 5
        assert m["paychan_request_inference_seconds_sum"] > 0
        m = await _until(s, url, "paychan_signer_gas_balance_wei", 1)
        assert m["paychan_signer_gas_balance_wei"] > 0
        async with s.get(url + "/metrics") as r:
            exposed = set(re.findall(r"^# TYPE (\S+) ", await r.text(), re.MULTILINE))

    documented = OPERATIONS.read_text()
    missing = sorted(name for name in exposed if f"`{name}`" not in documented)
    assert not missing, f"series served by /metrics but not documented in docs/operations.md: {missing}"
