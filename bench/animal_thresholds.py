"""Choose the animal answer's thresholds on labelled photos (inference/animal.py).

    .venv/bin/python bench/animal_thresholds.py            # writes bench/results/animal_thresholds.json
    .venv/bin/python bench/animal_thresholds.py --print    # the sweep's best rows, no file

The bundled tf_efficientnet_lite0 answers every photo once (the serving path: Preprocessor,
``LoadedModel.top_k``'s per-group sums); the rule of ``inference.animal.answer_from_sums`` is
then replayed for every pair (``unsure_below``, ``not_animal_from``) on a grid. Each answer is
*right* (status ``animal`` with the labelled group, or ``not_animal`` for a non-animal),
*unsure*, or *wrong* (any other group or status). For the four generated pictures with
nothing in them (white, black, grey, noise) ``unsure`` is right too. The pair chosen minimises

    cost = wrong + 0.5 * unsure        (a wrong answer costs twice an honest "unsure")

over every labelled photo: ``tests/photos/more/`` with the bundled test photos (dalmatian,
scikit-image's chelsea, astronaut, coffee, rocket) and the blank pictures ("more"), and the
golden set ``inference/golden/`` ("golden"). Each set alone is too small and too uniform
to choose from (more's ImageNet-style photos pull ``unsure_below`` up, golden's camera-trap
and underwater photos pull it down), so the result also records the pair each set alone
would choose and what that pair scores on the other set. The cost is flat over a plateau;
ties go to the fewest wrong answers, then to the most cautious pair (the highest
thresholds). Also reported: how often the old answer (the top-1 class's group) was right.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _machine import cpu_model  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.animal import (
    GROUP_ORDER,
    NOT_ANIMAL_FROM,
    UNSURE_BELOW,
    AnimalStatus,
    answer_from_sums,
)
from inference.labels import AnimalGroup

RESULT = ROOT / "bench" / "results" / "animal_thresholds.json"
TUNING_DIR = ROOT / "tests" / "photos" / "more"
GOLDEN_DIR = ROOT / "inference" / "golden"
UNSURE_GRID = [round(0.30 + 0.05 * i, 2) for i in range(11)]      # 0.30 .. 0.80
NOT_ANIMAL_GRID = [round(0.50 + 0.05 * i, 2) for i in range(10)]  # 0.50 .. 0.95
UNSURE_COST = 0.5


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    group: AnimalGroup  # the label
    empty: bool = False  # nothing in the picture: "unsure" is a right answer too


@dataclass(frozen=True)
class Answered:
    photo: Photo
    sums: dict[AnimalGroup, float]
    top_group: AnimalGroup  # the group of the top-1 class: the answer before the animal answer
    top_label: str


def labelled(folder: Path) -> list[Photo]:
    """The photos a ``labels.csv`` (file,imagenet_index,group) names; [] without one."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        return []
    rows = csv.DictReader(io.StringIO(labels.read_text(encoding="utf-8-sig")))
    return [Photo(f"{folder.name}/{row['file']}", (folder / row["file"]).read_bytes(),
                  AnimalGroup(row["group"].strip())) for row in rows]


