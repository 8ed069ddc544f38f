"""Connection guards: read timeouts for request heads and bodies, and a cap on the connections
one client address may hold open.

aiohttp times out idle keep-alive connections but not a request that arrives slowly: a client
that sends its headers (or its body) one byte a second holds a connection, a file descriptor
and a parser for as long as it likes. ``GatewayRunner`` is ``web.AppRunner`` with a protocol
that cuts such clients off; ``paychan serve`` and the tests' ``serve`` helper run through it::

    runner = GatewayRunner(create_app(config))        # limits from the app's config
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 8402).start()

The limits (``ConnectionLimits``, settings of ``GatewayConfig``):

- head: a request's line and headers must arrive within ``header_timeout_s`` of the
  connection opening (first request) or of the request's first byte (later ones). Past it
  the client gets ``408`` and the connection is closed; a connection that sent nothing is
  closed silently (an answer it did not ask for would be read as the answer to its next
  request).
- body: the body must keep moving: no gap longer than ``body_idle_timeout_s``, and after that
  grace at least ``body_min_rate`` bytes/s on average (0: no rate floor), so a body trickled
  one byte a second is cut off too. The handler reading it gets ``408`` (JSON, as every
  gateway error) and the connection is closed; if no handler is reading it, it is closed.
- per address: at most ``max_connections_per_address`` open connections per peer address
  (0: no cap); one more is answered ``429`` with ``Retry-After`` and closed at once.

Cuts are counted in ``paychan_connections_cut_total{reason}``; ``paychan_open_connections``
is the gauge of admitted connections (both per process).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.config import GatewayConfig
from gateway.errors import api_error
from gateway.metrics import Counter

__all__ = [
    "CONNECTIONS",
    "ConnectionGuard",
    "ConnectionLimits",
    "GatewayRunner",
    "GuardedRequestHandler",
    "GuardedServer",
]

# The RequestHandler state this module reads (never writes). aiohttp has no public hook for
# "a request head was parsed" or "the handler is idle"; fail at import, not under attack,
# if an upgrade renames them. Checked against aiohttp 3.14.
_AIOHTTP_STATE = ("_request_count", "_messages", "_current_request", "_waiter", "_reading_paused")
for _name in _AIOHTTP_STATE:
    if not hasattr(RequestHandler, _name):
        raise ImportError(
            f"aiohttp {aiohttp.__version__}: RequestHandler has no {_name}, which "
            "gateway/connections.py reads to time request heads and bodies; install the "
            "aiohttp version pinned in pyproject.toml or update gateway/connections.py"
        )

# After a body timeout the handler has this long to answer its 408 before the connection is
# closed under it (it may be waiting on something other than the body).
_CUT_GRACE_S = 1.0

# Where a connection is in its current request.
_WAIT = 0  # between requests, or a request fully read and being handled
_HEAD = 1  # reading a request line and headers
_BODY = 2  # reading a request body
_CUT = 3  # refused or being closed: further bytes are dropped


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections it may hold.

    ``ConnectionLimits.from_config(config)`` reads them from a ``GatewayConfig``.
    """

    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 20.0
    body_min_rate: int = 500  # bytes/s once body_idle_timeout_s has passed; 0: none
    max_connections_per_address: int = 128  # 0: no cap
    keepalive_timeout_s: float = 75.0  # idle between requests (aiohttp's own timer)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ConnectionLimits:
        """The limits set on ``config``."""
        return cls(
            header_timeout_s=config.header_timeout_s,
            body_idle_timeout_s=config.body_idle_timeout_s,
            body_min_rate=config.body_min_rate,
            max_connections_per_address=config.max_connections_per_address,
            keepalive_timeout_s=config.keepalive_timeout_s,
        )


