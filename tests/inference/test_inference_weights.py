"""Loading real weights offline: the efficientnet_pytorch rename, content hashes, any timm model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch

from inference import LoadedModel, content_hash, load_model
from inference.weights import (
    bundled_weights_path,
    file_digest,
    is_efficientnet_pytorch,
    load_state_dict,
    rename_efficientnet_pytorch,
)


def test_bundled_lite0_weights_rename_into_timm_with_every_key_matched() -> None:
    state = load_state_dict(bundled_weights_path("tf_efficientnet_lite0"))
    assert is_efficientnet_pytorch(state)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = rename_efficientnet_pytorch(state, [len(s) for s in model.blocks])
    assert set(renamed) == set(model.state_dict())
    for key, value in renamed.items():
        assert value.shape == model.state_dict()[key].shape, key


def test_a_state_dict_missing_a_layer_is_refused_by_the_strict_load(tmp_path: Path) -> None:
    state = load_state_dict(bundled_weights_path("tf_efficientnet_lite0"))
    del state["_fc.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="strict"):
        load_model("tf_efficientnet_lite0", path, device="cpu")


def test_version_hash_is_the_sha256_of_the_weights_file(lite0: LoadedModel, tmp_path: Path) -> None:
    bundled = bundled_weights_path("tf_efficientnet_lite0")
    assert lite0.version.content_hash == hashlib.sha256(bundled.read_bytes()).digest()
    assert file_digest(bundled) == lite0.version.content_hash
    # The same tensors saved again, in timm naming, hash the same under content_hash.
    path = tmp_path / "lite0-timm.pth"
    torch.save(lite0.module.state_dict(), path)
    assert content_hash(load_state_dict(path)) == content_hash(lite0.module.state_dict())
    assert len(lite0.version.content_hash) == 32
    assert lite0.version.hash_hex == "0x" + lite0.version.content_hash.hex()
    assert lite0.version.id == f"tf_efficientnet_lite0-{lite0.version.content_hash.hex()[:12]}"
    # One changed number is a different version.
    state = load_state_dict(path)
    state["classifier.bias"] = state["classifier.bias"].clone()
    state["classifier.bias"][0] += 1e-3
    assert content_hash(state) != content_hash(lite0.module.state_dict())


def test_any_timm_model_loads_from_a_local_file_and_never_asks_a_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm tried to fetch pretrained weights")

    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", no_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # a checkpoint wrapping it
    loaded = load_model("resnet10t", path, device="cpu", threads=1)
    assert loaded.version.architecture == "resnet10t"
    assert loaded.version.content_hash == hashlib.sha256(path.read_bytes()).digest()
    probs, indices, groups = loaded.top_k(torch.zeros(2, *loaded.input_shape), k=3)
    assert probs.shape == indices.shape == (2, 3)
    assert groups.shape == (2, 9) and torch.allclose(groups.sum(dim=1), torch.ones(2))


def test_a_model_without_bundled_weights_says_how_to_give_some() -> None:
    with pytest.raises(LookupError, match="weights=PATH"):
        load_model("resnet50", device="cpu")
