"""The animal answer (inference.animal): probabilities summed per group, the documented
thresholds, and the answer the real model gives through the batcher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import timm
import torch
from inference_images import encode
from PIL import Image, ImageOps

from inference import (
    NOT_ANIMAL_FROM,
    UNSURE_BELOW,
    AnimalAnswer,
    AnimalGroup,
    AnimalStatus,
    Classifier,
    ImageAnswer,
    LoadedModel,
    ModelStore,
    NullClassifier,
    Prediction,
    StoreError,
    animal_answer,
    groups_for,
    imagenet_labels,
)
from inference.animal import GROUP_ORDER, answer_from_sums, group_sums, percent

ROOT = Path(__file__).resolve().parents[2]
CAT, DOG, BIRD, NOT = AnimalGroup.CAT, AnimalGroup.DOG, AnimalGroup.BIRD, AnimalGroup.NOT_ANIMAL


# --- the pure function ----------------------------------------------------------------------

def test_probabilities_are_summed_per_group_and_the_best_group_wins() -> None:
    # Three cat classes at 0.3 each beat one dog class at 0.1: no single cat class is best.
    probs = [0.3, 0.3, 0.3, 0.1, 0.0]
    groups = [CAT, CAT, CAT, DOG, NOT]
    sums = group_sums(probs, groups)
    assert sums[CAT] == pytest.approx(0.9) and sums[DOG] == pytest.approx(0.1)
    assert sums[BIRD] == 0.0 and set(sums) == set(AnimalGroup)
    answer = animal_answer(probs, groups)
    assert answer.group is CAT and answer.status is AnimalStatus.ANIMAL
    assert answer.probability == pytest.approx(0.9)
    assert answer.to_json() == {"group": "cat", "probability": answer.probability, "status": "animal"}
    assert AnimalAnswer.from_json(answer.to_json()) == answer


def test_the_thresholds_decide_animal_unsure_and_not_animal() -> None:
    assert 0 < UNSURE_BELOW < 0.5 < NOT_ANIMAL_FROM < 1  # what docs/protocol.md states
    at = answer_from_sums({DOG: UNSURE_BELOW, NOT: 0.3})
    assert (at.group, at.status) == (DOG, AnimalStatus.ANIMAL)  # the threshold itself answers
    below = answer_from_sums({DOG: UNSURE_BELOW - 0.01, NOT: 0.3})
    assert (below.group, below.status) == (DOG, AnimalStatus.UNSURE)  # a guess, marked so
    assert below.probability == pytest.approx(UNSURE_BELOW - 0.01)
    # A best animal group above the threshold that the non-animal classes still outweigh.
    outweighed = answer_from_sums({DOG: 0.45, NOT: 0.5}, not_animal_from=0.6)
    assert outweighed.status is AnimalStatus.UNSURE
    gone = answer_from_sums({DOG: 1 - NOT_ANIMAL_FROM, NOT: NOT_ANIMAL_FROM})
    assert (gone.group, gone.status) == (NOT, AnimalStatus.NOT_ANIMAL)
    assert gone.probability == pytest.approx(NOT_ANIMAL_FROM)
    # Just under NOT_ANIMAL_FROM, with no animal group strong enough: unsure, not an animal.
    spread = answer_from_sums({DOG: 0.2, BIRD: 0.3, NOT: NOT_ANIMAL_FROM - 0.05})
    assert (spread.group, spread.status) == (BIRD, AnimalStatus.UNSURE)


def test_the_threshold_keywords_replay_the_rule_for_the_sweep() -> None:
    sums = {CAT: 0.6, NOT: 0.4}
    assert answer_from_sums(sums).status is AnimalStatus.ANIMAL
    assert answer_from_sums(sums, unsure_below=0.7).status is AnimalStatus.UNSURE
    assert answer_from_sums({CAT: 0.3, NOT: 0.7}, not_animal_from=0.8).status is AnimalStatus.UNSURE


def test_a_mismatched_group_list_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="one group per class"):
        group_sums([0.5, 0.5], [CAT])


def test_words_for_people_never_round_a_doubt_away() -> None:
    assert AnimalAnswer(CAT, 0.92, AnimalStatus.ANIMAL).words == "cat 92%"
    assert AnimalAnswer(NOT, 0.996, AnimalStatus.NOT_ANIMAL).words == "not an animal 99%"
    assert AnimalAnswer(DOG, 0.07, AnimalStatus.UNSURE).words == "unsure (dog? 7%)"
    assert (percent(0.004), percent(0.0), percent(1.0)) == ("<1%", "0%", "100%")


def test_an_image_answer_leads_with_the_animal_and_reads_as_its_predictions() -> None:
    preds = (Prediction("tiger cat", 282, 0.4, CAT), Prediction("tabby", 281, 0.3, CAT))
    answer = ImageAnswer(AnimalAnswer(CAT, 0.9, AnimalStatus.ANIMAL), preds)
    assert list(answer.to_json()) == ["animal", "predictions"]
    assert answer[0] is answer.top is preds[0] and len(answer) == 2 and list(answer) == list(preds)


# --- groups of a model's classes --------------------------------------------------------------

def test_new_labels_take_their_group_from_label_groups() -> None:
    labels = (*imagenet_labels(), "okapi", "teapot drone")
    groups = groups_for(labels, {"okapi": "other_mammal"})
    assert groups[281] is CAT and groups[251] is DOG  # ImageNet's ranges for the first 1000
    assert groups[1000] is AnimalGroup.OTHER_MAMMAL
    assert groups[1001] is NOT  # a new label with no group is not an animal
    with pytest.raises(ValueError, match=r"label_groups\['okapi'\].*one of dog, cat"):
        groups_for(labels, {"okapi": "giraffe-ish"})


def test_a_manifest_checks_its_label_groups(tmp_path: Path) -> None:
    store = ModelStore.open(tmp_path / "models")
    champion = store.resolve("champion")
    path = champion.path / "manifest.json"
    data = json.loads(path.read_text())
    assert "label_groups" not in data  # optional: absent when no label needs one
    for bad, message in (({"okapi": "other_mammal"}, "not one of the version's labels"),
                         ({"tabby": "feline"}, "not an animal group; use one of dog, cat")):
        path.write_text(json.dumps({**data, "label_groups": bad}))
        with pytest.raises(StoreError, match=rf"field 'label_groups': .*{message}"):
            ModelStore.open(tmp_path / "models").get(champion.id)
    path.write_text(json.dumps({**data, "label_groups": {"tabby": "cat"}}))
    assert ModelStore.open(tmp_path / "models").get(champion.id).manifest.label_groups == {"tabby": "cat"}


@pytest.mark.slow
def test_a_version_with_a_new_label_answers_its_group(tmp_path: Path, chelsea: Image.Image) -> None:
    store = ModelStore.open(tmp_path / "models")
    labels = [*imagenet_labels(), "okapi"]
    module = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=len(labels))
    path = tmp_path / "okapi.pth"
    torch.save(module.state_dict(), path)
    with pytest.raises(StoreError, match="label_groups"):
        store.import_weights(path, "tf_efficientnet_lite0", labels=labels,
                             label_groups={"okapi": "antelope"})
    v = store.import_weights(path, "tf_efficientnet_lite0", labels=labels,
                             label_groups={"okapi": "other_mammal"})
    assert json.loads((v.path / "manifest.json").read_text())["label_groups"] == {"okapi": "other_mammal"}
    model = store.load(v.id, device="cpu", threads=1)
    assert model.groups[-1] is AnimalGroup.OTHER_MAMMAL and model.groups[281] is CAT
    batch = torch.stack([Classifier.from_model(model).preprocessor(encode(chelsea, "PNG"))])
    probs = model.logits(batch).softmax(-1)
    top = model.top_k(batch, 1)
    mammal = GROUP_ORDER.index(AnimalGroup.OTHER_MAMMAL)
    # The new class's probability lands in its group's column, summed with ImageNet's mammals.
    assert float(top.groups[0, mammal]) >= float(probs[0, -1])
    assert float(top.groups.sum()) == pytest.approx(1.0, abs=1e-4)


# --- the real model -------------------------------------------------------------------------

def test_top_k_sums_the_whole_softmax_per_group(lite0: LoadedModel, chelsea: Image.Image) -> None:
    pre = Classifier.from_model(lite0).preprocessor
    batch = torch.stack([pre(encode(chelsea, "PNG")), pre(encode(Image.new("RGB", (64, 64)), "PNG"))])
    top = lite0.top_k(batch, 3)
    probs = lite0.logits(batch).softmax(-1)
    for row in range(2):
        expected = group_sums(probs[row].tolist(), lite0.groups)
        assert top.groups[row].tolist() == pytest.approx([expected[g] for g in GROUP_ORDER], abs=1e-5)


def test_a_flipped_cat_is_a_cat_surer_than_its_best_class(classifier: Classifier,
                                                          chelsea: Image.Image) -> None:
    flipped = encode(ImageOps.flip(chelsea), "PNG")
    [answer] = asyncio.run(classifier.classify([flipped], top_k=3))
    assert answer.animal.group is CAT and answer.animal.status is AnimalStatus.ANIMAL
    # The cat classes together (tabby, tiger cat, Egyptian cat, ...) outweigh any one of them.
    assert answer.animal.probability > answer.top.probability + 0.2
    assert answer.animal.probability >= sum(p.probability for p in answer if p.group is CAT) - 1e-6


def test_a_blank_white_image_is_not_answered_as_an_animal(classifier: Classifier) -> None:
    white = encode(Image.new("RGB", (320, 320), "white"), "PNG")
    [answer] = asyncio.run(classifier.classify([white], top_k=1))
    assert answer.animal.status in (AnimalStatus.NOT_ANIMAL, AnimalStatus.UNSURE)
    assert answer.animal.status is not AnimalStatus.ANIMAL


def test_the_batched_answer_is_the_pure_function_of_the_full_softmax(
        classifier: Classifier, lite0: LoadedModel, cat_png: bytes, dog_jpeg: bytes) -> None:
    answers = asyncio.run(classifier.classify([cat_png, dog_jpeg], top_k=2))
    batch = torch.stack([classifier.preprocessor(cat_png), classifier.preprocessor(dog_jpeg)])
    probs = lite0.logits(batch).softmax(-1)
    for answer, row, group in zip(answers, probs, (CAT, DOG)):
        pure = animal_answer(row.tolist(), lite0.groups)
        assert (answer.animal.group, answer.animal.status) == (pure.group, pure.status)
        assert answer.animal.group is group
        assert answer.animal.probability == pytest.approx(pure.probability, abs=1e-5)


def test_the_null_classifier_answers_its_prediction_s_group() -> None:
    null = NullClassifier(prediction=Prediction("goldfish", 1, 0.9, AnimalGroup.FISH))
    [answer] = asyncio.run(null.classify([b"anything"]))
    assert answer.animal == AnimalAnswer(AnimalGroup.FISH, 0.9, AnimalStatus.ANIMAL)
    assert answer.top.label == "goldfish"