class ConnectionGuard:
    """Counts open connections per peer address and the connections cut, for one server.

        guard = ConnectionGuard(ConnectionLimits(max_connections_per_address=2))
        guard.admit("10.0.0.7") and guard.admit("10.0.0.7")   # True
        guard.admit("10.0.0.7")                                # False: a third is refused
        guard.release("10.0.0.7")
    """

    __slots__ = ("_by_address", "cuts", "limits", "open", "refusal", "stalled_head")

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits = limits or ConnectionLimits()
        self._by_address: dict[str, int] = {}
        self.open = 0
        self.cuts = Counter(
            "paychan_connections_cut_total",
            "Connections closed by a read timeout or refused by the per-address cap.",
            ("reason",),
        )
        cap = limits.max_connections_per_address
        self.refusal = _raw_answer(
            429, "Too Many Requests", "too_many_connections",
            f"this address already has {cap} open connections; reuse them (keep-alive) or retry",
            retry_after=1,
        )
        self.stalled_head = _raw_answer(
            408, "Request Timeout", "request_timeout",
            f"the request line and headers did not arrive within {limits.header_timeout_s:g} s",
        )

    def admit(self, address: str) -> bool:
        """Count one more connection from ``address``; False (nothing counted) over the cap."""
        n = self._by_address.get(address, 0)
        cap = self.limits.max_connections_per_address
        if cap and n >= cap:
            self.cuts.inc(("address_cap",))
            return False
        self._by_address[address] = n + 1
        self.open += 1
        return True

    def release(self, address: str) -> None:
        """Forget one admitted connection from ``address``."""
        n = self._by_address[address] - 1
        if n:
            self._by_address[address] = n
        else:
            del self._by_address[address]  # the map holds connected addresses only
        self.open -= 1

    def connections_from(self, address: str) -> int:
        return self._by_address.get(address, 0)


