"""``paychan earnings``: what the provider has earned, from the ledger and the chain.

    $ paychan earnings --gateway http://127.0.0.1:8402 --admin-token-file admin.token
    $ PAYCHAN_KEY=... paychan earnings --store sqlite:///paychan-gateway.sqlite3 --token 0x... --json

Prints, in token base units (USDC: 1,000,000 = 1 USDC):

  charged      what the ledger charged on every channel (the payers' signed vouchers)
  claimed      the settlement contract's total claimed for the receiver (whoever claimed)
  settled      ... and what of it was paid out to the receiver (settle)
  unclaimed    charged, within the channels' balances, not claimed yet (the ledger)
  at risk      the unclaimed part on channels whose payer started a withdrawal
  unclaimable  charged beyond a channel's balance (a withdrawal took it)
  earned       claimed + unclaimed: after a settle, the receiver's settled tokens plus what
               the ledger can still claim

``--gateway`` asks a running gateway (``GET /admin/earnings``, the console's admin token:
``--admin-token-file``, ``PAYCHAN_ADMIN_TOKEN_FILE`` or ``PAYCHAN_ADMIN_TOKEN``). Without it the
ledger is opened directly, with the settings ``paychan settle`` takes (``--store``, ``--rpc``,
``--token``, the key from ``--key-file`` or ``PAYCHAN_KEY``, ``PAYCHAN_*``, ``--config``): a Redis
ledger while the gateway runs, a SQLite one only while its gateway is stopped.
The per-request rows behind ``charged`` are in the usage log: ``paychan usage export``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from gateway.cli._admin import admin_token, call_admin
from gateway.cli._common import EXIT_UNREACHABLE, EXIT_USAGE, CliError, add_json_flag, emit

__all__ = ["earnings_via_gateway", "local_earnings", "register"]

_FIELDS = (("charged", "charged"), ("claimed", "claimed"), ("settled", "settled"),
           ("unclaimed", "unclaimed"), ("at_risk", "at risk"), ("unclaimable", "unclaimable"),
           ("earned", "earned"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "earnings",
        help="what the provider earned: charged, claimed, settled, unclaimed, at risk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gateway", metavar="URL",
                   help="ask a running gateway (GET /admin/earnings), e.g. http://127.0.0.1:8402")
    p.add_argument("--admin-token-file", type=Path,
                   help="with --gateway: file holding the gateway's admin token "
                   "(default: PAYCHAN_ADMIN_TOKEN_FILE or PAYCHAN_ADMIN_TOKEN)")
    p.add_argument("--config", type=Path, help="TOML file with settings (flags override it)")
    p.add_argument("--store", help="the gateway's ledger: sqlite:///PATH or redis://HOST:PORT/DB")
    p.add_argument("--rpc", dest="rpc_url", help="EVM JSON-RPC URL (default http://127.0.0.1:8545)")
    p.add_argument("--key-file", type=Path,
                   help="file holding the receiver-authorizer hex key (default: PAYCHAN_KEY)")
    p.add_argument("--token", help="the payment token address the gateway is paid in")
    p.add_argument("--settlement", help="settlement contract (default: the canonical address)")
    p.add_argument("--receiver", help="payTo address (default: the key's address)")
    add_json_flag(p)
    p.set_defaults(handler=_handle, tx_timeout_s=None, claim_batch_size=None)


_LOCAL_ONLY = {"config": "--config", "store": "--store", "rpc_url": "--rpc",
               "key_file": "--key-file", "token": "--token", "settlement": "--settlement",
               "receiver": "--receiver"}


def _handle(args: argparse.Namespace) -> int:
    from gateway.cli.settle import _config

    if args.gateway is not None:
        given = [flag for name, flag in _LOCAL_ONLY.items() if getattr(args, name) is not None]
        if given:
            raise CliError(f"--gateway: the gateway reads its own ledger and chain; drop "
                           f"{', '.join(given)}", EXIT_USAGE)
        result = asyncio.run(earnings_via_gateway(args.gateway, admin_token(args.admin_token_file,
                                                                             os.environ)))
    else:
        if args.admin_token_file is not None:
            raise CliError("--admin-token-file: only used with --gateway URL", EXIT_USAGE)
        result = asyncio.run(local_earnings(_config(args)))
    emit(args, result, _human)
    return 0


async def earnings_via_gateway(url: str, token: str) -> dict[str, Any]:
    """``GET {url}/admin/earnings`` with the admin token; the gateway's earnings summary."""
    return await call_admin(url, "GET", "/admin/earnings", token, what="report earnings")


async def local_earnings(config: Any) -> dict[str, Any]:
    """The earnings summary over the ledger ``config.store`` and the chain at ``config.rpc_url``.

        summary = await local_earnings(GatewayConfig.load({"store": url, "token": t}, env=os.environ))
    """
    from channels.provider import is_transport_error
    from gateway.chain_setup import close_web3, connect_rpc
    from gateway.cli.settle import _provider
    from gateway.earnings import earnings_summary

    try:
        w3 = await connect_rpc(config.rpc_url, timeout_s=10)
    except ConnectionError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    try:
        chain_id = int(await w3.eth.chain_id)
        async with _provider(config, w3, chain_id) as provider:
            settler = provider.settler
            out = await earnings_summary(provider.store, provider.chain, receiver=settler.receiver,
                                         token=settler.token)
    except CliError:
        raise
    except Exception as exc:
        if is_transport_error(exc):
            raise CliError(f"lost the chain node ({type(exc).__name__}: {exc}); start it or pass "
                           "--rpc", EXIT_UNREACHABLE) from None
        raise
    finally:
        await close_web3(w3)
    out.update(chain_id=chain_id, store=config.store)
    return out


def _human(d: dict[str, Any]) -> str:
    where = f"gateway {d['gateway']}" if d.get("gateway") else f"ledger {d.get('store')}"
    lines = [f"{where}, chain {d.get('chain_id')}, receiver {d['receiver']}, token {d['token']}",
             f"{d['channels']} channel(s); amounts in token base units"]
    width = max(len(f"{int(d[k]):,}") for k, _ in _FIELDS)
    for key, label in _FIELDS:
        lines.append(f"  {label:<12} {int(d[key]):>{width},}")
    if d.get("at_risk"):
        lines.append("a withdrawal is pending on a channel with unclaimed charges: the settler "
                     "claims it at once; `paychan settle` does it now")
    return "\n".join(lines)
