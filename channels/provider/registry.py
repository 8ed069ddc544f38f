"""The ModelRegistry contract: who owns it, which weights hashes are published, and publishing.

    registry = ModelRegistry(w3, "0x...")                       # any AsyncWeb3
    await registry.owner()                                      # checksum address
    await registry.is_published(weights_hash)                   # bytes32: the weights' sha256
    entry = await registry.entry(weights_hash)                  # RegistryEntry | None
    data = registry.publish_calldata("tf_efficientnet_lite0", id_hex, weights_hash, uri)
    result = await chain.transact("publish", data, to=registry.address)   # ChainClient
    await registry.publication_tx(weights_hash)                 # (tx hash, block) of its event

A publication is append-only on chain: a weights hash (and a (model, version) pair) is
published once; publishing it again reverts ``AlreadyPublished``. The provider publishes each
version it serves (``gateway.provenance``); a payer checks that the model hash a receipt
signs is published in the registry its receipt key owns (``channels.sdk.provenance``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.logs import DISCARD

__all__ = ["MODEL_PUBLISHED_TOPIC", "ModelRegistry", "RegistryEntry", "registry_abi"]

#: topic0 of ``ModelPublished(bytes32 indexed weightsHash, bytes32 indexed modelKey, ...)``.
MODEL_PUBLISHED_TOPIC = "0x" + keccak(text="ModelPublished(bytes32,bytes32,string,string,string)").hex()


def registry_abi() -> list[dict[str, Any]]:
    """The ModelRegistry ABI from the committed build."""
    from contracts import artifact  # the committed build; contracts imports nothing of ours

    abi: list[dict[str, Any]] = artifact("ModelRegistry")["abi"]
    return abi


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryEntry:
    """What the registry holds for one weights hash."""

    model: str
    version: str
    uri: str
    published_at: int  # the block timestamp of its publication (unix seconds)


class ModelRegistry:
    """Reads (and builds the calldata for) one ModelRegistry contract over ``w3``."""

    def __init__(self, w3: AsyncWeb3[Any], address: str) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=registry_abi())

    async def has_code(self) -> bool:
        """False when nothing is deployed at the address (a wrong --registry)."""
        return len(await self.w3.eth.get_code(self.address)) > 0

    async def owner(self) -> str:
        return to_checksum_address(await self.contract.functions.owner().call())

    async def is_published(self, weights_hash: bytes) -> bool:
        return bool(await self.contract.functions.isPublished(_bytes32(weights_hash)).call())

    async def entry(self, weights_hash: bytes) -> RegistryEntry | None:
        """The publication of ``weights_hash`` (None: never published)."""
        if not await self.is_published(weights_hash):
            return None
        model, version, uri, at = await self.contract.functions.get(_bytes32(weights_hash)).call()
        return RegistryEntry(str(model), str(version), str(uri), int(at))

    def publish_calldata(self, model: str, version: str, weights_hash: bytes, uri: str) -> bytes:
        data = self.contract.encode_abi("publish", [model, version, _bytes32(weights_hash), uri])
        return bytes.fromhex(data.removeprefix("0x"))

    async def publication_tx(self, weights_hash: bytes, from_block: int = 0) -> tuple[str, int] | None:
        """The transaction hash and block of ``weights_hash``'s ModelPublished event (None: no
        such event from ``from_block`` on, or the node refused the range)."""
        try:
            logs = await self.w3.eth.get_logs({
                "address": self.address, "fromBlock": from_block, "toBlock": "latest",
                "topics": [MODEL_PUBLISHED_TOPIC, "0x" + _bytes32(weights_hash).hex()],
            })
        except Exception:  # noqa: BLE001 - a node that limits log ranges: the publication is on chain anyway
            return None
        if not logs:
            return None
        log = logs[0]
        tx = log["transactionHash"]
        tx_hex = tx if isinstance(tx, str) else "0x" + bytes(tx).hex()
        return tx_hex, int(log["blockNumber"])

    async def published_events(self, tx_hash: str) -> list[tuple[bytes, str, str, str]]:
        """The ModelPublished events of one transaction: (weightsHash, model, version, uri)."""
        receipt = await self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        out = []
        for event in self.contract.events.ModelPublished().process_receipt(receipt, errors=DISCARD):
            args = event["args"]
            out.append((bytes(args["weightsHash"]), str(args["model"]), str(args["version"]),
                        str(args["uri"])))
        return out


def _bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"weights_hash: must be 32 bytes (a sha256), got {len(value)}")
    return bytes(value)
