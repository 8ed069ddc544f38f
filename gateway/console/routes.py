"""The console's routes (mounted by ``enable_console`` only when an admin token is set)::

    GET  /admin/console          the page (401 + login form without a session or Bearer token)
    POST /admin/console/login    form field ``token``: sets the session cookie, 303 to the page
    POST /admin/console/logout   clears it
    GET  /admin/earnings         the earnings summary as JSON (``paychan earnings --gateway``)
    GET  /admin/console/static/  the stylesheet (nothing secret, no script)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway import predictions
from gateway.admin import ADMIN_TOKEN_DIGEST
from gateway.console.auth import COOKIE, SESSION_S, allowed, session_cookie, token_matches
from gateway.console.charts import Series, line_chart
from gateway.earnings import channel_rows
from gateway.errors import api_error, json_response
from gateway.keys import ACCOUNTING, CONFIG, METRICS, MODELS, PAYMENTS

__all__ = ["routes"]

log = logging.getLogger("paychan.console")

routes = web.RouteTableDef()

_HELP = ("sign in with the admin token the gateway was started with (paychan serve "
         "--admin-token-file F, or PAYCHAN_ADMIN_TOKEN)")


def _login_page(request: web.Request, status: int, message: str) -> web.Response:
    response = aiohttp_jinja2.render_template(
        "login.html", request, {"message": message, "help": _HELP}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="paychan-admin"'
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/admin/console")
async def console(request: web.Request) -> web.Response:
    if not allowed(request):
        return _login_page(request, 401, "This console needs the gateway's admin token.")
    context = await _context(request)
    response = aiohttp_jinja2.render_template("console.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'")
    return response


@routes.post("/admin/console/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    given = str(form.get("token", ""))
    if not given.strip():
        return _login_page(request, 401, "No token given.")
    if not token_matches(request, given):
        log.warning("console: refused a wrong token from %s", request.remote)
        return _login_page(request, 403, "Wrong admin token.")
    response = web.HTTPSeeOther("/admin/console")
    response.set_cookie(COOKIE, session_cookie(request.app[ADMIN_TOKEN_DIGEST], now=time.time()),
                        max_age=SESSION_S, path="/admin", httponly=True, samesite="Strict",
                        secure=request.secure)
    raise response


@routes.post("/admin/console/logout")
async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther("/admin/console")
    response.del_cookie(COOKIE, path="/admin")
    raise response


@routes.get("/admin/earnings")
async def earnings(request: web.Request) -> web.Response:
    """The earnings summary (``gateway.earnings.earnings_summary``) plus the signer's gas."""
    if not allowed(request):
        raise api_error(401, "unauthorized", f"no admin token or console session; {_HELP}")
    accounting = request.app.get(ACCOUNTING)
    if accounting is None:
        raise api_error(409, "payment_disabled", "payment: this gateway serves for free "
                        "(--no-payment), so it has earned nothing")
    return json_response(await accounting.summary())


async def _context(request: web.Request) -> dict[str, Any]:
    app = request.app
    config = app[CONFIG]
    now = time.time()
    minutes = app[METRICS].minutes.rows()
    ctx: dict[str, Any] = {
        "now": now,
        "config": config,
        "payment": config.payment,
        "models": await predictions.list_models(app[MODELS]),
        "requests_chart": line_chart([
            Series("requests", "#2563eb", [(t, n) for t, n, _, _, _ in minutes], step=False),
            Series("errors", "#dc2626", [(t, e) for t, _, e, _, _ in minutes], step=False),
        ], title="requests and errors per minute"),
        "latency_chart": line_chart([
            Series("mean", "#0d9488", [(t, m) for t, _, _, m, _ in minutes], step=False),
            Series("max", "#f59e0b", [(t, x) for t, _, _, _, x in minutes], step=False),
        ], unit="s", title="latency per minute"),
        "minutes": minutes[-1:] if minutes else [],
        "totals": _traffic_totals(minutes),
    }
    accounting = app.get(ACCOUNTING)
    gate = app.get(PAYMENTS)
    if accounting is None or gate is None:
        return ctx
    await accounting.refresh_usage()
    states = await gate.store.channels()
    summary = await accounting.summary(states)
    rows = channel_rows(states, accounting.index, now)
    history = list(accounting.history)
    # Plotted in token units when the token is known (its symbol in the title), else base units.
    known = config.token_symbol is not None and config.token_decimals is not None
    scale = 10.0 ** -(config.token_decimals or 0) if known else 1.0
    earnings_title = f"earnings over time ({config.token_symbol if known else 'base units'})"
    earnings = [
        Series("charged", "#2563eb", [(p[0], p[1] * scale) for p in history]),
        Series("claimed", "#7c3aed", [(p[0], p[2] * scale) for p in history]),
        Series("settled", "#16a34a", [(p[0], p[3] * scale) for p in history]),
        Series("at risk", "#dc2626", [(p[0], p[4] * scale) for p in history]),
    ]
    ctx.update({
        "summary": summary,
        "channels": rows,
        "payers": _top_payers(rows),
        "transactions": list(reversed(accounting.transactions)),
        "usage_log": str(accounting.usage.path) if accounting.usage else None,
        # Drawn twice, wide for a desktop card and narrow (taller) for a phone; CSS shows one.
        "earnings_chart": line_chart(earnings, title=earnings_title, wide=True),
        "earnings_chart_narrow": line_chart(earnings, title=earnings_title),
        "leader": gate.sync.leader,
        "sync_error": gate.sync.last_error,
    })
    return ctx


def _top_payers(rows: list[dict[str, Any]], limit: int = 10) -> list[dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        payer = r["payer"] or "unknown"
        p = by.setdefault(payer, {"payer": payer, "channels": 0, "charged": 0, "requests": 0,
                                  "last_use": None})
        p["channels"] += 1
        p["charged"] += r["charged"]
        p["requests"] += r["requests"]
        if r["last_use"] and (p["last_use"] is None or r["last_use"] > p["last_use"]):
            p["last_use"] = r["last_use"]
    return sorted(by.values(), key=lambda p: (-p["charged"], p["payer"]))[:limit]


def _traffic_totals(minutes: list[tuple[float, int, int, float, float]]) -> dict[str, Any]:
    requests = sum(m[1] for m in minutes)
    errors = sum(m[2] for m in minutes)
    seconds = sum(m[1] * m[3] for m in minutes)
    return {"requests": requests, "errors": errors,
            "mean_latency": seconds / requests if requests else None,
            "max_latency": max((m[4] for m in minutes), default=None)}
