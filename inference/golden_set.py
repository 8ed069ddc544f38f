"""The frozen golden set: real labelled photos that every candidate model is measured on.

    golden = load_golden()                      # inference/golden/, shipped in the package
    golden.digest                               # "sha256:..." over labels.csv and every photo
    for item in golden.items:
        item.path, item.imagenet_index, item.group   # index None: known only by its group

The set lives in ``inference/golden/``: JPEGs, ``labels.csv`` with the header
``file,imagenet_index,group`` (group: an ``AnimalGroup`` value) and ``LICENSES.md``. It is
*frozen*: retraining never trains on it, and the digest of its bytes goes into every gate
report, so two reports measured on different sets can be told apart. Errors are
``GoldenSetError`` and name the file, the line and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from pathlib import Path

from inference.labels import AnimalGroup

__all__ = ["GOLDEN_DIR", "GoldenItem", "GoldenSet", "GoldenSetError", "load_golden"]

#: The golden set shipped with the package.
GOLDEN_DIR = Path(__file__).parent / "golden"
LABELS_FILE = "labels.csv"
_HEADER = ["file", "imagenet_index", "group"]


class GoldenSetError(ValueError):
    """The golden set is missing or malformed; the message names the file, line and fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class GoldenItem:
    """One golden photo: where it is, its ImageNet-1k class (None: known by group only) and
    its animal group."""

    file: str  # the name in labels.csv
    path: Path
    imagenet_index: int | None
    group: AnimalGroup
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)
class GoldenSet:
    """The loaded set; ``digest`` changes when any photo or label changes."""

    root: Path
    items: tuple[GoldenItem, ...]
    digest: str

    @property
    def indexed(self) -> tuple[GoldenItem, ...]:
        """The items with an ImageNet class (the top-1 accuracy is measured on these)."""
        return tuple(item for item in self.items if item.imagenet_index is not None)


def load_golden(root: str | Path | None = None) -> GoldenSet:
    """Read ``<root>/labels.csv`` (default: the shipped ``inference/golden/``) and hash every
    photo it names. Raises GoldenSetError naming what is wrong and how to fix it."""
    base = Path(root) if root is not None else GOLDEN_DIR
    labels = base / LABELS_FILE
    try:
        text = labels.read_bytes()
    except OSError as exc:
        raise GoldenSetError(f"{labels}: cannot read ({exc.strerror}); the golden set is "
                             "inference/golden/ with labels.csv (file,imagenet_index,group) "
                             "beside its photos") from None
    rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    if not rows or [cell.strip() for cell in rows[0]] != _HEADER:
        raise GoldenSetError(f"{labels}: line 1 must be the header {','.join(_HEADER)}")
    items: list[GoldenItem] = []
    seen: set[str] = set()
    digest = hashlib.sha256(text)
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        where = f"{labels}:{line}"
        if len(row) != 3:
            raise GoldenSetError(f"{where}: expected 3 fields (file,imagenet_index,group), "
                                 f"got {len(row)}")
        name, index_text, group_text = (cell.strip() for cell in row)
        if not name or "/" in name or name.startswith(".") or name in seen:
            raise GoldenSetError(f"{where}: file {name!r} must be a unique file name in {base}")
        seen.add(name)
        index = None
        if index_text:
            if not index_text.isdigit() or not 0 <= int(index_text) < 1000:
                raise GoldenSetError(f"{where}: imagenet_index {index_text!r} must be 0..999 "
                                     "or empty (a photo known only by its group)")
            index = int(index_text)
        try:
            group = AnimalGroup(group_text)
        except ValueError:
            raise GoldenSetError(f"{where}: group {group_text!r} is not one of "
                                 f"{', '.join(g.value for g in AnimalGroup)}") from None
        path = base / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GoldenSetError(f"{where}: photo {path} cannot be read ({exc.strerror}); "
                                 "add it or remove its line") from None
        sha = hashlib.sha256(data).hexdigest()
        digest.update(f"\n{name}:{sha}".encode())
        items.append(GoldenItem(file=name, path=path, imagenet_index=index, group=group,
                                sha256=sha))
    if not items:
        raise GoldenSetError(f"{labels}: lists no photos; add one line per golden photo")
    return GoldenSet(root=base, items=tuple(items), digest="sha256:" + digest.hexdigest())
