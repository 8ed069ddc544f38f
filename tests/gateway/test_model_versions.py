"""Serving from a model store over real HTTP with real weights: the bundled champion and a second
version (the bundled state_dict with one classifier bias changed, so its sha256 differs), pinned by
id, prefix and alias; an unknown version is refused before payment; an LRU bound of 1 still answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.keys import PAYMENTS
from inference import ModelStore
from inference.model import DEFAULT_MODEL
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, paid_config
from tests.weight_variants import variant

pytestmark = pytest.mark.asyncio(loop_scope="session")

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """champion = the bundled weights, previous = a variant, plus a retired third version."""
    root = tmp_path_factory.mktemp("models")
    models = ModelStore.open(root / "store")
    champion = models.resolve("champion").id
    second = models.import_weights(variant(root / "b.pth", 0.5), DEFAULT_MODEL, parent=champion).id
    third = models.import_weights(variant(root / "c.pth", 0.25), DEFAULT_MODEL, parent=champion).id
    models.promote(second)
    models.rollback()  # champion: the bundled one again; previous: second
    models.retire(third)
    assert models.aliases() == {"champion": champion, "previous": second}
    assert len({champion, second, third}) == 3
    return {"root": str(models.root), "champion": champion, "second": second, "third": third}


async def _classify(s: aiohttp.ClientSession, url: str, jpeg: bytes, model: str | None) -> tuple[int, dict]:
    query = "" if model is None else f"?model={model}"
    async with s.post(url + "/v1/classify" + query, data=jpeg, headers=JPEG) as r:
        return r.status, await r.json()


async def test_pins_by_id_prefix_and_alias_each_answer_with_their_version(make_config, store, jpeg) -> None:
    config = make_config(model=DEFAULT_MODEL, models=store["root"], max_resident_models=2, batch_cap=8)
    app = create_app(config)
    champion, second = store["champion"], store["second"]
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for pin, expected in ((None, champion), (second, second), (champion[:8], champion),
                              ("previous", second), ("champion", champion), ("0x" + second, second),
                              (f"{DEFAULT_MODEL}-{second[:12]}", second)):
            status, body = await _classify(s, url, jpeg, pin)
            assert status == 200, (pin, body)
            assert body["model"]["version"] == "0x" + expected, pin
            assert body["results"][0]["predictions"][0]["label"]  # a real answer
        async with s.get(url + "/v1/models") as r:
            text = await r.text()
            listing = json.loads(text)["models"]
        assert store["root"] not in text and "weights.pth" not in text and "/" not in text
        rows = {m["id"]: m for m in listing}
        assert set(rows) == {champion, second, store["third"]}
        assert rows[champion]["aliases"] == ["champion"] and rows[champion]["default"]
        assert rows[second]["aliases"] == ["previous"] and rows[second]["parent"] == champion
        assert rows[champion]["resident"] and rows[second]["resident"]
        assert rows[store["third"]]["retired"] and not rows[store["third"]]["resident"]
        for row in listing:
            assert row["architecture"] == DEFAULT_MODEL and row["num_classes"] == 1000
            assert row["version"] == "0x" + row["id"] and "created_at" in row and "metrics" in row

        for pin, status, code in (("deadbeef", 404, "unknown_model"), ("zzz", 404, "unknown_model"),
                                  (store["third"][:10], 410, "model_retired")):
            got, body = await _classify(s, url, jpeg, pin)
            assert (got, body["error"]) == (status, code), body
            message = body["message"]
            assert "model=" in message and "/v1/models" in message and store["root"] not in message


async def test_a_bound_of_one_answers_both_pins_in_turn(make_config, store, jpeg) -> None:
    config = make_config(model=DEFAULT_MODEL, models=store["root"], max_resident_models=1, batch_cap=8)
    app = create_app(config)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        for pin in ("previous", "champion", store["second"][:6], None):
            status, body = await _classify(s, url, jpeg, pin)
            expected = store["second"] if pin in ("previous", store["second"][:6]) else store["champion"]
            assert status == 200 and body["model"]["version"] == "0x" + expected, (pin, body)
            async with s.get(url + "/v1/models") as r:
                resident = [m["id"] for m in (await r.json())["models"] if m["resident"]]
            assert resident == [expected]


@pytest.mark.anvil
async def test_unknown_version_costs_nothing_and_the_receipt_names_the_pinned_one(
        make_config, anvil, store, jpeg, tmp_path: Path) -> None:
    config = paid_config(make_config, anvil, models=store["root"], batch_cap=8)
    app = create_app(config)
    payer = Payer(channels.Signer(DEV_KEYS[8]), tmp_path / "payer.sqlite", deposit_amount=50 * PRICE)
    async with serve(app) as url, channels.PaymentClient(payer) as client, aiohttp.ClientSession() as s:
        # Refused while pricing: no 402 challenge for a version that does not exist.
        async with s.post(url + "/v1/classify?model=deadbeef", data=jpeg, headers=JPEG) as r:
            assert r.status == 404 and "PAYMENT-REQUIRED" not in r.headers
        opened = await client.post(url + "/v1/classify", data=jpeg, headers=JPEG)
        assert opened.status == 200
        assert opened.settlement.extra.receipt.receipt.model_version == bytes.fromhex(store["champion"])
        cid = "0x" + opened.payment.channel_id.hex()
        for pin in ("deadbeef", store["third"][:10]):
            refused = await client.post(url + f"/v1/classify?model={pin}", data=jpeg, headers=JPEG)
            assert refused.status in (404, 410), refused.body[:200]
        view = await app[PAYMENTS].channel_view(cid)
        assert int(view["chargedCumulativeAmount"]) == PRICE and view["inFlight"] == 0
        pinned = await client.post(url + "/v1/classify?model=previous", data=jpeg, headers=JPEG)
        assert pinned.status == 200
        assert json.loads(pinned.body)["model"]["version"] == "0x" + store["second"]
        assert pinned.settlement.extra.receipt.receipt.model_version == bytes.fromhex(store["second"])
        assert pinned.settlement.extra.channel_state.charged_cumulative_amount == 2 * PRICE