def built_in() -> list[Photo]:
    """The photos that ship with the tests, and four pictures with nothing in them."""
    import numpy as np
    import skimage.data
    from PIL import Image

    def encode(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.convert("RGB").save(out, "PNG")
        return out.getvalue()

    size = (320, 320)
    noise = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    return [
        Photo("dalmatian.jpg", (ROOT / "tests/inference/assets/dalmatian.jpg").read_bytes(),
              AnimalGroup.DOG),
        Photo("skimage/chelsea", encode(Image.fromarray(skimage.data.chelsea())), AnimalGroup.CAT),
        Photo("skimage/astronaut", encode(Image.fromarray(skimage.data.astronaut())),
              AnimalGroup.NOT_ANIMAL),
        Photo("skimage/coffee", encode(Image.fromarray(skimage.data.coffee())),
              AnimalGroup.NOT_ANIMAL),
        Photo("skimage/rocket", encode(Image.fromarray(skimage.data.rocket())),
              AnimalGroup.NOT_ANIMAL),
        Photo("blank/white", encode(Image.new("RGB", size, "white")), AnimalGroup.NOT_ANIMAL, True),
        Photo("blank/black", encode(Image.new("RGB", size, "black")), AnimalGroup.NOT_ANIMAL, True),
        Photo("blank/grey", encode(Image.new("RGB", size, (128, 128, 128))),
              AnimalGroup.NOT_ANIMAL, True),
        Photo("blank/noise", encode(Image.fromarray(noise)), AnimalGroup.NOT_ANIMAL, True),
    ]


def answer_all(photos: list[Photo], batch: int = 16) -> tuple[str, list[Answered]]:
    """Every photo through the bundled model once: its per-group sums and its top-1 class."""
    import torch

    from inference.model import load_model
    from inference.preprocess import Preprocessor

    model = load_model(device="cpu")
    pre = Preprocessor(model.data_config)
    out: list[Answered] = []
    for start in range(0, len(photos), batch):
        chunk = photos[start:start + batch]
        top = model.top_k(torch.stack([pre(p.data) for p in chunk]), 1)
        for photo, row, index in zip(chunk, top.groups.tolist(), top.indices[:, 0].tolist()):
            out.append(Answered(photo, dict(zip(GROUP_ORDER, row)), model.groups[index],
                                model.labels[index]))
    return model.version.id, out


def outcome(a: Answered, unsure_below: float, not_animal_from: float) -> str:
    answer = answer_from_sums(a.sums, unsure_below=unsure_below, not_animal_from=not_animal_from)
    if a.photo.empty and answer.status is not AnimalStatus.ANIMAL:
        return "right"
    if answer.status is AnimalStatus.UNSURE:
        return "unsure"
    return "right" if answer.group is a.photo.group else "wrong"


def tally(answered: list[Answered], unsure_below: float, not_animal_from: float) -> dict[str, Any]:
    """Right/unsure/wrong counts overall and per labelled group, with the rates."""
    per: dict[str, dict[str, int]] = {}
    total = {"n": 0, "right": 0, "unsure": 0, "wrong": 0}
    for a in answered:
        o = outcome(a, unsure_below, not_animal_from)
        row = per.setdefault(a.photo.group.value, {"n": 0, "right": 0, "unsure": 0, "wrong": 0})
        for counts in (row, total):
            counts["n"] += 1
            counts[o] += 1
    n = max(total["n"], 1)
    answered_n = max(total["right"] + total["wrong"], 1)
    return {
        **total,
        "cost": total["wrong"] + UNSURE_COST * total["unsure"],
        "accuracy": round(total["right"] / n, 4),               # right among all photos
        "accuracy_when_answered": round(total["right"] / answered_n, 4),
        "unsure_rate": round(total["unsure"] / n, 4),
        "wrong_rate": round(total["wrong"] / n, 4),
        "per_group": dict(sorted(per.items())),
    }


def top1_baseline(answered: list[Answered]) -> dict[str, Any]:
    """How often the top-1 class's group (what the service answered before) was the label."""
    right = sum(a.top_group is a.photo.group for a in answered)
    return {"n": len(answered), "right": right, "accuracy": round(right / max(len(answered), 1), 4)}


def choose(answered: list[Answered]) -> tuple[tuple[float, float], list[dict[str, Any]]]:
    sweep = []
    for u in UNSURE_GRID:
        for na in NOT_ANIMAL_GRID:
            t = tally(answered, u, na)
            sweep.append({"unsure_below": u, "not_animal_from": na,
                          **{k: t[k] for k in ("right", "unsure", "wrong", "cost", "accuracy",
                                               "unsure_rate")}})
    best = min(sweep, key=lambda r: (r["cost"], r["wrong"], -r["unsure_below"],
                                     -r["not_animal_from"]))
    return (best["unsure_below"], best["not_animal_from"]), sweep


def rows(answered: list[Answered], u: float, na: float) -> list[dict[str, Any]]:
    out = []
    for a in answered:
        answer = answer_from_sums(a.sums, unsure_below=u, not_animal_from=na)
        out.append({"photo": a.photo.name, "label": a.photo.group.value,
                    "answer": answer.group.value, "status": answer.status.value,
                    "probability": round(answer.probability, 4),
                    "outcome": outcome(a, u, na), "top1": a.top_label,
                    "top1_group": a.top_group.value})
    return out


def _set_report(answered: list[Answered], u: float, na: float, source: str) -> dict[str, Any]:
    return {"photos": len(answered), "from": source,
            "at_chosen": tally(answered, u, na),
            "at_serving": tally(answered, UNSURE_BELOW, NOT_ANIMAL_FROM),
            "top1_group_baseline": top1_baseline(answered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the result, write no file")
    args = parser.parse_args()

    more_photos = labelled(TUNING_DIR) + built_in()
    golden_photos = labelled(GOLDEN_DIR)
    began = time.monotonic()
    model_id, answered = answer_all(more_photos + golden_photos)
    more, golden = answered[:len(more_photos)], answered[len(more_photos):]
    (u, na), sweep = choose(answered)
    cross = {}
    for name, own, other in (("more", more, golden), ("golden", golden, more)):
        (su, sna), _ = choose(own)
        cross[f"chosen_on_{name}_alone"] = {
            "unsure_below": su, "not_animal_from": sna,
            "on_itself": {k: tally(own, su, sna)[k] for k in ("cost", "right", "unsure", "wrong")},
            "on_the_other": {k: tally(other, su, sna)[k] for k in ("cost", "right", "unsure", "wrong")}}
    result: dict[str, Any] = {
        "model": model_id,
        "machine": {"cpu_model": cpu_model(), "cores_usable": len(os.sched_getaffinity(0)),
                    "python": platform.python_version()},
        "rule": "not_animal if the non-animal classes sum >= not_animal_from (and beat the best "
                "animal group); else animal if the best animal group sums >= unsure_below and "
                "beats the non-animal sum; else unsure",
        "cost": f"wrong + {UNSURE_COST} * unsure (unsure is right for a picture with nothing in it)",
        "chosen": {"unsure_below": u, "not_animal_from": na},
        "serving": {"unsure_below": UNSURE_BELOW, "not_animal_from": NOT_ANIMAL_FROM},
        "all": _set_report(answered, u, na, "more + golden"),
        "more": _set_report(more, u, na, f"{TUNING_DIR.relative_to(ROOT)}, the bundled test "
                            "photos and 4 blank pictures"),
        "golden": _set_report(golden, u, na, str(GOLDEN_DIR.relative_to(ROOT))),
        "cross_check": cross,
        "sweep": sweep,
        "answers": rows(more, UNSURE_BELOW, NOT_ANIMAL_FROM)
                   + rows(golden, UNSURE_BELOW, NOT_ANIMAL_FROM),
        "seconds": round(time.monotonic() - began, 1),
    }
    summary: dict[str, Any] = {k: result[k] for k in ("model", "chosen", "serving", "cross_check")}
    for name in ("all", "more", "golden"):
        r = result[name]
        summary[name] = {"photos": r["photos"],
                         **{k: {m: r[k][m] for m in ("accuracy", "unsure_rate", "wrong_rate")}
                            for k in ("at_chosen", "at_serving")},
                         "top1_group_baseline": r["top1_group_baseline"]["accuracy"]}
    print(json.dumps(summary, indent=2))
    if (u, na) != (UNSURE_BELOW, NOT_ANIMAL_FROM):
        print(f"note: the sweep chose unsure_below={u}, not_animal_from={na}; inference/animal.py "
              f"serves {UNSURE_BELOW}, {NOT_ANIMAL_FROM}", file=sys.stderr)
    if not args.print:
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {RESULT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
