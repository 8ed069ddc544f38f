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
like ``paychan serve``. A Redis ledger may be settled while the gateway runs; a SQLite ledger
belongs to one process, so stop the gateway before settling its file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    add_json_flag,
    emit,
)

__all__ = ["register", "settle_once"]

Progress = Callable[[str], None]


def register(subparsers: argparse._SubParsersAction) -> None:
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
                   help="seconds to wait for each receipt (default 600)")
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
    return config


def _handle(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------- the round


async def settle_once(config: Any, *, progress: Progress | None = None) -> dict[str, Any]:
    """Finish pending journal transactions, claim every charged channel, settle; as JSON.

        result = await settle_once(GatewayConfig.load({"store": url, "token": t}, env=os.environ))

    Raises CliError: EXIT_UNREACHABLE (RPC or Redis down), EXIT_USAGE (no contract at the
    settlement address), EXIT_FAILED (a transaction failed on-chain).
    """
    from channels.chain import ChainClient, TxFailed, TxPolicy, TxResult, is_transport_error
    from channels.eip712 import checksum_address
    from channels.settler import Settler, SettlerPolicy
    from channels.signing import Signer
    from channels.txjournal import TxJournal
    from gateway.payments import close_web3, connect_rpc, open_ledger, settlement_json

    say = progress or (lambda _text: None)
    say(f"connecting to {config.rpc_url}...")
    try:
        w3 = await connect_rpc(config.rpc_url, timeout_s=10)
    except ConnectionError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    try:
        chain_id = int(await w3.eth.chain_id)
        settlement = checksum_address(config.settlement)
        if not bytes(await w3.eth.get_code(settlement)):
            raise CliError(f"--settlement: no contract at {settlement} on chain {chain_id}; "
                           "pass the settlement address the gateway uses", EXIT_USAGE)
        async with _ledger(config, chain_id, open_ledger) as store:
            signer = Signer(config.key)
            chain = ChainClient(w3, config.key, journal=TxJournal(store), settlement=settlement,
                                collector=config.collector,
                                policy=TxPolicy(receipt_timeout_s=config.tx_timeout_s))
            receiver = checksum_address(config.receiver) if config.receiver else signer.address
            settler = Settler(chain, store, authorizer=signer, receiver=receiver, token=config.token,
                              policy=SettlerPolicy(batch_size=config.claim_batch_size))
            pending = await chain.journal.pending(chain.address)
            if pending:
                say(f"finishing {len(pending)} transaction(s) a previous run left pending...")
            recovered = await settler.recover()
            everything = await store.claim_targets()
            targets = await settler.claimable()
            due = sum(t.unclaimed for t in targets)
            say(f"claiming {due} token units on {len(targets)} channel(s)..."
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
        "recovered": [_recovered_json(r, TxResult) for r in recovered],
        # charged channels this key cannot claim (another receiverAuthorizer) or that a
        # pending claim already covers
        "not_claimable": len(everything) - len(targets),
    })
    return out


@contextlib.asynccontextmanager
async def _ledger(config: Any, chain_id: int, open_ledger: Any) -> AsyncIterator[Any]:
    try:
        store = await open_ledger(config, chain_id)
    except Exception as exc:
        if _is_redis_outage(exc) or isinstance(exc, OSError):
            raise CliError(f"--store: cannot open {config.store} ({type(exc).__name__}: {exc}); "
                           "start Redis or pass the --store the gateway uses",
                           EXIT_UNREACHABLE) from None
        raise
    try:
        yield store
    finally:
        await store.flush()
        await store.close()


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


def _recovered_json(result: Any, tx_result: type) -> dict[str, Any]:
    if isinstance(result, tx_result):
        return {"kind": result.entry.kind, "tx": result.tx_hash, "status": "mined",
                "gas_used": result.gas_used}
    entry = getattr(result, "entry", None)
    return {"kind": result.kind, "tx": entry.hashes[-1] if entry and entry.hashes else None,
            "status": "failed", "reason": result.reason}


# ---------------------------------------------------------------------- text output


def _human(d: dict[str, Any]) -> str:
    lines = [f"chain {d['chain_id']}, settlement {d['settlement']}, token {d['token']}"]
    for r in d["recovered"]:
        lines.append(f"finished a pending {r['kind']} from a previous run: {r['tx']} ({r['status']})")
    if d["claims"]:
        lines.append(f"claimed {d['claimed']} token units on {d['channels']} channel(s):")
        width = max(len(str(c["amount"])) for c in d["claims"])
        for c in d["claims"]:
            lines.append(f"  {c['channel']}  {c['amount']:>{width}}  (total claimed {c['total_claimed']})")
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
        lines.append(f"settled {d['settled_amount']} token units to {d['receiver']}")
        lines.append(f"settle tx {d['settle_tx']}")
    else:
        lines.append("nothing to settle")
    lines.append(f"gas used {d['gas_used']}")
    return "\n".join(lines)
