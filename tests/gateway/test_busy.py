"""A busy channel gets one answer on every store: the spec's 402 ``channel_busy``.

Two caps can refuse a request on a busy channel: this process's in-flight cap (gateway.x402,
per process) and the ledger's reservation cap (shared by every process on a Redis ledger).
Both answer 402 ``invalid_batch_settlement_evm_channel_busy`` in the PAYMENT-REQUIRED shape
with Retry-After; a full gateway stays 429 ``overloaded``. Real sockets, anvil, real
deposits; the first request of a channel is held inside a gated classifier while others
arrive. Keys are the well-known anvil test keys (contracts.DEV_KEYS).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import METRICS, PAYMENTS
from inference import NullClassifier
from tests.gateway.serving import serve

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]

PRICE = 1000
JPEG = {"Content-Type": "image/jpeg"}
BUSY = "invalid_batch_settlement_evm_channel_busy"


class GatedClassifier(NullClassifier):
    """The null model, answering only while ``gate`` is set; ``entered`` tells a request is in."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.delay_s = delay_s

    async def classify(self, images: Sequence[bytes], top_k: int = 5,
                       deadline: float | None = None) -> Any:
        self.entered.set()
        await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await super().classify(images, top_k, deadline)


def _config(make_config, anvil, store: str, **overrides: Any):
    values = dict(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token, rpc_url=anvil.url,
                  price=PRICE, model="null", settler=False, store=store, max_in_flight_per_channel=1,
                  retry_after_s=2)
    values.update(overrides)
    return make_config(**values)


def _payer(tmp_path: Path, key: str) -> Payer:
    # A fresh salt: a channel of its own on the session's shared anvil.
    return Payer(channels.Signer(key), tmp_path / f"payer-{os.urandom(4).hex()}.sqlite",
                 deposit_amount=50 * PRICE, salt=os.urandom(32))


def _shape(answer: channels.sdk.PaidResponse) -> dict[str, Any]:
    """What a client sees of a refusal: status, code, Retry-After and the x402 shape."""
    required = json.loads(base64.b64decode(answer.headers["PAYMENT-REQUIRED"]))
    body = json.loads(answer.body)
    return {
        "status": answer.status,
        "error": required["error"],
        "retry_after": answer.headers.get("Retry-After"),
        "x402Version": required["x402Version"],
        "body_is_the_header": body == required,
        "accepts": required["accepts"],
        "sdk_code": answer.required.error if answer.required else None,
    }


async def _busy_answers(client: channels.PaymentClient, clf: GatedClassifier, hold_url: str,
                        probe_urls: Sequence[str], jpeg: bytes) -> list[dict[str, Any]]:
    """Hold one request of the channel in the classifier at ``hold_url``; one more request at
    each of ``probe_urls`` meanwhile (the SDK's plain ``post`` does not retry); their shapes."""
    clf.gate.clear()
    clf.entered.clear()
    held = asyncio.create_task(client.post(hold_url + "/v1/classify", data=jpeg, headers=JPEG))
    try:
        await asyncio.wait_for(clf.entered.wait(), 30)
        answers = [await client.post(u + "/v1/classify", data=jpeg, headers=JPEG) for u in probe_urls]
    finally:
        clf.gate.set()
    assert (await held).status == 200
    return [_shape(a) for a in answers]


async def _charged(app, answer: channels.sdk.PaidResponse) -> int:
    view = await app[PAYMENTS].channel_view("0x" + answer.payment.channel_id.hex())
    return int(view["chargedCumulativeAmount"])


async def test_a_busy_channel_is_the_same_402_on_sqlite_and_redis(
        make_config, anvil, jpeg, tmp_path: Path, redis_url: str) -> None:
    clf = GatedClassifier()
    await clf.start()
    # SQLite: one process, so this process's cap refuses first.
    app = create_app(_config(make_config, anvil, f"sqlite:///{tmp_path / 'busy.sqlite3'}"), classifier=clf)
    async with serve(app) as url, channels.PaymentClient(_payer(tmp_path, DEV_KEYS[6])) as client:
        opened = await client.post(url + "/v1/classify", data=jpeg, headers=JPEG)
        assert opened.status == 200, opened.body[:300]
        (sqlite_busy,) = await _busy_answers(client, clf, url, [url], jpeg)
        assert await _charged(app, opened) == 2 * PRICE  # the held one, never the refused one

    # Redis: two gateway processes' worth of apps on one ledger. Held on A: A's own cap
    # refuses the next one; B's cap is free, so B's request reaches the ledger's cap.
    config = _config(make_config, anvil, redis_url)
    a, b = create_app(config, classifier=clf), create_app(config, classifier=clf)
    async with serve(a) as url_a, serve(b) as url_b, \
            channels.PaymentClient(_payer(tmp_path, DEV_KEYS[6])) as client:
        opened = await client.post(url_a + "/v1/classify", data=jpeg, headers=JPEG)
        assert opened.status == 200, opened.body[:300]
        assert (await client.post(url_b + "/v1/classify", data=jpeg, headers=JPEG)).status == 200
        redis_own_cap, redis_ledger_cap = await _busy_answers(client, clf, url_a, [url_a, url_b], jpeg)
        assert await _charged(a, opened) == 3 * PRICE

    expected = {"status": 402, "error": BUSY, "retry_after": "2", "x402Version": 2,
                "body_is_the_header": True, "sdk_code": BUSY}
    for shape in (sqlite_busy, redis_own_cap, redis_ledger_cap):
        assert {k: shape[k] for k in expected} == expected, shape
        assert [x["scheme"] for x in shape["accepts"]] == ["batch-settlement"]
    # the same terms in all three (one provider, one price): a client retries as it came
    assert sqlite_busy["accepts"] == redis_own_cap["accepts"] == redis_ledger_cap["accepts"]
    await clf.close()


async def test_the_sdk_rides_out_busy_402s(make_config, anvil, jpeg, tmp_path: Path) -> None:
    """Eight classifications at once on a channel that admits two: the SDK retries each busy
    402 after a short wait, every one is answered, and exactly eight are charged."""
    clf = GatedClassifier(delay_s=0.05)
    await clf.start()
    config = _config(make_config, anvil, f"sqlite:///{tmp_path / 'sdk.sqlite3'}",
                     max_in_flight_per_channel=2, retry_after_s=1)
    app = create_app(config, classifier=clf)
    async with serve(app) as url, channels.PaymentClient(_payer(tmp_path, DEV_KEYS[8]),
                                                         base_url=url) as client:
        first = await client.classify(jpeg)
        results = await asyncio.gather(*(client.classify(jpeg) for _ in range(8)))
        assert all(r.top.label == "tiger cat" for r in results)
        cid = "0x" + (await client.channel()).channel_id.hex()
        view = await app[PAYMENTS].channel_view(cid)
        assert int(view["chargedCumulativeAmount"]) == 9 * PRICE, (first, view)
        # the cap did refuse some (so the retries were needed), under the spec's code
        assert app[METRICS].payment_errors.get((BUSY,)) > 0
    await clf.close()
