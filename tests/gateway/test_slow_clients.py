"""Slow and greedy clients are cut off (gateway.connections), over real loopback sockets.

Raw-socket clients trickle a request head or body, or stall, against a gateway served by
``GatewayRunner`` with short limits (1-2 s); each test asserts only that the cut happens (with a
generous bound), never how fast, and that ordinary requests are served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.app import create_app
from gateway.connections import CONNECTIONS, ConnectionGuard
from gateway.keys import METRICS
from tests.gateway.serving import serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOUND_S = 20.0  # how long a cut may take before the test fails: far above every limit set here
HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: "  # a header line never finished


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _app(make_config: Any, classifier: Any, **limits: Any) -> Any:
    """A free null-model gateway app with the given connection limits."""
    return create_app(make_config(**limits), classifier=classifier)


@contextlib.asynccontextmanager
async def _raw(url: str, source: str = "127.0.0.1") -> AsyncIterator[Conn]:
    """A plain TCP connection to the gateway at ``url`` from the address ``source``."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """All the server sends until it closes the connection; fails past BOUND_S."""
    received = b""
    async with asyncio.timeout(BOUND_S):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


async def _trickle(writer: asyncio.StreamWriter, byte: bytes, every_s: float) -> int:
    """Send ``byte`` every ``every_s`` until the server closes; returns the bytes sent."""
    sent = 0
    with contextlib.suppress(OSError):
        while not writer.is_closing():
            writer.write(byte)
            await writer.drain()
            sent += 1
            await asyncio.sleep(every_s)
    return sent


async def _healthz(url: str, source: str = "127.0.0.1") -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url + "/healthz") as r:
        return r.status


def _answer(raw: bytes) -> tuple[str, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


async def test_a_trickled_head_is_cut_off_with_408(make_config, null_classifier) -> None:
    app = _app(make_config, null_classifier, header_timeout_s=1.0)
    async with serve(app) as url, _raw(url) as (reader, writer):
        writer.write(HEAD)
        trickle = asyncio.create_task(_trickle(writer, b"a", 0.5))
        assert await _healthz(url) == 200  # served while the slow client holds its connection
        status, body = _answer(await _until_closed(reader))
        assert status == "HTTP/1.1 408 Request Timeout"
        assert body["error"] == "request_timeout" and "headers" in body["message"]
        trickle.cancel()
        assert app[CONNECTIONS].cuts.get(("header_timeout",)) == 1
        assert await _healthz(url) == 200


async def test_a_silent_connection_is_closed_unanswered(make_config, null_classifier) -> None:
    app = _app(make_config, null_classifier, header_timeout_s=1.0)
    async with serve(app) as url, _raw(url) as (reader, _):
        assert await _until_closed(reader) == b""  # nothing asked, so nothing answered


async def test_a_stalled_body_is_answered_408_and_closed(make_config, null_classifier) -> None:
    app = _app(make_config, null_classifier, body_idle_timeout_s=1.0)
    async with serve(app) as url, _raw(url) as (reader, writer):
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"\xff\xd8\xff" + b"\0" * 7)
        assert await _healthz(url) == 200
        status, body = _answer(await _until_closed(reader))
        assert status == "HTTP/1.1 408 Request Timeout" and body["error"] == "request_timeout"
    assert app[CONNECTIONS].cuts.get(("body_timeout",)) == 1
    assert app[METRICS].requests.get(("/v1/classify", "408")) == 1


async def test_a_body_below_the_minimum_rate_is_cut_off(make_config, null_classifier) -> None:
    # Never idle for body_idle_timeout_s, but ~5 bytes/s against a floor of 100.
    app = _app(make_config, null_classifier, body_idle_timeout_s=1.0, body_min_rate=100)
    async with serve(app) as url, _raw(url) as (reader, writer):
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        trickle = asyncio.create_task(_trickle(writer, b"\0", 0.2))
        status, body = _answer(await _until_closed(reader))
        trickle.cancel()
        assert status == "HTTP/1.1 408 Request Timeout" and "bytes/s" in body["message"]


async def test_a_body_sent_in_pieces_within_the_limits_is_served(make_config, null_classifier,
                                                                 jpeg) -> None:
    app = _app(make_config, null_classifier, body_idle_timeout_s=2.0, header_timeout_s=2.0)
    async with serve(app) as url, _raw(url) as (reader, writer):
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/jpeg\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
        step = len(jpeg) // 4 + 1
        for at in range(0, len(jpeg), step):
            await asyncio.sleep(0.25)
            writer.write(jpeg[at:at + step])
        status, body = _answer(await _until_closed(reader))
        assert status == "HTTP/1.1 200 OK" and body["results"]
    assert app[CONNECTIONS].cuts.values == {}


async def test_kept_alive_requests_get_the_head_timeout_idle_time_does_not(make_config,
                                                                           null_classifier) -> None:
    app = _app(make_config, null_classifier, header_timeout_s=1.0, keepalive_timeout_s=30.0)
    request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    async with serve(app) as url, _raw(url) as (reader, writer):
        for _ in range(2):  # idle longer than the head timeout between two requests: kept
            writer.write(request)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.readuntil(b"}")
            await asyncio.sleep(2.5)
        writer.write(HEAD)  # the next head starts, then trickles
        trickle = asyncio.create_task(_trickle(writer, b"a", 0.5))
        status, _ = _answer(await _until_closed(reader))
        trickle.cancel()
        assert status == "HTTP/1.1 408 Request Timeout"


async def test_an_idle_connection_is_closed_after_keepalive_timeout_s(make_config,
                                                                      null_classifier) -> None:
    app = _app(make_config, null_classifier, keepalive_timeout_s=1.0)
    async with serve(app) as url, _raw(url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answer = await _until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}")


async def test_connections_over_the_address_cap_are_refused(make_config, null_classifier) -> None:
    app = _app(make_config, null_classifier, max_connections_per_address=3, header_timeout_s=60.0)
    guard: ConnectionGuard = app[CONNECTIONS]
    async with serve(app) as url, contextlib.AsyncExitStack() as held:
        conns = [await held.enter_async_context(_raw(url)) for _ in range(3)]
        for _, writer in conns:
            writer.write(HEAD)
        async with asyncio.timeout(BOUND_S):
            while guard.connections_from("127.0.0.1") < 3:
                await asyncio.sleep(0.01)
        async with _raw(url) as (reader, _):  # the fourth: answered 429 (or reset) and closed
            refused = await _until_closed(reader)
        assert refused == b"" or refused.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert b"Retry-After: 1" in refused or refused == b""
        assert guard.cuts.get(("address_cap",)) == 1
        assert await _healthz(url, source="127.0.0.2") == 200  # another address is served
        # One of the three goes away: the address may connect again.
        _, writer = conns.pop()
        writer.close()
        async with asyncio.timeout(BOUND_S):
            while guard.connections_from("127.0.0.1") > 2:
                await asyncio.sleep(0.01)
        assert await _healthz(url) == 200
        assert guard.connections_from("127.0.0.1") == 2
    assert guard.open == 0
