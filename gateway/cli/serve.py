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
import errno
import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from gateway.cli._common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, add_json_flag

if TYPE_CHECKING:  # aiohttp loads inside the handler: `paychan --help` stays instant
    from aiohttp import web

    from gateway.config import GatewayConfig
    from gateway.tokens import TokenInfo

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
    p.add_argument("--price", metavar="AMOUNT",
                   help="price per image: base units (1000) or token units with the token's "
                   "symbol (0.001USDC); default 1000 base units")
    p.add_argument("--store", help="ledger: sqlite:///PATH (default) or redis://HOST:PORT/DB")
    p.add_argument("--model", help="model id or version to serve; 'null' for the null model")
    p.add_argument("--models", type=Path,
                   help="model store directory: serve its champion, let requests pin other "
                   "versions with ?model= (default: the bundled --model, no store)")
    p.add_argument("--max-resident-models", type=int,
                   help="store versions kept loaded at once, least recently used evicted (default 2)")
    p.add_argument("--model-watch-s", type=float,
                   help="how often the store's champion alias is checked for a hot swap "
                   "(default 1; 0: off)")
    p.add_argument("--registry", metavar="ADDRESS",
                   help="ModelRegistry contract: publish each served version there before it "
                   "answers, and advertise it in /v1/models (the key must own it)")
    p.add_argument("--no-publish", dest="publish_models", action="store_const", const=False,
                   help="advertise --registry but do not publish versions to it")
    p.add_argument("--retrain-after", type=int, metavar="N",
                   help="after every N new samples, run `paychan models retrain` in a "
                   "subprocess; a candidate that passes the gate becomes champion (needs --models)")
    p.add_argument("--batch-cap", type=int,
                   help="largest model batch (default: the best rate timed at warm-up)")
    p.add_argument("--workers", type=int, help="processes sharing the port (needs a redis store)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8402)")
    p.add_argument("--receiver", help="payTo address (default: the key's address)")
    p.add_argument("--settlement", help="settlement contract (default: the canonical address)")
    p.add_argument("--samples-dir", type=Path, help="where POST /v1/samples stores images")
    p.add_argument("--samples-per-minute", type=int,
                   help="samples one payer may send a minute, sustained (default 60)")
    p.add_argument("--samples-burst", type=int,
                   help="... and at once (default 20); more get 429 with Retry-After")
    p.add_argument("--samples-max-bytes", type=int,
                   help="image bytes the sample store may hold in all (default 10 GiB; then 507)")
    p.add_argument("--samples-payer-max-bytes", type=int,
                   help="image bytes of samples one payer may store (default 256 MiB; then 507)")
    p.add_argument("--sample-signature-max-age-s", type=float,
                   help="refuse a SAMPLE-SIGNATURE signed longer ago than this (default 600)")
    p.add_argument("--no-payment", dest="payment", action="store_const", const=False,
                   help="serve paid routes for free (benchmarks, local use)")
    p.add_argument("--no-settler", dest="settler", action="store_const", const=False,
                   help="do not follow the chain, claim or settle from this gateway")
    p.add_argument("--claim-after-s", type=float,
                   help="claim once the oldest unclaimed charge is this many seconds old (default 3600)")
    p.add_argument("--claim-threshold", type=int,
                   help="... or once this many token units are unclaimed (default 1000000)")
    p.add_argument("--max-offline-exposure", type=int,
                   help="while the chain node is unreachable, serve known channels until this many "
                   "token units were charged since it was last seen, then 503 (default 1000000)")
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
                   help="enable POST /admin/settle, GET /admin/earnings and the console "
                   "(/admin/console) for this file's token, sent as 'Authorization: Bearer' or "
                   "typed into the console's sign-in form (also PAYCHAN_ADMIN_TOKEN); off by default")
    p.add_argument("--usage-log", type=Path,
                   help="one JSON line per paid answer, for `paychan usage export` and the "
                   "console (default: <SQLite ledger>.usage.jsonl; a Redis ledger needs this)")
    p.add_argument("--access-log", metavar="FILE",
                   help="where the access log goes, one JSON line a request: '-' for stdout "
                   "(the default) or a file to append to")
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const="off",
                   help="no access log")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


