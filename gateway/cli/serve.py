"""``paychan serve``: run the gateway.

    $ paychan serve --rpc http://127.0.0.1:8545 --key-file provider.key --token 0x... \\
          --price 1000 --store sqlite:///gateway.sqlite3 --port 8402
    $ paychan serve ... --workers 2 --store redis://127.0.0.1:6379/0   # 2 processes, 1 port

Every flag also reads from ``PAYCHAN_<NAME>`` and from a TOML file (``--config``); flags win.
With ``--workers N`` the parent starts N processes that bind the same port with
SO_REUSEPORT and share the Redis ledger. Each runs the chain sync, but only the holder of
the Redis settler lease follows the chain and claims; if it dies, another worker takes the
lease over within ``settler_lease_ttl_s`` (and first finishes the transactions it left).

Settlement policy (flags, ``PAYCHAN_*`` or TOML): a claim is due on a pending withdrawal, or
when the oldest unclaimed charge is ``--claim-after-s`` seconds old (default 3600), or when
``--claim-threshold`` units are unclaimed (default 1000000); ``paychan settle`` forces one.

Slow and greedy clients are cut off (``gateway.connections``): ``--header-timeout-s`` (10),
``--body-idle-timeout-s`` (20) with ``--body-min-rate`` (500 bytes/s) answer 408 and close;
``--max-connections-per-address`` (128) refuses one more with 429; ``--keepalive-timeout-s`` (75).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from gateway.cli._common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, add_json_flag

if TYPE_CHECKING:  # aiohttp loads inside the handler: `paychan --help` stays instant
    from aiohttp import web

    from gateway.config import GatewayConfig

__all__ = ["config_from_args", "register", "run_server"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the paid classification gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with settings (flags override it)")
    p.add_argument("--rpc", dest="rpc_url", help="EVM JSON-RPC URL (default http://127.0.0.1:8545)")
    p.add_argument("--key-file", type=Path,
                   help="file holding the receiver-authorizer hex key (default: PAYCHAN_KEY)")
    p.add_argument("--token", help="payment token address (ERC-3009, e.g. the test USDC)")
    p.add_argument("--price", type=int, help="price per image in token units (default 1000)")
    p.add_argument("--store", help="ledger: sqlite:///PATH (default) or redis://HOST:PORT/DB")
    p.add_argument("--model", help="model id or version to serve; 'null' for the null model")
    p.add_argument("--models", type=Path,
                   help="model store directory: serve its champion, let requests pin other "
                   "versions with ?model= (default: the bundled --model, no store)")
    p.add_argument("--max-resident-models", type=int,
                   help="store versions kept loaded at once, least recently used evicted (default 2)")
    p.add_argument("--batch-cap", type=int,
                   help="largest model batch (default: the best rate timed at warm-up)")
    p.add_argument("--workers", type=int, help="processes sharing the port (needs a redis store)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8402)")
    p.add_argument("--receiver", help="payTo address (default: the key's address)")
    p.add_argument("--settlement", help="settlement contract (default: the canonical address)")
    p.add_argument("--samples-dir", type=Path, help="where POST /v1/samples stores images")
    p.add_argument("--no-payment", dest="payment", action="store_const", const=False,
                   help="serve paid routes for free (benchmarks, local use)")
    p.add_argument("--no-settler", dest="settler", action="store_const", const=False,
                   help="do not follow the chain, claim or settle from this gateway")
    p.add_argument("--claim-after-s", type=float,
                   help="claim once the oldest unclaimed charge is this many seconds old (default 3600)")
    p.add_argument("--claim-threshold", type=int,
                   help="... or once this many token units are unclaimed (default 1000000)")
    p.add_argument("--no-facilitator", dest="facilitator", action="store_const", const=False,
                   help="do not mount the x402 facilitator endpoints under /facilitator")
    p.add_argument("--header-timeout-s", type=float,
                   help="408 and close when a request's headers take longer (default 10)")
    p.add_argument("--body-idle-timeout-s", type=float,
                   help="408 and close when a request body stalls this long (default 20)")
    p.add_argument("--body-min-rate", type=int,
                   help="... or averages fewer bytes/s after that grace (default 500; 0: off)")
    p.add_argument("--max-connections-per-address", type=int,
                   help="open connections one client address may hold; more get 429 (default 128; 0: off)")
    p.add_argument("--keepalive-timeout-s", type=float,
                   help="close an idle keep-alive connection after this long (default 75)")
    p.add_argument("--admin-token-file", type=Path,
                   help="enable POST /admin/settle for callers sending this file's token as "
                   "'Authorization: Bearer' (also PAYCHAN_ADMIN_TOKEN); off by default")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


_FLAG_FIELDS = (
    "config", "rpc_url", "key_file", "token", "price", "store", "model", "models", "max_resident_models", "batch_cap", "workers", "host",
    "port", "receiver", "settlement", "samples_dir", "payment", "settler", "claim_after_s",
    "claim_threshold", "facilitator", "header_timeout_s", "body_idle_timeout_s", "body_min_rate",
    "max_connections_per_address", "keepalive_timeout_s", "admin_token_file",
)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The GatewayConfig for parsed ``serve`` arguments (flags > env > TOML > defaults)."""
    from gateway.config import ConfigError, GatewayConfig

    flags = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    try:
        config = GatewayConfig.load(flags, env=os.environ if env is None else env)
        config.require_payment_terms()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return config


