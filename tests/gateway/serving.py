"""Run a gateway app on a real loopback socket inside the test's event loop.

    async with serve(create_app(config, classifier=clf)) as base_url:
        async with aiohttp.ClientSession() as s:
            await s.post(base_url + "/v1/classify", data=jpeg, headers=...)
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway.connections import GatewayRunner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def serve(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    """Start ``app`` on 127.0.0.1 (startup runs its cleanup contexts); yields the base URL.

    Served as ``paychan serve`` serves it: through ``GatewayRunner`` (read timeouts, per-address cap).
    """
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
