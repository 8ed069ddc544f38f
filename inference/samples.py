"""Durable, content-addressed storage of labelled images that payers submit for retraining.

Layout under the samples directory (one folder per label, so a retrain can walk it)::

    paychan-samples/
      tabby/3f9a...e1.jpg           # <label slug>/<sha256 of the bytes>.<jpg|png|webp>
      crane-0134/77c0...9a.png      # an ImageNet name shared by two classes: slug + index
      okapi-calf/0be1...42.webp     # a label the model does not know yet
      manifest.jsonl                # one JSON line per stored sample
      .lock                         # serializes writers across processes (flock)

Each manifest line holds ``sha256, label, group, imagenet_index, path, payer, channel, bytes,
format, received_at, signed_at``. ``label`` is the class name: ImageNet's own spelling for
one of its 1000 classes ("tabby", "Egyptian cat"), else the normalized new name.

Writes are durable in order: the image goes to a temporary file, is fsynced and renamed into
place, its folder is fsynced, then the manifest line is appended and fsynced. A crash leaves
at most a file without a manifest line (not a sample: ``records()`` reads the manifest, and
the same upload later writes the line), never a line without its file. The same bytes under
the same label are stored once (a duplicate is answered, not written); under another label
they are another sample (two people may disagree; a retrain sees both)::

    store = SampleStore(Path("paychan-samples"), max_total_bytes=10 << 30,
                        max_payer_bytes=256 << 20)
    label = resolve_label("Tabby")                       # SampleLabel("tabby", "cat", 281, ...)
    stored = await store.add(jpeg, "JPEG", label=label, payer="0xAb...")
    stored.duplicate, stored.record.path                 # False, "tabby/3f9a...e1.jpg"

    SampleStore(root).records()    # what a retrain reads: deduplicated, files present
    SampleStore(root).digest()     # the training-data digest
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from inference.labels import AnimalGroup, group_of, imagenet_labels

__all__ = [
    "EXTENSIONS",
    "MAX_LABEL_CHARS",
    "LabelError",
    "SampleError",
    "SampleLabel",
    "SampleRecord",
    "SampleStore",
    "StoreFull",
    "Stored",
    "resolve_label",
]

#: File suffix per image format (the formats classification accepts).
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
MAX_LABEL_CHARS = 64
MANIFEST = "manifest.jsonl"
_LOCK = ".lock"
# After NFKC, whitespace collapsed and lower-cased: a letter first (a number is an ImageNet
# index), then letters, digits, spaces and ' . _ - (ImageNet's names use no other character).
_NEW_LABEL = re.compile(r"[a-z][a-z0-9 '._-]*")
_GROUPS = ", ".join(g.value for g in AnimalGroup)


class SampleError(Exception):
    """A sample refused by the store: ``status`` (HTTP), ``code`` and a message with the fix."""

    status = 400
    code = "bad_sample"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class LabelError(SampleError):
    """A label (or group) that cannot be used: 400 ``bad_label``, or 409 ``label_group_conflict``."""

    code = "bad_label"


class StoreFull(SampleError):
    """Over a disk bound: 507 ``samples_store_full`` (the store) or ``sample_quota_exceeded``
    (this payer's share)."""

    status = 507
    code = "samples_store_full"


@dataclass(frozen=True, slots=True)
class SampleLabel:
    """A resolved label: its name, animal group (None: a new label whose group the store may
    know), ImageNet index (None: not one of the 1000) and folder name."""

    name: str
    group: str | None
    imagenet_index: int | None
    slug: str


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One stored sample, as in ``manifest.jsonl``."""

    sha256: str
    label: str
    group: str | None
    path: str  # relative to the samples directory
    payer: str  # 0x address the sample is attributed to
    received_at: float
    imagenet_index: int | None = None
    channel: str | None = None  # 0x channel id whose payer signed it
    bytes: int = 0
    format: str = ""
    signed_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SampleRecord:
        known = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
        return cls(**known)


_RECORD_FIELDS = frozenset(SampleRecord.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Stored:
    """What ``add`` did: the sample's record and whether it was already there."""

    record: SampleRecord
    duplicate: bool


# --------------------------------------------------------------------------- labels


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@functools.cache
def _imagenet_slugs() -> tuple[dict[str, tuple[int, ...]], dict[int, str]]:
    """(name or folder slug -> class indices, index -> folder slug). Three names are two
    classes each (crane, cardigan, maillot): their folders carry the index ("crane-0134")."""
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(imagenet_labels()):
        by_name.setdefault(_slug(name), []).append(index)
    folders: dict[int, str] = {}
    lookup: dict[str, tuple[int, ...]] = {}
    for slug, indices in by_name.items():
        lookup[slug] = tuple(indices)
        for index in indices:
            folders[index] = slug if len(indices) == 1 else f"{slug}-{index:04d}"
            lookup.setdefault(folders[index], (index,))
    return lookup, folders


def _imagenet_label(index: int) -> SampleLabel:
    _, folders = _imagenet_slugs()
    return SampleLabel(imagenet_labels()[index], group_of(index).value, index, folders[index])


def _check_group(group: str | None) -> str | None:
    if group is None or group.strip() == "":
        return None
    value = group.strip().lower().replace(" ", "_").replace("-", "_")
    if value not in {g.value for g in AnimalGroup}:
        raise LabelError(f"group {group!r} is not an animal group; give one of {_GROUPS}")
    return value


def resolve_label(text: str, group: str | None = None) -> SampleLabel:
    """The label a person typed, resolved; raises LabelError naming the fix.

    A name of one of ImageNet's 1000 classes (any case; spaces, ``-`` and ``_`` alike:
    "tabby", "Tiger_Cat") or its index ("281") is that class, with its known group
    (``group``, if given, must agree; it also picks between the classes of the three shared
    names: "crane" + "bird"). Any other name is a new label: case and whitespace normalized,
    letters, digits, spaces and ``' . _ -``, a letter first, up to 64 characters; its
    ``group`` (an ``AnimalGroup`` value) is given here or already known to the store.

        >>> resolve_label("Tabby")
        SampleLabel(name='tabby', group='cat', imagenet_index=281, slug='tabby')
        >>> resolve_label("okapi calf", "other_mammal").slug
        'okapi-calf'
    """
    want = _check_group(group)
    name = " ".join(unicodedata.normalize("NFKC", text).split())
    if not name:
        raise LabelError("the label is empty; give a class name such as 'tabby', or a new name "
                         "with its group")
    labels = imagenet_labels()
    if name.isdigit():
        index = int(name)
        if not 0 <= index < len(labels):
            raise LabelError(f"label {name}: a number is an ImageNet class index (0..{len(labels) - 1}); "
                             "give a class name instead")
        return _agree(_imagenet_label(index), want)
    if len(name) > MAX_LABEL_CHARS:
        raise LabelError(f"label {name[:20]!r}...: at most {MAX_LABEL_CHARS} characters, got "
                         f"{len(name)}; shorten it")
    by_slug, _ = _imagenet_slugs()
    slug = _slug(name)
    indices = by_slug.get(slug)
    if indices:
        candidates = [_imagenet_label(i) for i in indices]
        if want is not None:
            matching = [c for c in candidates if c.group == want]
            candidates = matching or candidates
        if len(candidates) > 1:
            choices = ", ".join(f"{c.imagenet_index} ({c.group})" for c in candidates)
            raise LabelError(f"label {name!r} names {len(candidates)} ImageNet classes: {choices}; "
                             "give the class index as the label, or the group that tells them apart")
        return _agree(candidates[0], want)
    lowered = name.lower()
    if not _NEW_LABEL.fullmatch(lowered) or not slug:
        raise LabelError(f"label {name!r}: a new label may hold only letters, digits, spaces and "
                         "' . _ -, starting with a letter; rename it")
    return SampleLabel(lowered, want, None, slug)


def _agree(label: SampleLabel, want: str | None) -> SampleLabel:
    if want is not None and want != label.group:
        raise LabelError(f"label {label.name!r} is ImageNet class {label.imagenet_index}, whose "
                         f"group is {label.group}, not {want}; drop the group or give {label.group}")
    return label


# --------------------------------------------------------------------------- the store


@dataclass
class _Index:
    """What the manifest says so far (read incrementally: ``offset`` bytes consumed)."""

    inode: int = 0  # of the manifest read; another file (an operator replaced it): read anew
    offset: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)  # (sha256, slug)
    total_bytes: int = 0
    payer_bytes: dict[str, int] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # slug of a new label -> its group
    torn_bytes: int = 0  # the file ends in this many bytes of a partial line (a crash mid-append)


