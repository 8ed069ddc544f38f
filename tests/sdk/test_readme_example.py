"""The README's SDK example, run as written against a real paid gateway on anvil."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import DEV_KEYS

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- sdk-example:start -->\s*```python\n(.*?)```\s*<!-- sdk-example:end -->", text, re.S)
    assert found, "README.md lost its <!-- sdk-example:start/end --> python block"
    return found.group(1)


@pytest.mark.anvil
def test_readme_sdk_example_runs_as_written(paid_gateway, tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(readme_example())
    import skimage.data
    from PIL import Image

    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.jpg", quality=90)
    with paid_gateway.isolated() as (_node, url):  # a chain of its own: the example's channel is new
        env = {**os.environ, "PAYCHAN_KEY": DEV_KEYS[1], "PAYCHAN_GATEWAY": url}
        out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    animal_line, label_line, refund_line = out.stdout.strip().splitlines()
    assert animal_line.split()[0] == "cat" and animal_line.split()[2] == "animal"  # leads
    label, share, _cost_word, cost = label_line.rsplit(" ", 3)
    assert label in {"tabby", "tiger cat", "Egyptian cat"} and share.endswith("%")
    assert int(cost) == 1000  # the test gateways' price
    refunded = int(refund_line.split()[-1])
    assert refunded > 0  # the deposit minus the one charge came back
    assert (tmp_path / "payer.sqlite").exists()  # the payer's durable state, where the example said
