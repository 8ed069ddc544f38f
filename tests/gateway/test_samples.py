"""POST /v1/samples over real sockets on anvil: a sample signed by a payer with a funded
channel is stored (once, durably, across a restart); everything else is refused with a clear
4xx/5xx and nothing is written: no or bad signature, a stale one, another key, a payer with
no channel here, a body that is not what was signed, an image bomb, a bad label; and the
per-payer rate limit (429 + Retry-After) and disk bounds (507)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import channels
from channels.protocol import (
    CANONICAL_SETTLEMENT_ADDRESS,
    SAMPLE_SIGNATURE,
    SampleAuthorization,
    encode_sample_signature,
)
from channels.sdk import RequestFailed
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import METRICS
from inference.samples import MANIFEST, SampleStore
from tests.gateway.serving import serve
from tests.inference.inference_images import png_header_only, ramp

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]

PRICE = 1000
CHAIN_ID = 31337
JPEG = {"Content-Type": "image/jpeg"}


def paid_config(make_config, anvil, **overrides: Any):
    values = {"payment": True, "key": DEV_KEYS[0], "token": anvil.deployment.token,
              "rpc_url": anvil.url, "price": PRICE, "model": "null", "settler": False}
    values.update(overrides)
    return make_config(**values)


def payer_of(tmp_path: Path, key: str) -> Payer:
    salt = os.urandom(32)  # a channel of its own on the session's anvil
    return Payer(channels.Signer(key), tmp_path / f"payer-{salt.hex()[:12]}.sqlite",
                 deposit_amount=20 * PRICE, salt=salt)


def signed(key: str, cid: bytes, data: bytes, label: str, group: str = "", *,
           signed_at: int | None = None) -> dict[str, str]:
    auth = SampleAuthorization(cid, hashlib.sha256(data).digest(), label, group,
                               int(time.time()) if signed_at is None else signed_at)
    auth = auth.signed(channels.Signer(key), CHAIN_ID, CANONICAL_SETTLEMENT_ADDRESS)
    return {**JPEG, SAMPLE_SIGNATURE: encode_sample_signature(auth)}


async def test_a_signed_sample_is_stored_once_and_survives_a_restart(
    make_config, anvil, null_classifier, jpeg: bytes, png: bytes, tmp_path: Path,
) -> None:
    config = paid_config(make_config, anvil)
    payer = payer_of(tmp_path, DEV_KEYS[3])
    async with serve(create_app(config, classifier=null_classifier)) as url, \
            channels.PaymentClient(payer, base_url=url) as client:
        await client.classify(jpeg)
        first = await client.add_sample(jpeg, label="Tabby")
        assert (first.label, first.group, first.imagenet_index) == ("tabby", "cat", 281)
        assert not first.duplicate and first.payer == payer.signer.address.lower()
        again = await client.add_sample(jpeg, label="tabby")
        assert again.duplicate
        new = await client.add_sample(png, label="Okapi Calf", group="other_mammal")
        assert (new.label, new.group, new.imagenet_index) == ("okapi calf", "other_mammal", None)
        # The label's group is known now: later samples of it need none.
        assert (await client.add_sample(png, label="okapi calf")).duplicate
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            assert "paychan_samples_stored_total 2" in await r.text()

    # A restart: the store is read back from disk; the same sample is still a duplicate.
    async with serve(create_app(config, classifier=null_classifier)) as url, \
            channels.PaymentClient(payer, base_url=url) as client:
        assert (await client.add_sample(jpeg, label="tabby")).duplicate
    records = SampleStore(config.samples_dir).records()
    assert [(r.label, r.group, r.payer) for r in records] == [
        ("tabby", "cat", payer.signer.address.lower()),
        ("okapi calf", "other_mammal", payer.signer.address.lower()),
    ]
    assert records[0].path == f"tabby/{hashlib.sha256(jpeg).hexdigest()}.jpg"
    assert (config.samples_dir / records[1].path).read_bytes() == png
    assert records[0].channel is not None and records[0].signed_at is not None


async def test_refused_samples_leave_nothing_behind(
    make_config, anvil, null_classifier, jpeg: bytes, tmp_path: Path,
) -> None:
    config = paid_config(make_config, anvil)
    key = DEV_KEYS[4]
    app = create_app(config, classifier=null_classifier)
    async with serve(app) as url, channels.PaymentClient(payer_of(tmp_path, key), base_url=url) as client, \
            aiohttp.ClientSession() as s:
        await client.classify(jpeg)
        cid = (await client.channel()).channel_id
        now = int(time.time())
        thin = ramp(1, 10_000, "JPEG")
        bomb = png_header_only(50_000, 50_000)
        cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
            ("no signature", jpeg, JPEG, 401, "sample_signature_required"),
            ("not base64 JSON", jpeg, {**JPEG, SAMPLE_SIGNATURE: "%%%"}, 400, "bad_sample_signature"),
            ("stale", jpeg, signed(key, cid, jpeg, "tabby", signed_at=now - 3600), 401,
             "sample_signature_expired"),
            ("from the future", jpeg, signed(key, cid, jpeg, "tabby", signed_at=now + 3600), 401,
             "sample_signature_in_future"),
            ("another key", jpeg, signed(DEV_KEYS[9], cid, jpeg, "tabby"), 401,
             "sample_signature_invalid"),
            ("no channel here", jpeg, signed(key, os.urandom(32), jpeg, "tabby"), 403, "unknown_payer"),
            ("body is not what was signed", jpeg[:-1] + b"\x00", signed(key, cid, jpeg, "tabby"),
             400, "sample_digest_mismatch"),
            ("a 1x10000 strip", thin, signed(key, cid, thin, "tabby"), 422, "aspect_ratio_too_large"),
            ("a decompression bomb", bomb, {**signed(key, cid, bomb, "tabby"),
                                            "Content-Type": "image/png"}, 413, "too_many_pixels"),
            ("bad label", jpeg, signed(key, cid, jpeg, "9 lives"), 400, "bad_label"),
            ("new label, no group", jpeg, signed(key, cid, jpeg, "okapi calf"), 400, "bad_label"),
            ("ImageNet label, wrong group", jpeg, signed(key, cid, jpeg, "tabby", "dog"), 400,
             "bad_label"),
            ("not an image", b"hello", {**signed(key, cid, b"hello", "tabby"),
                                        "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ]
        for name, body, headers, status, code in cases:
            async with s.post(url + "/v1/samples", data=body, headers=headers) as r:
                answer = await r.json()
            assert (r.status, answer["error"]) == (status, code), (name, answer)
            assert answer["message"], name
        refused = app[METRICS].samples_refused
        assert refused.get(("unknown_payer",)) == 1 and refused.get(("bad_label",)) == 3
    samples = config.samples_dir
    assert not (samples / MANIFEST).exists()
    assert not [p for p in samples.rglob("*") if p.is_file() and p.name != ".lock"]


async def test_a_free_gateway_takes_no_samples(make_config, null_classifier, jpeg: bytes) -> None:
    async with serve(create_app(make_config(), classifier=null_classifier)) as url, \
            aiohttp.ClientSession() as s:
        headers = signed(DEV_KEYS[4], bytes(32), jpeg, "tabby")
        async with s.post(url + "/v1/samples", data=jpeg, headers=headers) as r:
            assert r.status == 403 and (await r.json())["error"] == "samples_need_payment"


async def test_rate_limit_per_payer_and_disk_bounds(
    make_config, anvil, null_classifier, jpeg: bytes, tmp_path: Path,
) -> None:
    pictures = [ramp(40 + i, 30, "JPEG") for i in range(4)]
    config = paid_config(make_config, anvil, samples_per_minute=1, samples_burst=2,
                         samples_payer_max_bytes=sum(len(p) for p in pictures[:2]) + 1)
    async with serve(create_app(config, classifier=null_classifier)) as url, \
            channels.PaymentClient(payer_of(tmp_path, DEV_KEYS[5]), base_url=url) as a, \
            channels.PaymentClient(payer_of(tmp_path, DEV_KEYS[6]), base_url=url) as b, \
            aiohttp.ClientSession() as s:
        await a.classify(jpeg)
        await b.classify(jpeg)
        await a.add_sample(pictures[0], label="tabby")
        await a.add_sample(pictures[1], label="tabby")
        with pytest.raises(RequestFailed) as limited:
            await a.add_sample(pictures[2], label="tabby", wait_s=0)
        assert limited.value.status == 429 and limited.value.code == "rate_limited"
        cid = (await a.channel()).channel_id
        async with s.post(url + "/v1/samples", data=pictures[2],
                          headers=signed(DEV_KEYS[5], cid, pictures[2], "tabby")) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert "payer" in (await r.json())["message"]
        # Another payer has its own bucket. The same bytes and label are one sample,
        # whoever sends them: b's copy of a's picture is a duplicate (a's, on a's share).
        await b.add_sample(pictures[2], label="tabby")
        assert (await b.add_sample(pictures[0], label="tabby")).duplicate
    # b's next sample would go past its disk share: 507, nothing written (a fresh gateway, so
    # that the rate limit does not answer first).
    config2 = paid_config(make_config, anvil,
                          samples_payer_max_bytes=len(pictures[2]) + len(pictures[3]) - 1)
    async with serve(create_app(config2, classifier=null_classifier)) as url, \
            channels.PaymentClient(payer_of(tmp_path, DEV_KEYS[6]), base_url=url) as b:
        await b.classify(jpeg)
        with pytest.raises(RequestFailed) as quota:
            await b.add_sample(pictures[3], label="tabby")
        assert quota.value.status == 507 and quota.value.code == "sample_quota_exceeded"
    lines = (config.samples_dir / MANIFEST).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["label"] == "tabby" for line in lines)
