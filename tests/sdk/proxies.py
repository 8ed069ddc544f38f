"""Loopback HTTP proxies between the SDK and a real gateway, for the recovery tests.

``LossyProxy`` is a raw HTTP/1.1 proxy (asyncio streams, no framework; ``async with
LossyProxy(upstream, plan) as proxy``: clients use ``proxy.url``): for each paid request
it asks ``plan(key, attempt)`` what to do, where ``key`` is the request's Idempotency-Key and
``attempt`` how many times that key was seen before::

    "forward"   pass the request on and its answer back
    "drop"      pass the request on, read the gateway's whole answer (so the charge is
                committed), then close the client's connection without sending a byte:
                the crash window of a lost answer
    "cut"       like "drop", but first send the headers and half the body (a connection
                that dies mid-answer)
    "503"       answer 503 + Retry-After: 0 without forwarding (a proxy in front of a
                gateway that is restarting)

``RewritingProxy`` forwards everything through aiohttp and lets ``rewrite`` edit the answers
(a man in the middle forging the gateway's state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import aiohttp
from aiohttp import web

from tests.gateway.serving import serve

_KEEP = ("content-type", "payment-required", "payment-response", "retry-after",
         "idempotent-replayed", "access-control-expose-headers")

Plan = Callable[[str, int], str]


@dataclass
class Seen:
    """One paid request as the proxy saw it, and what it did with it."""

    key: str
    attempt: int
    signature: str
    action: str
    status: int | None = None  # the gateway's answer (None: not forwarded)


@dataclass
class LossyProxy:
    upstream: str
    plan: Plan
    seen: list[Seen] = field(default_factory=list)

    url: str = ""

    async def __aenter__(self) -> LossyProxy:
        self._session = aiohttp.ClientSession()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        await self._session.close()

    def attempts(self, key: str) -> list[Seen]:
        return [s for s in self.seen if s.key == key]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request of a keep-alive connection; False when the connection ends."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        lower = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(lower.get("content-length", "0")))
        signature = lower.get("payment-signature")
        action, record = "forward", None
        if signature is not None:
            key = lower.get("idempotency-key", "")
            attempt = len(self.attempts(key))
            action = self.plan(key, attempt)
            record = Seen(key, attempt, signature, action)
            self.seen.append(record)
        if action == "503":
            self._write(writer, 503, {"Content-Type": "application/json", "Retry-After": "0"},
                        b'{"error":"upstream_restarting","message":"retry"}')
            await writer.drain()
            return True
        forward = {k: v for k, v in headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        async with self._session.request(method, self.upstream + target, data=body or None,
                                         headers=forward) as r:
            answer, status = await r.read(), r.status
            kept = {k: v for k, v in r.headers.items() if k.lower() in _KEEP}
        if record is not None:
            record.status = status
        if action == "drop":
            return False  # the gateway answered (and charged); the client never hears of it
        if action == "cut":
            self._write(writer, status, kept, answer, cut=True)
            await writer.drain()
            return False
        self._write(writer, status, kept, answer)
        await writer.drain()
        return True

    @staticmethod
    def _write(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes,
               *, cut: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        sent = body[: len(body) // 2] if cut else body
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + sent)


Rewrite = Callable[[web.Request, int, dict[str, str], bytes], Awaitable[tuple[int, dict[str, str], bytes]]]


class RewritingProxy:
    """Forwards every request to ``upstream``; ``rewrite`` may change each answer."""

    def __init__(self, upstream: str, rewrite: Rewrite) -> None:
        self.upstream = upstream
        self.rewrite = rewrite

    async def __aenter__(self) -> str:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._serving = serve(app)
        return await self._serving.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._serving.__aexit__(*exc)
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=await request.read(), headers=headers) as r:
            body = await r.read()
            kept = {k: v for k, v in r.headers.items() if k.lower() in _KEEP}
            status = r.status
        status, kept, body = await self.rewrite(request, status, kept, body)
        return web.Response(status=status, body=body, headers=kept)
