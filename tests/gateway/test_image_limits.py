"""Issue 13 item 3 over real sockets: long thin images are refused by the pricer (422, before
any 402 or reservation), in milliseconds and without memory, paid or not; and the work of a
request past its deadline is dropped, so it cannot hold the decode pool against others.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import PAYMENTS
from inference import Classifier
from tests.gateway.serving import serve
from tests.inference.inference_images import measure, ramp
from tests.polling import until

pytestmark = pytest.mark.asyncio(loop_scope="session")

PRICE = 1000
THIN = ((1, 10_000, "JPEG"), (10_000, 1, "JPEG"), (1, 65_535, "PNG"))


def _headers(fmt: str) -> dict[str, str]:
    return {"Content-Type": f"image/{fmt.lower()}"}


async def test_long_thin_images_are_422_in_milliseconds_over_http(
    make_config, model_classifier, jpeg: bytes,
) -> None:
    app = create_app(make_config(model="tf_efficientnet_lite0"), classifier=model_classifier)
    images_before = model_classifier.stats().images
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for width, height, fmt in THIN:
            body = ramp(width, height, fmt)
            with measure() as used:  # the gateway runs in this process: its cost is counted
                async with s.post(url + "/v1/classify", data=body, headers=_headers(fmt)) as r:
                    answer = await r.json()
            assert r.status == 422, answer
            assert answer["error"] == "aspect_ratio_too_large"
            assert answer["message"].startswith(f"the image is {width}x{height}: aspect ratio ")
            assert "exceeds the 10:1 limit; crop or pad it" in answer["message"]
            assert used.wall_s < 1.0 and used.rss_growth_mb < 50, (width, height, fmt, used)

        form = aiohttp.FormData()
        form.add_field("photo", jpeg, filename="cat.jpg", content_type="image/jpeg")
        form.add_field("strip", ramp(1, 10_000, "JPEG"), filename="strip.jpg",
                       content_type="image/jpeg")
        async with s.post(url + "/v1/classify", data=form) as r:
            answer = await r.json()
            assert r.status == 422 and answer["error"] == "aspect_ratio_too_large"
            assert answer["message"].startswith("image 1: the image is 1x10000")

        # Samples for retraining go through the same check (tests/gateway/test_samples.py).

        async with s.post(url + "/v1/classify", data=jpeg, headers=_headers("JPEG")) as r:
            assert r.status == 200 and (await r.json())["results"][0]["predictions"]
    assert model_classifier.stats().images == images_before + 1  # only the photo was computed


@pytest.mark.anvil
async def test_a_paid_attempt_with_a_long_thin_image_charges_nothing(
    make_config, anvil, model_classifier, jpeg: bytes, tmp_path: Path,
) -> None:
    config = make_config(payment=True, key=DEV_KEYS[0], token=anvil.deployment.token,
                         rpc_url=anvil.url, price=PRICE, model="tf_efficientnet_lite0",
                         settler=False)
    app = create_app(config, classifier=model_classifier)
    payer = Payer(channels.Signer(DEV_KEYS[7]), tmp_path / "payer.sqlite",
                  deposit_amount=100 * PRICE, salt=os.urandom(32))
    thin = ramp(1, 10_000, "JPEG")
    async with serve(app) as url, channels.PaymentClient(payer) as client:
        # No payment yet: the image is refused before terms are offered, never a 402.
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/classify", data=thin,
                                                         headers=_headers("JPEG")) as r:
            assert r.status == 422 and "PAYMENT-REQUIRED" not in r.headers
        opened = await client.post(url + "/v1/classify", data=jpeg, headers=_headers("JPEG"))
        assert opened.status == 200, opened.body[:300]
        for width, height, fmt in THIN:
            answer = await client.post(url + "/v1/classify", data=ramp(width, height, fmt),
                                       headers=_headers(fmt))
            assert answer.status == 422, answer.body[:300]
            assert b"aspect_ratio_too_large" in answer.body
        view = await app[PAYMENTS].channel_view("0x" + opened.payment.channel_id.hex())
        assert int(view["chargedCumulativeAmount"]) == PRICE  # the photo only
        assert int(view["reserved"]) == 0


async def test_work_of_a_request_past_its_deadline_is_dropped_not_run_on(
    make_config, model_classifier, jpeg: bytes,
) -> None:
    """One decode thread, a 1 s deadline, 16 acceptable but slow PNGs (0.15-0.4 s each) in
    one request and a photo behind them: both time out, their queued decodes are dropped, and
    the next photo is answered within its own deadline instead of waiting seconds behind them."""
    clf = Classifier.from_model(model_classifier.model, max_batch=4, buckets=(1, 4),
                                max_wait_us=0, queue_size=64, decode_threads=1, auto_cap=False)
    await clf.start()
    heavy = aiohttp.FormData()
    slow = ramp(5000, 4000, "PNG")
    for i in range(16):
        heavy.add_field(f"i{i}", slow, filename=f"{i}.png", content_type="image/png")
    app = create_app(make_config(model="tf_efficientnet_lite0", request_timeout_s=1.0),
                     classifier=clf)
    try:
        async with serve(app) as url, aiohttp.ClientSession() as s:
            async def post(data: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
                async with s.post(url + "/v1/classify", data=data, headers=headers) as r:
                    return r.status, await r.json()

            late = asyncio.ensure_future(post(heavy))
            await until(lambda: clf.stats().admitted == 16)
            behind = asyncio.ensure_future(post(jpeg, _headers("JPEG")))
            await until(lambda: clf.stats().admitted == 17)
            (status, body), (behind_status, behind_body) = await asyncio.gather(late, behind)
            assert status == 503 and body["error"] in ("timeout", "deadline_exceeded"), body
            # The photo queued behind them timed out too or, once their decodes were dropped,
            # was answered in its own time: which one depends on the machine's speed.
            assert behind_status == 200 or behind_body["error"] in ("timeout", "deadline_exceeded")
            status, body = await post(jpeg, _headers("JPEG"))
            assert status == 200, body
        stats = clf.stats()
        # Most of the 16 were never decoded, and none reached the model.
        assert stats.cancelled + stats.expired >= 2, stats
        assert stats.images == 1 + (behind_status == 200) and stats.admitted == 0, stats
    finally:
        await clf.close()