#: The guard of a gateway app; ``GatewayRunner`` serves the app with it.
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol, plus the head and body clocks and the per-address count.

    One timer per connection at most, and none at all for a request that arrives whole in
    one read (the common case): it is armed only while a head or body is unfinished, and it
    re-arms itself when the deadline moved since it was set.
    """

    __slots__ = (
        "_address", "_body", "_body_last", "_body_start", "_guard", "_head_bytes",
        "_head_deadline", "_limits", "_phase", "_timer",
    )

    def __init__(self, manager: GuardedServer, *, loop: asyncio.AbstractEventLoop,
                 guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._limits = guard.limits
        self._address: str | None = None  # set while admitted
        self._phase = _CUT
        self._timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._head_bytes = 0
        self._body: StreamReader | None = None
        self._body_start = 0.0
        self._body_last = 0.0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = _peer_address(transport)
        if not self._guard.admit(address):
            # Refused before aiohttp sees it: no parser task, nothing registered to shut down.
            transport.write(self._guard.refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._start_head(self._loop.time())
        self._arm(self._head_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is None:  # refused: aiohttp never saw this connection
            return
        self._guard.release(self._address)
        self._address = None
        self._phase = _CUT
        self._body = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _CUT:
            return  # closing: the parser must not feed a body we already failed
        if phase == _BODY:
            self._body_last = self._loop.time()
        elif phase == _WAIT and data:
            self._start_head(self._loop.time())  # the next request on a kept-alive connection
            phase = _HEAD
        if phase == _HEAD:
            self._head_bytes += len(data)
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # Only the newest request can have an unfinished body: earlier ones in the same
            # read were parsed whole.
            self._start_body(self._messages[-1][1])
        if self._phase == _BODY:
            assert self._body is not None
            if self._body.is_eof():
                self._phase, self._body = _WAIT, None
            else:
                self._arm(self._body_last + self._limits.body_idle_timeout_s)
        elif self._phase == _HEAD:
            self._arm(self._head_deadline)

    # ------------------------------------------------------------------ clocks

    def _start_head(self, now: float) -> None:
        self._phase = _HEAD
        self._head_deadline = now + self._limits.header_timeout_s
        self._head_bytes = 0

    def _start_body(self, payload: StreamReader) -> None:
        if payload.is_eof():  # no body, or all of it came with the head
            self._phase, self._body = _WAIT, None
            return
        self._phase, self._body = _BODY, payload
        self._body_start = self._body_last = self._loop.time()

    def _body_deadline(self) -> float:
        limits = self._limits
        idle = self._body_last + limits.body_idle_timeout_s
        if not limits.body_min_rate:
            return idle
        assert self._body is not None
        # Each byte buys 1/rate s beyond the grace: a trickle falls behind, a real upload never.
        earned = self._body.total_bytes / limits.body_min_rate
        return min(idle, self._body_start + limits.body_idle_timeout_s + earned)

    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return  # it fires first, then re-arms for the later deadline
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase == _HEAD:
            deadline = self._head_deadline
        elif phase == _BODY:
            deadline = self._body_deadline()
        else:
            return  # between requests aiohttp's keep-alive timer decides
        now = self._loop.time()
        if self._reading_paused or getattr(self, "_buffer_paused", False):
            # The gateway stopped reading (its buffers are full): the delay is not the client's.
            if phase == _HEAD:
                self._start_head(now)
                self._arm(self._head_deadline)
            else:
                assert self._body is not None
                self._start_body(self._body)
                self._arm(self._body_deadline())
            return
        if now < deadline:
            self._arm(deadline)
        elif phase == _HEAD:
            self._cut_head()
        else:
            self._cut_body()

    # ------------------------------------------------------------------ cutting off

    def _cut_head(self) -> None:
        self._guard.cuts.inc(("header_timeout",))
        self._phase = _CUT
        idle = self._waiter is not None and not self._waiter.done()
        if self._head_bytes and idle and self.transport is not None:
            # Nothing else is being written: the 408 is the answer to the half-sent request.
            self.transport.write(self._guard.stalled_head)
        self.force_close()  # transport.close() still flushes the 408

    def _cut_body(self) -> None:
        self._guard.cuts.inc(("body_timeout",))
        body, self._body = self._body, None
        self._phase = _CUT
        request = self._current_request
        if body is None or request is None or request.content is not body:
            self.force_close()  # no handler reads this body: nobody to answer
            return
        limits = self._limits
        answer = api_error(
            408, "request_timeout",
            f"the request body stalled: no byte for {limits.body_idle_timeout_s:g} s"
            + (f", or under {limits.body_min_rate} bytes/s" if limits.body_min_rate else ""),
        )
        answer.force_close()
        # The handler's next read raises the 408; the end of the body is marked so aiohttp
        # does not linger reading the rest after the answer.
        body.set_exception(answer)
        body.feed_eof()
        self._timer = self._loop.call_later(_CUT_GRACE_S, self.force_close)


class GuardedServer(web.Server):
    """``web.Server`` whose connections are ``GuardedRequestHandler`` s sharing one guard."""

    def __init__(self, handler: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving through a ``GuardedServer``.

    The guard is ``guard`` if given, else ``app[CONNECTIONS]`` (``create_app`` sets it from
    the config), else one with the default limits. ``keepalive_timeout`` defaults to the
    limits' ``keepalive_timeout_s``; other keyword arguments are ``web.AppRunner``'s::

        runner = GatewayRunner(app, access_log=None, shutdown_timeout=5)
    """

    __slots__ = ("_guard",)

    def __init__(self, app: web.Application, *, guard: ConnectionGuard | None = None,
                 **kwargs: Any) -> None:
        guard = guard or app.get(CONNECTIONS) or ConnectionGuard()
        kwargs.setdefault("keepalive_timeout", guard.limits.keepalive_timeout_s)
        super().__init__(app, **kwargs)
        self._guard = guard

    @property
    def guard(self) -> ConnectionGuard:
        return self._guard

    async def _make_server(self) -> web.Server:
        # The app's own server (startup has run, handler and request factory are the app's),
        # rebuilt as a GuardedServer with the same settings.
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            guard=self._guard,
            **plain._kwargs,
        )


def _peer_address(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address (no proxy headers are trusted); ``""`` for a Unix socket."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return "" if peer is None else str(peer)


def _raw_answer(status: int, reason: str, code: str, message: str, *,
                retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, in the gateway's error shape."""
    body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after is not None:
        head.append(f"Retry-After: {max(1, math.ceil(retry_after))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
