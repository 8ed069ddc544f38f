"""The x402 facilitator endpoints for other x402 servers: POST /verify, POST /settle, GET /supported.

A sub-application around `channels.provider.Facilitator` (the same object the gateway uses
in-process); mount it under a prefix::

    app.add_subapp("/facilitator", facilitator_app(facilitator))
    # -> POST /facilitator/verify, POST /facilitator/settle, GET /facilitator/supported

When the facilitator only exists once the app starts (``create_app`` opens it in a cleanup
context), mount ``facilitator_app()`` and set ``sub[FACILITATOR] = fac`` during startup;
until then the endpoints answer 503.

Bodies are the x402 v2 facilitator JSON: ``{"x402Version": 2, "paymentPayload": {...},
"paymentRequirements": {...}}``. Answers are 200 with ``isValid`` / ``success`` false and the
spec's reason on payment problems; 400 only when the body is not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from channels.provider import Facilitator, settle_json, supported_json, verify_json

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


def _facilitator(request: web.Request) -> Facilitator:
    fac = request.app.get(FACILITATOR)
    if fac is None:  # mounted, but the gateway's payment side has not started (or is off)
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "facilitator_unavailable",
                             "message": "the facilitator is not started yet; retry shortly"}),
            content_type="application/json",
            headers={"Retry-After": "1"},
        )
    return fac


async def verify(request: web.Request) -> web.Response:
    fac = _facilitator(request)
    return web.json_response(await verify_json(fac, await _body(request)))


async def settle(request: web.Request) -> web.Response:
    fac = _facilitator(request)
    return web.json_response(await settle_json(fac, await _body(request)))


async def supported(request: web.Request) -> web.Response:
    fac = _facilitator(request)
    return web.json_response(supported_json(fac, await fac.chain.chain_id()))


def facilitator_app(facilitator: Facilitator | None = None) -> web.Application:
    """The facilitator endpoints as a sub-application (mount with `app.add_subapp(prefix, ...)`).

    ``facilitator`` may be None and set later as ``sub[FACILITATOR]`` (before or at startup).
    """
    app = web.Application()
    if facilitator is not None:
        app[FACILITATOR] = facilitator
    app.router.add_post("/verify", verify)
    app.router.add_post("/settle", settle)
    app.router.add_get("/supported", supported)
    return app
