"""JSON error answers with one shape: ``{"error": CODE, "message": TEXT}``.

Every non-payment failure goes through here, so clients parse one format and overload answers
always carry ``Retry-After``::

    raise api_error(429, "overloaded", "the classifier queue is full", retry_after=1)
"""

from __future__ import annotations

import json

from aiohttp import web

__all__ = ["api_error", "json_response"]

_JSON = "application/json"


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A compact JSON response (no spaces: smaller bodies, same meaning)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def api_error(
    status: int, code: str, message: str, *, retry_after: float | None = None,
    **extra: object,
) -> web.HTTPException:
    """An aiohttp HTTP exception with the JSON error body (raise or return it)."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(-(-retry_after // 1))))
    body = json.dumps({"error": code, "message": message, **extra}, separators=(",", ":"))
    cls = web.HTTPException
    exc = cls(headers=headers, text=body, content_type=_JSON)
    exc.set_status(status)
    return exc