_FLAG_FIELDS = (
    "config", "rpc_url", "key_file", "token", "price", "store", "model", "models", "max_resident_models", "batch_cap", "workers", "host",
    "model_watch_s", "registry", "publish_models", "retrain_after",
    "port", "receiver", "settlement", "samples_dir", "samples_per_minute", "samples_burst",
    "samples_max_bytes", "samples_payer_max_bytes", "sample_signature_max_age_s", "payment", "settler", "claim_after_s",
    "claim_threshold", "max_offline_exposure", "facilitator", "header_timeout_s", "body_idle_timeout_s", "body_min_rate",
    "max_connections_per_address", "keepalive_timeout_s", "admin_token_file", "access_log",
    "usage_log",
)


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The GatewayConfig for parsed ``serve`` arguments (flags > env > TOML > defaults).

    A price in token units (``--price 0.001USDC``) needs the token's decimals, so it is left
    at the default here; ``_handle`` converts it once the token is checked."""
    from gateway.config import ConfigError, GatewayConfig

    env = os.environ if env is None else env
    flags = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    if _price_text(args, env) is not None:
        # A stand-in that outranks the TOML's price; _priced sets the real one.
        flags["price"] = 1
        env = {k: v for k, v in env.items() if k != "PAYCHAN_PRICE"}
    elif isinstance(flags["price"], str):
        flags["price"] = flags["price"].strip()  # base units: GatewayConfig converts and checks
    try:
        config = GatewayConfig.load(flags, env=env)
        config.require_payment_terms()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return config


def _price_text(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """The price when it is in token units, e.g. ``0.001USDC``, from ``--price``, else
    PAYCHAN_PRICE, else the TOML file's ``price``; None when it is base units or unset."""
    from gateway.config import ConfigError, read_toml

    text = getattr(args, "price", None) or env.get("PAYCHAN_PRICE")
    toml_path = getattr(args, "config", None) or env.get("PAYCHAN_CONFIG")
    if text is None and toml_path:
        try:
            text = read_toml(Path(toml_path)).get("price")
        except ConfigError:
            return None  # GatewayConfig.load reports the unreadable file
    if text is None or isinstance(text, int) or str(text).strip().replace("_", "").lstrip("-").isdigit():
        return None
    return str(text)


def _handle(args: argparse.Namespace) -> int:
    """Bind the port, check the token, and only then announce and serve: whatever the
    startup line says has been checked (a port in use, an address that is not an EIP-3009
    token, a bad price are refused first, in one line)."""
    from channels.provider.store.sqlite import LedgerLocked
    from inference.versions import StoreError

    config = config_from_args(args)
    price_text = _price_text(args, os.environ)
    sock = _bind(config, reuse_port=config.workers > 1)
    try:
        token = _check_token(config) if config.payment else None
        config = _priced(config, price_text, token)
        _check_access_log(config)  # a bad --access-log path is refused before the model loads
        if token is not None:
            config = dataclasses.replace(config, token_name=config.token_name or token.name,
                                         token_version=config.token_version or token.version,
                                         token_symbol=token.symbol, token_decimals=token.decimals)
        if config.workers > 1:
            sock.close()  # the workers bind their own sockets to the same port
            _announce(args, config, token, None)
            return _run_workers(config)
        try:
            run_server(config, sock=sock, on_started=lambda app: _announce(args, config, token, app))
        except ConnectionError as exc:  # the RPC (or Redis) did not answer at startup
            raise CliError(str(exc), EXIT_UNREACHABLE) from None
        except LedgerLocked as exc:  # another process owns the SQLite ledger file
            raise CliError(f"store: {exc}", EXIT_FAILED) from None
        except StoreError as exc:  # --models: unwritable, no champion, a broken manifest
            raise CliError(f"models: {exc}", EXIT_USAGE) from None
        return 0
    finally:
        sock.close()


