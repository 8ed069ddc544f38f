"""ResidentModels' hot-swap steps on a real store: while a swap is pending neither the default nor
the incoming version is evicted; set_default moves the default at once and the old version is
closed only after its last lease; cancel_next gives the swap up. Each version is served by a
NullClassifier (a real ImageClassifier without a model): these tests are about the set."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference import ModelStore, ResidentModels
from inference.model import DEFAULT_MODEL
from inference.null_classifier import NullClassifier
from tests.weight_variants import variant

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("resident")
    models = ModelStore.open(root / "store")
    champion = models.resolve("champion").id
    for delta in (0.5, -0.5):
        models.import_weights(variant(root / f"{delta}.pth", delta), DEFAULT_MODEL, parent=champion)
    return models


def _versions(store: ModelStore) -> list:
    champion = store.resolve("champion")
    return [champion] + [v for v in store.list() if v.id != champion.id]


async def test_a_swap_with_a_bound_of_one_keeps_the_default_until_set_default(store) -> None:
    a, b, _ = _versions(store)
    opened: dict[str, NullClassifier] = {}

    def opener(version):
        opened[version.id] = NullClassifier()
        return opened[version.id]

    models = ResidentModels(store, opener, capacity=1)
    await models.open_default()
    old = await models.acquire(None)  # a request answering on A while the swap happens
    lease = await models.acquire_next(b)
    assert list(models.resident()) == [a.id, b.id] and models.default_id == a.id
    assert models.checker(None) is opened[a.id]
    models.set_default(b)
    lease.release()
    assert models.default_id == b.id and list(models.resident()) == [b.id]
    assert models.checker(None) is opened[b.id]
    assert old.clf is opened[a.id] and opened[a.id].ready  # evicted, not closed under a lease
    old.release()
    await asyncio.sleep(0)
    assert not opened[a.id].ready
    async with models.use(None) as clf:
        assert clf is opened[b.id]
    await models.close()
    assert not opened[b.id].ready


async def test_cancel_next_keeps_the_default_and_restores_the_bound(store) -> None:
    a, b, c = _versions(store)
    opened: dict[str, NullClassifier] = {}

    def opener(version):
        opened[version.id] = NullClassifier()
        return opened[version.id]

    models = ResidentModels(store, opener, capacity=2)
    await models.open_default()
    async with models.use(b):  # a pinned version: not protected by a pending swap
        pass
    lease = await models.acquire_next(c)
    assert set(models.resident()) == {a.id, c.id} and not opened[b.id].ready
    models.capacity = 1  # the bound of one: the pending swap holds both
    async with models.use(None) as clf:
        assert clf is opened[a.id]
    assert set(models.resident()) == {a.id, c.id}
    models.cancel_next()
    assert list(models.resident()) == [a.id] and opened[c.id].ready  # its lease is still out
    lease.release()
    await asyncio.sleep(0)
    assert models.default_id == a.id and not opened[c.id].ready
    with pytest.raises(ValueError, match="not resident"):
        models.set_default(c)
    await models.close()
