"""Operator routes, off unless an admin token is configured.

    POST /admin/settle        Authorization: Bearer <admin token>
        -> 200 {"claimed", "channels", "claims": [...], "claim_txs", "settle_tx",
                "settled_amount", "gas_used", "receiver", "token", "chain_id", "settlement", ...}

``/admin/settle`` runs this gateway's own settler now (``PaymentGate.settle_now``: claim every
charged channel, then settle the claimed value to the receiver) and answers when the
transactions are mined, in the JSON ``paychan settle --json`` prints. It is how a gateway
that owns a SQLite ledger is settled while it runs (``paychan settle --gateway URL
--admin-token-file F``): nothing else may write its file.

The same token opens the operator console and ``GET /admin/earnings`` (``gateway.console``,
mounted beside these routes by ``create_app``). The routes exist only when ``admin_token`` is
set (``paychan serve --admin-token-file F``, ``PAYCHAN_ADMIN_TOKEN_FILE`` or
``PAYCHAN_ADMIN_TOKEN``); without it they answer 404 like any unknown path. With it: no ``Authorization: Bearer`` header is 401, a wrong token 403 (the
comparison takes the same time whatever the token). Serve them over TLS or loopback only::

    enable_admin(app, config)       # create_app does this; a no-op without a token
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import api_error, json_response
from gateway.keys import CONFIG, PAYMENTS, STATE

if TYPE_CHECKING:
    from gateway.payments import PaymentGate  # web3: loaded with the gate, not here

# A settle round's answer: gate.settle_now() plus what `paychan settle --json` also reports.
_Round = dict[str, Any]

__all__ = ["ADMIN_TASKS", "ADMIN_TOKEN_DIGEST", "enable_admin", "routes"]

log = logging.getLogger("paychan.admin")

routes = web.RouteTableDef()

# SHA-256 of the configured token: compared digest to digest, so neither the time taken nor
# an early exit on a length mismatch tells a caller anything about the token.
ADMIN_TOKEN_DIGEST = web.AppKey("admin_token_digest", bytes)
# Settle rounds started by the route: a dropped connection does not stop one (it would be cut
# between sending a claim and seeing it mined), and shutdown waits for them.
ADMIN_TASKS: web.AppKey[set[asyncio.Task[_Round]]] = web.AppKey("admin_tasks")

_REALM = 'Bearer realm="paychan-admin"'
_TOKEN_HELP = ("send `Authorization: Bearer <token>` with the token the gateway was started "
               "with (paychan serve --admin-token-file F, or PAYCHAN_ADMIN_TOKEN)")


def enable_admin(app: web.Application, config: GatewayConfig) -> None:
    """Mount the admin routes on ``app`` when ``config.admin_token`` is set; else do nothing.

        enable_admin(app, config)   # after the payment gate's cleanup context: shutdown
                                    # waits for a running settle before closing the gate
    """
    if config.admin_token is None:
        return
    app[ADMIN_TOKEN_DIGEST] = _digest(config.admin_token)
    app[ADMIN_TASKS] = set()
    app.add_routes(routes)
    app.cleanup_ctx.append(_admin_tasks_ctx)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def authorize(request: web.Request) -> None:
    """Raise 401 without a Bearer token, 403 with a wrong one; return when it is right.

        authorize(request)   # first line of every admin handler
    """
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        exc = api_error(401, "unauthorized", f"Authorization: no admin token; {_TOKEN_HELP}")
        exc.headers["WWW-Authenticate"] = _REALM
        raise exc
    if not hmac.compare_digest(_digest(given), request.app[ADMIN_TOKEN_DIGEST]):
        log.warning("admin: refused a wrong token from %s for %s", request.remote, request.path)
        raise api_error(403, "forbidden", f"Authorization: wrong admin token; {_TOKEN_HELP}")


@routes.post("/admin/settle")
async def settle(request: web.Request) -> web.Response:
    """Claim everything charged and settle it to the receiver, now; the round as JSON."""
    authorize(request)
    app = request.app
    if app[STATE].draining:
        raise api_error(503, "shutting_down", "the gateway is draining; settle after it restarts",
                        retry_after=app[CONFIG].retry_after_s)
    gate = app.get(PAYMENTS)  # absent on a free gateway
    if gate is None:
        raise api_error(409, "payment_disabled", "payment: this gateway serves for free "
                        "(--no-payment), so it has charged nothing to settle")
    log.info("admin: settle requested by %s", request.remote)
    from channels.provider import TxFailed, is_transport_error  # web3: loaded with the gate, not here

    try:
        result = await _detached(app, _settle_round(gate))
    except TxFailed as exc:
        raise api_error(502, "settle_failed", f"{exc.kind} failed on-chain: {exc.reason}") from None
    except Exception as exc:
        if is_transport_error(exc):
            raise api_error(503, "chain_unavailable", "the chain node cannot be reached; retry: "
                            "a claim already sent is finished, never sent twice",
                            retry_after=app[CONFIG].retry_after_s) from None
        raise
    return json_response(result)


async def _settle_round(gate: PaymentGate) -> _Round:
    """``gate.settle_now()`` plus what ``paychan settle --json`` also reports.

        result = await _settle_round(app[PAYMENTS])
    """
    everything = await gate.store.claim_targets()
    claimable = await gate.sync.settler.claimable()
    result = await gate.settle_now()
    result.update({
        "chain_id": gate.terms.chain_id,
        "settlement": gate.terms.settlement,
        # The background sync finishes a previous run's pending transactions, not this route.
        "recovered": [],
        # charged channels this key cannot claim, or that a pending claim already covers
        "not_claimable": len(everything) - len(claimable),
    })
    return result


async def _detached(
    app: web.Application, round_: Coroutine[Any, Any, _Round]
) -> _Round:
    """Run ``round_`` as a task the request's cancellation does not reach; its result.

        result = await _detached(app, _settle_round(gate))
    """
    task = asyncio.get_running_loop().create_task(round_, name="paychan-admin-settle")
    tasks = app[ADMIN_TASKS]
    tasks.add(task)
    task.add_done_callback(_forget(tasks))
    return await asyncio.shield(task)


def _forget(tasks: set[asyncio.Task[_Round]]) -> Callable[[asyncio.Task[_Round]], None]:
    def done(task: asyncio.Task[_Round]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Read here: a round whose caller hung up is still logged (never "not retrieved").
            log.warning("admin settle round failed: %r", task.exception())

    return done


async def _admin_tasks_ctx(app: web.Application) -> AsyncIterator[None]:
    """On shutdown, before the payment gate closes: let a running settle round finish
    (up to ``drain_timeout_s``; a claim cut short is finished from the journal at restart)."""
    yield
    tasks = app[ADMIN_TASKS]
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=app[CONFIG].drain_timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
