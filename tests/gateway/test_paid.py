"""Paid classification end to end: real sockets, anvil with our contracts at the canonical
addresses, the real model, the official x402 client and our payer core.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider (receiver and
receiver authorizer), the others are payers.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS, artifact
from gateway.app import create_app
from gateway.keys import PAYMENTS
from gateway.chain_setup import close_web3
from tests.gateway.serving import serve

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]

PRICE = 1000


def paid_config(make_config, anvil, **overrides):
    values = dict(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token, rpc_url=anvil.url,
                  price=PRICE, model="tf_efficientnet_lite0", settler=False)
    values.update(overrides)
    return make_config(**values)


async def _read(anvil, address: str, name: str, fn: str, *args: object) -> Any:
    """A view call on the session's anvil over a connection of this test's own event loop
    (the session-wide ``anvil.w3`` would leave a session open in a loop that is gone)."""
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        contract = w3.eth.contract(address=address, abi=artifact(name)["abi"])
        return await contract.functions[fn](*args).call()
    finally:
        await close_web3(w3)


async def token_balance(anvil, address: str) -> int:
    return await _read(anvil, anvil.deployment.token, "TestUSDC", "balanceOf", address)


async def onchain_channel(anvil, cid: bytes) -> tuple[int, int]:
    balance, total_claimed = (await _read(anvil, anvil.deployment.settlement, "BatchSettlement",
                                          "channels", cid))[:2]
    return balance, total_claimed


async def test_official_x402_client_buys_20(make_config, anvil, model_classifier, jpeg) -> None:
    """The x402 PyPI client opens a channel by deposit and buys 20; settle pays exactly 20 x price."""
    import requests
    from eth_account import Account
    from x402 import x402ClientSync
    from x402.http.clients.requests import wrapRequestsWithPayment
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSignerWithRPC

    config = paid_config(make_config, anvil)
    app = create_app(config, classifier=model_classifier)
    provider = channels.Signer(DEV_KEYS[0]).address
    async with serve(app) as url:
        before = await token_balance(anvil, provider)

        def buy() -> list[dict]:
            client = x402ClientSync()
            signer = EthAccountSignerWithRPC(Account.from_key(DEV_KEYS[2]), anvil.url)
            client.register("eip155:31337", BatchSettlementEvmScheme(signer))
            client.set_spend_controls(False)  # our test token is not one of the default assets
            session = wrapRequestsWithPayment(requests.Session(), client)
            answers = []
            for _ in range(20):
                r = session.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, (r.status_code, r.text[:300])
                answers.append({"body": r.json(), "payment": r.headers["PAYMENT-RESPONSE"]})
            return answers

        answers = await asyncio.to_thread(buy)
        first = answers[0]["body"]["results"][0]
        assert first["predictions"][0]["group"] == "cat"
        assert first["animal"]["group"] == "cat" and first["animal"]["status"] == "animal"
        responses = [json.loads(base64.b64decode(a["payment"])) for a in answers]
        assert responses[0]["transaction"].startswith("0x") and responses[0]["amount"]  # the deposit
        assert all(r["extra"]["chargedAmount"] == str(PRICE) for r in responses)
        last = responses[-1]["extra"]
        assert last["channelState"]["chargedCumulativeAmount"] == str(20 * PRICE)
        receipt = channels.SignedReceipt.from_json(last["receipt"], "receipt", channels.ErrorCode.INVALID_PAYLOAD)
        channels.verify_receipt(receipt, 31337, anvil.deployment.settlement, provider)
        assert receipt.receipt.cumulative_charged == 20 * PRICE

        result = await app[PAYMENTS].settle_now()
        assert result["settled_amount"] == 20 * PRICE
        assert await token_balance(anvil, provider) - before == 20 * PRICE
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            text = await r.text()
        for line in (f"paychan_charged_amount_total {20 * PRICE}", f"paychan_claimed_amount_total {20 * PRICE}",
                     f"paychan_settled_amount_total {20 * PRICE}", "paychan_deposits_total 1",
                     'paychan_http_requests_total{route="/v1/classify",status="402"} 20',
                     'paychan_http_requests_total{route="/v1/classify",status="200"} 20',
                     "paychan_voucher_verify_seconds_count 20"):
            assert line in text, line


async def test_sixteen_in_flight_on_one_channel(make_config, anvil, model_classifier, jpeg, tmp_path: Path) -> None:
    """Our payer core, 16 requests at once on one channel, some with bad images: each 200 is
    charged once, each failure nothing, and the claim equals the 200s x price."""
    config = paid_config(make_config, anvil)
    app = create_app(config, classifier=model_classifier)
    payer = Payer(channels.Signer(DEV_KEYS[3]), tmp_path / "payer.sqlite", deposit_amount=200 * PRICE)
    async with serve(app) as url, channels.PaymentClient(payer) as client:
        opened = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert opened.status == 200, opened.body[:300]
        bodies = [jpeg if i % 4 else jpeg[: len(jpeg) // 2] for i in range(16)]  # 4 truncated
        answers = await asyncio.gather(*(
            client.post(url + "/v1/classify", data=b, headers={"Content-Type": "image/jpeg"}) for b in bodies
        ))
        ok = [a for a in answers if a.status == 200]
        failed = [a for a in answers if a.status != 200]
        # The 4 truncated images fail before any money moves (422). A request overtaken by
        # later ones of the same channel may get the spec's channel_busy 402: also uncharged.
        assert [a.status for i, a in enumerate(answers) if i % 4 == 0] == [422] * 4
        assert all(a.status in (422, 402) for a in failed), [a.status for a in answers]
        assert len(ok) >= 8, [a.status for a in answers]
        assert all(a.settlement.extra.charged_amount == PRICE for a in ok)
        cid = opened.payment.channel_id
        view = await app[PAYMENTS].channel_view("0x" + cid.hex())
        assert int(view["chargedCumulativeAmount"]) == (1 + len(ok)) * PRICE  # the opener + each 200
        assert int(view["reserved"]) == 0
        await app[PAYMENTS].settle_now()
        _, total_claimed = await onchain_channel(anvil, cid)
        assert total_claimed == (1 + len(ok)) * PRICE


async def test_bad_payments_get_402_with_spec_codes(make_config, anvil, model_classifier, jpeg, tmp_path: Path) -> None:
    config = paid_config(make_config, anvil, model="null")
    from inference import Classifier

    null = Classifier.null()
    await null.start()
    app = create_app(config, classifier=null)
    payer_signer = channels.Signer(DEV_KEYS[4])
    payer = Payer(payer_signer, tmp_path / "payer.sqlite", deposit_amount=10 * PRICE)
    async with serve(app) as url, channels.PaymentClient(payer) as client, aiohttp.ClientSession() as s:
        opened = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert opened.status == 200
        reqs = opened.payment.requirements
        cid = opened.payment.channel_id
        config_ = payer.channel_config(reqs)
        settlement = anvil.deployment.settlement

        def header(ceiling: int, *, cid_: bytes = cid, chain: int = 31337, tamper: bool = False,
                   accepted=reqs) -> str:
            sig = payer_signer.sign_digest(channels.voucher_digest(chain, settlement, cid_, ceiling))
            if tamper:
                sig = sig[:5] + bytes([sig[5] ^ 0x40]) + sig[6:]
            voucher = channels.protocol.Voucher(cid_, ceiling, sig)
            return channels.encode_payment_signature(
                channels.protocol.PaymentPayload(accepted, channels.protocol.VoucherPayload(config_, voucher)))

        balance = int((await app[PAYMENTS].channel_view("0x" + cid.hex()))["balance"])
        other_chain = channels.PaymentRequirements(
            "eip155:1", reqs.asset, reqs.amount, reqs.pay_to, reqs.max_timeout_seconds, reqs.extra)
        cases = {
            "tampered signature": (header(2 * PRICE, tamper=True), "voucher_signature"),
            "wrong channel id": (header(2 * PRICE, cid_=b"\x11" * 32), "channel_id_mismatch"),
            "ceiling above balance": (header(balance + PRICE), "cumulative_exceeds_balance"),
            "ceiling below charged": (header(PRICE // 2), "cumulative_amount_mismatch"),
            "replayed old voucher": (opened.payment.header, "cumulative_amount_mismatch"),
            "another chain (signed)": (header(2 * PRICE, chain=1), "voucher_signature"),
            "another chain (offer)": (header(2 * PRICE, chain=1, accepted=other_chain), "network_mismatch"),
        }
        for name, (value, code) in cases.items():
            async with s.post(url + "/v1/classify", data=jpeg,
                              headers={"Content-Type": "image/jpeg", "PAYMENT-SIGNATURE": value}) as r:
                body = await r.json()
                assert r.status == 402, (name, body)
                assert body["error"] == "invalid_batch_settlement_evm_" + code, (name, body)
                required = channels.parse_payment_required(r.headers["PAYMENT-REQUIRED"])
                assert required.error == body["error"]
                if code == "cumulative_amount_mismatch":  # corrective: state + our last voucher
                    extra = required.accepts[0].extra
                    assert extra.channel_state.charged_cumulative_amount == PRICE
                    assert extra.voucher_state.signed_max_claimable == PRICE
        # nothing was charged by any of them; a correct voucher still works
        view = await app[PAYMENTS].channel_view("0x" + cid.hex())
        assert int(view["chargedCumulativeAmount"]) == PRICE
        again = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert again.status == 200 and again.settlement.extra.channel_state.charged_cumulative_amount == 2 * PRICE
    await null.close()


async def test_bad_images_and_full_queue_charge_nothing(make_config, anvil, model_classifier, jpeg, tmp_path: Path) -> None:
    config = paid_config(make_config, anvil, max_in_flight=1)
    app = create_app(config, classifier=model_classifier)
    payer = Payer(channels.Signer(DEV_KEYS[5]), tmp_path / "payer.sqlite", deposit_amount=400 * PRICE)
    async with serve(app) as url, channels.PaymentClient(payer) as client:
        opened = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert opened.status == 200
        cid_hex = "0x" + opened.payment.channel_id.hex()
        for body, ctype, status in ((b"", "image/jpeg", 400), (b"plain text", "text/plain", 415),
                                    (b"not a jpeg at all", "image/jpeg", 415),
                                    (jpeg[:3000], "image/jpeg", 422)):
            answer = await client.post(url + "/v1/classify", data=body, headers={"Content-Type": ctype})
            assert answer.status == status, (status, answer.body[:200])
        form = aiohttp.FormData()
        for i in range(8):
            form.add_field(f"i{i}", jpeg, filename="c.jpg", content_type="image/jpeg")
        multipart = form()
        payload = b"".join([chunk async for chunk in _chunks(multipart)])
        ctype = multipart.content_type
        # A distinct URL per price: the payer SDK learns an offer per URL (8 images = 8 x price).
        answers = await asyncio.gather(*(
            client.post(url + "/v1/classify?images=8", data=payload, headers={"Content-Type": ctype})
            for _ in range(5)
        ))
        statuses = [a.status for a in answers]
        assert 429 in statuses and 200 in statuses, statuses
        assert all(a.headers.get("Retry-After") for a in answers if a.status == 429)
        view = await app[PAYMENTS].channel_view(cid_hex)
        assert int(view["chargedCumulativeAmount"]) == PRICE * (1 + 8 * statuses.count(200))


async def _chunks(payload):
    class _Writer:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        async def write(self, data: bytes) -> None:
            self.parts.append(bytes(data))

    w = _Writer()
    await payload.write(w)
    for part in w.parts:
        yield part


async def test_idempotency_key_replays_without_a_second_charge(make_config, anvil, null_classifier, jpeg) -> None:
    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    payer = channels.Signer(DEV_KEYS[6])
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"}) as r:
            reqs = channels.parse_payment_required(r.headers["PAYMENT-REQUIRED"]).accepts[0]
        p = Payer(payer, Path(app[PAYMENTS].config.samples_dir).parent / "idem-payer.sqlite",
                  deposit_amount=50 * PRICE)
        first = p.pay(reqs)
        headers = {"Content-Type": "image/jpeg", "PAYMENT-SIGNATURE": first.header, "Idempotency-Key": "k-1"}
        async with s.post(url + "/v1/classify", data=jpeg, headers=headers) as r:
            assert r.status == 200
            body1, pay1 = await r.read(), r.headers["PAYMENT-RESPONSE"]
        # the client retries the very same request (e.g. after a lost answer)
        async with s.post(url + "/v1/classify", data=jpeg, headers=headers) as r:
            assert r.status == 200 and r.headers.get("Idempotent-Replayed") == "true"
            assert await r.read() == body1 and r.headers["PAYMENT-RESPONSE"] == pay1
        cid = "0x" + first.channel_id.hex()
        assert int((await app[PAYMENTS].channel_view(cid))["chargedCumulativeAmount"]) == PRICE


async def test_two_workers_share_the_redis_ledger(anvil, jpeg, tmp_path: Path, redis_url: str) -> None:
    """`paychan serve --workers 2` on one port with SO_REUSEPORT and the Redis ledger."""
    import os
    import signal
    import subprocess
    import sys

    from tests.gateway.serving import free_port

    port = free_port()
    key_file = tmp_path / "provider.key"
    key_file.write_text(DEV_KEYS[0])  # well-known anvil test key
    cmd = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))",
           "serve", "--rpc", anvil.url, "--key-file", str(key_file), "--token", anvil.deployment.token,
           "--price", str(PRICE), "--store", redis_url, "--model", "null", "--workers", "2",
           "--port", str(port), "--samples-dir", str(tmp_path / "samples"), "--no-settler"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        signer = channels.Signer(DEV_KEYS[7])
        payer = Payer(signer, tmp_path / "payer.sqlite", deposit_amount=100 * PRICE)
        async with channels.PaymentClient(payer) as client:
            first = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
            assert first.status == 200, first.body[:300]
        reqs, cid = first.payment.requirements, first.payment.channel_id
        config = payer.channel_config(reqs)

        def header(ceiling: int) -> str:  # ceilings with headroom: any arrival order is accepted
            digest = channels.voucher_digest(31337, anvil.deployment.settlement, cid, ceiling)
            voucher = channels.protocol.Voucher(cid, ceiling, signer.sign_digest(digest))
            return channels.encode_payment_signature(
                channels.protocol.PaymentPayload(reqs, channels.protocol.VoucherPayload(config, voucher)))

        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                headers = {"Content-Type": "image/jpeg", "PAYMENT-SIGNATURE": header((26 + i) * PRICE)}
                async with s.post(url + "/v1/classify", data=jpeg, headers=headers) as r:
                    state = channels.parse_payment_response(r.headers["PAYMENT-RESPONSE"]).extra.channel_state
                    return state.charged_cumulative_amount

            cumulative = sorted(await asyncio.gather(*(one(i) for i in range(24))))
            # every charge landed exactly once in the shared ledger, whichever worker took it
            assert cumulative == [PRICE * k for k in range(2, 26)]
            async with s.get(f"{url}/v1/channels/0x{cid.hex()}") as r:
                assert (await r.json())["chargedCumulativeAmount"] == str(25 * PRICE)
            async with s.get(url + "/metrics") as r:  # a serving process keeps its startup heap frozen
                frozen = next(line for line in (await r.text()).splitlines()
                              if line.startswith("paychan_gc_frozen_objects "))
                assert int(frozen.split()[1]) > 10_000, frozen
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the parent forwards it to its workers
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]


async def test_channel_funded_elsewhere_is_synced_from_chain(make_config, anvil, null_classifier, jpeg) -> None:
    """A channel deposited on-chain directly (not through this gateway) is read from the chain
    on its first voucher, then served; the spec's recovery baseline."""
    from contracts.testkit import SettlementKit

    app = create_app(paid_config(make_config, anvil, model="null"), classifier=null_classifier)
    provider = channels.Signer(DEV_KEYS[0]).address
    kit = SettlementKit(anvil.w3, anvil.deployment)
    salt = b"\x42" * 32
    ch = kit.channel(payer_key=DEV_KEYS[8], receiver=provider, receiver_authorizer=provider,
                     payer_authorizer_key=DEV_KEYS[8], salt=salt)
    await kit.deposit(DEV_KEYS[8], ch, 30 * PRICE)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"}) as r:
            reqs = channels.parse_payment_required(r.headers["PAYMENT-REQUIRED"]).accepts[0]
        signer = channels.Signer(DEV_KEYS[8])
        config = channels.ChannelConfig(signer.address_bytes, signer.address_bytes, reqs.pay_to,
                                        reqs.extra.receiver_authorizer, reqs.asset, 900, salt)
        cid = channels.protocol.channel_id(config, 31337, anvil.deployment.settlement)
        assert cid == ch.id
        voucher = channels.protocol.Voucher(cid, PRICE, signer.sign_digest(
            channels.voucher_digest(31337, anvil.deployment.settlement, cid, PRICE)))
        header = channels.encode_payment_signature(channels.protocol.PaymentPayload(reqs, channels.protocol.VoucherPayload(config, voucher)))
        async with s.post(url + "/v1/classify", data=jpeg,
                          headers={"Content-Type": "image/jpeg", "PAYMENT-SIGNATURE": header}) as r:
            assert r.status == 200, await r.text()
            state = channels.parse_payment_response(r.headers["PAYMENT-RESPONSE"]).extra.channel_state
            assert state.balance == 30 * PRICE and state.charged_cumulative_amount == PRICE