def _bind(config: GatewayConfig, *, reuse_port: bool) -> socket.socket:
    """The listening socket on ``config.host:port`` (CliError, exit 2, when it is taken).

    With workers the parent only binds, to find a port in use before starting anything; a
    socket that never listens takes no connections away from the workers."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"--host {config.host}: not an address of this machine ({exc.strerror})",
                       EXIT_USAGE) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not reuse_port:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {config.port} on {config.host} is in use; pick another with "
                           "--port", EXIT_USAGE, "port_in_use") from None
        raise CliError(f"--host {config.host} --port {config.port}: cannot listen there "
                       f"({exc.strerror})", EXIT_USAGE) from None
    sock.set_inheritable(False)
    return sock


def _check_token(config: GatewayConfig) -> TokenInfo:
    """The payment token, checked on the chain to be an ERC-20 with EIP-3009 (CliError if not)."""
    from gateway.chain_setup import close_web3, connect_rpc
    from gateway.tokens import TokenError, read_token

    assert config.token is not None  # require_payment_terms
    token_address = config.token

    async def check() -> TokenInfo:
        w3 = await connect_rpc(config.rpc_url, timeout_s=10)
        try:
            return await read_token(w3, token_address)
        finally:
            await close_web3(w3)

    try:
        return asyncio.run(check())
    except TokenError as exc:
        raise CliError(str(exc), EXIT_USAGE, "not_a_token") from None
    except ConnectionError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None


def _priced(config: GatewayConfig, price_text: str | None, token: TokenInfo | None) -> GatewayConfig:
    """``config`` with a token-units price (``0.001USDC``) converted to base units."""
    if price_text is None:
        return config
    from gateway.tokens import parse_amount

    if token is None:
        raise CliError(f"price: {price_text!r} is in token units, which need the token's "
                       "decimals; a gateway without payments has no token: pass base units "
                       "(e.g. --price 1000)", EXIT_USAGE)
    try:
        price = parse_amount(price_text, token.decimals, token.symbol)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if price <= 0:
        raise CliError(f"price: must be positive, got {price_text!r}", EXIT_USAGE)
    return dataclasses.replace(config, price=price)


def _check_access_log(config: GatewayConfig) -> None:
    """CliError (exit 2) when ``--access-log FILE`` cannot be appended to."""
    from gateway.access_log import OFF

    if config.access_log == "-" or config.access_log.strip().lower() in OFF:
        return
    try:
        with open(os.path.expanduser(config.access_log), "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise CliError(f"--access-log: cannot write {config.access_log} ({exc.strerror}); pass "
                       "a writable file, '-' for stdout, or --no-access-log", EXIT_USAGE) from None


def _announce(args: argparse.Namespace, config: GatewayConfig, token: TokenInfo | None,
              app: web.Application | None) -> None:
    """The startup line, once the port is bound and the token checked (and, with one process,
    the model loaded): URL, price, token, receiver, model; one JSON object under ``--json``."""
    from gateway.tokens import format_amount

    model_id, architecture = config.model, None
    if app is not None:
        from gateway.keys import CLASSIFIER

        version = app[CLASSIFIER].version
        model_id, architecture = version.id, version.architecture
    elif config.models is not None:
        model_id = f"the champion of {config.models}"
    receiver = _receiver(config) if config.payment else None
    url = f"http://{config.host}:{config.port}"
    price = format_amount(config.price, *((token.decimals, token.symbol) if token else (None, None)))
    announce = {
        "url": url,
        "price": {"base_units": str(config.price), "text": price},
        "token": token.to_json() if token else None,
        "receiver": receiver,
        "model": {"id": model_id, "architecture": architecture},
        "workers": config.workers,
        "store": config.store,
        "models": None if config.models is None else str(config.models),
        "payment": config.payment,
        "access_log": config.access_log,
        "pid": os.getpid(),
    }
    if args.json:
        print(json.dumps(announce), flush=True)
        return
    model = model_id + (f" ({architecture})" if architecture else "")
    terms = (f"price {price} per image, token {token.symbol} {token.address}, "
             f"receiver {receiver}" if token else "payments off (--no-payment), free")
    print(f"paychan gateway on {url}: {terms}, model {model}; "
          f"{config.workers} worker(s), store {config.store}", flush=True)


def _receiver(config: GatewayConfig) -> str:
    from eth_account import Account

    from channels.protocol import checksum_address

    if config.receiver:
        return checksum_address(config.receiver)
    assert config.key is not None
    return str(Account.from_key(config.key).address)


def run_server(config: GatewayConfig, *, reuse_port: bool = False, sock: socket.socket | None = None,
               on_started: Callable[[web.Application], None] | None = None) -> None:
    """Serve ``config`` in this process until SIGINT/SIGTERM (drains in-flight requests).

    ``sock``: an already bound, listening socket to serve on (else ``config.host:port`` is
    bound); ``on_started(app)`` runs once the app has started and takes connections."""
    from gateway.app import create_app

    if not config.is_null_model and config.device == "cpu":
        from inference import keep_freed_memory

        keep_freed_memory()  # before any thread allocates: no page faults per model batch
    app = create_app(config)
    app.on_startup.append(_tune_collector)  # runs after the cleanup contexts have opened
    _run_until_signalled(app, config, reuse_port=reuse_port, sock=sock, on_started=on_started)


def _run_until_signalled(app: web.Application, config: GatewayConfig, *, reuse_port: bool,
                         sock: socket.socket | None = None,
                         on_started: Callable[[web.Application], None] | None = None) -> None:
    """``web.run_app`` with the gateway's runner: its protocol cuts slow clients off and caps
    connections per address (``gateway.connections``), which ``run_app``'s own runner cannot.

    Same lifecycle as ``run_app``: SIGINT/SIGTERM stop the server, its own cleanup (drain,
    then the app's cleanup contexts in order) runs before any other task is cancelled.
    """
    from aiohttp import web

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_forever(app, config, reuse_port=reuse_port, sock=sock,
                                           on_started=on_started))
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


async def _serve_forever(app: web.Application, config: GatewayConfig, *, reuse_port: bool,
                         sock: socket.socket | None = None,
                         on_started: Callable[[web.Application], None] | None = None) -> None:
    """Start ``app`` on ``sock`` (else ``config.host:port``) through ``GatewayRunner``, with
    the JSON access log (``gateway.access_log``) unless it is off; clean up when stopped."""
    from aiohttp import web

    from gateway.access_log import JsonAccessLogger, open_access_log
    from gateway.connections import GatewayRunner

    runner = GatewayRunner(app, handle_signals=True, access_log=open_access_log(config.access_log),
                           access_log_class=JsonAccessLogger,
                           shutdown_timeout=config.drain_timeout_s)
    await runner.setup()
    try:
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
        await site.start()
        if on_started is not None:
            on_started(app)
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
