"""The x402 facilitator endpoints for other x402 servers: POST /verify, POST /settle, GET /supported.

A sub-application around `channels.facilitator.Facilitator` (the same object the gateway uses
in-process); mount it under a prefix::

    app.add_subapp("/facilitator", facilitator_app(facilitator))
    # -> POST /facilitator/verify, POST /facilitator/settle, GET /facilitator/supported

Bodies are the x402 v2 facilitator JSON: ``{"x402Version": 2, "paymentPayload": {...},
"paymentRequirements": {...}}``. Answers are 200 with ``isValid`` / ``success`` false and the
spec's reason on payment problems; 400 only when the body is not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from channels.facilitator import Facilitator

__all__ = ["FACILITATOR", "facilitator_app"]

FACILITATOR = web.AppKey("paychan_facilitator", Facilitator)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid_payload", "message": "the body must be JSON"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps(
                {"error": "invalid_payload", "message": "the body must be a JSON object"}
            ),
            content_type="application/json",
        )
    return body


async def verify(request: web.Request) -> web.Response:
    fac = request.app[FACILITATOR]
    return web.json_response(await fac.verify_json(await _body(request)))


async def settle(request: web.Request) -> web.Response:
    fac = request.app[FACILITATOR]
    return web.json_response(await fac.settle_json(await _body(request)))


async def supported(request: web.Request) -> web.Response:
    fac = request.app[FACILITATOR]
    return web.json_response(fac.supported(await fac.chain.chain_id()))


def facilitator_app(facilitator: Facilitator) -> web.Application:
    """The facilitator endpoints as a sub-application (mount with `app.add_subapp(prefix, ...)`)."""
    app = web.Application()
    app[FACILITATOR] = facilitator
    app.router.add_post("/verify", verify)
    app.router.add_post("/settle", settle)
    app.router.add_get("/supported", supported)
    return app
