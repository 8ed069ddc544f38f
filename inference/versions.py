"""The model store: one directory of versions and two aliases (Triton's model repository
layout, MLflow's aliases).

    store = ModelStore.open("models")          # an empty store bootstraps the bundled lite0
    v = store.import_weights("new.pth", "tf_efficientnet_lite0", parent=store.resolve("champion").id)
    store.promote(v.id)                        # champion -> previous, v -> champion
    store.rollback()                           # champion <-> previous
    store.retire(old_id)                       # kept on disk, no longer servable
    model = store.load("champion", device="cpu")

Layout::

    <models dir>/
      aliases.json            {"champion": "<id>", "previous": "<id>" | null}
      history.jsonl           one line per alias change (who was champion before, and after)
      .lock                   flock'd around every alias or manifest write
      <id>/weights.pth        the weights file, byte for byte as imported
      <id>/manifest.json      id, parent, architecture, labels, training_data, metrics,
                              created_at, retired; label_groups when a label beyond
                              ImageNet's has an animal group ({"okapi": "other_mammal"})
      <id>/report.json        a retrained version's gate report (``save_report``/``report``)
      <id>/publication.json   its ModelRegistry publication (``save_publication``/``publication``)

A version's id is the sha256 of its weights file (``inference.weights.file_digest``), the
same 32 bytes that ``ModelVersion.content_hash`` and every receipt carry. Every write is a
temporary file, fsync, rename, fsync of the directory: a crash leaves the old file or the new
one, never half of either. Errors are ``StoreError`` and name the field and the fix.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.weights import file_digest

if TYPE_CHECKING:
    from inference.model import LoadedModel

__all__ = [
    "ALIASES",
    "CHAMPION",
    "PREVIOUS",
    "Manifest",
    "ModelStore",
    "StoreError",
    "StoredVersion",
]

CHAMPION = "champion"
PREVIOUS = "previous"
ALIASES = (CHAMPION, PREVIOUS)

MANIFEST = "manifest.json"
WEIGHTS = "weights.pth"
ALIASES_FILE = "aliases.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
REPORT_FILE = "report.json"  # a retrained version's gate report (inference.retraining)
PUBLICATION_FILE = "publication.json"  # its ModelRegistry publication (gateway.provenance)
_STAGING = ".staging-"
_ID = re.compile(r"^[0-9a-f]{64}$")
#: The shortest id prefix ``resolve`` accepts (shorter ones match by accident).
MIN_PREFIX = 4


class StoreError(ValueError):
    """A store operation was refused; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """What ``<id>/manifest.json`` holds."""

    id: str  # sha256 of the weights file, 64 hex digits
    architecture: str  # timm model name
    labels: tuple[str, ...]  # one name per output class (may extend ImageNet's 1000)
    parent: str | None = None  # the version this one was trained from
    training_data: str | None = None  # digest of the data it was trained on (None: external)
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    created_at: str = ""  # ISO 8601, UTC
    retired: bool = False
    weights: str = WEIGHTS  # the file name inside the version's directory
    # The animal group (an AnimalGroup value) of labels beyond ImageNet's; any other label
    # keeps ImageNet's (inference.labels.groups_for). Written only when not empty.
    label_groups: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id, "parent": self.parent, "architecture": self.architecture,
            "labels": list(self.labels), "training_data": self.training_data,
            "metrics": dict(self.metrics), "created_at": self.created_at,
            "retired": self.retired, "weights": self.weights}
        if self.label_groups:
            data["label_groups"] = dict(self.label_groups)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Manifest:
        """Parse and check a manifest; ``where`` (its path) goes into every error."""

        def need(name: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
            value = data.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, kind):
                raise StoreError(f"{where}: field {name!r} is missing or not a "
                                 f"{getattr(kind, '__name__', kind)}; re-import the weights "
                                 "(paychan models import) or fix the file")
            return value

        ident = need("id", str)
        if not _ID.match(ident):
            raise StoreError(f"{where}: field 'id' must be 64 lowercase hex digits (the sha256 "
                             "of the weights file); re-import the weights")
        labels = need("labels", list)
        if not labels or not all(isinstance(name, str) for name in labels):
            raise StoreError(f"{where}: field 'labels' must be a non-empty list of names")
        metrics = need("metrics", dict, optional=True) or {}
        groups = need("label_groups", dict, optional=True) or {}
        return cls(id=ident, architecture=need("architecture", str), labels=tuple(labels),
                   parent=need("parent", str, optional=True),
                   training_data=need("training_data", str, optional=True),
                   metrics={str(k): float(v) for k, v in metrics.items()},
                   created_at=need("created_at", str), retired=bool(data.get("retired", False)),
                   weights=need("weights", str, optional=True) or WEIGHTS,
                   label_groups=_checked_label_groups(groups, labels, f"{where}: field "))


