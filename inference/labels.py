"""ImageNet-1k labels and the animal group of each class.

    >>> label_of(282), group_of(282)
    ('tiger cat', <AnimalGroup.CAT: 'cat'>)
    >>> groups_for((*imagenet_labels(), "okapi"), {"okapi": "other_mammal"})[-1]  # a new label
    <AnimalGroup.OTHER_MAMMAL: 'other_mammal'>
"""

from __future__ import annotations

import bisect
import enum
import functools
from collections.abc import Mapping, Sequence

__all__ = ["ANIMAL_GROUP_RANGES", "AnimalGroup", "group_of", "groups_for", "imagenet_labels",
           "label_of"]


class AnimalGroup(enum.StrEnum):
    """What kind of animal a class is, the answer to "what animal is this?"."""

    DOG = "dog"
    CAT = "cat"
    OTHER_MAMMAL = "other_mammal"
    BIRD = "bird"
    FISH = "fish"
    REPTILE = "reptile"
    AMPHIBIAN = "amphibian"
    INVERTEBRATE = "invertebrate"  # insects, spiders, crustaceans, molluscs, corals, ...
    NOT_ANIMAL = "not_animal"

    @property
    def words(self) -> str:
        """Words for people: ``AnimalGroup.INVERTEBRATE.words == "insect or other invertebrate"``."""
        return _WORDS[self]


_WORDS = {
    AnimalGroup.DOG: "dog",
    AnimalGroup.CAT: "cat",
    AnimalGroup.OTHER_MAMMAL: "other mammal",
    AnimalGroup.BIRD: "bird",
    AnimalGroup.FISH: "fish",
    AnimalGroup.REPTILE: "reptile",
    AnimalGroup.AMPHIBIAN: "amphibian",
    AnimalGroup.INVERTEBRATE: "insect or other invertebrate",
    AnimalGroup.NOT_ANIMAL: "not an animal",
}

# ImageNet-1k orders its 398 animal classes (0-397) by WordNet subtree, so every group is a
# handful of contiguous index ranges, read off timm's bundled class list (first, last inclusive).
# "cat" means the domestic cats (tabby ... Egyptian cat); the wild cats that follow (cougar,
# lynx, leopard, lion, tiger, cheetah) are "other mammal", as are wolves, foxes and hyenas.
# Triceratops (51) sits among the reptiles in ImageNet and stays there.
ANIMAL_GROUP_RANGES: tuple[tuple[int, int, AnimalGroup], ...] = (
    (0, 6, AnimalGroup.FISH),             # tench ... stingray
    (7, 24, AnimalGroup.BIRD),            # cock ... great grey owl
    (25, 32, AnimalGroup.AMPHIBIAN),      # European fire salamander ... tailed frog
    (33, 68, AnimalGroup.REPTILE),        # loggerhead turtle ... sidewinder
    (69, 79, AnimalGroup.INVERTEBRATE),   # trilobite, spiders, tick, centipede
    (80, 100, AnimalGroup.BIRD),          # black grouse ... black swan
    (101, 106, AnimalGroup.OTHER_MAMMAL), # tusker, echidna, platypus, wallaby, koala, wombat
    (107, 126, AnimalGroup.INVERTEBRATE), # jellyfish ... isopod (molluscs, crabs, lobsters)
    (127, 146, AnimalGroup.BIRD),         # white stork ... albatross
    (147, 150, AnimalGroup.OTHER_MAMMAL), # grey whale, killer whale, dugong, sea lion
    (151, 268, AnimalGroup.DOG),          # Chihuahua ... Mexican hairless
    (269, 280, AnimalGroup.OTHER_MAMMAL), # wolves, coyote, dingo, dhole, hyena, foxes
    (281, 285, AnimalGroup.CAT),          # tabby, tiger cat, Persian, Siamese, Egyptian cat
    (286, 299, AnimalGroup.OTHER_MAMMAL), # cougar ... cheetah, bears, mongoose, meerkat
    (300, 329, AnimalGroup.INVERTEBRATE), # tiger beetle ... lycaenid; starfish, urchin, sea cucumber
    (330, 388, AnimalGroup.OTHER_MAMMAL), # wood rabbit ... giant panda
    (389, 397, AnimalGroup.FISH),         # barracouta ... puffer
)
_STARTS = [first for first, _, _ in ANIMAL_GROUP_RANGES]


def group_of(index: int) -> AnimalGroup:
    """The animal group of an ImageNet-1k class index (``NOT_ANIMAL`` from 398 on)."""
    pos = bisect.bisect_right(_STARTS, index) - 1
    if pos >= 0:
        first, last, group = ANIMAL_GROUP_RANGES[pos]
        if first <= index <= last:
            return group
    return AnimalGroup.NOT_ANIMAL


def groups_for(labels: Sequence[str], label_groups: Mapping[str, str]) -> tuple[AnimalGroup, ...]:
    """The animal group of every class of a model: ``label_groups[label]`` (a manifest's
    groups for labels beyond ImageNet's 1000) where given, else ``group_of(index)``.

    Raises ValueError naming the label when a value is not an ``AnimalGroup`` value.
    """
    groups = []
    for index, label in enumerate(labels):
        value = label_groups.get(label)
        if value is None:
            groups.append(group_of(index))
            continue
        try:
            groups.append(AnimalGroup(value))
        except ValueError:
            raise ValueError(f"label_groups[{label!r}] = {value!r} is not an animal group; use one "
                             f"of {', '.join(g.value for g in AnimalGroup)}") from None
    return tuple(groups)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 short class names from timm's bundled ImageNet info ("tiger cat", ...)."""
    from timm.data.imagenet_info import ImageNetInfo

    info = ImageNetInfo()
    # timm's descriptions list synonyms ("tiger shark, Galeocerdo cuvieri"); the first is the name.
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(1000))


def label_of(index: int) -> str:
    """The short ImageNet-1k name of a class index."""
    return imagenet_labels()[index]
