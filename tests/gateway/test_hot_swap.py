"""Hot swap under paid load: a real gateway serving a model store follows `paychan models promote`
and `paychan models rollback` run from another process, with zero errors for eight concurrent
paying clients; a version pinned as `previous` still answers; a version whose manifest records
a golden accuracy its weights do not reach is refused and the old champion keeps serving.

Two real versions: the bundled tf_efficientnet_lite0 (A) and the same state_dict with one
classifier bias moved (B: real weights of the real architecture, another sha256).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from inference import ModelStore
from inference.model import DEFAULT_MODEL
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, paid_config
from tests.polling import until
from tests.weight_variants import variant

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil, pytest.mark.slow]

CLIENTS = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("swap")
    models = ModelStore.open(root / "store")
    a = models.resolve("champion").id
    b = models.import_weights(variant(root / "b.pth", 0.75), DEFAULT_MODEL, parent=a).id
    # C claims a golden accuracy (a gate's figure) that these weights do not reach.
    c = models.import_weights(variant(root / "c.pth", -0.75), DEFAULT_MODEL, parent=a,
                              metrics={"golden_top1": 1.0}).id
    assert models.aliases() == {"champion": a, "previous": None}
    return {"root": str(models.root), "a": a, "b": b, "c": c}


def _paychan(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "paychan"), *args]


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *_paychan(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    out, err = await proc.communicate()
    assert proc.returncode == 0, (args, out.decode(), err.decode())
    return out.decode()


async def _status(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url + "/v1/models") as r:
        assert r.status == 200
        return await r.json()


async def test_paid_load_sees_no_error_across_promote_and_rollback(make_config, anvil, store, jpeg,
                                                                   tmp_path: Path) -> None:
    a, b, c = store["a"], store["b"], store["c"]
    config = paid_config(make_config, anvil, models=store["root"], batch_cap=8, model_watch_s=0.2,
                         max_resident_models=2)
    app = create_app(config)
    payer = Payer(channels.Signer(DEV_KEYS[7]), tmp_path / "payer.sqlite",
                  deposit_amount=5000 * PRICE, salt=os.urandom(32), require_receipt=True)
    async with serve(app) as url, channels.PaymentClient(payer, base_url=url) as client, \
            aiohttp.ClientSession() as s:
        first = await client.classify(jpeg)
        assert first.model_version == "0x" + a

        answers: list[tuple[float, str]] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def pay_in_a_loop() -> None:
            while not stop.is_set():
                try:
                    result = await client.classify(jpeg, top_k=1)
                except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                    errors.append(exc)
                    continue
                answers.append((time.monotonic(), result.model_version))
                assert result.receipt.receipt.model_version.hex() == result.model_version[2:]

        workers = [asyncio.create_task(pay_in_a_loop()) for _ in range(CLIENTS)]
        try:
            await until(lambda: _ready(answers, 2 * CLIENTS),
                        240, 0.1, what="answers before the promote")
            await _cli("models", "promote", b[:12], "--models", store["root"])
            await until(lambda: _ready([x for x in answers if x[1] == "0x" + b], 2 * CLIENTS),
                        240, 0.1, what="answers from the promoted version")
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert errors == [], errors[:3]
        versions = [v for _, v in sorted(answers)]
        assert set(versions) == {"0x" + a, "0x" + b}
        switch = versions.index("0x" + b)
        # Once B answers, A answers only requests that held A's lease before the swap.
        assert versions[:switch] == ["0x" + a] * switch and switch >= 2 * CLIENTS
        assert versions[-CLIENTS:] == ["0x" + b] * CLIENTS

        listing = await _status(s, url)
        assert listing["swap"]["serving"] == b and listing["swap"]["state"] == "serving"
        assert listing["swap"]["last_swap"]["from"] == a and listing["swap"]["swaps"] == 1
        rows = {m["id"]: m for m in listing["models"]}
        assert rows[b]["default"] and rows[b]["aliases"] == ["champion"]
        assert rows[a]["resident"] and rows[a]["aliases"] == ["previous"]

        pinned = await client.classify(jpeg, model="previous")
        assert pinned.model_version == "0x" + a

        # One command: the gateway follows the rollback by itself.
        await _cli("models", "rollback", "--models", store["root"])

        async def serving_a() -> bool:
            return (await _status(s, url))["swap"]["serving"] == a

        await until(serving_a, 240, 0.1, what="the gateway to follow the rollback")
        assert (await client.classify(jpeg)).model_version == "0x" + a
        assert (await client.classify(jpeg, model="previous")).model_version == "0x" + b

        # A champion whose weights miss its recorded golden accuracy is refused; A keeps serving.
        await _cli("models", "promote", c[:12], "--models", store["root"])

        async def refused() -> bool:
            return (await _status(s, url))["swap"]["state"] == "refused"

        await until(refused, 240, 0.1, what="the golden check to refuse C")
        async with s.get(url + "/readyz") as r:
            ready = await r.json()
        assert r.status == 200 and ready["models"]["serving"] == a
        assert ready["models"]["champion"] == c
        error = ready["models"]["last_error"]
        assert error["version"] == c and error["stage"] == "golden check"
        assert "manifest records 1.0%" in error["reason"]
        assert (await client.classify(jpeg)).model_version == "0x" + a
        async with s.get(url + "/metrics") as r:
            text = await r.text()
        assert 'paychan_model_swaps_total{outcome="swapped"} 2' in text
        assert 'paychan_model_swaps_total{outcome="refused"} 1' in text


async def _ready(answers: list, count: int) -> bool:
    return len(answers) >= count
