"""Provenance on anvil: the serving gateway publishes its champion (and each newly swapped-in one)
to the ModelRegistry before it answers; the ModelPublished event's weightsHash is the sha256 of
the weights file; /v1/models shows the transaction; the SDK (with an RPC) refuses a receipt
whose model is not published with ReceiptInvalid, and accepts it once `paychan models publish`
has published it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

import aiohttp
import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

import channels
from channels.provider.registry import ModelRegistry
from channels.sdk import ReceiptInvalid
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from gateway.chain_setup import close_web3
from inference import ModelStore
from inference.model import DEFAULT_MODEL
from tests.gateway.serving import serve
from tests.gateway.test_paid import PRICE, paid_config
from tests.polling import until
from tests.weight_variants import variant

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil, pytest.mark.slow]


def _store(root: Path) -> tuple[ModelStore, str]:
    """A store whose champion is weights no other test (or run) has published."""
    store = ModelStore.open(root / "store")
    delta = 0.01 + int.from_bytes(os.urandom(2), "big") / 65536
    version = store.import_weights(variant(root / "p.pth", delta), DEFAULT_MODEL)
    store.promote(version.id)
    return store, version.id


def _payer(tmp_path: Path) -> Payer:
    return Payer(channels.Signer(DEV_KEYS[6]), tmp_path / f"payer-{os.urandom(4).hex()}.sqlite",
                 deposit_amount=100 * PRICE, salt=os.urandom(32), require_receipt=True)


async def _models(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url + "/v1/models") as r:
        assert r.status == 200
        return await r.json()


async def test_the_champion_and_each_swapped_in_one_are_published_before_they_answer(
        make_config, anvil, jpeg, tmp_path: Path) -> None:
    store, champion = _store(tmp_path)
    registry_address = anvil.deployment.registry
    config = paid_config(make_config, anvil, models=str(store.root), batch_cap=8,
                         registry=registry_address, model_watch_s=0.2)
    app = create_app(config)
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        registry = ModelRegistry(w3, registry_address)
        assert not await registry.is_published(bytes.fromhex(champion))
        async with serve(app) as url, aiohttp.ClientSession() as s, \
                channels.PaymentClient(_payer(tmp_path), base_url=url, rpc_url=anvil.url) as client:

            async def ready() -> bool:
                async with s.get(url + "/readyz") as r:
                    return r.status == 200

            await until(ready, 240, 0.1, what="the champion's publication")
            listing = await _models(s, url)
            assert listing["registry"]["address"] == registry_address
            assert listing["registry"]["chain_id"] == anvil.deployment.chain_id
            row = next(m for m in listing["models"] if m["id"] == champion)
            publication = row["registry"]
            assert publication == store.publication(champion)
            assert publication["weights_hash"] == "0x" + champion
            assert publication["registry"] == registry_address and publication["chain_id"] == 31337

            # The event on chain names the sha256 of the weights file, byte for byte.
            events = await registry.published_events(publication["tx_hash"])
            weights = store.get(champion).weights_path.read_bytes()
            assert events == [(hashlib.sha256(weights).digest(), DEFAULT_MODEL, champion,
                               "paychan:manifest-sha256:" + hashlib.sha256(
                                   (store.root / champion / "manifest.json").read_bytes()).hexdigest())]
            receipt = await w3.eth.get_transaction_receipt(publication["tx_hash"])
            assert receipt["blockNumber"] == publication["block_number"]

            # The SDK reads owner() and isPublished() itself: a published model verifies.
            result = await client.classify(jpeg)
            assert result.model_version == "0x" + champion

            # A new champion is published before it answers.
            second = store.import_weights(variant(tmp_path / "q.pth", -0.5), DEFAULT_MODEL,
                                          parent=champion).id
            store.promote(second)

            async def swapped() -> bool:
                return (await _models(s, url))["swap"]["serving"] == second

            await until(swapped, 240, 0.1, what="the swap to the new champion")
            assert await registry.is_published(bytes.fromhex(second))
            record = store.publication(second)
            assert record is not None and record["weights_hash"] == "0x" + second
            assert (await client.classify(jpeg)).model_version == "0x" + second
            # Idempotent: a restart (a second publisher) sends nothing for a published hash.
            count = await registry.contract.functions.count().call()
    finally:
        await close_web3(w3)
    app2 = create_app(config)
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        async with serve(app2) as url, aiohttp.ClientSession() as s:
            async def ready2() -> bool:
                async with s.get(url + "/readyz") as r:
                    return r.status == 200

            await until(ready2, 240, 0.1, what="the restarted gateway")
            registry = ModelRegistry(w3, registry_address)
            assert await registry.contract.functions.count().call() == count
            assert store.publication(second) == record
    finally:
        await close_web3(w3)


async def test_an_unpublished_model_is_a_receipt_invalid(make_config, anvil, jpeg, tmp_path: Path) -> None:
    store, champion = _store(tmp_path)
    config = paid_config(make_config, anvil, models=str(store.root), batch_cap=8,
                         registry=anvil.deployment.registry, publish_models=False)
    app = create_app(config)
    async with serve(app) as url, aiohttp.ClientSession() as s:
        listing = await _models(s, url)
        assert listing["registry"]["publishing"] is False
        assert next(m for m in listing["models"] if m["id"] == champion)["registry"] is None

        payer = _payer(tmp_path)
        async with channels.PaymentClient(payer, base_url=url, rpc_url=anvil.url) as client:
            with pytest.raises(ReceiptInvalid, match="not published") as refused:
                await client.classify(jpeg)
            assert "not published" in payer.channel(refused.value.channel_id).halted
            # Without a node the client cannot check: it answers (and warns once).
        async with channels.PaymentClient(_payer(tmp_path), base_url=url) as blind:
            assert (await blind.classify(jpeg)).model_version == "0x" + champion

        # `paychan models publish` publishes it with the provider key; now it verifies.
        key_file = tmp_path / "provider.key"
        key_file.write_text(DEV_KEYS[0])
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "paychan"), "models", "publish", champion[:12],
            "--models", str(store.root), "--rpc", anvil.url, "--key-file", str(key_file),
            "--registry", anvil.deployment.registry, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        record = store.publication(champion)
        assert record is not None and record["weights_hash"] == "0x" + champion
        assert record["tx_hash"] in out.decode()
        async with channels.PaymentClient(_payer(tmp_path), base_url=url, rpc_url=anvil.url) as client:
            assert (await client.classify(jpeg)).model_version == "0x" + champion
        row = next(m for m in (await _models(s, url))["models"] if m["id"] == champion)
        assert row["registry"] == record


async def test_a_gateway_without_a_store_publishes_the_bundled_weights(make_config, anvil,
                                                                       model_classifier) -> None:
    from inference.weights import bundled_weights_path

    config = paid_config(make_config, anvil, registry=anvil.deployment.registry)
    app = create_app(config, classifier=model_classifier)
    bundled = hashlib.sha256(bundled_weights_path(DEFAULT_MODEL).read_bytes()).hexdigest()
    async with serve(app) as url, aiohttp.ClientSession() as s:
        async def ready() -> bool:
            async with s.get(url + "/readyz") as r:
                return r.status == 200

        await until(ready, 240, 0.1, what="the bundled weights' publication")
        [row] = (await _models(s, url))["models"]
        assert row["registry"]["weights_hash"] == "0x" + bundled
        assert row["registry"]["tx_hash"] is None or row["registry"]["tx_hash"].startswith("0x")
    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        registry = ModelRegistry(w3, anvil.deployment.registry)
        entry = await registry.entry(bytes.fromhex(bundled))
        assert entry is not None and entry.model == DEFAULT_MODEL and entry.version == bundled
    finally:
        await close_web3(w3)
