"""Solidity sources, compiled artifacts and deploy helpers for the settlement contracts.

Example::

    from contracts import embedded_chain, DEV_KEYS
    chain = embedded_chain()
    print(chain.deployment.settlement)   # the x402 canonical address
"""

from contracts.addresses import (
    CANONICAL_COLLECTOR,
    CANONICAL_SETTLEMENT,
    DEV_ETH_WEI,
    DEV_KEYS,
    DEV_REGISTRY,
    DEV_TOKEN,
    DEV_USDC_UNITS,
)
from contracts.anvil import Anvil
from contracts.artifacts import artifact, collector_runtime_code, runtime_code
from contracts.deploy import Deployment, NotADevChain, deploy, place
from contracts.devstate import dev_accounts, dev_contracts
from contracts.embedded import EmbeddedChain, embedded_chain
from contracts.transact import TransactionFailed, deploy_contract, send_transaction

__all__ = [
    "CANONICAL_COLLECTOR",
    "CANONICAL_SETTLEMENT",
    "DEV_ETH_WEI",
    "DEV_KEYS",
    "DEV_REGISTRY",
    "DEV_TOKEN",
    "DEV_USDC_UNITS",
    "Anvil",
    "Deployment",
    "EmbeddedChain",
    "NotADevChain",
    "TransactionFailed",
    "artifact",
    "collector_runtime_code",
    "deploy",
    "deploy_contract",
    "dev_accounts",
    "dev_contracts",
    "embedded_chain",
    "place",
    "runtime_code",
    "send_transaction",
]
