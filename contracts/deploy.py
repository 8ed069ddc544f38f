"""Deploying the contracts on any JSON-RPC chain, or placing them at the canonical addresses on dev chains."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_account import Account
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3

from contracts.addresses import (
    CANONICAL_COLLECTOR,
    CANONICAL_SETTLEMENT,
    DEV_REGISTRY,
    DEV_TOKEN,
    DEV_USDC_UNITS,
)
from contracts.artifacts import artifact, collector_runtime_code, runtime_code
from contracts.devstate import PlacedContract, dev_contracts
from contracts.transact import deploy_contract, send_transaction


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain. ``token`` is None when no test token was deployed."""

    chain_id: int
    settlement: ChecksumAddress
    collector: ChecksumAddress
    token: ChecksumAddress | None
    registry: ChecksumAddress

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class NotADevChain(RuntimeError):
    """Canonical placement needs anvil's anvil_setCode / anvil_setStorageAt."""


async def place(w3: AsyncWeb3[Any], contracts: list[PlacedContract]) -> None:
    """Write code and storage at fixed addresses with anvil_setCode / anvil_setStorageAt (dev chains only)."""
    for c in contracts:
        resp = await w3.provider.make_request("anvil_setCode", [c.address, "0x" + c.code.hex()])
        if "error" in resp:
            raise NotADevChain(
                f"--canonical: the chain refused anvil_setCode ({resp['error'].get('message')}); "
                "canonical placement works on anvil only; deploy without --canonical elsewhere"
            )
        for slot, value in c.storage.items():
            await w3.provider.make_request(
                "anvil_setStorageAt", [c.address, hex(slot), "0x" + value.to_bytes(32, "big").hex()]
            )


async def deploy(w3: AsyncWeb3[Any], key: str, *, canonical: bool = False, test_token: bool = False) -> Deployment:
    """Deploy BatchSettlement, its ERC-3009 collector, the ModelRegistry (owner: the key) and optionally TestUSDC.

    ``canonical=True`` places the settlement and collector at the x402 canonical addresses (and the
    token/registry at DEV_TOKEN/DEV_REGISTRY) through anvil_setCode, so it needs a dev chain.
    With ``test_token`` the deployer also receives 1,000,000 test USDC.

    Example::

        d = await deploy(AsyncWeb3(AsyncHTTPProvider("http://127.0.0.1:8545")), DEV_KEYS[0], test_token=True)
    """
    chain_id = await w3.eth.chain_id
    owner = Account.from_key(key).address
    token: ChecksumAddress | None = None
    if canonical:
        placed = [
            PlacedContract(CANONICAL_SETTLEMENT, runtime_code("BatchSettlement")),
            PlacedContract(CANONICAL_COLLECTOR, collector_runtime_code(CANONICAL_SETTLEMENT)),
            # Registry owner lives in slot 0 (no constructor runs on placement).
            PlacedContract(DEV_REGISTRY, runtime_code("ModelRegistry"), {0: int(owner, 16)}),
        ]
        if test_token:
            placed.append(next(c for c in dev_contracts() if c.address == DEV_TOKEN))
            token = DEV_TOKEN
        await place(w3, placed)
        settlement, collector, registry = CANONICAL_SETTLEMENT, CANONICAL_COLLECTOR, DEV_REGISTRY
    else:
        settlement = await deploy_contract(w3, key, "BatchSettlement")
        collector = await deploy_contract(w3, key, "ERC3009DepositCollector", settlement)
        registry = await deploy_contract(w3, key, "ModelRegistry", owner)
        if test_token:
            token = await deploy_contract(w3, key, "TestUSDC")
    if token is not None:
        contract = w3.eth.contract(address=token, abi=artifact("TestUSDC")["abi"])
        if await contract.functions.balanceOf(owner).call() < DEV_USDC_UNITS:
            data = contract.encode_abi("mint", [owner, DEV_USDC_UNITS])
            await send_transaction(w3, key, {"to": token, "data": data}, what="TestUSDC.mint")
    return Deployment(chain_id, settlement, collector, token, registry)
