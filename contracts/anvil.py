"""Anvil (from the npm package @foundry-rs/anvil) as a subprocess, with our contracts placed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from web3 import AsyncHTTPProvider, AsyncWeb3

from contracts.addresses import CANONICAL_COLLECTOR, CANONICAL_SETTLEMENT, DEV_REGISTRY, DEV_TOKEN
from contracts.deploy import Deployment, place
from contracts.devstate import dev_contracts

ANVIL_CHAIN_ID = 31337
_REPO_ROOT = Path(__file__).resolve().parent.parent


def anvil_binary() -> str:
    """The pinned anvil from node_modules (``npm ci`` installs it), else one on PATH.

    The platform package's binary is preferred to the ``.bin/anvil`` node wrapper: the
    wrapper runs anvil as its child, so stopping or killing the wrapper would orphan anvil.
    """
    modules = _REPO_ROOT / "node_modules"
    for binary in sorted(modules.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(binary, os.X_OK):
            return str(binary)
    local = modules / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if not found:
        raise FileNotFoundError("anvil not found: run `npm ci` in the repository root (@foundry-rs/anvil)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rpc(url: str, method: str, params: list[object]) -> dict[str, Any]:
    import json

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


class Anvil:
    """An anvil node on ``port`` (default: a free one) with our contracts at the canonical addresses.

    With ``state`` (a file path) the chain is loaded from it on start and dumped to it on stop
    (and every second), so a test can stop anvil and start it again with the same chain.

    Example::

        with Anvil(state=tmp_path / "chain.json") as node:
            w3 = node.w3                    # AsyncWeb3 over HTTP
            node.stop(); node.start()       # same state, same port
    """

    def __init__(self, port: int | None = None, *, state: str | os.PathLike[str] | None = None,
                 block_time: float | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port or _free_port()
        self.state = Path(state) if state is not None else None
        self.block_time = block_time
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None
        self._w3: AsyncWeb3[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def w3(self) -> AsyncWeb3[Any]:
        """An AsyncWeb3 over HTTP to this node (one per Anvil object; bound to the running event loop lazily)."""
        if self._w3 is None:
            self._w3 = AsyncWeb3(AsyncHTTPProvider(self.url))
        return self._w3

    @property
    def deployment(self) -> Deployment:
        return Deployment(ANVIL_CHAIN_ID, CANONICAL_SETTLEMENT, CANONICAL_COLLECTOR, DEV_TOKEN, DEV_REGISTRY)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        """Start anvil (loading ``state`` if the file exists) and place the contracts if they are not there yet."""
        if self.running:
            return self
        cmd = [anvil_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(ANVIL_CHAIN_ID)]
        if self.state is not None:
            if self.state.exists() and self.state.stat().st_size > 0:
                cmd += ["--load-state", str(self.state)]
            cmd += ["--dump-state", str(self.state), "--state-interval", "1"]
        if self.block_time:
            cmd += ["--block-time", str(self.block_time)]
        cmd += self.extra_args
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"anvil exited with {self.process.returncode} on port {self.port}: {err[-500:]}")
            try:
                _rpc(self.url, "eth_chainId", [])
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError(f"anvil did not answer on {self.url} within {timeout}s")
                time.sleep(0.05)
        code = _rpc(self.url, "eth_getCode", [CANONICAL_SETTLEMENT, "latest"]).get("result")
        if code in (None, "0x"):
            self._place_sync()
        return self

    def _place_sync(self) -> None:
        for c in dev_contracts():
            _rpc(self.url, "anvil_setCode", [c.address, "0x" + c.code.hex()])
            for slot, value in c.storage.items():
                _rpc(self.url, "anvil_setStorageAt", [c.address, hex(slot), "0x" + value.to_bytes(32, "big").hex()])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGINT: anvil dumps ``state``); the object can be started again."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash: only the last periodic state dump survives."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _close(self) -> None:
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    async def advance_time(self, seconds: int) -> int:
        """Move the chain clock forward and mine a block; returns the new block's timestamp."""
        await self.w3.provider.make_request("evm_increaseTime", [int(seconds)])
        await self.w3.provider.make_request("evm_mine", [])
        return int((await self.w3.eth.get_block("latest"))["timestamp"])

    async def place(self) -> None:
        """(Re)place the contracts and dev balances through the async provider."""
        await place(self.w3, dev_contracts())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close_w3()
        await asyncio.to_thread(self.stop)

    async def close_w3(self) -> None:
        """Close the HTTP session behind ``.w3``, if one was opened (``.w3`` opens a new one on
        its next use). Call it in the event loop that used ``.w3`` before dropping the node."""
        if self._w3 is not None:
            w3, self._w3 = self._w3, None
            await w3.provider.disconnect()
