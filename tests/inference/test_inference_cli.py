"""``paychan classify-local``: predictions and the model version, as text and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

ASSETS = Path(__file__).parent / "assets"


def test_classify_local_prints_predictions_and_the_model_version(
    tmp_path: Path, cat_png: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = tmp_path / "chelsea.png"
    cat.write_bytes(cat_png)
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    dog = ASSETS / "dalmatian.jpg"

    assert main(["classify-local", str(cat), str(dog), str(junk), "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["id"].startswith("tf_efficientnet_lite0-")
    assert out["model"]["hash"].startswith("0x") and len(out["model"]["hash"]) == 66
    cat_result, dog_result, junk_result = out["images"]
    assert cat_result["animal"]["group"] == "cat" and cat_result["animal"]["status"] == "animal"
    # The animal answer sums the cat classes: more than the best one alone.
    assert cat_result["animal"]["probability"] > cat_result["predictions"][0]["probability"]
    assert cat_result["predictions"][0]["group"] == "cat"
    assert len(cat_result["predictions"]) == 2
    assert dog_result["predictions"][0] == {
        "label": "dalmatian", "index": 251, "group": "dog",
        "probability": dog_result["predictions"][0]["probability"]}
    assert junk_result["status"] == 415 and "JPEG, PNG or WebP" in junk_result["error"]

    assert main(["classify-local", str(cat), "--top-k", "1"]) == 0
    text = capsys.readouterr().out
    assert f"chelsea.png: cat {cat_result['animal']['probability']:.0%} (tiger cat" in text
    assert out["model"]["id"] in text


def test_classify_local_refuses_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify-local", str(tmp_path / "missing.jpg")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["classify-local", str(ASSETS / "dalmatian.jpg"), "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
