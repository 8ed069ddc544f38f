"""``paychan demo``: the embedded end-to-end run.

    $ paychan demo
    $ paychan demo --json

For now: starts the embedded py-evm chain with the contracts at the canonical addresses and
prints their addresses and the funded test accounts. (It grows into the full demo: gateway,
model, a paying client, claim and settle.)
"""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli._common import add_json_flag, emit

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the embedded end-to-end run", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _human(d: dict[str, object]) -> str:
    lines = [f"embedded chain (py-evm), chain id {d['chain_id']}, block {d['block']}"]
    lines += [f"  {k:10s} {d[k]}" for k in ("settlement", "collector", "token", "registry")]
    lines.append("  test accounts (well-known anvil TEST keys): USDC balance")
    lines += [f"    {a}  {b / 10**6:,.2f}" for a, b in d["balances"].items()]  # type: ignore[union-attr]
    return "\n".join(lines)


async def _summary() -> dict[str, object]:
    from contracts import artifact, dev_accounts, embedded_chain

    chain = embedded_chain()
    d = chain.deployment
    token = chain.w3.eth.contract(address=d.token, abi=artifact("TestUSDC")["abi"])
    settlement = chain.w3.eth.contract(address=d.settlement, abi=artifact("BatchSettlement")["abi"])
    _, name, _, chain_id, verifying, _, _ = await settlement.functions.eip712Domain().call()
    balances = {a: await token.functions.balanceOf(a).call() for a in dev_accounts()}
    return {**d.as_dict(), "block": await chain.w3.eth.block_number, "domain": {"name": name,
            "chainId": chain_id, "verifyingContract": verifying}, "balances": balances}


def _handle(args: argparse.Namespace) -> int:
    emit(args, asyncio.run(_summary()), _human)
    return 0
