"""Throwaway redis-server processes for tests: one server with chosen settings (`RedisServer`)
and a three-master Redis Cluster (`RedisClusterNodes`), on free loopback ports, their files in
a directory of their own that is deleted when they stop."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

HAVE_REDIS_SERVER = bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A free loopback port (and, `with_bus`, port + 10000 free too: the cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not with_bus or (port + 10000 < 65536 and _free(port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """`redis-server --port P ARGS...` in a temporary directory; `url` answers when started."""

    def __init__(self, *args: str, with_bus: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="paychan-redis-"))
        self.port = free_port(with_bus)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.dir), "--save", "", "--daemonize", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"redis-server {self.args} on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterNodes:
    """Three masters joined by `redis-cli --cluster create`, each fsyncing every write."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--appendonly", "yes",
                "--appendfsync", "always", with_bus=True,
            )
            for _ in range(masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def url(self, prefix: str, durability: str = "") -> str:
        extra = f"&durability={durability}" if durability else ""
        return f"redis://127.0.0.1:{self.ports[0]}?cluster=yes&prefix={prefix}{extra}"

    def start(self) -> RedisClusterNodes:
        try:
            for n in self.nodes:
                n.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Every node says cluster_state:ok (and knows all the masters)."""
        give_up = time.monotonic() + timeout_s
        while True:
            states = []
            for p in self.ports:
                info = redis.Redis(port=p).execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text
                              and f"cluster_known_nodes:{len(self.ports)}" in text)
            if all(states):
                return
            if time.monotonic() > give_up:
                raise RuntimeError(f"cluster on {self.ports} not ok after {timeout_s} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
