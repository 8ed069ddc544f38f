"""Real weights files that differ from the bundled lite0, for tests that need several versions.

    path = variant(tmp_path / "b.pth", 0.5)   # the bundled state_dict, one output bias + 0.5
    store.import_weights(path, DEFAULT_MODEL, parent=champion)
"""

from __future__ import annotations

from pathlib import Path

from inference.model import DEFAULT_MODEL
from inference.weights import bundled_weights_path, load_state_dict


def variant(path: Path, delta: float) -> Path:
    """Write the bundled state_dict with one output bias moved by ``delta`` to ``path``."""
    import torch

    state = load_state_dict(bundled_weights_path(DEFAULT_MODEL))
    (name,) = [k for k, v in state.items() if k.endswith("bias") and tuple(v.shape) == (1000,)]
    state[name] = state[name].clone()
    state[name][0] += delta
    torch.save(state, path)
    return path
