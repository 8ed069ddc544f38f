"""Is the model a receipt signs published by the key that signed the receipt?

    check = ModelCheck(rpc_url="http://127.0.0.1:8545", registry=None)   # one per client
    await check.verify(receipt_key, model_hash, channel_id, advertised)  # ReceiptInvalid if not

The provider publishes every version it serves to its ModelRegistry contract (weights hash =
the sha256 every receipt signs as ``modelVersion``). For each verified receipt the client
reads, on chain, through its own ``rpc_url``:

* ``owner()`` of the registry, which must be the receipt's signer (the offer's
  ``receiverAuthorizer``): a registry anyone else owns proves nothing about this gateway;
* ``isPublished(modelVersion)``, which must be true.

Either failing raises ``ReceiptInvalid`` and the client halts the channel, as for any
receipt that fails verification (the answer was paid; ``withdraw`` recovers the rest).
Positive answers are cached per (registry, hash) and owners per registry: one ``eth_call``
per new model version, none on the hot path after that. A node that cannot be read raises
``ChainError`` (fails closed: the answer is not returned as verified; the channel is not
halted, so the next answer is checked again).

Which registry: the ``registry`` address given to the client, else the one the gateway
advertises in ``GET /v1/models`` (``registry.address``); either way only the chain's answers
are trusted, never the gateway's word. Not checked, said once per client (logger
``paychan.sdk``): a client without ``rpc_url`` (paying needs no node: at INFO), and a client
with one facing a gateway that advertises no registry when none was given (a WARNING).
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import ChainError, ReceiptInvalid

__all__ = ["ModelCheck"]

log = logging.getLogger("paychan.sdk")


class ModelCheck:
    """The receipt's model hash must be published by the receipt key (see the module doc)."""

    def __init__(self, rpc_url: str | None, registry: str | None = None) -> None:
        self.rpc_url = rpc_url
        self.registry = registry
        self._owners: dict[str, str] = {}  # registry -> owner (lowercase)
        self._published: set[tuple[str, bytes]] = set()
        self._warned: set[str] = set()
        self._w3: Any = None
        self._contracts: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        """Whether answers can be checked at all (there is a node to read)."""
        return bool(self.rpc_url)

    async def verify(self, receipt_key: str, model_hash: bytes, channel_id: bytes,
                     advertised: str | None) -> None:
        """Raise ReceiptInvalid unless ``model_hash`` is published in the registry (given, else
        ``advertised`` by the gateway) whose on-chain owner is ``receipt_key``."""
        if not self.rpc_url:  # the usual way to pay (no node): said once, at INFO
            self._warn_once("rpc", "model provenance is not checked: no rpc_url (pass rpc_url= "
                            "to verify each receipt's model in the gateway's ModelRegistry)",
                            logging.INFO)
            return
        registry = self.registry or advertised
        if not registry:
            self._warn_once("registry", "model provenance is not checked: the gateway advertises "
                            "no ModelRegistry in /v1/models and none was given (registry=)")
            return
        key = registry.lower()
        if (key, model_hash) in self._published:
            return
        try:
            owner = self._owners.get(key)
            if owner is None:
                owner = str(await self._contract(registry).functions.owner().call()).lower()
                self._owners[key] = owner
            published = owner == receipt_key.lower() and bool(
                await self._contract(registry).functions.isPublished(model_hash).call())
        except Exception as exc:  # noqa: BLE001 - cannot read the chain: the check cannot be made
            raise ChainError("model provenance check", f"the ModelRegistry {registry} could not "
                             f"be read through {self.rpc_url} ({type(exc).__name__}: {exc}); "
                             f"model 0x{model_hash.hex()} is unverified, retry") from None
        if owner != receipt_key.lower():
            raise ReceiptInvalid(channel_id, f"the ModelRegistry {registry} is owned by {owner}, "
                                 f"not by the receipt's signer {receipt_key}")
        if not published:
            raise ReceiptInvalid(channel_id, f"model 0x{model_hash.hex()} is not published in the "
                                 f"gateway's ModelRegistry {registry}: the answer comes from an "
                                 "unregistered model")
        self._published.add((key, model_hash))

    async def close(self) -> None:
        if self._w3 is not None:
            w3, self._w3 = self._w3, None
            await w3.provider.disconnect()

    def _contract(self, registry: str) -> Any:
        from web3 import AsyncHTTPProvider, AsyncWeb3  # ~1 s: only when a check runs

        if self._w3 is None:
            self._w3 = AsyncWeb3(AsyncHTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))
        contract = self._contracts.get(registry.lower())
        if contract is None:
            contract = self._w3.eth.contract(address=AsyncWeb3.to_checksum_address(registry),
                                             abi=_ABI)
            self._contracts[registry.lower()] = contract
        return contract

    def _warn_once(self, what: str, message: str, level: int = logging.WARNING) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.log(level, message)


# The two views the check reads (the full ABI lives in contracts/build/ModelRegistry.json).
_ABI = [
    {"type": "function", "name": "owner", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "address"}]},
    {"type": "function", "name": "isPublished", "stateMutability": "view",
     "inputs": [{"name": "weightsHash", "type": "bytes32"}],
     "outputs": [{"name": "", "type": "bool"}]},
]
