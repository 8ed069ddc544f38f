"""Durable storage of labelled images that users submit for retraining.

Layout under the samples directory (ImageFolder-like, so a retrain can walk it)::

    samples/
      0281/3f9a...e1.jpg          # <ImageNet class index, 4 digits>/<sha256 of the bytes>.<ext>
      manifest.jsonl              # one JSON line per stored sample

Each image is written to a temporary file, fsynced and renamed into place, then its manifest
line is appended and fsynced, so a crash never leaves a half-written sample or a manifest
line without its file. The same bytes with the same label are stored once::

    store = SampleStore(Path("paychan-samples"))
    record = await store.add(image_bytes, "image/jpeg", label=281, client="127.0.0.1")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["EXTENSIONS", "SampleRecord", "SampleStore"]

EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
}


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One stored sample, as written to ``manifest.jsonl``."""

    sha256: str
    label: int
    path: str  # relative to the samples directory
    content_type: str
    bytes: int
    client: str
    received_at: float
    duplicate: bool = False


class SampleStore:
    """Appends labelled images to a directory; blocking file work runs in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = asyncio.Lock()  # one manifest writer per process

    async def add(self, data: bytes, content_type: str, *, label: int, client: str) -> SampleRecord:
        """Store ``data`` under ``label``; returns the record (``duplicate`` if already there)."""
        async with self._lock:
            return await asyncio.to_thread(self._add_sync, data, content_type, label, client)

    def count(self) -> int:
        manifest = self.root / "manifest.jsonl"
        if not manifest.exists():
            return 0
        with manifest.open("rb") as fh:
            return sum(1 for _ in fh)

    def _add_sync(self, data: bytes, content_type: str, label: int, client: str) -> SampleRecord:
        digest = hashlib.sha256(data).hexdigest()
        ext = EXTENSIONS.get(content_type, "bin")
        rel = f"{label:04d}/{digest}.{ext}"
        final = self.root / rel
        record = SampleRecord(
            sha256=digest, label=label, path=rel, content_type=content_type,
            bytes=len(data), client=client, received_at=time.time(),
        )
        if final.exists():
            return SampleRecord(**{**asdict(record), "duplicate": True})
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{digest}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        fd = os.open(self.root / "manifest.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