class SampleStore:
    """Appends labelled images to a directory (blocking file work runs in a thread).

    ``max_total_bytes`` bounds the store and ``max_payer_bytes`` each payer's share (None: no
    bound); both count the image bytes of stored samples. Writers in several processes
    (``--workers N``) share the directory through a lock file; readers need no lock.
    """

    def __init__(self, root: Path, *, max_total_bytes: int | None = None,
                 max_payer_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_total_bytes = max_total_bytes
        self.max_payer_bytes = max_payer_bytes
        self._lock = asyncio.Lock()  # one writer thread per process; the flock spans processes
        self._index = _Index()

    # --- reading (what a retrain uses) --------------------------------------------------

    def records(self) -> list[SampleRecord]:
        """Every stored sample, in arrival order: one per (sha256, label), only those whose
        file exists (a torn last line of a crashed append is skipped)."""
        seen: set[tuple[str, str]] = set()
        out: list[SampleRecord] = []
        for record in self._read_manifest():
            key = (record.sha256, record.path)
            if key in seen or not (self.root / record.path).is_file():
                continue
            seen.add(key)
            out.append(record)
        return out

    def count(self) -> int:
        """How many samples ``records()`` holds."""
        return len(self.records())

    def digest(self) -> str:
        """The training-data digest: sha256 hex over the sorted lines ``"<sha256>\\t<label>\\n"``
        of ``records()`` (group and payer excluded: the same pictures with the same labels
        train the same model, whoever sent them)."""
        lines = sorted(f"{r.sha256}\t{r.label}\n" for r in self.records())
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    # --- writing ------------------------------------------------------------------------

    async def add(self, data: bytes, image_format: str, *, label: SampleLabel, payer: str,
                  channel: str | None = None, signed_at: int | None = None) -> Stored:
        """Store ``data`` (already checked to be a ``image_format`` image) under ``label``,
        attributed to ``payer``; raises LabelError (a new label without a known group, or
        with another group than stored) or StoreFull. Nothing is written when it raises."""
        ext = EXTENSIONS.get(image_format.upper())
        if ext is None:
            raise SampleError(f"format {image_format!r}: samples are JPEG, PNG or WebP",
                              status=415, code="unsupported_media_type")
        async with self._lock:
            return await asyncio.to_thread(self._add_sync, data, ext, image_format.upper(),
                                           label, payer.lower(), channel, signed_at)

    def _add_sync(self, data: bytes, ext: str, fmt: str, label: SampleLabel, payer: str,
                  channel: str | None, signed_at: int | None) -> Stored:
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{label.slug}/{digest}.{ext}"
        with self._locked():
            index = self._refresh()
            group = self._group_for(label, index)
            record = SampleRecord(
                sha256=digest, label=label.name, group=group, path=rel, payer=payer,
                received_at=time.time(), imagenet_index=label.imagenet_index, channel=channel,
                bytes=len(data), format=fmt, signed_at=signed_at,
            )
            if (digest, label.slug) in index.keys and (self.root / rel).is_file():
                return Stored(record, duplicate=True)
            self._check_room(len(data), payer, index)
            self._write_file(self.root / rel, data, digest)
            self._append(record, index)
            return Stored(record, duplicate=False)

    def _group_for(self, label: SampleLabel, index: _Index) -> str:
        if label.imagenet_index is not None:
            assert label.group is not None
            return label.group
        known = index.groups.get(label.slug)
        if known is not None and label.group is not None and label.group != known:
            raise LabelError(f"label {label.name!r} is stored with group {known}, not "
                             f"{label.group}; give {known} or another label name",
                             status=409, code="label_group_conflict")
        group = label.group or known
        if group is None:
            raise LabelError(f"label {label.name!r} is new (not an ImageNet class): give its "
                             f"group, one of {_GROUPS}")
        return group

    def _check_room(self, size: int, payer: str, index: _Index) -> None:
        if self.max_total_bytes is not None and index.total_bytes + size > self.max_total_bytes:
            raise StoreFull(f"the sample store is full ({index.total_bytes} of "
                            f"{self.max_total_bytes} bytes used); it takes no more samples "
                            "until its operator raises --samples-max-bytes or moves samples away")
        used = index.payer_bytes.get(payer, 0)
        if self.max_payer_bytes is not None and used + size > self.max_payer_bytes:
            raise StoreFull(f"payer {payer} has stored {used} of its {self.max_payer_bytes} "
                            f"bytes of samples; this {size}-byte image does not fit",
                            code="sample_quota_exceeded")

    def _write_file(self, final: Path, data: bytes, digest: str) -> None:
        folder = final.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)  # the new folder's entry
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)

    def _append(self, record: SampleRecord, index: _Index) -> None:
        line = json.dumps(record.to_json(), separators=(",", ":")) + "\n"
        if index.torn_bytes:  # never glue a line onto a crashed append's partial one
            line = "\n" + line
        path = self.root / MANIFEST
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
            index.inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.root)
        index.offset += index.torn_bytes + len(line.encode())
        index.torn_bytes = 0
        self._account(record, index)

    # --- the manifest -------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _refresh(self) -> _Index:
        """Read manifest lines appended since the last call (by any process) into the index."""
        path = self.root / MANIFEST
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            self._index = _Index()
            return self._index
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_ino != self._index.inode or st.st_size < self._index.offset:
                self._index = _Index(inode=st.st_ino)  # replaced or cut by an operator: re-read
            index = self._index
            fh.seek(index.offset)
            tail = fh.read()
        complete, newline, partial = tail.rpartition(b"\n")
        if newline:
            index.offset += len(complete) + 1
            for raw in complete.split(b"\n"):
                record = _parse_line(raw)
                if record is not None:
                    self._account(record, index)
        index.torn_bytes = len(partial)
        return index

    @staticmethod
    def _account(record: SampleRecord, index: _Index) -> None:
        slug = record.path.split("/", 1)[0]
        if (record.sha256, slug) in index.keys:
            return
        index.keys.add((record.sha256, slug))
        index.total_bytes += record.bytes
        index.payer_bytes[record.payer] = index.payer_bytes.get(record.payer, 0) + record.bytes
        if record.imagenet_index is None and record.group is not None:
            index.groups.setdefault(slug, record.group)

    def _read_manifest(self) -> Iterator[SampleRecord]:
        try:
            raw = (self.root / MANIFEST).read_bytes()
        except FileNotFoundError:
            return
        for line in raw.split(b"\n"):
            record = _parse_line(line)
            if record is not None:
                yield record


def _parse_line(raw: bytes) -> SampleRecord | None:
    """A manifest line's record; None for a blank or torn line (a crash mid-append), or one
    whose path is not ``<folder>/<file>`` inside the store (never a file outside it)."""
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
        record = SampleRecord.from_json(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None
    if record is None:
        return None
    parts = PurePosixPath(record.path).parts
    inside = len(parts) == 2 and not record.path.startswith("/") and ".." not in parts
    return record if inside else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
