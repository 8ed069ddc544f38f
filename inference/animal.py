"""The animal answer: which kind of animal an image shows, from the model's whole softmax.

    answer = animal_answer(probabilities, groups)    # all classes' probabilities, their groups
    answer.group, answer.probability, answer.status  # CAT, 0.92, AnimalStatus.ANIMAL
    answer.to_json()   # {"group": "cat", "probability": 0.92, "status": "animal"}

The probabilities of every class are summed per ``AnimalGroup`` (tabby + tiger cat + Egyptian
cat + ... = "cat"), so a photo the model splits between three cat breeds is a sure cat even
when no one breed passes 50%. Then, in this order:

1. ``not_animal``: the non-animal classes together hold at least ``NOT_ANIMAL_FROM`` (0.55)
   of the probability, and more than the best animal group; ``group`` is ``not_animal`` and
   ``probability`` that sum. A blank picture lands here: it spreads its probability near
   the model's prior, about 60-75% over the non-animal classes and thinly over the rest.
2. ``animal``: the best animal group holds at least ``UNSURE_BELOW`` (0.35) and more than
   the non-animal classes; ``group`` is that group, ``probability`` its sum.
3. ``unsure`` otherwise (no group stands out: a camera-trap frame of empty bushes, an
   octopus the model half takes for a ray); ``group`` and ``probability`` are the best
   animal group's, a guess.

The two thresholds were chosen on 222 labelled photos by ``bench/animal_thresholds.py``
(figures in ``bench/results/animal_thresholds.json``, the choice in docs/protocol.md,
"The animal answer").
The batcher computes the group sums on the model's thread (``LoadedModel.top_k``) and calls
``answer_from_sums``; ``animal_answer`` is the same rule from a list of probabilities.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from inference.labels import AnimalGroup

__all__ = [
    "GROUP_ORDER",
    "NOT_ANIMAL_FROM",
    "UNSURE_BELOW",
    "AnimalAnswer",
    "AnimalStatus",
    "animal_answer",
    "answer_from_sums",
    "group_sums",
    "percent",
]

#: The best animal group's summed probability below which the answer is ``unsure``.
UNSURE_BELOW = 0.35
#: The non-animal classes' summed probability from which the answer is ``not_animal``.
NOT_ANIMAL_FROM = 0.55

#: The column order of group sums (``LoadedModel.top_k``'s ``groups``): AnimalGroup's order.
GROUP_ORDER: tuple[AnimalGroup, ...] = tuple(AnimalGroup)


class AnimalStatus(enum.StrEnum):
    """How sure the animal answer is."""

    ANIMAL = "animal"          # ``group`` is the answer
    UNSURE = "unsure"          # ``group`` is only the best guess
    NOT_ANIMAL = "not_animal"  # the picture is not of an animal


@dataclasses.dataclass(frozen=True, slots=True)
class AnimalAnswer:
    """What animal one image shows: its group, the group's summed probability, how sure."""

    group: AnimalGroup
    probability: float
    status: AnimalStatus

    def to_json(self) -> dict[str, Any]:
        """``{"group": "cat", "probability": 0.92, "status": "animal"}``"""
        return {"group": self.group.value, "probability": self.probability,
                "status": self.status.value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnimalAnswer:
        """``to_json``'s dict back (raises ValueError/KeyError for anything else)."""
        return cls(AnimalGroup(data["group"]), float(data["probability"]),
                   AnimalStatus(data["status"]))

    @property
    def words(self) -> str:
        """For people: ``"cat 92%"``, ``"not an animal 99%"``, ``"unsure (dog? 12%)"``."""
        if self.status is AnimalStatus.UNSURE:
            return f"unsure ({self.group.words}? {percent(self.probability)})"
        return f"{self.group.words} {percent(self.probability)}"


def percent(probability: float) -> str:
    """``"92%"``; never rounds a doubt away: 0.996 is ``"99%"``, 0.004 is ``"<1%"``."""
    if probability < 0.01:
        return "<1%" if probability > 0 else "0%"
    if probability < 1:
        return f"{min(probability, 0.99):.0%}"
    return "100%"


def group_sums(probabilities: Sequence[float],
               groups: Sequence[AnimalGroup]) -> dict[AnimalGroup, float]:
    """Every group's summed probability (0.0 for a group with no class)."""
    if len(probabilities) != len(groups):
        raise ValueError(f"{len(probabilities)} probabilities for {len(groups)} class groups; "
                         "pass one group per class (inference.labels.groups_for)")
    sums = dict.fromkeys(GROUP_ORDER, 0.0)
    for p, group in zip(probabilities, groups):
        sums[group] += float(p)
    return sums


def answer_from_sums(sums: Mapping[AnimalGroup, float], *, unsure_below: float = UNSURE_BELOW,
                     not_animal_from: float = NOT_ANIMAL_FROM) -> AnimalAnswer:
    """The rule above, from each group's summed probability (a missing group holds 0.0).

    The thresholds are keywords for ``bench/animal_thresholds.py``'s sweep; serving uses
    the module's ``UNSURE_BELOW`` and ``NOT_ANIMAL_FROM``.
    """
    not_animal = float(sums.get(AnimalGroup.NOT_ANIMAL, 0.0))
    # Ties go to the earlier group in AnimalGroup's order: max keeps the first maximum.
    best = max((g for g in GROUP_ORDER if g is not AnimalGroup.NOT_ANIMAL),
               key=lambda g: float(sums.get(g, 0.0)))
    best_p = float(sums.get(best, 0.0))
    if not_animal >= not_animal_from and not_animal > best_p:
        return AnimalAnswer(AnimalGroup.NOT_ANIMAL, not_animal, AnimalStatus.NOT_ANIMAL)
    if best_p >= unsure_below and best_p > not_animal:
        return AnimalAnswer(best, best_p, AnimalStatus.ANIMAL)
    return AnimalAnswer(best, best_p, AnimalStatus.UNSURE)


def animal_answer(probabilities: Sequence[float], groups: Sequence[AnimalGroup], *,
                  unsure_below: float = UNSURE_BELOW,
                  not_animal_from: float = NOT_ANIMAL_FROM) -> AnimalAnswer:
    """The animal answer for one image from its full probability vector (every class, in
    class order) and each class's group (``inference.labels.groups_for``)."""
    return answer_from_sums(group_sums(probabilities, groups), unsure_below=unsure_below,
                            not_animal_from=not_animal_from)
