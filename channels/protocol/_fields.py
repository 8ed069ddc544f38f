"""Strict JSON field readers and writers shared by the wire types (`channels.protocol.wire`).

Every reader takes the dotted `path` of the field and the error `code` of the object being
parsed, and raises `PaymentError(code, path, message)` naming what is wrong::

    >>> amount = uint(member(d, "amount", "accepted", code), "accepted.amount", code)
    >>> hx(b"\x01\x02")
    '0x0102'
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from .errors import ErrorCode, PaymentError

U40 = 1 << 40
U128 = 1 << 128
U256 = 1 << 256

_V = TypeVar("_V")


def fail(code: ErrorCode, path: str, message: str) -> PaymentError:
    """The error to raise: `raise fail(code, "payload.voucher", "is required")`."""
    return PaymentError(code, path, message)


def json_object(value: Any, path: str, code: ErrorCode) -> dict[str, Any]:
    """`value` if it is a JSON object: `d = json_object(data, "payload", code)`."""
    if value is None:
        raise fail(code, path, "is required")
    if type(value) is not dict:
        raise fail(code, path, f"must be a JSON object, got {type(value).__name__}")
    return value


def member(data: dict[str, Any], key: str, path: str, code: ErrorCode) -> Any:
    """`data[key]`, or PaymentError naming `path.key`: `member(d, "amount", path, code)`."""
    try:
        return data[key]
    except KeyError:
        raise fail(code, f"{path}.{key}", "is required") from None


def string(value: Any, path: str, code: ErrorCode) -> str:
    """`value` if it is a str: `string(d.get("url"), path + ".url", code)`."""
    if type(value) is not str:
        raise fail(code, path, f"must be a string, got {type(value).__name__}")
    return value


def uint(value: Any, path: str, code: ErrorCode, limit: int = U128) -> int:
    """A decimal string (the spec) or a JSON integer, 0 <= x < limit."""
    t = type(value)
    if t is str:
        if not (0 < len(value) <= 78 and value.isascii() and value.isdigit()):
            raise fail(code, path, f"must be a decimal integer string, got {value[:40]!r}")
        n = int(value)
    elif t is int:
        n = value
    else:
        raise fail(code, path, f"must be a decimal integer string, got {t.__name__}")
    if not 0 <= n < limit:
        raise fail(code, path, f"out of range: must satisfy 0 <= x < 2**{limit.bit_length() - 1}")
    return n


def hex_bytes(value: Any, path: str, code: ErrorCode, size: int | None) -> bytes:
    """0x-prefixed hex; exactly `size` bytes, or any non-empty length when size is None."""
    if value is None:
        raise fail(code, path, "is required")
    if type(value) is not str or value[:2] not in ("0x", "0X"):
        raise fail(code, path, "must be a 0x-prefixed hex string")
    digits = value[2:]
    if size is not None and len(digits) != 2 * size:
        raise fail(code, path, f"must be {size} bytes (0x + {2 * size} hex digits)")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    # fromhex skips whitespace between bytes: a length check rejects it along with ""
    if not raw or 2 * len(raw) != len(digits):
        raise fail(code, path, "must be non-empty hex with an even number of digits")
    return raw


def address(value: Any, path: str, code: ErrorCode) -> bytes:
    """20 raw bytes from 0x-hex: `address(d.get("payTo"), path + ".payTo", code)`."""
    return hex_bytes(value, path, code, 20)


def b64_json(header: str | bytes, what: str) -> dict[str, Any]:
    """The JSON object a base64 header carries: `b64_json(header, PAYMENT_SIGNATURE)`."""
    try:
        data = json.loads(binascii.a2b_base64(header, strict_mode=True))
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise fail(ErrorCode.INVALID_PAYLOAD, what, f"must be base64 of a JSON object ({exc})") from None
    return json_object(data, what, ErrorCode.INVALID_PAYLOAD)


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once, not per call as dumps(...) does


def b64(data: dict[str, Any]) -> str:
    """Compact JSON, base64: the value of an x402 header."""
    return base64.b64encode(_ENCODER.encode(data).encode()).decode()


def hx(b: bytes) -> str:
    """`hx(b"\\x01") == "0x01"`."""
    return "0x" + b.hex()


_CACHE_LIMIT = 4096



def remember(cache: dict[tuple[Any, ...], _V], key: tuple[Any, ...], value: _V) -> None:
    """`cache[key] = value`, emptying the cache first when it is full."""
    if len(cache) >= _CACHE_LIMIT:  # bounded: many distinct channels just refill it
        cache.clear()
    cache[key] = value
