"""The provider's side of the channels: it does the I/O around the pure protocol core.

Stores (the ledger on SQLite, Redis, memory), the chain client and its journaled
transactions, the watcher that mirrors chain events into the ledger, the settler that claims
and settles (under a lease, in the chain sync), and the in-process facilitator with its x402
JSON side. `open_provider` wires them from one config::

    >>> from channels.provider import ProviderConfig, open_provider
    >>> provider = await open_provider(w3, ProviderConfig(key=key, store="sqlite:///ledger.sqlite3",
    ...                                                   token=token, settlement=settlement))
    >>> await provider.facilitator.submit_deposit(payload, requirements)
    >>> await provider.close()
"""

from .chain import ChainClient, OnChainChannel, config_tuple, settlement_abi
from .chain_health import ChainHealth
from .chain_sync import ChainSync
from .eip1271 import is_valid_signature, verify_voucher_eip1271
from .facilitator import DepositResult, Facilitator, VerifyResult
from .facilitator_json import settle_json, supported_json, verify_json
from .lease import Lease, LocalLease, RedisLease, lease_for
from .settler import MAX_BATCH, SettlementReport, Settler, SettlerPolicy, claim_reason
from .store import IdempotencyRecord, Store, open_store
from .transactions import TxSender
from .tx_outcomes import (
    SimulationFailed,
    TxFailed,
    TxPolicy,
    TxResult,
    TxReverted,
    TxTimeout,
    is_transport_error,
)
from .txjournal import JournalEntry, TxJournal
from .watcher import ChainEvent, Watcher
from .wiring import Provider, ProviderConfig, open_provider

__all__ = [
    "MAX_BATCH",
    "ChainClient",
    "ChainEvent",
    "ChainHealth",
    "ChainSync",
    "DepositResult",
    "Facilitator",
    "IdempotencyRecord",
    "JournalEntry",
    "Lease",
    "LocalLease",
    "OnChainChannel",
    "Provider",
    "ProviderConfig",
    "RedisLease",
    "SettlementReport",
    "Settler",
    "SettlerPolicy",
    "SimulationFailed",
    "Store",
    "TxFailed",
    "TxJournal",
    "TxPolicy",
    "TxResult",
    "TxReverted",
    "TxSender",
    "TxTimeout",
    "VerifyResult",
    "Watcher",
    "claim_reason",
    "config_tuple",
    "is_transport_error",
    "is_valid_signature",
    "lease_for",
    "open_provider",
    "open_store",
    "settle_json",
    "settlement_abi",
    "supported_json",
    "verify_json",
    "verify_voucher_eip1271",
]
