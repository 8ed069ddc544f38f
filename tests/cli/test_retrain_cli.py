"""``paychan models retrain``: a candidate that would regress is refused, and says why.

The samples are 14 real dog photos (tests/photos/more/) submitted under a new label "pet" in
the *cat* group: a poisoned label. The candidate learns it, so it gains on the held-out
samples, but the golden set's dogs now answer "pet" (a cat): the gate refuses it, the
champion stays, and the report kept with the refused version says why.
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from gateway.cli import main
from inference import ModelStore
from inference.samples import SampleStore, resolve_label

TESTS = Path(__file__).resolve().parents[1]
MORE = TESTS / "photos" / "more"
REPLAY = TESTS / "inference" / "retrain_replay"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dog_photos() -> list[Path]:
    with (MORE / "labels.csv").open() as fh:
        return [MORE / row["file"] for row in csv.DictReader(fh) if row["group"] == "dog"]


def submit(root: Path, photos: list[Path], label: str, group: str) -> None:
    store = SampleStore(root)
    sample_label = resolve_label(label, group)

    async def add_all() -> None:
        for photo in photos:
            await store.add(photo.read_bytes(), "JPEG", label=sample_label, payer="0x" + "cd" * 20)

    asyncio.run(add_all())


@pytest.mark.slow
def test_a_regressing_candidate_is_refused_and_the_report_says_why(tmp_path, capsys) -> None:
    dogs = dog_photos()
    assert len(dogs) >= 8
    submit(tmp_path / "samples", dogs, "pet", "cat")
    models = tmp_path / "models"
    champion = ModelStore.open(models).resolve("champion").id
    code, out, err = run(capsys, "models", "retrain", "--models", str(models), "--samples",
                         str(tmp_path / "samples"), "--replay", str(REPLAY), "--device", "cpu",
                         "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["decision"] == "refused by the gate" and report["promoted"] is False
    assert report["verdict"]["passed"] is False
    reasons = " | ".join(report["verdict"]["reasons"])
    assert "golden top-1 accuracy fell" in reasons and "group 'dog'" in reasons
    assert report["verdict"]["deltas"]["heldout_accuracy"] > 0  # it did learn its samples
    assert report["verdict"]["deltas"]["groups"]["dog"] < -2.0
    # the champion is unchanged; the refused candidate is kept, listed, with its report
    store = ModelStore.open(models)
    assert store.resolve("champion").id == champion
    refused = store.get(report["candidate"])
    assert refused.aliases == () and refused.manifest.metrics["gate_passed"] == 0.0
    assert refused.manifest.label_groups == {"pet": "cat"}
    assert store.report(refused.id)["verdict"]["reasons"] == report["verdict"]["reasons"]
    assert Path(report["report_path"]) == refused.path / "report.json"
    code, out, _ = run(capsys, "models", "list", "--models", str(models), "--json")
    assert code == 0 and {v["id"] for v in json.loads(out)["versions"]} == {champion, refused.id}


def test_bad_input_exits_2_and_names_the_fix(tmp_path, capsys) -> None:
    models = str(tmp_path / "models")
    code, out, err = run(capsys, "models", "retrain", "--models", models, "--samples",
                         str(tmp_path / "none"))
    assert code == 2 and "manifest.jsonl does not exist" in out + err and "--samples DIR" in out + err
    submit(tmp_path / "few", dog_photos()[:2], "pet", "cat")
    code, out, err = run(capsys, "models", "retrain", "--models", models, "--samples",
                         str(tmp_path / "few"), "--replay", str(REPLAY))
    assert code == 2 and "'pet' has 2; every label needs at least 4" in out + err
    code, out, err = run(capsys, "models", "retrain", "--models", models, "--samples",
                         str(tmp_path / "few"), "--replay", str(tmp_path / "nope"))
    assert code == 2 and "--replay" in out + err
