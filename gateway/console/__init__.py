"""The operator console: earnings, channels, payers, traffic, models and the settler's
transactions on one server-rendered page (Jinja2 via aiohttp-jinja2, SVG charts drawn on the
server, one local stylesheet: no script, nothing fetched from elsewhere), readable on a phone.

It exists only where the admin routes do (an admin token is configured, see
``gateway.admin``) and asks for the same token: a Bearer header, or once in its login form,
which answers with a signed session cookie (``gateway.console.auth``)::

    enable_console(app, config)     # create_app does this; a no-op without an admin token
    # browser: http://127.0.0.1:8402/admin/console  -> sign in with the token
    # script:  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8402/admin/earnings
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.tokens import token_units

__all__ = ["enable_console"]

_HERE = Path(__file__).parent


def enable_console(app: web.Application, config: GatewayConfig) -> None:
    """Mount the console's routes and templates when ``config.admin_token`` is set."""
    if config.admin_token is None:
        return
    from gateway.console.routes import routes

    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(_HERE / "templates"),
                               autoescape=jinja2.select_autoescape(default=True))
    env.filters.update(units=_units, utc=_utc, ago=_ago, short=_short, ms=_ms,
                       amount=functools.partial(_amount, decimals=config.token_decimals,
                                                symbol=config.token_symbol))
    app.add_routes(routes)
    app.router.add_static("/admin/console/static/", _HERE / "static", name="console_static")


def _units(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _amount(value: Any, *, decimals: int | None, symbol: str | None) -> str:
    """Token units with the symbol (``0.012 USDC``); base units when the token is unknown."""
    if value is None:
        return "—"
    if decimals is None or symbol is None:
        return _units(value)
    return token_units(int(value), decimals, symbol, grouped=True)


def _utc(t: Any) -> str:
    return "—" if not t else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))


def _ago(t: Any, now: float | None = None) -> str:
    if not t:
        return "never"
    s = max(0, int((now or time.time()) - float(t)))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def _short(text: Any, keep: int = 6) -> str:
    text = str(text or "")
    return text if len(text) <= 2 + 2 * keep else f"{text[:2 + keep]}…{text[-keep:]}"


def _ms(seconds: Any) -> str:
    return "—" if seconds is None else f"{float(seconds) * 1000:.1f} ms"
