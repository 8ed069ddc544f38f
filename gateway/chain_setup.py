"""The gateway's chain plumbing: the RPC connection, the token's EIP-712 domain, and the
provider side (``channels.provider.open_provider``) that a ``GatewayConfig`` names::

    w3 = await connect_rpc("http://127.0.0.1:8545")
    provider = await open_provider(w3, provider_config(config))
    name, version = await token_domain(w3, config.token)
    await close_web3(w3)
"""

from __future__ import annotations

from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from channels.protocol import LedgerPolicy
from channels.provider import ProviderConfig, SettlerPolicy, TxPolicy
from gateway.config import GatewayConfig

__all__ = ["close_web3", "connect_rpc", "provider_config", "settler_policy", "token_domain", "web3_of"]


async def connect_rpc(url: str, *, timeout_s: float = 30.0) -> AsyncWeb3[Any]:
    """An AsyncWeb3 over the JSON-RPC ``url``, checked to answer (ConnectionError if not).

        w3 = await connect_rpc("http://127.0.0.1:8545")
    """
    w3 = AsyncWeb3(AsyncHTTPProvider(url, request_kwargs={"timeout": timeout_s}))
    try:
        await w3.eth.chain_id
    except Exception as exc:  # any transport failure: say which URL and how to fix it
        await close_web3(w3)
        raise ConnectionError(
            f"rpc_url: cannot reach {url} ({type(exc).__name__}: {exc}); "
            "start the chain (paychan devnet) or pass --rpc URL"
        ) from None
    return w3


def web3_of(chain: Any) -> AsyncWeb3[Any]:
    """The AsyncWeb3 inside a shared ``chain``: an AsyncWeb3 itself, or anything with ``.w3``
    (``contracts.EmbeddedChain``, a ``channels.provider.ChainClient``)."""
    if isinstance(chain, AsyncWeb3):
        return chain
    w3 = getattr(chain, "w3", None)
    if isinstance(w3, AsyncWeb3):
        return w3
    raise TypeError(
        f"chain: expected an AsyncWeb3 or an object with a .w3 AsyncWeb3 (contracts.EmbeddedChain, "
        f"channels.provider.ChainClient), got {type(chain).__name__}"
    )


async def close_web3(w3: AsyncWeb3[Any]) -> None:
    disconnect = getattr(w3.provider, "disconnect", None)
    if disconnect is not None:
        await disconnect()


def provider_config(config: GatewayConfig) -> ProviderConfig:
    """The provider side (``channels.provider.open_provider``) that ``config`` names: the
    ledger store namespaced by chain and contract, the sending key, the settler's policy.

        provider = await open_provider(w3, provider_config(config), chain_id=31337)
    """
    if config.key is None or config.token is None:
        raise ValueError("payments need config.key and config.token")
    # The ledger's own per-channel cap matches ours; a hold outlives the slowest answer.
    ledger_policy = LedgerPolicy(
        reservation_timeout_s=max(120.0, 4 * config.request_timeout_s),
        max_in_flight=config.max_in_flight_per_channel,
    )
    return ProviderConfig(
        key=config.key,
        store=config.store,
        token=config.token,
        settlement=config.settlement,
        collector=config.collector,
        receiver=config.receiver,
        ledger_policy=ledger_policy,
        tx_policy=TxPolicy(receipt_timeout_s=config.tx_timeout_s),
        settler_policy=settler_policy(config),
        # Only a gateway that runs the settler competes for the lease (Redis: one of N workers).
        shared_lease_ttl_s=config.settler_lease_ttl_s if config.settler else None,
        confirmations=config.confirmations,
        start_block=config.start_block,
        poll_s=config.chain_poll_s,
    )


def settler_policy(config: GatewayConfig) -> SettlerPolicy:
    """The settler's policy from the gateway's ``claim_*`` settings."""
    return SettlerPolicy(
        claim_after_s=config.claim_after_s,
        claim_threshold=config.claim_threshold,
        batch_size=config.claim_batch_size,
        interval_s=config.claim_interval_s,
    )


_DOMAIN_ABI = [
    {"type": "function", "name": "name", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "version", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "eip712Domain", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "fields", "type": "bytes1"}, {"name": "name", "type": "string"},
                 {"name": "version", "type": "string"}, {"name": "chainId", "type": "uint256"},
                 {"name": "verifyingContract", "type": "address"}, {"name": "salt", "type": "bytes32"},
                 {"name": "extensions", "type": "uint256[]"}]},
]


async def token_domain(w3: AsyncWeb3[Any], token: str) -> tuple[str, str]:
    """The token's EIP-712 domain (name, version): ERC-5267 ``eip712Domain()``, else name()/version()."""
    contract = w3.eth.contract(address=AsyncWeb3.to_checksum_address(token), abi=_DOMAIN_ABI)
    try:
        domain = await contract.functions.eip712Domain().call()
        return str(domain[1]), str(domain[2])
    except Exception:  # not ERC-5267: fall back to the USDC-style getters
        name = await contract.functions.name().call()
        try:
            version = await contract.functions.version().call()
        except Exception:
            version = "1"
        return str(name), str(version)
