"""A real paid gateway (anvil, our contracts, the real model) on an event loop of its own thread.

SDK tests (any event loop) and CLI tests (synchronous, `asyncio.run` inside the command) both
talk to it over real sockets, so neither has to share the gateway's loop::

    with GatewayThread() as gw:                 # anvil + tf_efficientnet_lite0, loaded once
        url = gw.url                            # a paid gateway on the shared anvil
        with gw.isolated() as (node, url2):     # a fresh anvil + gateway (clock jumps stay there)
            ...
        gw.settle_now(url)                      # that gateway claims and settles its charges
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contracts import DEV_KEYS, Anvil

PRICE = 1000  # token base units per image (0.001 of a 6-decimal test USDC)
PROVIDER_KEY = DEV_KEYS[0]  # receiver and receiver authorizer; payers use the other dev keys


class GatewayThread:
    """Anvil plus paid gateways sharing one loaded classifier, served from a background loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="paychan-sdk-")
        self._runners: list[Any] = []
        self._apps: dict[str, Any] = {}  # base URL -> its aiohttp application
        self._count = 0
        self.classifier: Any = None
        self.anvil: Anvil | None = None
        self.url = ""

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        self.anvil = Anvil().start()
        self.classifier = self._call(self._load_model())
        self.url = self.serve(self.anvil)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for runner in reversed(self._runners):
                self._call(runner.cleanup())
            if self.classifier is not None:
                self._call(self.classifier.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if self.anvil is not None:
                self.anvil.stop()
            self._tmp.cleanup()

    def serve(self, node: Anvil, **overrides: Any) -> str:
        """Start one more paid gateway on ``node``; returns its base URL."""
        from gateway.config import GatewayConfig

        self._count += 1
        root = Path(self._tmp.name) / f"gw{self._count}"
        values: dict[str, Any] = {
            "payment": True, "key": PROVIDER_KEY, "token": node.deployment.token,
            "rpc_url": node.url, "price": PRICE, "model": "tf_efficientnet_lite0",
            "min_deposit": PRICE,  # the SDK's own deposit policy decides (tests size deposits)
            "settler": False, "samples_dir": root / "samples",
            "store": f"sqlite:///{root / 'ledger.sqlite3'}", "drain_timeout_s": 2.0,
        }
        values.update(overrides)
        root.mkdir(parents=True)
        return self._call(self._start(GatewayConfig.from_mapping(values)))

    def settle_now(self, url: str) -> dict[str, Any]:
        """Have the gateway at ``url`` claim (and settle) every charge now, on its own loop."""
        from gateway.keys import PAYMENTS

        return self._call(self._apps[url][PAYMENTS].settle_now())

    def channel_view(self, url: str, channel_hex: str) -> dict[str, Any] | None:
        """The ledger's view of a channel at the gateway ``url`` (None: unknown there)."""
        from gateway.keys import PAYMENTS

        return self._call(self._apps[url][PAYMENTS].channel_view(channel_hex))

    @contextmanager
    def isolated(self) -> Iterator[tuple[Anvil, str]]:
        """A fresh anvil with its own gateway, for tests that move the chain's clock."""
        node = Anvil().start()
        try:
            yield node, self.serve(node)
        finally:
            node.stop()

    # --- internals -----------------------------------------------------------------------

    def _call(self, coro: Any, timeout: float = 120.0) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _load_model(self) -> Any:
        from inference import Classifier

        clf = await asyncio.to_thread(Classifier.load, model="tf_efficientnet_lite0", device="cpu",
                                      max_batch=16, queue_size=64)
        await clf.start()
        return clf

    async def _start(self, config: Any) -> str:
        from aiohttp import web

        from gateway.app import create_app
        from gateway.connections import GatewayRunner
        from tests.gateway.serving import free_port

        runner = GatewayRunner(create_app(config, classifier=self.classifier), access_log=None,
                               shutdown_timeout=2)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runners.append(runner)
        url = f"http://127.0.0.1:{port}"
        self._apps[url] = runner.app
        return url


def evm_increase_time(node: Anvil, seconds: int) -> None:
    """Move the chain's clock forward and mine a block (anvil's evm_increaseTime + evm_mine)."""
    import json
    import urllib.request

    for method, params in (("evm_increaseTime", [seconds]), ("evm_mine", [])):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(node.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.loads(resp.read())
        assert "error" not in answer, answer
