"""The model store (inference.versions): real weights files, real directories, two processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from inference import LoadedModel, ModelStore, StoreError, load_model
from inference.labels import imagenet_labels
from inference.weights import bundled_weights_path, load_state_dict

BUNDLED = bundled_weights_path("tf_efficientnet_lite0")
BUNDLED_ID = hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def variant(lite0: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lite0 with one bias nudged, saved in timm naming: another version of the same model."""
    state = {k: v.contiguous() for k, v in lite0.module.state_dict().items()}
    state["classifier.bias"] = state["classifier.bias"].clone()
    state["classifier.bias"][0] += 1e-3
    path = tmp_path_factory.mktemp("variant") / "variant.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore.open(tmp_path / "models")


def test_an_empty_store_bootstraps_the_bundled_weights_as_champion(store: ModelStore, lite0: LoadedModel) -> None:
    [version] = store.list()
    assert version.id == BUNDLED_ID == lite0.version.content_hash.hex()  # one version id
    assert version.aliases == ("champion",)
    assert version.weights_path.read_bytes() == BUNDLED.read_bytes()
    manifest = json.loads((store.root / BUNDLED_ID / "manifest.json").read_text())
    assert manifest["architecture"] == "tf_efficientnet_lite0" and manifest["parent"] is None
    assert manifest["labels"] == list(imagenet_labels()) and manifest["retired"] is False
    assert manifest["created_at"].endswith("+00:00") and manifest["metrics"] == {}
    assert json.loads((store.root / "aliases.json").read_text()) == {"champion": BUNDLED_ID, "previous": None}
    # Opening it again does not import twice.
    assert [v.id for v in ModelStore.open(store.root).list()] == [BUNDLED_ID]


def test_import_is_content_addressed_and_idempotent(store: ModelStore, variant: Path, tmp_path: Path) -> None:
    v = store.import_weights(variant, "tf_efficientnet_lite0", parent="champion",
                             training_data="ab" * 32, metrics={"golden_top1": 0.75})
    assert v.id == hashlib.sha256(variant.read_bytes()).hexdigest()
    assert v.manifest.parent == BUNDLED_ID and v.manifest.metrics == {"golden_top1": 0.75}
    assert v.aliases == ()  # imported, not promoted
    copy = tmp_path / "same-bytes-elsewhere.pth"
    copy.write_bytes(variant.read_bytes())
    again = store.import_weights(copy, "tf_efficientnet_lite0")
    assert again == v and len(store.list()) == 2
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]


def test_import_refuses_weights_that_do_not_fit(store: ModelStore, variant: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="architecture"):
        store.import_weights(variant, "not_a_timm_model")
    with pytest.raises(StoreError, match="strict load"):
        store.import_weights(variant, "resnet10t")
    with pytest.raises(StoreError, match="strict load"):  # 1000 outputs, 3 labels
        store.import_weights(variant, "tf_efficientnet_lite0", labels=["a", "b", "c"])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(StoreError, match="weights"):
        store.import_weights(junk, "tf_efficientnet_lite0")
    with pytest.raises(StoreError, match="weights: .* is not a file"):
        store.import_weights(tmp_path / "absent.pth", "tf_efficientnet_lite0")
    assert len(store.list()) == 1


def test_a_version_may_add_labels_beyond_imagenet(store: ModelStore, tmp_path: Path) -> None:
    labels = [*imagenet_labels(), "okapi"]
    module = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=len(labels))
    path = tmp_path / "okapi.pth"
    torch.save(module.state_dict(), path)
    v = store.import_weights(path, "tf_efficientnet_lite0", labels=labels, parent=BUNDLED_ID)
    store.promote(v.id)
    model = store.load("champion", device="cpu", threads=1)
    assert model.labels[-1] == "okapi" and len(model.labels) == 1001
    assert model.version.content_hash.hex() == v.id


def test_resolve_by_alias_id_prefix_and_served_name(store: ModelStore, variant: Path, lite0: LoadedModel) -> None:
    v = store.import_weights(variant, "tf_efficientnet_lite0")
    assert store.resolve("champion").id == BUNDLED_ID
    assert store.resolve(v.id).id == v.id == store.resolve(v.id[:8]).id == store.resolve("0x" + v.id).id
    assert store.resolve(lite0.version.id).id == BUNDLED_ID  # "tf_efficientnet_lite0-579344248a93"
    with pytest.raises(StoreError, match="previous: no version holds this alias"):
        store.resolve("previous")
    with pytest.raises(StoreError, match="at least 4 hex digits"):
        store.resolve(v.id[:2])
    with pytest.raises(StoreError, match="no version .* matches"):
        store.resolve("ffffffff" if not v.id.startswith("ff") else "00000000")
    with pytest.raises(StoreError, match="not an alias"):
        store.resolve("latest")


