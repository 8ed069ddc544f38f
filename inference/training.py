"""Training a candidate model from its parent's weights and the labelled samples.

    samples = read_samples("paychan-samples")            # the sample store's layout
    train, heldout = split_samples(samples.samples)       # stratified, deterministic, 25 % out
    replay = replay_images(["models/replay"])             # photos of classes already served
    result = train_candidate(store.resolve("champion"), train, replay, out_dir=tmp,
                             options=TrainOptions(epochs=40, device="auto"))
    result.weights_path, result.labels, result.label_groups, result.new_labels

What is trained, and how old classes are protected:

* The backbone stays frozen (``last_stage=True`` also fine-tunes its last stage), so every
  image is embedded once: the photo itself plus deterministic augmented views of it (mirror,
  a resized crop, a small colour shift: real photos, never noise), each view's random numbers
  seeded from the photo's sha256, so adding a sample never changes another's views.
* The head gains one row per label that the parent does not know (imprinted from the mean
  embedding of that label's photos, then trained); the parent's rows stay frozen in the
  head-only mode, so an old class's logit is bit-for-bit the parent's.
* A margin loss over *all* classes on the samples (multi-class hinge: each view's label must
  beat every other class by ``margin`` logits, and no more is asked, so a new row grows no
  larger than the samples need): a sample of an old label trains towards its old row, and
  every label's photos are negatives for every other label.
* A replay set protects the old classes: real photos of things the model already serves
  (``replay_images``: ``<models>/replay/`` and ``--replay DIR``), on which the candidate is
  distilled towards the parent's own softmax, with zero mass on the new labels. A new row
  that fires on a replay photo is pushed down. It matters most for the *neighbours* of a new
  label (the classes the parent answers on its photos, listed in the report's
  ``training.neighbours`` with their replay coverage): a neighbour with no replay photo is
  the class a new label takes photos from. The golden set is never used here: it is the exam.
* Afterwards the new rows' biases are lowered by half the margin (a wrong new answer takes
  a photo from a class that served well, so a new label must win clearly), and further
  until no confident replay view (parent top-1 probability >= 0.5) answers a new label,
  as long as at least 90 % of the new labels' training views stay right.

The gate (``inference.gate``) then decides on a held-out split and the golden set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.labels import groups_for

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from inference.preprocess import Preprocessor
    from inference.versions import StoredVersion

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_SAMPLES_PER_LABEL",
    "ProgressFn",
    "RetrainError",
    "Sample",
    "SampleSet",
    "TrainOptions",
    "TrainResult",
    "pick_device",
    "read_samples",
    "replay_images",
    "split_samples",
    "train_candidate",
]

#: A label needs this many samples: at least one held out for the gate, three to learn from.
MIN_SAMPLES_PER_LABEL = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

#: ``progress(stage, done, total)``: called as work advances (the CLI draws a bar from it).
ProgressFn = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class RetrainError(ValueError):
    """Retraining cannot start on this input; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One labelled photo from the sample store."""

    sha256: str
    label: str
    group: str | None  # an AnimalGroup value, or None when the submitter gave none
    path: Path


@dataclasses.dataclass(frozen=True, slots=True)
class SampleSet:
    """Every usable sample and the training-data digest over them."""

    root: Path
    samples: tuple[Sample, ...]
    digest: str

    def labels(self) -> Counter[str]:
        """How many samples each label has."""
        return Counter(sample.label for sample in self.samples)


def read_samples(root: str | Path) -> SampleSet:
    """The samples under ``root`` as the sample store keeps them (``SampleStore.records()``:
    one per picture and label, files present) and its training-data digest."""
    from inference.samples import MANIFEST, SampleStore

    base = Path(root)
    if not (base / MANIFEST).is_file():
        raise RetrainError(f"samples: {base / MANIFEST} does not exist; pass --samples DIR "
                           "naming the gateway's samples directory (--samples-dir of "
                           "`paychan serve`, where POST /v1/samples stores them)")
    store = SampleStore(base)
    samples = tuple(sorted(
        (Sample(sha256=r.sha256, label=r.label, group=r.group, path=base / r.path)
         for r in store.records()),
        key=lambda s: (s.label, s.sha256)))
    return SampleSet(root=base, samples=samples, digest=store.digest())


def split_samples(samples: Sequence[Sample], holdout: float = 0.25,
                  minimum: int = MIN_SAMPLES_PER_LABEL) -> tuple[list[Sample], list[Sample]]:
    """``(train, heldout)``: per label, the ``holdout`` share (at least one) by sha256 order,
    so the split is the same on every machine and a new sample never moves an old one across.

    Raises RetrainError when there are no samples or a label has fewer than ``minimum``.
    """
    if not samples:
        raise RetrainError("samples: none stored yet; submit labelled photos (POST /v1/samples "
                           f"or `paychan classify --sample LABEL`), at least {minimum} per label")
    by_label: dict[str, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    short = {label: len(items) for label, items in by_label.items() if len(items) < minimum}
    if short:
        names = ", ".join(f"{label!r} has {n}" for label, n in sorted(short.items()))
        raise RetrainError(f"samples: {names}; every label needs at least {minimum} samples "
                           "(one is held out to test the candidate): submit more photos of it")
    train: list[Sample] = []
    heldout: list[Sample] = []
    for label in sorted(by_label):
        # sha256 of (label, sha) orders them: stable, and independent of arrival order.
        items = sorted(by_label[label],
                       key=lambda s: hashlib.sha256(f"{s.label}/{s.sha256}".encode()).digest())
        cut = max(1, round(len(items) * holdout))
        heldout.extend(items[:cut])
        train.extend(items[cut:])
    return train, heldout


def replay_images(dirs: Iterable[str | Path]) -> list[Path]:
    """Every image file under the given directories (recursively, sorted); missing ones are
    skipped. These are photos of classes the model already serves, never the golden set."""
    found: set[Path] = set()
    for base in dirs:
        root = Path(base)
        if root.is_dir():
            found.update(p for p in root.rglob("*")
                         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                         and not p.name.startswith("."))
    return sorted(found)


def pick_device(device: str = "auto") -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RetrainError("device: cuda asked for, but torch sees no CUDA GPU; "
                           "pass --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        raise RetrainError(f"device: {device!r} must be auto, cpu or cuda")
    return device


@dataclasses.dataclass(frozen=True, slots=True)
class TrainOptions:
    """How a candidate is trained (every field goes into the report)."""

    epochs: int = 40
    last_stage: bool = False  # also fine-tune the backbone's last stage (EfficientNet family)
    device: str = "auto"
    seed: int = 0
    views: int = 4  # augmented views per sample photo (1: the photo alone)
    replay_views: int = 2  # per replay photo
    lr: float = 0.01  # the new head rows
    backbone_lr: float = 1e-4  # the last stage and the old head rows, with last_stage
    batch_size: int = 64
    replay_weight: float = 1.0
    margin: float = 1.0  # logits by which a training view must beat every other class

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise RetrainError(f"epochs: {self.epochs} must be at least 1")
        if not 1 <= self.views <= 8 or not 1 <= self.replay_views <= 8:
            raise RetrainError("views/replay_views: must be 1..8 augmented views per photo")


@dataclasses.dataclass(frozen=True, slots=True)
class TrainResult:
    """A trained candidate, not yet in the store."""

    weights_path: Path
    architecture: str
    labels: tuple[str, ...]
    label_groups: dict[str, str]  # the parent's, plus one entry per new label
    new_labels: tuple[str, ...]
    stats: dict[str, Any]  # figures for the report: counts, losses, seconds, device


# ---------------------------------------------------------------------- augmentation


def _views(image: Image.Image, count: int, seed: bytes) -> list[Image.Image]:
    """The photo and ``count - 1`` augmented views of it: mirror, a resized crop (60-90 % of
    the area), a small colour shift with a mirror. Seeded by the photo's digest."""
    from PIL import ImageEnhance, ImageOps

    rng = random.Random(seed)
    out = [image]
    width, height = image.size
    while len(out) < count:
        kind = len(out) % 4
        if kind == 1:
            out.append(ImageOps.mirror(image))
        elif kind == 2:
            scale = rng.uniform(0.6, 0.9)
            w, h = max(1, int(width * math.sqrt(scale))), max(1, int(height * math.sqrt(scale)))
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            out.append(image.crop((x, y, x + w, y + h)))
        elif kind == 3:
            shifted = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
            shifted = ImageEnhance.Contrast(shifted).enhance(rng.uniform(0.8, 1.2))
            shifted = ImageEnhance.Color(shifted).enhance(rng.uniform(0.8, 1.2))
            out.append(ImageOps.mirror(shifted))
        else:  # a second round: another crop, mirrored
            scale = rng.uniform(0.5, 0.8)
            w, h = max(1, int(width * math.sqrt(scale))), max(1, int(height * math.sqrt(scale)))
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            out.append(ImageOps.mirror(image.crop((x, y, x + w, y + h))))
    return out