def _checked_label_groups(groups: Mapping[Any, Any], labels: Sequence[str],
                          where: str = "") -> dict[str, str]:
    """``groups`` as {label: AnimalGroup value}; StoreError naming the entry and the fix."""
    from inference.labels import AnimalGroup

    known = set(labels)
    allowed = ", ".join(g.value for g in AnimalGroup)
    for label, group in groups.items():
        if label not in known:
            raise StoreError(f"{where}'label_groups': {label!r} is not one of the version's "
                             "labels; key it by a label name in 'labels'")
        if group not in AnimalGroup.__members__.values():
            raise StoreError(f"{where}'label_groups': {label!r} maps to {group!r}, not an animal "
                             f"group; use one of {allowed}")
    return {str(k): str(v) for k, v in groups.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class StoredVersion:
    """A version in the store: its manifest, its directory, the aliases naming it now."""

    manifest: Manifest
    path: Path
    aliases: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def weights_path(self) -> Path:
        return self.path / self.manifest.weights

    @property
    def retired(self) -> bool:
        return self.manifest.retired

    def to_json(self, *, labels: bool = False) -> dict[str, Any]:
        """The listing row: ``labels=False`` gives the class count, not 1000 names."""
        data = self.manifest.to_json()
        data["aliases"] = list(self.aliases)
        data["num_classes"] = len(self.manifest.labels)
        if not labels:
            del data["labels"]
        return data


class ModelStore:
    """A directory of model versions; see the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def open(cls, root: str | Path, *, bootstrap: bool = True) -> ModelStore:
        """The store at ``root`` (created if missing). ``bootstrap``: a store with no
        versions gets the bundled ImageNet tf_efficientnet_lite0 as its champion."""
        store = cls(root)
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"models: cannot create {store.root}: {exc.strerror}; "
                             "pass --models DIR (or PAYCHAN_MODELS) naming a writable directory")
        if not store.root.is_dir():
            raise StoreError(f"models: {store.root} is not a directory; pass --models DIR")
        if bootstrap and not store._ids():
            store.bootstrap()
        return store

    # ------------------------------------------------------------------ reading

    def list(self) -> list[StoredVersion]:
        """Every version, retired ones too, oldest first (then by id)."""
        aliases = self.aliases()
        versions = [self._read(ident, aliases) for ident in self._ids()]
        return sorted(versions, key=lambda v: (v.manifest.created_at, v.id))

    def aliases(self) -> dict[str, str | None]:
        """``{"champion": id | None, "previous": id | None}``."""
        path = self.root / ALIASES_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return dict.fromkeys(ALIASES)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable ({exc}); restore it from history.jsonl's last "
                             "line or run `paychan models promote ID`") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path}: must be a JSON object; run `paychan models promote ID`")
        return {name: data.get(name) if isinstance(data.get(name), str) else None
                for name in ALIASES}

    def get(self, ident: str) -> StoredVersion:
        """The version with this full id; StoreError if absent."""
        if not _ID.match(ident) or not (self.root / ident / MANIFEST).is_file():
            raise StoreError(f"version {ident!r}: not in {self.root}; `paychan models list` "
                             "shows the ids")
        return self._read(ident, self.aliases())

    def resolve(self, ref: str) -> StoredVersion:
        """A version by alias (``champion``/``previous``), full id, ``0x``-id, unique id prefix
        (at least 4 hex digits), or ``<architecture>-<prefix>`` (``ModelVersion.id``)."""
        text = ref.strip()
        aliases = self.aliases()
        if text in ALIASES:
            ident = aliases[text]
            if ident is None:
                fix = ("run `paychan models promote ID`" if text == CHAMPION else
                       "it is set by the second `paychan models promote`")
                raise StoreError(f"{text}: no version holds this alias yet; {fix}")
            return self._read(ident, aliases)
        prefix = text.lower().removeprefix("0x")
        architecture = None
        if "-" in prefix and not re.fullmatch(r"[0-9a-f]+", prefix):
            architecture, _, prefix = prefix.rpartition("-")
        if not re.fullmatch(r"[0-9a-f]+", prefix):
            raise StoreError(f"model {ref!r}: not an alias ({', '.join(ALIASES)}) nor a hex id; "
                             "`paychan models list` shows the ids")
        if len(prefix) < MIN_PREFIX:
            raise StoreError(f"model {ref!r}: an id prefix needs at least {MIN_PREFIX} hex digits")
        matches = [ident for ident in self._ids() if ident.startswith(prefix)]
        found = [self._read(ident, aliases) for ident in matches]
        if architecture is not None:
            found = [v for v in found if v.manifest.architecture.lower() == architecture]
        if not found:
            raise StoreError(f"model {ref!r}: no version in {self.root} matches; "
                             "`paychan models list` shows the ids")
        if len(found) > 1:
            raise StoreError(f"model {ref!r}: ambiguous, matches "
                             f"{', '.join(v.id[:16] for v in found)}; give more digits")
        return found[0]

    def servable(self, ref: str = CHAMPION) -> StoredVersion:
        """``resolve(ref)``, refusing a retired version."""
        version = self.resolve(ref)
        if version.retired:
            raise StoreError(f"model {ref!r}: version {version.id[:16]} is retired and not "
                             "servable; pick another (`paychan models list`)")
        return version

    def load(self, ref: str = CHAMPION, **options: Any) -> LoadedModel:
        """The servable version ``ref`` as a ``LoadedModel`` (options: ``load_model``'s)."""
        from inference.model import load_model

        version = self.servable(ref)
        return load_model(version.manifest.architecture, version.weights_path,
                          labels=version.manifest.labels,
                          label_groups=version.manifest.label_groups, **options)

    # ------------------------------------------------------------------ writing

    def import_weights(
        self,
        path: str | Path,
        architecture: str,
        *,
        labels: Sequence[str] | None = None,
        parent: str | None = None,
        training_data: str | None = None,
        metrics: Mapping[str, float] | None = None,
        label_groups: Mapping[str, str] | None = None,
    ) -> StoredVersion:
        """Copy a weights file in as a version (id: the file's sha256), checked by a strict
        load into ``architecture`` with ``len(labels)`` classes (default ImageNet-1k's).
        ``label_groups``: the animal group of labels beyond ImageNet's (``{"okapi": "other_mammal"}``).
        Importing the same bytes again returns the stored version unchanged."""
        source = Path(path)
        if not source.is_file():
            raise StoreError(f"weights: {source} is not a file; pass the path of a state_dict file")
        ident = file_digest(source).hex()
        if (self.root / ident / MANIFEST).is_file():
            return self.get(ident)
        if parent is not None:
            parent = self.resolve(parent).id
        if labels is None:
            from inference.labels import imagenet_labels

            labels = imagenet_labels()
        labels = tuple(labels)
        if not labels or not all(isinstance(name, str) and name for name in labels):
            raise StoreError("labels: must be a non-empty list of names, one per class")
        if metrics is not None:
            bad = [k for k, v in metrics.items() if not isinstance(v, (int, float))]
            if bad:
                raise StoreError(f"metrics: {bad[0]!r} is not a number; metrics map names to numbers")
        groups = _checked_label_groups(label_groups or {}, labels)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.root))
        try:
            weights = staging / WEIGHTS
            shutil.copyfile(source, weights)
            if file_digest(weights).hex() != ident:
                raise StoreError(f"weights: {source} changed while it was copied; import it again")
            from inference.model import build_module

            try:
                build_module(architecture, weights, num_classes=len(labels))
            except Exception as exc:  # not a state_dict, wrong architecture, head size
                raise StoreError(f"weights/architecture/labels: {exc}; pass the timm architecture "
                                 "these weights were saved from, and one label per class") from None
            manifest = Manifest(
                id=ident, architecture=architecture, labels=labels, parent=parent,
                training_data=training_data, metrics=dict(metrics or {}), label_groups=groups,
                created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            )
            _write_durably(staging / MANIFEST, _dumps(manifest.to_json()))
            _fsync(weights)
            _fsync_dir(staging)
            try:
                os.rename(staging, self.root / ident)
            except OSError:
                if not (self.root / ident / MANIFEST).is_file():  # not a concurrent import
                    raise
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(ident)

    def bootstrap(self) -> StoredVersion:
        """Import the bundled ImageNet tf_efficientnet_lite0 and make it champion, once: the
        version the gateway serves without a store (same id)."""
        from inference.model import DEFAULT_MODEL
        from inference.weights import bundled_weights_path

        with self._locked():
            if self._ids():
                return self.resolve(CHAMPION)
            version = self.import_weights(bundled_weights_path(DEFAULT_MODEL), DEFAULT_MODEL)
            self._set_aliases({CHAMPION: version.id, PREVIOUS: None}, "bootstrap")
        return self.get(version.id)

    def promote(self, ref: str, *, if_champion: str | None = None) -> StoredVersion:
        """Make ``ref`` the champion; the old champion becomes ``previous``. Promoting the
        champion again changes nothing. ``if_champion``: refuse (StoreError) unless that id
        is still the champion (a retrain promotes only over the parent it trained from)."""
        with self._locked():
            version = self.resolve(ref)
            current = self.aliases()[CHAMPION]
            if if_champion is not None and current != if_champion:
                raise StoreError(f"champion: changed from {if_champion[:16]} to "
                                 f"{str(current)[:16]} meanwhile; retrain from the new champion")
            if version.retired:
                raise StoreError(f"version {version.id[:16]}: retired, cannot be promoted; "
                                 "import new weights or promote another version")
            aliases = self.aliases()
            if aliases[CHAMPION] != version.id:
                self._set_aliases({CHAMPION: version.id, PREVIOUS: aliases[CHAMPION]}, "promote")
        return self.get(version.id)

    def rollback(self) -> StoredVersion:
        """Swap ``champion`` and ``previous``; returns the new champion."""
        with self._locked():
            aliases = self.aliases()
            previous = aliases[PREVIOUS]
            if previous is None:
                raise StoreError("previous: there is no previous champion to roll back to; "
                                 "`paychan models promote ID` picks a champion directly")
            self._set_aliases({CHAMPION: previous, PREVIOUS: aliases[CHAMPION]}, "rollback")
        return self.get(previous)

    def retire(self, ref: str) -> StoredVersion:
        """Mark ``ref`` retired: kept on disk and listed, no longer servable or promotable. The
        champion cannot be retired; retiring ``previous`` clears that alias."""
        with self._locked():
            version = self.resolve(ref)
            aliases = self.aliases()
            if aliases[CHAMPION] == version.id:
                raise StoreError(f"version {version.id[:16]}: is the champion and cannot be "
                                 "retired; promote another version (or roll back) first")
            if not version.retired:
                manifest = dataclasses.replace(version.manifest, retired=True)
                _write_durably(version.path / MANIFEST, _dumps(manifest.to_json()))
            if aliases[PREVIOUS] == version.id:
                self._set_aliases({CHAMPION: aliases[CHAMPION], PREVIOUS: None}, "retire")
        return self.get(version.id)

    def save_report(self, ref: str, report: Mapping[str, Any]) -> Path:
        """Keep a retrain's gate report with its version, as ``<id>/report.json`` (atomic;
        a later retrain that produced the same weights replaces it)."""
        version = self.resolve(ref)
        path = version.path / REPORT_FILE
        with self._locked():
            _write_durably(path, _dumps(dict(report)))
        return path

    def report(self, ref: str) -> dict[str, Any] | None:
        """The gate report kept with ``ref`` (None: the version was imported, not retrained)."""
        path = self.resolve(ref).path / REPORT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"{path}: not JSON ({exc}); retrain to write it again") from None
        return data if isinstance(data, dict) else None

    def save_publication(self, ref: str, publication: Mapping[str, Any]) -> Path:
        """Record ``ref``'s ModelRegistry publication as ``<id>/publication.json`` (atomic):
        tx_hash, block_number, chain_id, registry, publisher, weights_hash, manifest_digest,
        published_at (``gateway.provenance`` writes it)."""
        version = self.resolve(ref)
        path = version.path / PUBLICATION_FILE
        with self._locked():
            _write_durably(path, _dumps(dict(publication)))
        return path

    def publication(self, ref: str) -> dict[str, Any] | None:
        """``ref``'s recorded ModelRegistry publication (None: not published from here yet)."""
        path = self.resolve(ref).path / PUBLICATION_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"{path}: not JSON ({exc}); delete it and run `paychan models "
                             "publish` to record it again") from None
        return data if isinstance(data, dict) else None

    # ------------------------------------------------------------------ internals

    def _ids(self) -> builtins.list[str]:
        try:
            return sorted(entry.name for entry in self.root.iterdir()
                          if _ID.match(entry.name) and (entry / MANIFEST).is_file())
        except FileNotFoundError:
            return []

    def _read(self, ident: str, aliases: Mapping[str, str | None]) -> StoredVersion:
        path = self.root / ident / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"version {ident!r}: named by an alias but absent from {self.root}; "
                             "run `paychan models promote ID` with a listed id") from None
        except ValueError as exc:
            raise StoreError(f"{path}: not JSON ({exc}); re-import the weights") from None
        manifest = Manifest.from_json(data, str(path))
        if manifest.id != ident:
            raise StoreError(f"{path}: field 'id' is {manifest.id[:16]} but the directory is "
                             f"{ident[:16]}; re-import the weights")
        named = tuple(name for name in ALIASES if aliases.get(name) == ident)
        return StoredVersion(manifest=manifest, path=self.root / ident, aliases=named)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on ``<root>/.lock`` (blocks other processes, and other store
        objects in this one: each opens its own file description)."""
        with open(self.root / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _set_aliases(self, aliases: Mapping[str, str | None], action: str) -> None:
        """Write aliases.json atomically and append the change to history.jsonl (lock held)."""
        before = self.aliases()
        after = {name: aliases.get(name) for name in ALIASES}
        _write_durably(self.root / ALIASES_FILE, _dumps(after))
        entry = {"at": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
                 "action": action, "before": before, "after": after, "pid": os.getpid()}
        with open(self.root / HISTORY_FILE, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _dumps(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _write_durably(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
