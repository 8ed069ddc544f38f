"""What the classifier answers for one image: the animal answer first, then the top-k classes.

    [answer] = await classifier.classify([jpeg], top_k=3)     # ImageAnswer
    answer.animal        # AnimalAnswer(group=CAT, probability=0.92, status=ANIMAL)
    answer.predictions   # (Prediction("tiger cat", 282, 0.393, CAT), ...), best first
    answer[0].label      # an ImageAnswer is also the sequence of its predictions
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, overload

from inference.animal import AnimalAnswer
from inference.labels import AnimalGroup

__all__ = ["ImageAnswer", "Prediction"]


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """One of the top-k classes for an image, best first in the list that holds it."""

    label: str
    index: int
    probability: float
    group: AnimalGroup

    def to_json(self) -> dict[str, Any]:
        """``{"label": "tiger cat", "index": 282, "probability": 0.393, "group": "cat"}``"""
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "group": self.group.value}


@dataclasses.dataclass(frozen=True, slots=True)
class ImageAnswer(Sequence[Prediction]):
    """One image's answer: ``animal`` (from every class's probability, summed per group) and
    the top-k ``predictions``. Indexing and iterating reach the predictions, so code that
    only wants the classes reads it as the list it used to be."""

    animal: AnimalAnswer
    predictions: tuple[Prediction, ...]

    @property
    def top(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]

    def to_json(self) -> dict[str, Any]:
        """``{"animal": {"group": "cat", ...}, "predictions": [{"label": "tiger cat", ...}]}``"""
        return {"animal": self.animal.to_json(),
                "predictions": [p.to_json() for p in self.predictions]}

    @overload
    def __getitem__(self, index: int) -> Prediction: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Prediction]: ...
    def __getitem__(self, index: int | slice) -> Prediction | Sequence[Prediction]:
        return self.predictions[index]

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)