def _tensors(pre: Preprocessor, path: Path, count: int) -> list[torch.Tensor]:
    """The serving preprocessing (decode + transform) of ``count`` views of one photo."""
    data = path.read_bytes()
    try:
        image = pre.decode(data)
    except ValueError as exc:  # ImageError: the same rules as a paid upload
        raise RetrainError(f"sample {path}: {exc}; remove it from the samples") from None
    return [pre.transform(view) for view in _views(image, count, hashlib.sha256(data).digest())]


# ---------------------------------------------------------------------- the network split


class _Split:
    """The parent network cut in two: ``prefix`` (frozen, run once per view, cached) and
    ``suffix`` (trained with ``last_stage``, else empty) up to the pooled features."""

    def __init__(self, module: torch.nn.Module, last_stage: bool) -> None:
        self.module = module
        self.last_stage = last_stage
        blocks = getattr(module, "blocks", None)
        if last_stage and not (blocks is not None and len(blocks) > 1
                               and hasattr(module, "conv_stem")):
            raise RetrainError(f"last_stage: {type(module).__name__} has no EfficientNet-style "
                               "stages; retrain without --last-stage (head only)")

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.module
        if not self.last_stage:
            out: torch.Tensor = m.forward_head(m.forward_features(x), pre_logits=True)
            return out
        x = m.bn1(m.conv_stem(x))
        for block in list(m.blocks)[:-1]:
            x = block(x)
        return x

    def suffix(self, x: torch.Tensor) -> torch.Tensor:
        if not self.last_stage:
            return x
        m: Any = self.module
        x = m.bn2(m.conv_head(m.blocks[-1](x)))
        out: torch.Tensor = m.forward_head(x, pre_logits=True)
        return out

    def suffix_parameters(self) -> list[torch.nn.Parameter]:
        if not self.last_stage:
            return []
        m: Any = self.module
        return [*m.blocks[-1].parameters(), *m.conv_head.parameters(), *m.bn2.parameters()]


