"""`paychan samples add` / `list` in-process against a real paid gateway on anvil with the
real model (fixture `paid_gateway`, tests/conftest.py): a folder is sent signed by the payer
key, duplicates and refusals are summed up with their reasons, the exit code says whether
anything was refused, and `list` counts what the gateway's sample store holds."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from contracts import DEV_KEYS
from gateway.cli import main
from tests.sdk.gateway_thread import PRICE

pytestmark = pytest.mark.anvil


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three different cat JPEGs, a 1x10000 strip (refused: aspect ratio) and a text file."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("sample-photos")
    cat = Image.fromarray(skimage.data.chelsea())
    cat.save(folder / "cat-a.jpg", "JPEG", quality=75)
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "cat-b.jpg", "JPEG", quality=75)
    cat.resize((200, 150)).save(folder / "cat-c.jpg", "JPEG", quality=75)
    Image.new("RGB", (1, 10_000), (120, 80, 40)).save(folder / "strip.jpg", "JPEG")
    (folder / "notes.txt").write_text("skipped: not an image suffix")
    return folder


def test_help_has_an_example(capsys) -> None:
    for command in (["samples"], ["samples", "add"], ["samples", "list"]):
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "paychan samples" in out, command


def test_samples_add_a_folder_then_list(paid_gateway, photos: Path, tmp_path: Path, capsys,
                                        monkeypatch) -> None:
    import channels

    samples = tmp_path / "samples"
    # A receiver of its own: a channel no other test on the shared anvil has used.
    receiver = channels.Signer(os.urandom(32)).address
    url = paid_gateway.serve(paid_gateway.anvil, samples_dir=samples, receiver=receiver)
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[3])
    state = str(tmp_path / "payer.sqlite")

    # No channel with this gateway yet: one clear error, nothing sent.
    code, _, err = run(capsys, "samples", "add", str(photos / "cat-a.jpg"), "--label", "tabby",
                       "--gateway", url, "--state", state)
    assert code == 2 and "classify an image first" in err
    assert not samples.exists() or not any(samples.rglob("*.jpg"))

    code, _, err = run(capsys, "classify", str(photos / "cat-a.jpg"), "--gateway", url,
                       "--state", state, "--deposit", str(10 * PRICE))
    assert code == 0, err

    code, out, err = run(capsys, "samples", "add", str(photos), "--label", "Tabby",
                         "--gateway", url, "--state", state, "--json")
    assert code == 2, err  # the strip was refused
    data = json.loads(out)
    assert (data["stored"], data["duplicates"], data["refused"]) == (3, 0, 1)
    [strip] = [r for r in data["samples"] if "error" in r]
    assert strip["image"].endswith("strip.jpg") and strip["status"] == 422
    assert strip["error"] == "aspect_ratio_too_large" and "10:1" in strip["message"]
    payer = channels.Signer(DEV_KEYS[3]).address.lower()
    assert all(r["label"] == "tabby" and r["group"] == "cat" and r["payer"] == payer
               for r in data["samples"] if "error" not in r)

    # Human output: one line per image and the summary; the same bytes again are duplicates.
    code, out, err = run(capsys, "samples", "add", str(photos / "cat-a.jpg"),
                         str(photos / "cat-b.jpg"), "--label", "tabby", "--gateway", url,
                         "--state", state)
    assert code == 0, err
    assert "cat-a.jpg: already stored as 'tabby' (cat)" in out
    assert out.strip().endswith("0 stored, 2 already there, 0 refused")

    # A label the model does not know: it needs its group the first time.
    okapi = tmp_path / "okapi.png"
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 60, 30)).save(buf, "PNG")
    okapi.write_bytes(buf.getvalue())
    code, out, err = run(capsys, "samples", "add", str(okapi), "--label", "okapi calf",
                         "--gateway", url, "--state", state)
    assert code == 2 and "refused (400 bad_label)" in out and "give its group" in out
    code, out, err = run(capsys, "samples", "add", str(okapi), "--label", "okapi calf",
                         "--group", "other_mammal", "--gateway", url, "--state", state)
    assert code == 0 and "stored as 'okapi calf' (other_mammal)" in out, (out, err)

    # The blocking client, on the same payer file: the same call.
    from channels.sdk import SyncPaymentClient

    with SyncPaymentClient.from_key(DEV_KEYS[3], state, base_url=url) as client:
        assert client.add_sample(photos / "cat-b.jpg", label="tabby").duplicate

    code, out, err = run(capsys, "samples", "list", "--samples", str(samples), "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["total"] == 4 and len(listing["digest"]) == 64
    assert [(r["label"], r["samples"], r["group"]) for r in listing["labels"]] == [
        ("tabby", 3, "cat"), ("okapi calf", 1, "other_mammal")]
    code, out, _ = run(capsys, "samples", "list", "--samples", str(samples))
    assert code == 0 and "okapi calf (other_mammal, new label)" in out
    code, _, err = run(capsys, "samples", "list", "--samples", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in err
