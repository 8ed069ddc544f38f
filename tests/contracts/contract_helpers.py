"""Assertion helpers for the contract tests."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from web3.exceptions import ContractLogicError

from contracts.testkit import SettlementKit


def selector(error: str) -> str:
    return keccak(text=error if "(" in error else f"{error}()")[:4].hex()


async def revert_data(kit: SettlementKit | None, key: str, fn: str, args: list[Any], to: Any = None) -> str:
    """eth_call the settlement's ``fn`` from ``key``; return the revert data (hex, no 0x). Fails if it succeeds."""
    contract = to if to is not None else kit.settlement  # type: ignore[union-attr]
    sender = Account.from_key(key).address
    try:
        await getattr(contract.functions, fn)(*args).call({"from": sender})
    except (ContractLogicError, TransactionFailed) as exc:  # anvil: ContractCustomError; eth-tester: its own
        data = getattr(exc, "data", None)
        if isinstance(data, str):
            return data.lower().replace("0x", "")
        # eth-tester puts the raw revert bytes into the message as a bytes literal
        text = str(exc.args[0] if exc.args else exc)
        if 'b"' in text or "b'" in text:
            import ast

            start = text.find("b'") if "b'" in text else text.find('b"')
            try:
                return ast.literal_eval(text[start:]).hex()
            except (ValueError, SyntaxError):
                pass
        return text.lower().replace("0x", "")
    raise AssertionError(f"{fn} did not revert")


async def assert_reverts(kit: SettlementKit, key: str, fn: str, args: list[Any], error: str, to: Any = None) -> None:
    data = await revert_data(kit, key, fn, args, to)
    assert selector(error) in data, f"{fn}: expected {error}, got {data[:80]}"
