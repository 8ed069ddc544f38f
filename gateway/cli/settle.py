"""``paychan settle``: claim every charged channel in the ledger and settle to the receiver, now.

    $ PAYCHAN_KEY=... paychan settle --rpc http://127.0.0.1:8545 --token 0x... \\
          --store sqlite:///paychan-gateway.sqlite3
    $ paychan settle --key-file provider.key --token 0x... --store redis://127.0.0.1:6379/0 --json

One forced settler round over the gateway's ledger store: first the transactions a previous
run left pending in the journal are finished, then every channel with unclaimed charges is
claimed (``claimWithSignature``, up to ``--claim-batch-size`` channels per transaction), and the
claimed value is swept to the receiver (``settle``). Each transaction is followed to its
receipt. Prints the channels claimed, the amounts, the transaction hashes and the gas used.

The key (``--key-file`` or ``PAYCHAN_KEY``) must be the gateway's receiverAuthorizer key: it
signs the claim batch and pays the gas. Settings also come from ``PAYCHAN_*`` and ``--config``
like ``paychan serve``. A Redis ledger may be settled while the gateway runs. A SQLite ledger
belongs to one process: while a gateway holds the file, this refuses (exit 1) and says which
process holds it; stop that gateway first, or ask the running gateway to settle itself:

    $ paychan settle --gateway http://127.0.0.1:8402 --admin-token-file admin.token

``--gateway`` calls the gateway's ``POST /admin/settle`` (enabled by ``paychan serve
--admin-token-file F`` or ``PAYCHAN_ADMIN_TOKEN``; the token comes from ``--admin-token-file``,
``PAYCHAN_ADMIN_TOKEN_FILE`` or ``PAYCHAN_ADMIN_TOKEN``): the gateway's own settler claims and
settles with its key, store and chain, and the same report is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._admin import admin_token, call_admin
from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    add_json_flag,
    emit,
    show_amount,
)

if TYPE_CHECKING:  # web3 and the stores load with the command, not with the CLI
    from channels.provider import Provider, TxFailed, TxResult

__all__ = ["register", "settle_once", "settle_via_gateway"]

Progress = Callable[[str], None]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "settle",
        help="claim every charged channel and settle to the receiver, now",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML file with settings (flags override it)")
    p.add_argument("--store", help="the gateway's ledger: sqlite:///PATH or redis://HOST:PORT/DB")
    p.add_argument("--rpc", dest="rpc_url", help="EVM JSON-RPC URL (default http://127.0.0.1:8545)")
    p.add_argument("--key-file", type=Path,
                   help="file holding the receiver-authorizer hex key (default: PAYCHAN_KEY)")
    p.add_argument("--token", help="the payment token address the gateway is paid in")
    p.add_argument("--settlement", help="settlement contract (default: the canonical address)")
    p.add_argument("--receiver", help="payTo address to settle to (default: the key's address)")
    p.add_argument("--claim-batch-size", type=int,
                   help="channels per claim transaction (1..100, default 100)")
    p.add_argument("--tx-timeout-s", type=float,
                   help="seconds to wait for each receipt (default 600; with --gateway, "
                   "the answer is awaited up to 3 x this + 60 s)")
    p.add_argument("--gateway", metavar="URL",
                   help="settle a running gateway through its POST /admin/settle "
                   "(e.g. http://127.0.0.1:8402) instead of opening its ledger")
    p.add_argument("--admin-token-file", type=Path,
                   help="with --gateway: file holding the gateway's admin token "
                   "(default: PAYCHAN_ADMIN_TOKEN_FILE or PAYCHAN_ADMIN_TOKEN)")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


_FLAG_FIELDS = ("config", "store", "rpc_url", "key_file", "token", "settlement", "receiver",
                "claim_batch_size", "tx_timeout_s")


def _config(args: argparse.Namespace) -> Any:
    from gateway.config import ConfigError, GatewayConfig

    flags = {name: getattr(args, name, None) for name in _FLAG_FIELDS}
    flags["payment"] = True  # the key and the token are required
    try:
        config = GatewayConfig.load(flags, env=os.environ)
        config.require_payment_terms()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if config.store in ("memory", "memory://"):
        raise CliError("--store: a memory ledger has nothing to settle; pass the --store the "
                       "gateway uses (sqlite:///PATH or redis://...)", EXIT_USAGE)
    if config.store.startswith("sqlite:///"):
        path = Path(config.store[len("sqlite:///"):])
        if not path.is_file():
            raise CliError(f"--store: no ledger file at {path}; pass the --store the gateway uses",
                           EXIT_USAGE)
        _refuse_if_owned(path)  # before touching the chain: the answer is the same anyway
    return config


def _refuse_if_owned(path: Path) -> None:
    """CliError (exit 1) while a live process owns the SQLite ledger at ``path``."""
    from channels.provider.store.sqlite import ledger_holder

    holder = ledger_holder(path)
    if holder is not None:
        raise CliError(_owned_message(path, holder), EXIT_FAILED)


def _owned_message(path: Path, holder: Any) -> str:
    """One line: the file, its owner, and the three ways forward."""
    return (
        f"--store: {path} is open in {holder.describe()}, which owns this SQLite ledger "
        f"(lock {path}.lock), and a second writer would corrupt its charges; stop that gateway "
        "and run paychan settle again, or settle it while it runs with `paychan settle "
        "--gateway URL --admin-token-file F` (the gateway started with --admin-token-file F), "
        "or run the gateway on a Redis store (--store redis://...), which paychan settle may share"
    )


def _handle(args: argparse.Namespace) -> int:
    if args.gateway is not None:
        return _handle_gateway(args)
    if args.admin_token_file is not None:
        raise CliError("--admin-token-file: only used with --gateway URL (settle a running "
                       "gateway through its admin route)", EXIT_USAGE)
    config = _config(args)
    if args.json:
        result = asyncio.run(settle_once(config))
    else:
        from rich.console import Console

        console = Console(stderr=True)  # progress on stderr; the result alone on stdout
        with console.status("connecting to the chain...") as status:
            result = asyncio.run(settle_once(config, progress=status.update))
    emit(args, result, _human)
    return 0


# ---------------------------------------------------------------------- through a running gateway

# The gateway settles with its own key, store and chain: these flags would be silently ignored.
_LOCAL_ONLY = {"config": "--config", "store": "--store", "rpc_url": "--rpc",
               "key_file": "--key-file", "token": "--token", "settlement": "--settlement",
               "receiver": "--receiver", "claim_batch_size": "--claim-batch-size"}


def _handle_gateway(args: argparse.Namespace) -> int:
    given = [flag for name, flag in _LOCAL_ONLY.items() if getattr(args, name, None) is not None]
    if given:
        raise CliError(f"--gateway: the gateway settles with its own key, store and chain; drop "
                       f"{', '.join(given)}", EXIT_USAGE)
    token = admin_token(args.admin_token_file, os.environ)
    wait_s = 3 * (args.tx_timeout_s or 600.0) + 60.0
    if args.json:
        result = asyncio.run(settle_via_gateway(args.gateway, token, wait_s=wait_s))
    else:
        from rich.console import Console

        with Console(stderr=True).status(f"asking {args.gateway} to claim and settle..."):
            result = asyncio.run(settle_via_gateway(args.gateway, token, wait_s=wait_s))
    emit(args, result, _human)
    return 0


async def settle_via_gateway(url: str, token: str, *, wait_s: float = 1860.0) -> dict[str, Any]:
    """``POST {url}/admin/settle`` with the admin token; the gateway's settlement report.

        result = await settle_via_gateway("http://127.0.0.1:8402", token)

    Raises CliError: EXIT_USAGE (no admin route, no or wrong token), EXIT_UNREACHABLE (the
    gateway or its chain cannot be reached), EXIT_FAILED (a transaction failed on-chain).
    """
    return await call_admin(url, "POST", "/admin/settle", token, what="settle",
                            read_timeout_s=wait_s)


# ---------------------------------------------------------------------- the round


async def settle_once(config: Any, *, progress: Progress | None = None) -> dict[str, Any]:
    """Finish pending journal transactions, claim every charged channel, settle; as JSON.

        result = await settle_once(GatewayConfig.load({"store": url, "token": t}, env=os.environ))

    Raises CliError: EXIT_UNREACHABLE (RPC or Redis down), EXIT_USAGE (no contract at the
    settlement address), EXIT_FAILED (a transaction failed on-chain).
    """
    from eth_utils.address import to_checksum_address

    from channels.protocol import checksum_address
    from channels.provider import TxFailed, is_transport_error
    from gateway.chain_setup import close_web3, connect_rpc
    from gateway.tokens import TokenError, read_token
    from gateway.views import settlement_json

    say = progress or (lambda _text: None)
    say(f"connecting to {config.rpc_url}...")
    try:
        w3 = await connect_rpc(config.rpc_url, timeout_s=10)
    except ConnectionError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    try:
        chain_id = int(await w3.eth.chain_id)
        settlement = to_checksum_address(config.settlement)
        if not bytes(await w3.eth.get_code(settlement)):
            raise CliError(f"--settlement: no contract at {settlement} on chain {chain_id}; "
                           "pass the settlement address the gateway uses", EXIT_USAGE)
        try:
            token = await read_token(w3, config.token)
        except TokenError as exc:
            raise CliError(str(exc), EXIT_USAGE, "not_a_token") from None
        async with _provider(config, w3, chain_id) as provider:
            store, chain, settler = provider.store, provider.chain, provider.settler
            receiver = settler.receiver
            pending = await chain.journal.pending(chain.address)
            if pending:
                say(f"finishing {len(pending)} transaction(s) a previous run left pending...")
            recovered = await settler.recover()
            everything = await store.claim_targets()
            targets = await settler.claimable()
            due = sum(t.unclaimed for t in targets)
            say(f"claiming {token.format(due)} on {len(targets)} channel(s)..."
                if targets else "nothing to claim; checking for claimed value to settle...")
            async with _watch_journal(chain, say):
                report = await settler.run_once(force=True)
    except CliError:
        raise
    except TxFailed as exc:
        raise CliError(f"{exc.kind} failed: {exc.reason}", EXIT_FAILED) from None
    except Exception as exc:
        if is_transport_error(exc) or _is_redis_outage(exc):
            raise CliError(f"lost the connection while settling ({type(exc).__name__}: {exc}); "
                           "run paychan settle again: it finishes what was sent",
                           EXIT_UNREACHABLE) from None
        raise
    finally:
        await close_web3(w3)
    out = settlement_json(report, chain)
    out.update({
        "chain_id": chain_id,
        "settlement": settlement,
        "receiver": receiver,
        "token": checksum_address(config.token),
        "token_units": {"symbol": token.symbol, "decimals": token.decimals},
        "recovered": [_recovered_json(r) for r in recovered],
        # charged channels this key cannot claim (another receiverAuthorizer) or that a
        # pending claim already covers
        "not_claimable": len(everything) - len(targets),
    })
    return out


@contextlib.asynccontextmanager
async def _provider(config: Any, w3: Any, chain_id: int) -> AsyncIterator[Provider]:
    """The provider side ``config`` names (its ledger store opened), closed on the way out."""
    from channels.provider import open_provider
    from channels.provider.store.sqlite import LedgerLocked
    from gateway.chain_setup import provider_config

    try:
        provider = await open_provider(w3, provider_config(config), chain_id=chain_id)
    except LedgerLocked as exc:  # a gateway took the file since _config looked
        raise CliError(_owned_message(exc.path, exc.holder), EXIT_FAILED) from None
    except Exception as exc:
        if _is_redis_outage(exc) or isinstance(exc, OSError):
            raise CliError(f"--store: cannot open {config.store} ({type(exc).__name__}: {exc}); "
                           "start Redis or pass the --store the gateway uses",
                           EXIT_UNREACHABLE) from None
        raise
    try:
        yield provider
    finally:
        try:
            await provider.store.flush()
        finally:
            await provider.close()


@contextlib.asynccontextmanager
async def _watch_journal(chain: Any, say: Progress) -> AsyncIterator[None]:
    """While the round runs, say which journaled transaction is waiting for its receipt."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(0.2)
            for entry in await chain.journal.pending(chain.address):
                if entry.hashes:
                    say(f"waiting for {entry.kind} {entry.hashes[-1]} (nonce {entry.nonce}) "
                        "to be mined...")
                    break

    task = asyncio.get_running_loop().create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _is_redis_outage(exc: BaseException) -> bool:
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)


