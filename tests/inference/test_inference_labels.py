"""The ImageNet label list and the animal-group table."""

from __future__ import annotations

import pytest

from inference import ANIMAL_GROUP_RANGES, AnimalGroup, group_of, imagenet_labels


def test_groups_cover_exactly_the_398_animal_classes_without_gaps_or_overlaps() -> None:
    expected_first = 0
    for first, last, _group in ANIMAL_GROUP_RANGES:
        assert first == expected_first, f"gap or overlap before {first}"
        assert last >= first
        expected_first = last + 1
    assert expected_first == 398


@pytest.mark.parametrize(
    ("index", "label", "group"),
    [
        (0, "tench", AnimalGroup.FISH),
        (7, "cock", AnimalGroup.BIRD),
        (31, "tree frog", AnimalGroup.AMPHIBIAN),
        (51, "triceratops", AnimalGroup.REPTILE),
        (76, "tarantula", AnimalGroup.INVERTEBRATE),
        (100, "black swan", AnimalGroup.BIRD),
        (105, "koala", AnimalGroup.OTHER_MAMMAL),
        (126, "isopod", AnimalGroup.INVERTEBRATE),
        (150, "sea lion", AnimalGroup.OTHER_MAMMAL),
        (151, "Chihuahua", AnimalGroup.DOG),
        (251, "dalmatian", AnimalGroup.DOG),
        (268, "Mexican hairless", AnimalGroup.DOG),
        (269, "timber wolf", AnimalGroup.OTHER_MAMMAL),
        (281, "tabby", AnimalGroup.CAT),
        (285, "Egyptian cat", AnimalGroup.CAT),
        (286, "cougar", AnimalGroup.OTHER_MAMMAL),
        (300, "tiger beetle", AnimalGroup.INVERTEBRATE),
        (329, "sea cucumber", AnimalGroup.INVERTEBRATE),
        (330, "wood rabbit", AnimalGroup.OTHER_MAMMAL),
        (388, "giant panda", AnimalGroup.OTHER_MAMMAL),
        (397, "puffer", AnimalGroup.FISH),
        (398, "abacus", AnimalGroup.NOT_ANIMAL),
        (999, "toilet tissue", AnimalGroup.NOT_ANIMAL),
    ],
)
def test_label_and_group_of_boundary_classes(index: int, label: str, group: AnimalGroup) -> None:
    assert imagenet_labels()[index] == label
    assert group_of(index) is group


def test_every_group_has_words_for_people() -> None:
    assert AnimalGroup.INVERTEBRATE.words == "insect or other invertebrate"
    assert AnimalGroup.NOT_ANIMAL.words == "not an animal"
    assert {g.words for g in AnimalGroup} >= {"dog", "cat", "other mammal", "bird", "fish"}
    assert len(imagenet_labels()) == 1000
