"""The promotion gate: a candidate replaces the champion only if it is better where it was
trained and no worse anywhere else.

    rule = GateRule()                                        # +held-out, golden -1.0, group -2.0
    parent_scores = score(parent_model, golden, heldout)     # LoadedModel from the store
    cand_scores = score(candidate_model, golden, heldout)     # loaded with its label_groups
    verdict = judge(parent_scores, cand_scores, rule)
    verdict.passed, verdict.reasons                          # reasons in words, for the report

Measured on two sets the candidate never trained on:

* the **held-out split** of the samples (``inference.training.split_samples``): top-1 label
  name right, in percent. The candidate must *gain* here (the parent cannot know a new label);
* the **golden set** (``inference.golden_set``): top-1 accuracy on the photos with an ImageNet
  class (may drop by at most ``max_golden_drop`` points), and per ``AnimalGroup`` the share
  of photos whose animal answer (``inference.animal``: the softmax summed per group, as a
  paid request gets it) is the photo's group (no group may drop by more than
  ``max_group_drop`` points). A new label counts for the group its manifest gives it, so a
  label that steals cats for another group shows up here.

Both models are run through the serving path (``Preprocessor`` + ``LoadedModel.logits``), on
the weights as stored: what the gate measured is what would be served.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.labels import AnimalGroup

if TYPE_CHECKING:
    from inference.golden_set import GoldenSet
    from inference.model import LoadedModel
    from inference.training import Sample

__all__ = ["GateRule", "Scores", "Verdict", "judge", "score"]


@dataclasses.dataclass(frozen=True, slots=True)
class GateRule:
    """When a candidate may be promoted (points are percentage points)."""

    min_heldout_gain: float = 0.0  # strictly more than this
    max_golden_drop: float = 1.0
    max_group_drop: float = 2.0

    def to_json(self) -> dict[str, Any]:
        return {"heldout_accuracy": f"must gain more than {self.min_heldout_gain:g} points",
                "golden_top1": f"may drop by at most {self.max_golden_drop:g} points",
                "golden_group": f"no group may drop by more than {self.max_group_drop:g} points",
                "min_heldout_gain": self.min_heldout_gain,
                "max_golden_drop": self.max_golden_drop,
                "max_group_drop": self.max_group_drop}


def _pct(right: int, total: int) -> float:
    return round(100.0 * right / total, 3) if total else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Scores:
    """One model's figures on the held-out samples and the golden set."""

    heldout_right: int
    heldout_total: int
    heldout_by_label: dict[str, tuple[int, int]]
    golden_right: int  # top-1 ImageNet class right, over the photos that have one
    golden_total: int
    groups: dict[str, tuple[int, int]]  # AnimalGroup value -> (right, total)
    answers: dict[str, str]  # golden file -> top-1 label (for the "what changed" list)

    @property
    def heldout_accuracy(self) -> float:
        return _pct(self.heldout_right, self.heldout_total)

    @property
    def golden_accuracy(self) -> float:
        return _pct(self.golden_right, self.golden_total)

    def group_accuracy(self, group: str) -> float:
        right, total = self.groups.get(group, (0, 0))
        return _pct(right, total)

    def to_json(self) -> dict[str, Any]:
        return {
            "heldout": {"accuracy": self.heldout_accuracy, "right": self.heldout_right,
                        "total": self.heldout_total,
                        "by_label": {label: {"accuracy": _pct(r, t), "right": r, "total": t}
                                     for label, (r, t) in sorted(self.heldout_by_label.items())}},
            "golden": {"top1_accuracy": self.golden_accuracy, "right": self.golden_right,
                       "total": self.golden_total},
            "groups": {group: {"accuracy": _pct(r, t), "right": r, "total": t}
                       for group, (r, t) in sorted(self.groups.items())},
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; on a pass, the figures that passed
    deltas: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "deltas": self.deltas}


