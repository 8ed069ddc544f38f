"""The free routes and the unpaid path over real sockets: health, metrics, models,
image validation, body limits and the in-flight cap (null model, payment off)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.app import create_app
from gateway.keys import CAPS
from tests.gateway.serving import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_health_ready_metrics_models(make_config, null_classifier) -> None:
    app = create_app(make_config(), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.get(url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(url + "/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] and body["checks"]["model"]
        async with s.get(url + "/v1/models") as r:
            models = (await r.json())["models"]
            assert models[0]["version"].startswith("0x") and models[0]["default"]
        async with s.get(url + "/v1/pricing") as r:
            assert (await r.json())["payment"] is False
        async with s.get(url + "/metrics") as r:
            text = await r.text()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'paychan_http_requests_total{route="/v1/models",status="200"} 1' in text
            assert "paychan_classifier_batches" in text
            assert 'paychan_gc_collections_total{generation="2"}' in text
            assert "paychan_gc_frozen_objects 0" in text  # only `paychan serve` freezes its heap


async def test_unpaid_classify_raw_and_multipart(make_config, null_classifier, jpeg, png) -> None:
    app = create_app(make_config(), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/classify?top_k=3", data=jpeg,
                          headers={"Content-Type": "image/jpeg"}) as r:
            body = await r.json()
            assert r.status == 200, body
            assert len(body["results"]) == 1 and 1 <= len(body["results"][0]["predictions"]) <= 3
            assert "PAYMENT-RESPONSE" not in r.headers
        form = aiohttp.FormData()
        for i in range(3):
            form.add_field(f"image{i}", jpeg if i % 2 == 0 else png, filename=f"{i}.img",
                           content_type="image/jpeg" if i % 2 == 0 else "image/png")
        async with s.post(url + "/v1/classify", data=form) as r:
            assert r.status == 200
            assert len((await r.json())["results"]) == 3


@pytest.mark.parametrize(
    ("body", "ctype", "query", "status", "code"),
    [
        (b"", "image/jpeg", "", 400, "empty_body"),
        (b"hello world, not an image", "image/jpeg", "", 415, None),
        (b"{}", "application/json", "", 415, "unsupported_media_type"),
        (None, "image/jpeg", "?top_k=0", 400, "bad_top_k"),
        (None, "image/jpeg", "?model=resnet9000", 404, "unknown_model"),
    ],
)
async def test_bad_requests_get_4xx(make_config, null_classifier, jpeg, body, ctype, query,
                                    status, code) -> None:
    if body is None:
        body = jpeg
    app = create_app(make_config(), classifier=null_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/classify" + query, data=body, headers={"Content-Type": ctype}) as r:
            answer = await r.json()
            assert r.status == status, answer
            if code:
                assert answer["error"] == code
            assert answer["message"]


async def test_truncated_image_is_422_with_the_real_model(make_config, model_classifier, jpeg) -> None:
    app = create_app(make_config(model="tf_efficientnet_lite0"), classifier=model_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/classify", data=jpeg[: len(jpeg) // 3],
                          headers={"Content-Type": "image/jpeg"}) as r:
            assert r.status == 422, await r.text()
        async with s.post(url + "/v1/classify", data=jpeg, headers={"Content-Type": "image/jpeg"}) as r:
            [result] = (await r.json())["results"]
            assert r.status == 200 and result["predictions"][0]["group"] == "cat"
            # Each result leads with the animal answer: the cat classes' probabilities summed.
            assert list(result) == ["animal", "predictions"]
            assert result["animal"]["group"] == "cat" and result["animal"]["status"] == "animal"
            assert result["animal"]["probability"] > result["predictions"][0]["probability"]


async def test_body_limit_applies_before_reading(make_config, null_classifier, jpeg) -> None:
    app = create_app(make_config(max_body_bytes=len(jpeg) - 1), classifier=null_classifier)
    async with serve(app) as url:
        # Declare a large body but send none of it: the answer must come without the body.
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000000\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        assert b" 413 " in status_line
        writer.close()
        async with aiohttp.ClientSession() as s:
            form = aiohttp.FormData()
            for i in range(17):
                form.add_field(f"i{i}", b"\xff\xd8\xff", filename="x.jpg", content_type="image/jpeg")
            async with s.post(url + "/v1/classify", data=form) as r:
                assert r.status == 413 and (await r.json())["error"] == "too_many_images"


async def test_in_flight_cap_answers_429_with_retry_after(make_config, model_classifier, jpeg) -> None:
    app = create_app(make_config(max_in_flight=1, model="tf_efficientnet_lite0"),
                     classifier=model_classifier)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        form_bytes = []
        for _ in range(6):
            form = aiohttp.FormData()
            for i in range(8):
                form.add_field(f"i{i}", jpeg, filename="c.jpg", content_type="image/jpeg")
            form_bytes.append(form)

        async def one(form: aiohttp.FormData) -> tuple[int, str | None]:
            async with s.post(url + "/v1/classify", data=form) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        results = await asyncio.gather(*(one(f) for f in form_bytes))
        statuses = sorted(status for status, _ in results)
        assert 200 in statuses and 429 in statuses, statuses
        assert all(retry is not None for status, retry in results if status == 429)


async def test_graceful_shutdown_drains_in_flight(make_config, model_classifier, jpeg) -> None:
    """Requests already being served when shutdown starts all finish with 200."""
    from aiohttp import web

    from tests.gateway.serving import free_port

    app = create_app(make_config(model="tf_efficientnet_lite0"), classifier=model_classifier)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=30)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1/classify"
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            form = aiohttp.FormData()
            for i in range(4):
                form.add_field(f"i{i}", jpeg, filename="c.jpg", content_type="image/jpeg")
            async with s.post(url, data=form) as r:
                await r.read()
                return r.status

        tasks = [asyncio.create_task(one()) for _ in range(4)]
        caps = app[CAPS]
        for _ in range(3000):  # until all four are being served (a loaded machine may take a while)
            if caps.count == 4:
                break
            await asyncio.sleep(0.005)
        assert caps.count == 4, "the four requests never were in flight together"
        await runner.cleanup()  # stops listening, drains, then closes the app
        assert await asyncio.gather(*tasks) == [200, 200, 200, 200]
