"""The dev-chain state: our contracts at fixed addresses, as code + storage.

One description serves both chains: the embedded chain puts it in its genesis, anvil receives
it through ``anvil_setCode`` / ``anvil_setStorageAt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from contracts.addresses import (
    CANONICAL_COLLECTOR,
    CANONICAL_SETTLEMENT,
    DEV_KEYS,
    DEV_REGISTRY,
    DEV_TOKEN,
    DEV_USDC_UNITS,
)
from contracts.artifacts import collector_runtime_code, runtime_code

# Storage slots, from the Solidity sources' declaration order.
_TOKEN_BALANCES_SLOT = 0
_TOKEN_TOTAL_SUPPLY_SLOT = 2
_REGISTRY_OWNER_SLOT = 0


@dataclass(frozen=True)
class PlacedContract:
    address: str
    code: bytes
    storage: dict[int, int] = field(default_factory=dict)


def mapping_slot(key: str | bytes | int, slot: int) -> int:
    """Storage slot of ``mapping[key]`` declared at ``slot`` (address, bytes32 or uint keys)."""
    if isinstance(key, str):
        key = bytes.fromhex(key[2:]).rjust(32, b"\0")
    elif isinstance(key, int):
        key = key.to_bytes(32, "big")
    return int.from_bytes(keccak(key.rjust(32, b"\0") + slot.to_bytes(32, "big")), "big")


def dev_accounts() -> list[str]:
    """Checksum addresses of DEV_KEYS, in order."""
    return [Account.from_key(k).address for k in DEV_KEYS]


def dev_contracts(registry_owner: str | None = None) -> list[PlacedContract]:
    """Settlement and collector at the canonical addresses, token and registry at DEV_TOKEN/DEV_REGISTRY.

    Every DEV_KEYS account holds DEV_USDC_UNITS of the token; the registry's owner is
    ``registry_owner`` (default: the first dev account).
    """
    accounts = dev_accounts()
    owner = registry_owner or accounts[0]
    token_storage = {mapping_slot(a, _TOKEN_BALANCES_SLOT): DEV_USDC_UNITS for a in accounts}
    token_storage[_TOKEN_TOTAL_SUPPLY_SLOT] = DEV_USDC_UNITS * len(accounts)
    return [
        PlacedContract(CANONICAL_SETTLEMENT, runtime_code("BatchSettlement")),
        PlacedContract(CANONICAL_COLLECTOR, collector_runtime_code(CANONICAL_SETTLEMENT)),
        PlacedContract(DEV_TOKEN, runtime_code("TestUSDC"), token_storage),
        PlacedContract(
            DEV_REGISTRY, runtime_code("ModelRegistry"), {_REGISTRY_OWNER_SLOT: int(to_checksum_address(owner), 16)}
        ),
    ]
