"""Signing and sending transactions from a raw key over any AsyncWeb3 (anvil, embedded, RPC)."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.types import Nonce, TxParams, TxReceipt, Wei


class TransactionFailed(RuntimeError):
    """A transaction was mined with status 0."""

    def __init__(self, what: str, receipt: TxReceipt) -> None:
        super().__init__(f"{what} reverted in tx {receipt['transactionHash'].hex()} (gasUsed {receipt['gasUsed']})")
        self.receipt = receipt


async def send_transaction(
    w3: AsyncWeb3[Any], key: str, tx: TxParams, *, what: str = "transaction", gas: int | None = None
) -> TxReceipt:
    """Sign ``tx`` with ``key``, send it, wait for the receipt; raise TransactionFailed on revert.

    Example::

        receipt = await send_transaction(w3, key, {"to": token, "data": calldata}, what="mint")
    """
    account = Account.from_key(key)
    tx = {"from": account.address, "value": Wei(0), **tx}
    tx.setdefault("nonce", Nonce(await w3.eth.get_transaction_count(account.address, "pending")))
    tx.setdefault("chainId", await w3.eth.chain_id)
    if gas is not None:
        tx["gas"] = gas
    elif "gas" not in tx:
        tx["gas"] = int(await w3.eth.estimate_gas(tx) * 1.2) + 10_000
    if "gasPrice" not in tx and "maxFeePerGas" not in tx:
        block = await w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        tx["maxPriorityFeePerGas"] = Wei(1)
        tx["maxFeePerGas"] = Wei(2 * base + 1)
    signed = account.sign_transaction(tx)
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    if receipt["status"] != 1:
        raise TransactionFailed(what, receipt)
    return receipt


async def deploy_contract(w3: AsyncWeb3[Any], key: str, name: str, *args: Any) -> ChecksumAddress:
    """CREATE-deploy artifact ``name`` with constructor ``args``; returns the checksum address."""
    from contracts.artifacts import artifact

    art = artifact(name)
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    data = factory.constructor(*args).data_in_transaction
    receipt = await send_transaction(w3, key, {"data": data}, what=f"deploy {name}")
    address = receipt["contractAddress"]
    if address is None:  # a mined CREATE always has one; None would mean a node bug
        raise TransactionFailed(f"deploy {name} (no contract address)", receipt)
    return address
