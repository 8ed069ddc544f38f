"""Fixtures for the command-line tests: one anvil with our contracts for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts import Anvil


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    """anvil with our contracts at the canonical addresses and funded dev accounts."""
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """skimage's chelsea (a tabby / tiger cat) as a ~20 KB JPEG."""
    import io

    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buf, "JPEG", quality=75)
    return buf.getvalue()