def score(model: LoadedModel, golden: GoldenSet, heldout: Sequence[Sample], *, batch: int = 32,
          progress: Callable[[int, int], None] | None = None) -> Scores:
    """Run ``model`` over the held-out samples and the golden set through the serving path:
    ``Preprocessor``, ``LoadedModel.top_k`` (its ``groups``: the manifest's label_groups) and
    the animal answer (``inference.animal``) that a paid request gets."""
    import torch

    from inference.animal import GROUP_ORDER, answer_from_sums
    from inference.preprocess import Preprocessor

    pre = Preprocessor(model.data_config)
    paths: list[Path] = [s.path for s in heldout] + [item.path for item in golden.items]
    tops: list[int] = []
    animals: list[AnimalGroup] = []
    for start in range(0, len(paths), batch):
        tensors = [pre(path.read_bytes()) for path in paths[start:start + batch]]
        top = model.top_k(torch.stack(tensors), 1)
        tops.extend(int(i) for i in top.indices[:, 0])
        animals.extend(answer_from_sums(dict(zip(GROUP_ORDER, row.tolist(), strict=True))).group
                       for row in top.groups)
        if progress is not None:
            progress(min(start + batch, len(paths)), len(paths))
    labels = tuple(model.labels)
    by_label: dict[str, list[int]] = {}
    for sample, index in zip(heldout, tops[:len(heldout)], strict=True):
        counts = by_label.setdefault(sample.label, [0, 0])
        counts[0] += labels[index] == sample.label
        counts[1] += 1
    golden_right = golden_total = 0
    per_group: dict[str, list[int]] = {g.value: [0, 0] for g in AnimalGroup}
    answers: dict[str, str] = {}
    n = len(heldout)
    for item, index, animal in zip(golden.items, tops[n:], animals[n:], strict=True):
        answers[item.file] = f"{labels[index]} ({animal.value})"
        if item.imagenet_index is not None:
            golden_total += 1
            golden_right += index == item.imagenet_index
        counts = per_group[item.group.value]
        counts[0] += animal == item.group
        counts[1] += 1
    return Scores(
        heldout_right=sum(r for r, _ in by_label.values()),
        heldout_total=len(heldout),
        heldout_by_label={k: (r, t) for k, (r, t) in by_label.items()},
        golden_right=golden_right, golden_total=golden_total,
        groups={g: (r, t) for g, (r, t) in per_group.items() if t},
        answers=answers,
    )


def judge(parent: Scores, candidate: Scores, rule: GateRule = GateRule()) -> Verdict:
    """Apply ``rule``; every failed condition is one reason in words."""
    reasons: list[str] = []
    gain = round(candidate.heldout_accuracy - parent.heldout_accuracy, 3)
    golden_delta = round(candidate.golden_accuracy - parent.golden_accuracy, 3)
    group_deltas = {g: round(candidate.group_accuracy(g) - parent.group_accuracy(g), 3)
                    for g in sorted(parent.groups)}
    if not gain > rule.min_heldout_gain:
        reasons.append(f"held-out accuracy {candidate.heldout_accuracy:.1f}% vs the parent's "
                       f"{parent.heldout_accuracy:.1f}%: it must gain more than "
                       f"{rule.min_heldout_gain:g} points, and gained {gain:+.1f}")
    if golden_delta < -rule.max_golden_drop:
        reasons.append(f"golden top-1 accuracy fell from {parent.golden_accuracy:.1f}% to "
                       f"{candidate.golden_accuracy:.1f}% ({golden_delta:+.1f} points; at most "
                       f"-{rule.max_golden_drop:g} allowed)")
    for group, delta in group_deltas.items():
        if delta < -rule.max_group_drop:
            total = candidate.groups[group][1]
            reasons.append(f"group {group!r}: {parent.group_accuracy(group):.1f}% -> "
                           f"{candidate.group_accuracy(group):.1f}% of its {total} golden "
                           f"photos ({delta:+.1f} points; at most -{rule.max_group_drop:g} "
                           "allowed)")
    changed = {file: {"parent": parent.answers[file], "candidate": answer}
               for file, answer in sorted(candidate.answers.items())
               if parent.answers.get(file) != answer}
    deltas = {"heldout_accuracy": gain, "golden_top1_accuracy": golden_delta,
              "groups": group_deltas, "golden_answers_changed": changed}
    if reasons:
        return Verdict(passed=False, reasons=tuple(reasons), deltas=deltas)
    passed = (f"held-out accuracy {parent.heldout_accuracy:.1f}% -> "
              f"{candidate.heldout_accuracy:.1f}%, golden top-1 {parent.golden_accuracy:.1f}% -> "
              f"{candidate.golden_accuracy:.1f}%, no group down more than "
              f"{rule.max_group_drop:g} points")
    return Verdict(passed=True, reasons=(passed,), deltas=deltas)
