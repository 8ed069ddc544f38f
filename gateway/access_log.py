"""The access log: one JSON object per request, on one line, for log shippers to parse.

    logger = open_access_log("-")                     # stdout; a path appends; "off": None
    runner = GatewayRunner(app, access_log_class=JsonAccessLogger, access_log=logger)

A line (keys always present, ``null`` where a request has no such thing)::

    {"time": "2026-12-04T18:40:00.123Z", "method": "POST", "route": "/v1/classify",
     "path": "/v1/classify", "status": 200, "channel": "0x3f...e1", "charge": 1000,
     "model": "3f1c0d9e2b7a", "latency_ms": 41.7, "request_id": "4242-9f1c-17",
     "remote": "127.0.0.1"}

``time`` is when the answer was written (UTC, ISO-8601, milliseconds); ``route`` is the
matched route's pattern (``/v1/channels/{channel_id}``; ``null`` for a 404), ``path`` what
was asked; ``channel`` and ``charge`` (base units: 0 when nothing was charged) come from the
payment gate's commit, ``request_id`` is the ledger's id of that charge; ``model`` is the
first 12 hex digits of the answering model version's hash (its store id). Connections the
protocol cuts off before a request exists (slow headers, the per-address cap) are counted in
``/metrics``, not logged here.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.keys import CHARGED, MODEL_VERSION_HASH

__all__ = ["JsonAccessLogger", "access_record", "open_access_log"]

#: The ``access_log`` setting that turns the log off (``--no-access-log``).
OFF = ("off", "none", "")


def open_access_log(target: str) -> logging.Logger | None:
    """The logger writing access lines to ``target``: ``-`` for stdout, else a file opened
    for appending (each line is one write, so workers sharing the file never interleave
    within a line); None for ``off``. OSError if the file cannot be opened."""
    if target.strip().lower() in OFF:
        return None
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(Path(target).expanduser(), mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"paychan.access.{target}")
    for old in logger.handlers:  # opened again (a restarted app in the same process)
        old.close()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger's format would wrap the JSON
    return logger


def access_record(request: web.BaseRequest, response: web.StreamResponse, elapsed_s: float) -> dict[str, object]:
    """The access-log fields of one answered request."""
    now = datetime.datetime.now(datetime.UTC)
    route = None
    if isinstance(request, web.Request):
        info = request.match_info.route.resource
        route = info.canonical if info is not None else None
    charged = request.get(CHARGED)
    version = request.get(MODEL_VERSION_HASH)
    return {
        "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": response.status,
        "channel": charged[0] if charged else None,
        "charge": charged[1] if charged else 0,
        "model": version.hex()[:12] if version else None,
        "latency_ms": round(elapsed_s * 1000, 1),
        "request_id": charged[2] if charged else None,
        "remote": request.remote,
    }


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access logger, writing ``access_record`` as one JSON line at INFO."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            line = json.dumps(access_record(request, response, time), separators=(",", ":"))
        except Exception:  # a log line must never fail the request it describes
            self.logger.exception("access log: cannot describe %s %s", request.method, request.path)
            return
        self.logger.info(line)
