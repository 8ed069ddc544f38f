"""The embedded chain: py-evm (eth-tester) with our contracts in its genesis state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from eth_utils.address import to_canonical_address
from web3 import AsyncWeb3
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from contracts.addresses import (
    CANONICAL_COLLECTOR,
    CANONICAL_SETTLEMENT,
    DEV_ETH_WEI,
    DEV_REGISTRY,
    DEV_TEST_MNEMONIC,
    DEV_TOKEN,
)
from contracts.deploy import Deployment
from contracts.devstate import dev_accounts, dev_contracts


@dataclass
class EmbeddedChain:
    """A running in-process chain: ``w3`` (AsyncWeb3), ``deployment``, and time control."""

    w3: AsyncWeb3[Any]
    deployment: Deployment
    tester: EthereumTester

    async def advance_time(self, seconds: int) -> int:
        """Mine a block ``seconds`` after the latest one; returns its timestamp (for withdraw delays)."""
        latest = await self.w3.eth.get_block("latest")
        target = int(latest["timestamp"]) + int(seconds)
        # eth-tester's time_travel(t) mines its block at t - 1 (py-evm 0.14): ask for one second more.
        self.tester.time_travel(target + 1)
        return int((await self.w3.eth.get_block("latest"))["timestamp"])

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)


def embedded_chain(*, registry_owner: str | None = None) -> EmbeddedChain:
    """Start a fresh embedded chain: contracts at the canonical/dev addresses, DEV_KEYS funded with ETH and USDC.

    Example::

        chain = embedded_chain()
        balance = await chain.w3.eth.get_balance(dev_accounts()[0])
        await chain.advance_time(900)
    """
    state: dict[bytes, dict[str, object]] = {}
    for address in dev_accounts():
        state[to_canonical_address(address)] = {"balance": DEV_ETH_WEI, "nonce": 0, "code": b"", "storage": {}}
    for c in dev_contracts(registry_owner):
        state[to_canonical_address(c.address)] = {"balance": 0, "nonce": 1, "code": c.code, "storage": dict(c.storage)}
    backend = PyEVMBackend(genesis_state=state, mnemonic=DEV_TEST_MNEMONIC, hd_path="m/44'/60'/0'/0")
    tester = EthereumTester(backend)
    provider = AsyncEthereumTesterProvider()
    provider.ethereum_tester = tester
    w3 = AsyncWeb3(provider)
    chain_id = int(backend.chain.chain_id)
    deployment = Deployment(chain_id, CANONICAL_SETTLEMENT, CANONICAL_COLLECTOR, DEV_TOKEN, DEV_REGISTRY)
    return EmbeddedChain(w3, deployment, tester)
