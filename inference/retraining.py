"""One retrain: samples in, a gated candidate in the model store, promoted or refused.

    store = ModelStore.open("models")
    outcome = retrain(store, "paychan-samples", RetrainOptions(train=TrainOptions(epochs=40)))
    outcome.promoted, outcome.candidate.id, outcome.report["verdict"]["reasons"]

The steps: read the samples (``inference.samples``), split them per label into training and
held-out photos, train a candidate from the champion (``inference.training``), import it
into the store with its labels, label groups, training-data digest and summary metrics,
measure parent and candidate on the held-out photos and the frozen golden set
(``inference.gate``), keep the report with the version (``<id>/report.json``), and promote
it to ``champion`` only if the gate passed and the champion is still the parent. A refused
candidate stays in the store, listed, not served; its report says why.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.gate import GateRule, judge, score
from inference.golden_set import load_golden
from inference.training import (
    ProgressFn,
    RetrainError,
    TrainOptions,
    pick_device,
    read_samples,
    replay_images,
    split_samples,
    train_candidate,
)
from inference.versions import CHAMPION

if TYPE_CHECKING:
    from inference.versions import ModelStore, StoredVersion

__all__ = ["REPLAY_DIR", "RetrainOptions", "RetrainOutcome", "retrain"]

#: ``<models>/replay/``: photos of classes the store's models already serve, used (with
#: ``--replay DIR``) to keep a retrain from forgetting them. Never the golden set.
REPLAY_DIR = "replay"
REPORT_SCHEMA = 1


@dataclasses.dataclass(frozen=True, slots=True)
class RetrainOptions:
    train: TrainOptions = dataclasses.field(default_factory=TrainOptions)
    rule: GateRule = dataclasses.field(default_factory=GateRule)
    promote: bool = True  # False: gate and report only (``--no-promote``)
    parent: str = "champion"
    replay_dirs: tuple[Path, ...] = ()  # besides <models>/replay/
    golden_dir: Path | None = None  # None: the shipped inference/golden/
    holdout: float = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class RetrainOutcome:
    candidate: StoredVersion
    promoted: bool
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["verdict"]["passed"])


def retrain(store: ModelStore, samples_dir: str | Path,
            options: RetrainOptions = RetrainOptions(), *,
            progress: ProgressFn | None = None) -> RetrainOutcome:
    """Train, gate, keep the report, promote on a pass (see the module docstring).

    Raises RetrainError for input that cannot be trained on (the message names the fix)."""
    from inference.model import load_model
    from inference.weights import file_digest

    report_progress: ProgressFn = progress or (lambda stage, done, total: None)
    started = time.perf_counter()
    device = pick_device(options.train.device)
    golden = load_golden(options.golden_dir)
    samples = read_samples(samples_dir)
    train, heldout = split_samples(samples.samples, options.holdout)
    parent = store.servable(options.parent)
    replay = replay_images([store.root / REPLAY_DIR, *options.replay_dirs])
    golden_files = {item.sha256 for item in golden.items}
    train_labels = {s.label for s in train}
    if len(train_labels) < 2 and not replay:
        raise RetrainError(
            f"samples: only one label ({next(iter(train_labels))!r}) and no replay photos, so "
            "nothing shows the model what that label is not; put photos of classes it "
            f"already knows in {store.root / REPLAY_DIR} (or pass --replay DIR), or submit "
            "samples of a second label")
    leaked = [s.path.name for s in samples.samples if s.sha256 in golden_files]
    if leaked:
        raise RetrainError(f"samples: {len(leaked)} sample(s) are golden-set photos "
                           f"({', '.join(leaked[:3])}); the golden set is the exam and is "
                           "never trained on: remove them from the samples directory")

    with tempfile.TemporaryDirectory(prefix=".retrain-", dir=store.root) as tmp:
        result = train_candidate(parent, train, replay, tmp, options.train,
                                 parent_label_groups=parent.manifest.label_groups,
                                 progress=report_progress)
        gate_started = time.perf_counter()
        parent_model = store.load(parent.id, device=device)
        candidate_model = load_model(result.architecture, result.weights_path, device=device,
                                     labels=result.labels, label_groups=result.label_groups)
        parent_scores = score(parent_model, golden, heldout,
                              progress=_stage(report_progress, "gate: parent"))
        candidate_scores = score(candidate_model, golden, heldout,
                                 progress=_stage(report_progress, "gate: candidate"))
        del parent_model, candidate_model
        verdict = judge(parent_scores, candidate_scores, options.rule)
        gate_s = time.perf_counter() - gate_started
        metrics = {
            "heldout_accuracy": candidate_scores.heldout_accuracy,
            "heldout_accuracy_parent": parent_scores.heldout_accuracy,
            "golden_top1": candidate_scores.golden_accuracy,
            "golden_top1_parent": parent_scores.golden_accuracy,
            "gate_passed": 1.0 if verdict.passed else 0.0,
            "retrain_seconds": round(time.perf_counter() - started, 2),
        }
        candidate_id = file_digest(result.weights_path).hex()
        candidate = store.import_weights(
            result.weights_path, result.architecture, labels=result.labels, parent=parent.id,
            training_data=samples.digest, metrics=metrics, label_groups=result.label_groups)
    assert candidate.id == candidate_id

    promoted = False
    decision = "refused by the gate"
    reasons = list(verdict.reasons)
    if store.aliases()[CHAMPION] == candidate.id:
        decision = "already the champion (the same weights as a retrain before)"
    elif verdict.passed and not options.promote:
        decision = "passed the gate, not promoted (--no-promote)"
    elif verdict.passed:
        from inference.versions import StoreError

        try:
            store.promote(candidate.id, if_champion=parent.id)
            promoted = True
            decision = "promoted to champion"
        except StoreError as exc:
            decision = "passed the gate, not promoted"
            reasons.append(str(exc))
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "candidate": candidate.id,
        "parent": parent.id,
        "architecture": result.architecture,
        "decision": decision,
        "promoted": promoted,
        "verdict": {**verdict.to_json(), "reasons": reasons},
        "rule": options.rule.to_json(),
        "parent_scores": parent_scores.to_json(),
        "candidate_scores": candidate_scores.to_json(),
        "data": {
            "samples_dir": str(samples.root),
            "samples_digest": samples.digest,
            "samples": len(samples.samples),
            "train": len(train),
            "heldout": len(heldout),
            "holdout_share": options.holdout,
            "by_label": _by_label(train, heldout),
            "new_labels": list(result.new_labels),
            "label_groups": {k: result.label_groups[k] for k in result.new_labels},
            "replay_photos": len(replay),
            "golden_dir": str(golden.root),
            "golden_digest": golden.digest,
            "golden_photos": len(golden.items),
        },
        "training": result.stats,
        "device": device,
        "seconds": {"train": result.stats["seconds"]["total"], "gate": round(gate_s, 2),
                    "total": round(time.perf_counter() - started, 2)},
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    store.save_report(candidate.id, report)
    return RetrainOutcome(candidate=store.get(candidate.id), promoted=promoted, report=report)


def _stage(progress: ProgressFn, stage: str) -> Callable[[int, int], None]:
    return lambda done, total: progress(stage, done, total)


def _by_label(train: Sequence[Any], heldout: Sequence[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, items in (("train", train), ("heldout", heldout)):
        for sample in items:
            out.setdefault(sample.label, {"train": 0, "heldout": 0})[name] += 1
    return dict(sorted(out.items()))