def _handle(args: argparse.Namespace) -> int:
    from channels.provider.store.sqlite import LedgerLocked
    from inference.versions import StoreError

    config = config_from_args(args)
    announce = {
        "url": f"http://{config.host}:{config.port}",
        "workers": config.workers,
        "store": config.store,
        "model": config.model,
        "models": None if config.models is None else str(config.models),
        "payment": config.payment,
        "pid": os.getpid(),
    }
    print(json.dumps(announce) if args.json else
          f"paychan gateway on {announce['url']} ({config.workers} worker(s), store {config.store})",
          flush=True)
    if config.workers == 1:
        try:
            run_server(config)
        except ConnectionError as exc:  # the RPC (or Redis) did not answer at startup
            raise CliError(str(exc), EXIT_UNREACHABLE) from None
        except LedgerLocked as exc:  # another process owns the SQLite ledger file
            raise CliError(f"store: {exc}", EXIT_FAILED) from None
        except StoreError as exc:  # --models: unwritable, no champion, a broken manifest
            raise CliError(f"models: {exc}", EXIT_USAGE) from None
        return 0
    return _run_workers(config)


def run_server(config: GatewayConfig, *, reuse_port: bool = False) -> None:
    """Serve ``config`` in this process until SIGINT/SIGTERM (drains in-flight requests)."""
    from gateway.app import create_app

    if not config.is_null_model and config.device == "cpu":
        from inference import keep_freed_memory

        keep_freed_memory()  # before any thread allocates: no page faults per model batch
    app = create_app(config)
    app.on_startup.append(_tune_collector)  # runs after the cleanup contexts have opened
    _run_until_signalled(app, config, reuse_port=reuse_port)


def _run_until_signalled(app: web.Application, config: GatewayConfig, *, reuse_port: bool) -> None:
    """``web.run_app`` with the gateway's runner: its protocol cuts slow clients off and caps
    connections per address (``gateway.connections``), which ``run_app``'s own runner cannot.

    Same lifecycle as ``run_app``: SIGINT/SIGTERM stop the server, its own cleanup (drain,
    then the app's cleanup contexts in order) runs before any other task is cancelled.
    """
    from aiohttp import web

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_forever(app, config, reuse_port=reuse_port))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve_forever(app: web.Application, config: GatewayConfig, *, reuse_port: bool) -> None:
    """Start ``app`` on ``config.host:port`` through ``GatewayRunner``; clean up when stopped."""
    from aiohttp import web

    from gateway.connections import GatewayRunner

    runner = GatewayRunner(app, handle_signals=True, access_log=None,
                           shutdown_timeout=config.drain_timeout_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
        await site.start()
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await runner.cleanup()


# Young-generation passes per net container allocations (CPython's default is 700).
_GC_YOUNG_THRESHOLD = 50_000


async def _tune_collector(app: web.Application) -> None:
    """Take what startup built out of the garbage collector's reach, and collect less often.

    With CPython's defaults a serving process spent about 18 µs of every paid request in the
    collector (bench/gateway.py, SQLite ledger, 2-core VM): startup leaves ~130,000 long-lived
    objects (aiohttp, web3, the model), the requests in flight keep a few thousand young ones
    alive, so a young pass ran every few requests, promoted what was in flight, and every
    ~3,000 requests a full pass walked the whole heap (about 50 ms each). Frozen, the startup
    heap is skipped by every pass; with a higher young threshold the transient objects of a
    request die by reference counting before any pass sees them. Cyclic garbage is still
    collected, in passes that now run seconds apart. ``/metrics`` shows both
    (``paychan_gc_frozen_objects``, ``paychan_gc_collections_total``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _worker_main(config: GatewayConfig) -> None:
    # A worker is a fresh interpreter (spawn): no inherited event loop, torch threads or sockets.
    run_server(config, reuse_port=True)


def _run_workers(config: GatewayConfig) -> int:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = []
    for index in range(config.workers):
        # Every worker may settle: the Redis lease lets exactly one act at a time, and
        # another takes over if that one dies.
        worker_config = dataclasses.replace(config, workers=1)
        proc = ctx.Process(target=_worker_main, args=(worker_config,), name=f"paychan-worker-{index}")
        proc.start()
        procs.append(proc)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    # Ctrl-C reaches the whole process group: the workers got it already, and a second
    # signal during their drain would cut it short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for proc in procs:
        proc.join()
    codes = [proc.exitcode for proc in procs]
    print(f"paychan serve: {len(procs)} workers stopped (exit codes {codes})", file=sys.stderr)
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