def _recovered_json(result: TxResult | TxFailed) -> dict[str, Any]:
    from channels.provider import TxResult

    if isinstance(result, TxResult):
        return {"kind": result.entry.kind, "tx": result.tx_hash, "status": "mined",
                "gas_used": result.gas_used}
    entry = getattr(result, "entry", None)
    return {"kind": result.kind, "tx": entry.hashes[-1] if entry and entry.hashes else None,
            "status": "failed", "reason": result.reason}


# ---------------------------------------------------------------------- text output


def _human(d: dict[str, Any]) -> str:
    units = d.get("token_units")  # absent in a report from a gateway's /admin/settle

    def amt(value: Any) -> str:
        return show_amount(value, units)

    lines = [f"chain {d['chain_id']}, settlement {d['settlement']}, token {d['token']}"]
    if d.get("gateway"):
        lines.append(f"settled by the gateway at {d['gateway']} (its own key and ledger)")
    for r in d["recovered"]:
        lines.append(f"finished a pending {r['kind']} from a previous run: {r['tx']} ({r['status']})")
    if d["claims"]:
        lines.append(f"claimed {amt(d['claimed'])} on {d['channels']} channel(s):")
        for c in d["claims"]:
            lines.append(f"  {c['channel']}  {amt(c['amount'])}  (total claimed "
                         f"{amt(c['total_claimed'])})")
        for tx in d["claim_txs"]:
            lines.append(f"claim tx  {tx}")
    else:
        lines.append("nothing to claim")
    if d["skipped"]:
        lines.append(f"skipped {len(d['skipped'])} channel(s) whose claim kept failing: "
                     + ", ".join(d["skipped"]))
    if d["not_claimable"]:
        lines.append(f"{d['not_claimable']} charged channel(s) not claimable with this key "
                     "(another receiverAuthorizer, or a pending claim covers them)")
    if d["settle_tx"]:
        lines.append(f"settled {amt(d['settled_amount'])} to {d['receiver']}")
        lines.append(f"settle tx {d['settle_tx']}")
    else:
        lines.append("nothing to settle")
    lines.append(f"gas used {d['gas_used']}")
    return "\n".join(lines)
