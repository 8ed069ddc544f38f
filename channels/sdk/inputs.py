"""A caller's arguments, checked before anything is sent or paid: images, top_k, channel ids,
the payer's state file. Every refusal is an `InputError` that says what to pass instead.

    >>> body, content_type, name = load_image("cat.jpg")
    >>> sniff_image(body)
    'image/jpeg'
    >>> parse_channel_id("0x" + "ab" * 32) == bytes.fromhex("ab" * 32)
    True
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

__all__ = [
    "DEFAULT_STATE",
    "IMAGE_SUFFIXES",
    "MAX_TOP_K",
    "check_top_k",
    "load_image",
    "parse_channel_id",
    "sniff_image",
    "state_path",
]

DEFAULT_STATE = Path("~/.paychan/payer.sqlite")  # the payer's channels when no file is named
MAX_TOP_K = 1000  # ImageNet-1k has 1000 classes; the gateway's own cap (20 by default) may be lower
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (  # (signature, offset, content type)
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"WEBP", 8, "image/webp"),
)


def load_image(image: str | os.PathLike[str] | bytes) -> tuple[bytes, str, str | None]:
    """(bytes, content type, file name or None) of an image path or its bytes; InputError if
    it is missing, unreadable, empty or not a JPEG, PNG, WebP, GIF or BMP (by its first bytes).

        >>> body, content_type, name = load_image("cat.jpg")
    """
    name: str | None = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        what = "the image bytes"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        name = str(image)
        what = name
        if path.is_dir():
            raise InputError(f"{name}: is a folder, not an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror})") from None
    else:
        raise InputError(f"image must be a path or bytes, got {type(image).__name__}")
    if not data:
        raise InputError(f"{what}: is empty")
    content_type = sniff_image(data)
    if content_type is None:
        raise InputError(f"{what}: not a JPEG, PNG, WebP, GIF or BMP image")
    return data, content_type, name


def sniff_image(data: bytes) -> str | None:
    """The image content type from the first bytes, or None.

        >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n...")
        'image/png'
    """
    for magic, offset, content_type in _IMAGE_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            if content_type == "image/webp" and data[:4] != b"RIFF":
                continue
            return content_type
    return None


def check_top_k(top_k: object) -> int:
    """`top_k` when it is a whole number from 1 to MAX_TOP_K; InputError otherwise.

        >>> check_top_k(5)
        5
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
    return top_k


def parse_channel_id(value: bytes | str) -> bytes:
    """A 32-byte channel id from bytes or 0x-hex; InputError otherwise.

        >>> parse_channel_id(bytes(32)) == bytes(32)
        True
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 32:
            return bytes(value)
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise InputError(f"channel id must be 0x followed by 64 hex digits, got {value!r}")


def state_path(state: str | Path) -> str:
    """The payer's SQLite file as a path string, its folder created (":memory:" as is).

        >>> state_path("~/.paychan/payer.sqlite")
        '/home/me/.paychan/payer.sqlite'
    """
    if str(state) == ":memory:":
        return ":memory:"
    path = Path(state).expanduser()
    if path.is_dir():
        raise InputError(f"state: {path} is a folder; give a file such as {path / 'payer.sqlite'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)