async def test_a_killed_sqlite_writer_makes_readyz_fail_and_charges_nothing(
        make_config, null_classifier, anvil, jpeg, tmp_path: Path) -> None:
    """Kill the SQLite writer process for real: /readyz turns 503 naming the store, a paid
    request is refused with a 5xx, and the reopened ledger holds only what was answered."""
    import os
    import signal

    from channels.provider.store import SqliteStore

    ledger = tmp_path / "killed.sqlite3"
    app = create_app(paid_config(make_config, anvil, model="null", store=f"sqlite:///{ledger}"),
                     classifier=null_classifier)
    payer = Payer(channels.Signer(DEV_KEYS[9]), tmp_path / "payer.sqlite", deposit_amount=20 * PRICE,
                  salt=os.urandom(32))
    async with serve(app) as url, channels.PaymentClient(payer) as client, aiohttp.ClientSession() as s:
        first = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert first.status == 200, first.body[:300]
        os.kill(app[PAYMENTS].store.writer_pid, signal.SIGKILL)
        await asyncio.sleep(0.3)  # the gateway reads the end of the writer's pipe
        async with s.get(url + "/readyz") as r:
            checks = (await r.json())["checks"]
            assert r.status == 503 and checks["store"] is False and checks["chain"] is True
        second = await client.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"})
        assert second.status >= 500
        view = await app[PAYMENTS].channel_view("0x" + first.payment.channel_id.hex())
        assert int(view["chargedCumulativeAmount"]) == PRICE and view["inFlight"] == 0
    store = await SqliteStore.open(ledger, chain_id=31337, contract=anvil.deployment.settlement)
    try:
        assert [state.charged for state in await store.channels()] == [PRICE]
    finally:
        await store.close()


async def test_readyz_reports_the_chain_down_and_back(make_config, null_classifier) -> None:
    """Stop anvil for real: /readyz turns 503 naming the chain, and 200 again once it is back."""
    from contracts import Anvil

    node = Anvil().start()
    try:
        config = make_config(payment=True, key=DEV_KEYS[0], token=node.deployment.token,
                             rpc_url=node.url, model="null")
        app = create_app(config, classifier=null_classifier)
        async with serve(app) as url, aiohttp.ClientSession() as s:
            async with s.get(url + "/readyz") as r:
                assert r.status == 200
            node.stop()
            async with s.get(url + "/readyz") as r:
                body = await r.json()
                assert r.status == 503 and body["checks"]["chain"] is False and body["checks"]["store"]
            node.start()
            async with s.get(url + "/readyz") as r:
                assert r.status == 200
    finally:
        node.stop()
