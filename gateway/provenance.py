"""Provenance: a model version is published to the ModelRegistry before it answers.

    registry = ModelRegistry(w3, config.registry)                    # channels.provider.registry
    publisher = Publisher(registry, chain_sender(gate.chain, registry.address),
                          publisher=gate.chain.address, chain_id=31337)
    record = await publisher.ensure(stored, store)     # publication.json's dict; idempotent
    record = await publisher.ensure_hash(architecture, content_hash)  # a version without a store

``publish(model=<architecture>, version=<id hex>, weightsHash=<id as bytes32>,
uri="paychan:manifest-sha256:<hex>")``: the id is the sha256 of the weights file, the same 32
bytes every receipt signs; the uri carries the digest of the version's manifest.json as it
was when published. ``ensure`` reads ``isPublished`` first and sends nothing for a published
hash (another worker, an earlier run or ``paychan models publish`` did it); a publish that
fails is checked again, so a concurrent ``AlreadyPublished`` counts as published. The record
(``<models>/<id>/publication.json``, ``ModelStore.publication``) holds tx_hash, block_number,
chain_id, registry, publisher, weights_hash, manifest_digest, published_at; tx_hash and
block_number are None when the node would not return the event's log.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.provider.registry import ModelRegistry

if TYPE_CHECKING:
    from web3 import AsyncWeb3

    from channels.provider import ChainClient
    from inference import ModelStore, StoredVersion

__all__ = [
    "ProvenanceError",
    "Publisher",
    "Sender",
    "chain_sender",
    "key_sender",
    "manifest_digest",
    "manifest_uri",
]

#: Sends publish calldata to the registry; returns (tx hash, block number) once mined.
Sender = Callable[[bytes], Awaitable[tuple[str, int]]]

_URI_PREFIX = "paychan:manifest-sha256:"
_BUNDLED_PREFIX = "paychan:weights-sha256:"  # a version served without a store (no manifest)


class ProvenanceError(RuntimeError):
    """A version could not be published; the message says why and what to do."""


def manifest_digest(version: StoredVersion) -> str:
    """``"sha256:<hex>"`` of the version's manifest.json bytes."""
    return "sha256:" + hashlib.sha256((version.path / "manifest.json").read_bytes()).hexdigest()


def manifest_uri(digest: str) -> str:
    """The registry ``uri`` that carries a manifest digest: ``paychan:manifest-sha256:<hex>``."""
    return _URI_PREFIX + digest.removeprefix("sha256:")


def chain_sender(chain: ChainClient, registry: str) -> Sender:
    """Publish through the gateway's ChainClient: its journal, nonces, fee bumps, retries."""

    async def send(data: bytes) -> tuple[str, int]:
        result = await chain.transact("publish", data, to=registry)
        return result.tx_hash, result.block_number

    return send


def key_sender(w3: AsyncWeb3[Any], key: str, registry: str) -> Sender:
    """Publish with a bare key (``paychan models publish``): pending nonce, one receipt wait."""
    from contracts.transact import send_transaction

    async def send(data: bytes) -> tuple[str, int]:
        receipt = await send_transaction(w3, key, {"to": registry, "data": "0x" + data.hex()},  # type: ignore[typeddict-item]
                                         what="ModelRegistry.publish")
        tx = receipt["transactionHash"]
        return "0x" + bytes(tx).hex().removeprefix("0x"), int(receipt["blockNumber"])

    return send


class Publisher:
    """Publishes versions to one registry with one key (``publisher``: its address)."""

    def __init__(self, registry: ModelRegistry, send: Sender, *, publisher: str, chain_id: int) -> None:
        self.registry = registry
        self.publisher = publisher
        self.chain_id = chain_id
        self._send = send
        self._owner_checked = False

    async def ensure(self, version: StoredVersion, store: ModelStore | None = None) -> dict[str, Any]:
        """Publish a store version unless it is published; record it in ``store``. A record
        for this registry and chain is trusted only while the chain still says published."""
        recorded = None
        if store is not None:
            recorded = await asyncio.to_thread(store.publication, version.id)
        weights_hash = bytes.fromhex(version.id)
        if (recorded is not None and recorded.get("registry") == self.registry.address
                and recorded.get("chain_id") == self.chain_id
                and await self.registry.is_published(weights_hash)):
            return recorded
        digest = await asyncio.to_thread(manifest_digest, version)
        record = await self._ensure(version.manifest.architecture, weights_hash, manifest_uri(digest))
        if store is not None:
            await asyncio.to_thread(store.save_publication, version.id, record)
        return record

    async def ensure_hash(self, architecture: str, weights_hash: bytes) -> dict[str, Any]:
        """Publish a version served without a store (the bundled weights)."""
        return await self._ensure(architecture, weights_hash, _BUNDLED_PREFIX + weights_hash.hex())

    async def _ensure(self, architecture: str, weights_hash: bytes, uri: str) -> dict[str, Any]:
        registry = self.registry
        sent: tuple[str, int] | None = None
        if not await registry.is_published(weights_hash):
            await self._check_owner()
            data = registry.publish_calldata(architecture, weights_hash.hex(), weights_hash, uri)
            try:
                sent = await self._send(data)
            except Exception as exc:  # a concurrent publisher (AlreadyPublished) is fine
                if not await registry.is_published(weights_hash):
                    raise ProvenanceError(
                        f"publishing 0x{weights_hash.hex()[:16]} to {registry.address} failed "
                        f"({type(exc).__name__}: {exc}); check the node and the key's gas") from exc
        entry = await registry.entry(weights_hash)
        if entry is None:  # mined but not readable yet: a lagging node behind a balancer
            raise ProvenanceError(f"0x{weights_hash.hex()[:16]}: published but the registry does "
                                  "not show it yet; it is retried")
        if sent is None:
            sent = await registry.publication_tx(weights_hash)
        uri_digest = (("sha256:" + entry.uri.removeprefix(_URI_PREFIX))
                      if entry.uri.startswith(_URI_PREFIX) else None)
        return {
            "tx_hash": sent[0] if sent else None,
            "block_number": sent[1] if sent else None,
            "chain_id": self.chain_id,
            "registry": registry.address,
            "publisher": await registry.owner(),
            "weights_hash": "0x" + weights_hash.hex(),
            "manifest_digest": uri_digest,
            "published_at": datetime.datetime.fromtimestamp(entry.published_at, datetime.UTC)
            .isoformat(timespec="seconds"),
        }

    async def _check_owner(self) -> None:
        if self._owner_checked:
            return
        if not await self.registry.has_code():
            raise ProvenanceError(f"registry: no contract at {self.registry.address} on chain "
                                  f"{self.chain_id}; pass the ModelRegistry address (--registry)")
        owner = await self.registry.owner()
        if owner.lower() != self.publisher.lower():
            raise ProvenanceError(f"registry: {self.registry.address} is owned by {owner}, not by "
                                  f"this gateway's key {self.publisher}; only its owner can "
                                  "publish (transferOwnership, or pass the owner's key)")
        self._owner_checked = True