def _embed(split: _Split, tensors: list[torch.Tensor], device: str, batch: int,
           progress: Callable[[int], None]) -> torch.Tensor:
    import torch

    outs = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch):
            x = torch.stack(tensors[start:start + batch]).to(device)
            outs.append(split.prefix(x.contiguous(memory_format=torch.channels_last)).float())
            progress(min(start + batch, len(tensors)))
    return torch.cat(outs).clone()  # out of inference mode: usable in autograd


# ---------------------------------------------------------------------- training


def train_candidate(
    parent: StoredVersion,
    train: Sequence[Sample],
    replay: Sequence[Path],
    out_dir: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    parent_label_groups: Mapping[str, str] | None = None,
    progress: ProgressFn = _no_progress,
) -> TrainResult:
    """Train a candidate from ``parent`` on ``train`` (+ ``replay``, see the module docstring)
    and save its state_dict to ``<out_dir>/candidate.pth``."""
    import torch

    from inference.model import build_module
    from inference.preprocess import Preprocessor

    started = time.perf_counter()
    device = pick_device(options.device)
    torch.manual_seed(options.seed)
    manifest = parent.manifest
    old_labels = tuple(manifest.labels)
    index = {label: i for i, label in enumerate(old_labels)}
    new_labels = tuple(sorted({s.label for s in train} - set(index)))
    labels = old_labels + new_labels
    index.update({label: len(old_labels) + i for i, label in enumerate(new_labels)})

    module = build_module(manifest.architecture, parent.weights_path, num_classes=len(old_labels))
    module.eval().requires_grad_(False)
    module = module.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    from timm.data.config import resolve_data_config

    data_config: dict[str, Any] = resolve_data_config(model=module)  # type: ignore[no-untyped-call]
    pre = Preprocessor(data_config)
    split = _Split(module, options.last_stage)
    head = module.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise RetrainError(f"architecture: {manifest.architecture}'s classifier is "
                           f"{type(head).__name__}, not a Linear layer; pick a timm model with "
                           "a linear head")

    # 1. every view through the frozen part, once
    decode_started = time.perf_counter()
    sample_tensors: list[torch.Tensor] = []
    sample_targets: list[int] = []
    for sample in train:
        views = _tensors(pre, sample.path, options.views)
        sample_tensors.extend(views)
        sample_targets.extend([index[sample.label]] * len(views))
    replay_tensors: list[torch.Tensor] = []
    for path in replay:
        try:
            replay_tensors.extend(_tensors(pre, path, options.replay_views))
        except RetrainError:
            continue  # a replay photo that fails the upload rules is not worth failing over
    decode_s = time.perf_counter() - decode_started
    total = len(sample_tensors) + len(replay_tensors)
    embed_started = time.perf_counter()
    feats = _embed(split, sample_tensors + replay_tensors, device, options.batch_size,
                   lambda done: progress("embedding", done, total))
    embed_s = time.perf_counter() - embed_started
    sample_feats, replay_feats = feats[:len(sample_tensors)], feats[len(sample_tensors):]
    targets = torch.tensor(sample_targets, device=device)

    with torch.no_grad():
        w_old = head.weight.detach().float().clone()
        b_old = head.bias.detach().float().clone()
        parent_sample_logits = split.suffix(sample_feats) @ w_old.T + b_old
        parent_replay_probs = (split.suffix(replay_feats) @ w_old.T + b_old).softmax(-1)

    # 2. the new rows: imprinted from each label's mean embedding
    with torch.no_grad():
        pooled = split.suffix(sample_feats)
        row_norm = w_old.norm(dim=1).mean()
        w_new = torch.zeros(len(new_labels), w_old.shape[1], device=device)
        for i, label in enumerate(new_labels):
            mean = pooled[targets == index[label]].mean(0)
            w_new[i] = mean / mean.norm().clamp_min(1e-6) * row_norm
        b_new = torch.full((len(new_labels),), float(b_old.mean()), device=device)
    w_new.requires_grad_(True)
    b_new.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": [w_new, b_new], "lr": options.lr}]
    w_old_p = torch.nn.Parameter(w_old, requires_grad=options.last_stage)
    b_old_p = torch.nn.Parameter(b_old, requires_grad=options.last_stage)
    if options.last_stage:
        suffix_params = split.suffix_parameters()
        for p in suffix_params:
            p.requires_grad_(True)
        groups.append({"params": [*suffix_params, w_old_p, b_old_p], "lr": options.backbone_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(options.seed)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        features = split.suffix(x)
        return torch.cat([features @ w_old_p.T + b_old_p, features @ w_new.T + b_new], dim=1)

    # 3. a margin on the samples, distillation to the parent on the replay views
    train_started = time.perf_counter()
    n_old = len(old_labels)
    losses: list[float] = []
    steps_per_epoch = max(1, math.ceil(len(sample_feats) / options.batch_size))
    replay_batch = max(1, math.ceil(len(replay_feats) / steps_per_epoch)) if len(replay_feats) else 0
    for epoch in range(options.epochs):
        order = torch.randperm(len(sample_feats), generator=generator).to(device)
        replay_order = (torch.randperm(len(replay_feats), generator=generator).to(device)
                        if replay_batch else None)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            pick = order[step * options.batch_size:(step + 1) * options.batch_size]
            loss = _hinge(logits_of(sample_feats[pick]), targets[pick], options.margin)
            if replay_order is not None:
                rpick = replay_order[step * replay_batch:(step + 1) * replay_batch]
                if len(rpick):
                    log_q = logits_of(replay_feats[rpick]).log_softmax(-1)[:, :n_old]
                    distill = -(parent_replay_probs[rpick] * log_q).sum(-1).mean()
                    loss = loss + options.replay_weight * distill
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            epoch_loss += float(loss.detach())
        losses.append(epoch_loss / steps_per_epoch)
        progress("training", epoch + 1, options.epochs)
    train_s = time.perf_counter() - train_started

    # 4. the margin: no confident replay view may answer a new label, if recall allows
    bias_shift = 0.0
    with torch.no_grad():
        if new_labels:
            bias_shift = _calibrate(logits_of, sample_feats, targets, replay_feats,
                                    parent_replay_probs, n_old, b_new, options.margin / 2)
        train_logits = logits_of(sample_feats)
        train_accuracy = float((train_logits.argmax(1) == targets).float().mean())
        replay_new = (int((logits_of(replay_feats).argmax(1) >= n_old).sum())
                      if len(replay_feats) else 0)

    # 5. the groups of new labels: the submitters' word, else what the parent saw in them
    parent_groups = groups_for(old_labels, dict(parent_label_groups or {}))
    label_groups = dict(parent_label_groups or {})
    for label in new_labels:
        given = Counter(s.group for s in train if s.label == label and s.group)
        if given:
            label_groups[label] = given.most_common(1)[0][0]
        else:
            seen = parent_sample_logits[targets == index[label]].argmax(1).tolist()
            label_groups[label] = Counter(parent_groups[i] for i in seen).most_common(1)[0][0].value
    groups_for(labels, label_groups)  # raises on a value that is not an AnimalGroup
    neighbours = _neighbours(new_labels, index, targets, parent_sample_logits,
                             parent_replay_probs, old_labels)

    # 6. the candidate's weights: the parent's module with the grown head
    with torch.no_grad():
        grown = torch.nn.Linear(w_old.shape[1], len(labels))
        grown.weight.copy_(torch.cat([w_old_p, w_new]).cpu())
        grown.bias.copy_(torch.cat([b_old_p, b_new]).cpu())
        module = module.cpu()
        module.reset_classifier(len(labels))
        _set_classifier(module, grown)
    out = Path(out_dir) / "candidate.pth"
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, out)
    stats = {
        "device": device, "architecture": manifest.architecture,
        "train_samples": len(train), "train_views": len(sample_feats),
        "replay_photos": len(replay), "replay_views": len(replay_feats),
        "epochs": options.epochs, "last_stage": options.last_stage, "seed": options.seed,
        "views": options.views, "lr": options.lr,
        "loss_first": round(losses[0], 5), "loss_last": round(losses[-1], 5),
        "train_accuracy": round(100 * train_accuracy, 2),
        "replay_views_answering_new_labels": replay_new,
        "new_label_bias_shift": round(bias_shift, 4),
        "neighbours": neighbours,
        "seconds": {"decode": round(decode_s, 2), "embed": round(embed_s, 2),
                    "train": round(train_s, 2),
                    "total": round(time.perf_counter() - started, 2)},
    }
    return TrainResult(weights_path=out, architecture=manifest.architecture, labels=labels,
                       label_groups=label_groups, new_labels=new_labels, stats=stats)


def _neighbours(new_labels: Sequence[str], index: Mapping[str, int], targets: torch.Tensor,
                parent_sample_logits: torch.Tensor, parent_replay_probs: torch.Tensor,
                old_labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Per new label, the old classes the parent answers on its training views (most often
    first) and how many replay views the parent answers with each: a neighbour without
    replay photos is the class a new label is most likely to take photos from, so an
    operator adds photos of it to the replay set."""
    replay_top = Counter(parent_replay_probs.argmax(1).tolist()) if len(parent_replay_probs) else Counter()
    out: dict[str, list[dict[str, Any]]] = {}
    for label in new_labels:
        seen = Counter(parent_sample_logits[targets == index[label]].argmax(1).tolist())
        out[label] = [{"class": old_labels[i], "views": n, "replay_views": replay_top.get(i, 0)}
                      for i, n in seen.most_common(5)]
    return out


def _hinge(logits: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Multi-class hinge: each view's class must beat the best other class by ``margin``.
    Unlike cross-entropy it stops pushing once that holds, so a new row grows no larger than
    the samples need and fires less on look-alike classes it never saw."""
    import torch

    right = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf")).max(1).values
    return torch.relu(margin - (right - others)).mean()


def _calibrate(logits_of: Callable[[torch.Tensor], torch.Tensor], sample_feats: torch.Tensor,
               targets: torch.Tensor, replay_feats: torch.Tensor,
               parent_replay_probs: torch.Tensor, n_old: int, b_new: torch.Tensor,
               base: float) -> float:
    """Lower every new row's bias by one shift: at least ``base`` (half the training margin:
    a new label must win clearly, since a wrong new answer takes a photo from a class that
    served well), more if a confident replay view (parent top-1 probability >= 0.5) would
    still answer a new label; never so far that under 90 % of the new labels' training views
    stay right. Returns the shift applied (>= 0)."""
    import torch

    need = base
    confident = parent_replay_probs.max(1).values >= 0.5
    if len(replay_feats) and bool(confident.any()):
        logits = logits_of(replay_feats[confident])
        margin = logits[:, n_old:].max(1).values - logits[:, :n_old].max(1).values
        need = max(need, float(margin.max()) + 1e-3)
    new_mask = targets >= n_old
    sample_logits = logits_of(sample_feats[new_mask])
    sample_targets = targets[new_mask]

    def recall(shift: float) -> float:
        shifted = sample_logits.clone()
        shifted[:, n_old:] -= shift
        return float((shifted.argmax(1) == sample_targets).float().mean())

    shift = need
    if recall(shift) < 0.9:  # too costly: the largest shift that keeps 90 %
        low, high = 0.0, shift
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if recall(mid) >= 0.9 else (low, mid)
        shift = low
    b_new.sub_(torch.tensor(shift, device=b_new.device))
    return shift


def _set_classifier(module: torch.nn.Module, head: torch.nn.Linear) -> None:
    """Copy ``head`` into the module's classifier in place (timm names it per family)."""
    target = module.get_classifier()  # type: ignore[operator]
    target.weight.copy_(head.weight)
    target.bias.copy_(head.bias)
