"""One line per image for people, the animal answer first: what ``classify``, ``classify-local``
and ``demo`` print.

    >>> animal_line({"animal": {"group": "cat", "probability": 0.92, "status": "animal"},
    ...              "predictions": [{"label": "tiger cat", "probability": 0.39}, ...]})
    'cat 92% (tiger cat 39%, Egyptian cat 36%, tabby 17%)'

It reads the classification JSON (the gateway's ``results[i]``, ``Classification.to_json()``
or ``ImageAnswer.to_json()``: the same shape) so no caller needs the model's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["animal_line"]


def animal_line(result: Mapping[str, Any]) -> str:
    """``"cat 92% (tiger cat 39%, ...)"``, ``"not an animal 99% (espresso 95%, ...)"`` or
    ``"unsure (dog? 7%) (nematode 1%, ...)"``: the animal answer, then the top-k labels."""
    from inference.animal import AnimalAnswer, percent  # no torch: labels and thresholds only

    labels = ", ".join(f"{p['label']} {percent(float(p['probability']))}"
                       for p in result.get("predictions", ()))
    return f"{AnimalAnswer.from_json(result['animal']).words} ({labels})"
