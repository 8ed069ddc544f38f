"""One answer for one image: the ImageNet class, its probability and its animal group.

    Prediction(label="tiger cat", index=282, probability=0.393, group=AnimalGroup.CAT)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from inference.labels import AnimalGroup

__all__ = ["Prediction"]


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
