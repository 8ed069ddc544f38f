"""SDK test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cat_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """skimage's chelsea (a tabby / tiger cat) as a JPEG file."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, "JPEG", quality=75)
    return path
