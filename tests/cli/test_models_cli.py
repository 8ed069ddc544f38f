"""``paychan models list/promote/rollback/retire --models DIR``: the local model store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from gateway.cli import main
from inference import ModelStore
from inference.weights import bundled_weights_path, load_state_dict

BUNDLED_ID = hashlib.sha256(bundled_weights_path("tf_efficientnet_lite0").read_bytes()).hexdigest()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def variant(tmp_path: Path) -> Path:
    state = load_state_dict(bundled_weights_path("tf_efficientnet_lite0"))
    state["_fc.bias"] = state["_fc.bias"].clone() + 1e-3
    path = tmp_path / "variant.pth"
    torch.save(state, path)
    return path


def test_list_bootstraps_an_empty_store_and_prints_json(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    code, out, _ = run(capsys, "models", "list", "--models", str(models), "--json")
    assert code == 0
    [version] = json.loads(out)["versions"]
    assert version["id"] == BUNDLED_ID and version["aliases"] == ["champion"]
    assert version["architecture"] == "tf_efficientnet_lite0" and version["num_classes"] == 1000
    assert version["retired"] is False and "labels" not in version
    code, out, _ = run(capsys, "models", "--models", str(models))  # list is the default
    assert code == 0 and BUNDLED_ID[:16] in out and "champion" in out


def test_promote_rollback_retire_through_the_cli(tmp_path: Path, variant: Path, capsys, monkeypatch) -> None:
    models = tmp_path / "models"
    monkeypatch.setenv("PAYCHAN_MODELS", str(models))  # the store without --models
    new = ModelStore.open(models).import_weights(variant, "tf_efficientnet_lite0", parent="champion")
    code, out, _ = run(capsys, "models", "promote", new.id[:12], "--json")
    assert code == 0 and json.loads(out)["aliases"] == {"champion": new.id, "previous": BUNDLED_ID}
    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {v["id"]: v for v in json.loads(out)["versions"]}
    assert rows[new.id]["aliases"] == ["champion"] and rows[new.id]["parent"] == BUNDLED_ID
    assert rows[BUNDLED_ID]["aliases"] == ["previous"]
    code, out, _ = run(capsys, "models", "rollback", "--json")
    assert code == 0 and json.loads(out)["version"]["id"] == BUNDLED_ID
    code, _, err = run(capsys, "models", "retire", "champion")
    assert code == 1 and "cannot be retired" in err
    code, out, _ = run(capsys, "models", "retire", new.id, "--json")
    assert code == 0 and json.loads(out)["version"]["retired"] is True
    assert json.loads(out)["aliases"] == {"champion": BUNDLED_ID, "previous": None}
    code, _, err = run(capsys, "models", "rollback")
    assert code == 1 and "no previous champion" in err
    code, _, err = run(capsys, "models", "promote", "beef")
    assert code == 1 and "no version" in err


def test_without_a_store_or_a_gateway_it_says_what_to_pass(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PAYCHAN_MODELS", raising=False)
    code, _, err = run(capsys, "models", "list")
    assert code == 2 and "--models DIR" in err and "--gateway" in err
    code, _, err = run(capsys, "models", "rollback")
    assert code == 2 and "--models DIR" in err
    code, _, err = run(capsys, "models", "list", "--models", str(tmp_path), "--gateway", "http://x")
    assert code == 2 and "not both" in err