def test_promote_rollback_retire(store: ModelStore, variant: Path) -> None:
    v = store.import_weights(variant, "tf_efficientnet_lite0", parent="champion")
    with pytest.raises(StoreError, match="no previous champion"):
        store.rollback()
    assert store.promote(v.id[:10]).aliases == ("champion",)
    assert store.aliases() == {"champion": v.id, "previous": BUNDLED_ID}
    store.promote(v.id)  # promoting the champion again changes nothing
    assert store.aliases() == {"champion": v.id, "previous": BUNDLED_ID}
    assert store.rollback().id == BUNDLED_ID
    assert store.aliases() == {"champion": BUNDLED_ID, "previous": v.id}
    with pytest.raises(StoreError, match="champion and cannot be retired"):
        store.retire("champion")
    retired = store.retire(v.id)
    assert retired.retired and retired.weights_path.is_file()  # kept on disk
    assert store.aliases() == {"champion": BUNDLED_ID, "previous": None}
    assert [x.id for x in store.list()] == [BUNDLED_ID, v.id]  # still listed
    with pytest.raises(StoreError, match="retired and not servable"):
        store.load(v.id)
    with pytest.raises(StoreError, match="retired, cannot be promoted"):
        store.promote(v.id)
    history = [json.loads(line) for line in (store.root / "history.jsonl").read_text().splitlines()]
    assert [h["action"] for h in history] == ["bootstrap", "promote", "rollback", "retire"]


def test_two_processes_promoting_at_once_leave_a_consistent_alias_file(store: ModelStore, variant: Path) -> None:
    v = store.import_weights(variant, "tf_efficientnet_lite0")
    script = (
        "import sys\n"
        "from inference.versions import ModelStore\n"
        "store = ModelStore(sys.argv[1])\n"
        "for i in range(40):\n"
        "    store.promote(sys.argv[2] if i % 2 else sys.argv[3])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store.root), a, b], cwd=ROOT)
             for a, b in ((v.id, BUNDLED_ID), (BUNDLED_ID, v.id))]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    aliases = json.loads((store.root / "aliases.json").read_text())
    assert {aliases["champion"], aliases["previous"]} == {v.id, BUNDLED_ID}
    # Every change started from the state the one before it left: no update was lost.
    history = [json.loads(line) for line in (store.root / "history.jsonl").read_text().splitlines()]
    assert len(history) > 2
    for before, after in zip(history, history[1:], strict=False):
        assert after["before"] == before["after"]
        assert after["after"]["previous"] == after["before"]["champion"]
    assert history[-1]["after"] == aliases
    assert not [p for p in store.root.iterdir() if p.name.startswith(".aliases.json.")]


def test_the_champion_loaded_from_the_store_answers_as_today(store: ModelStore, lite0: LoadedModel, chelsea) -> None:
    import dataclasses

    from timm.data import create_transform

    model = store.load("champion", device="cpu", threads=1)
    # The same version as the bundled model the gateway serves today; only the path differs.
    assert model.version == dataclasses.replace(lite0.version, source=model.version.source)
    assert model.data_config == lite0.data_config
    batch = create_transform(**model.data_config)(chelsea.convert("RGB")).unsqueeze(0)
    (p_store,), (i_store,), _ = model.top_k(batch, k=1)
    (p_today,), (i_today,), _ = lite0.top_k(batch, k=1)
    assert int(i_store[0]) == int(i_today[0]) == 282 and model.labels[282] == "tiger cat"
    assert float(p_store[0]) == pytest.approx(float(p_today[0]), abs=1e-6)


def test_bundled_weights_load_from_the_store_the_same_as_from_the_package(store: ModelStore) -> None:
    direct = load_state_dict(BUNDLED)
    stored = load_state_dict(store.resolve("champion").weights_path)
    assert direct.keys() == stored.keys()
    assert load_model("tf_efficientnet_lite0", store.resolve("champion").weights_path,
                      device="cpu", threads=1).version.content_hash.hex() == BUNDLED_ID
