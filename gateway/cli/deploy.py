"""``paychan deploy``: deploy the settlement contracts on a chain.

    $ paychan deploy --rpc http://127.0.0.1:8545 --key-file deployer.key --test-token --json
    $ paychan deploy --rpc http://127.0.0.1:8545 --key-file deployer.key --canonical   # anvil only

Prints {chain_id, settlement, collector, token, registry}. ``--canonical`` places BatchSettlement
and its ERC-3009 collector at the x402 canonical addresses (anvil_setCode; dev chains only).
"""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli._common import (
    EXIT_UNREACHABLE,
    CliError,
    add_json_flag,
    add_key_flag,
    emit,
    load_key,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("deploy", help="deploy the settlement contracts", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rpc", required=True, help="EVM JSON-RPC URL, e.g. http://127.0.0.1:8545")
    add_key_flag(p)
    p.add_argument("--canonical", action="store_true",
                   help="place the contracts at the x402 canonical addresses (anvil only)")
    p.add_argument("--test-token", action="store_true", help="also deploy TestUSDC and mint 1,000,000 to the key")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _human(d: dict[str, object]) -> str:
    return "\n".join(f"{k:10s} {v}" for k, v in d.items())


def _handle(args: argparse.Namespace) -> int:
    key = load_key(args)
    emit(args, asyncio.run(_deploy(args.rpc, key, args.canonical, args.test_token)), _human)
    return 0


async def _deploy(rpc: str, key: str, canonical: bool, test_token: bool) -> dict[str, object]:
    from web3 import AsyncHTTPProvider, AsyncWeb3

    from contracts import NotADevChain, TransactionFailed, deploy

    w3 = AsyncWeb3(AsyncHTTPProvider(rpc))
    try:
        if not await w3.is_connected():
            raise CliError(f"--rpc: no JSON-RPC answers at {rpc}", EXIT_UNREACHABLE)
        d = await deploy(w3, key, canonical=canonical, test_token=test_token)
    except NotADevChain as exc:
        raise CliError(str(exc)) from exc
    except TransactionFailed as exc:
        raise CliError(f"deployment failed: {exc}") from exc
    finally:
        await w3.provider.disconnect()
    return d.as_dict()
