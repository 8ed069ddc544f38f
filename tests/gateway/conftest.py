"""Gateway test fixtures: one anvil chain, one real model and one null model per session.

Async tests that use the session-wide classifier or chain run in the session event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="session")`` in their module): the model's
batcher and web3's HTTP session belong to the loop that started them.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.config import GatewayConfig


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    """skimage's chelsea (a tabby / tiger cat) as a ~20 KB JPEG."""
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=75)
    return buf.getvalue()


@pytest.fixture(scope="session")
def png() -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((128, 128)).save(buf, "PNG")
    return buf.getvalue()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def null_classifier() -> AsyncIterator[object]:
    from inference import Classifier

    clf = Classifier.null()
    await clf.start()
    yield clf
    await clf.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def model_classifier() -> AsyncIterator[object]:
    """The real tf_efficientnet_lite0 on CPU, loaded once for the whole session."""
    from inference import Classifier

    clf = Classifier.load(model="tf_efficientnet_lite0", device="cpu", max_batch=16, queue_size=64)
    await clf.start()
    yield clf
    await clf.close()


@pytest.fixture(scope="session")
def anvil() -> Iterator[object]:
    """anvil with our contracts at the canonical addresses and funded dev accounts."""
    from contracts import Anvil

    with Anvil() as node:
        yield node


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis URL with a key prefix of its own; the test's keys are deleted afterwards."""
    import redis

    prefix = f"paychan-test-{uuid.uuid4().hex[:8]}:"
    url = "redis://127.0.0.1:6379/0"
    yield url + f"?prefix={prefix}&durability=relaxed"  # the shared server keeps nothing on disk
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def gateway_config(tmp_path: Path, **overrides: object) -> GatewayConfig:
    """A GatewayConfig for tests: free mode, null model, files under tmp_path."""
    values: dict[str, object] = {
        "payment": False,
        "model": "null",
        "samples_dir": tmp_path / "samples",
        "store": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "settler": False,
        "drain_timeout_s": 5.0,
    }
    values.update(overrides)
    return GatewayConfig.from_mapping(values)


@pytest.fixture
def make_config(tmp_path: Path):
    return lambda **overrides: gateway_config(tmp_path, **overrides)


os.environ.setdefault("PAYCHAN_TEST", "1")
