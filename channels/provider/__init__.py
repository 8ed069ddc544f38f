"""The provider's side of the channels: it does the I/O around the pure protocol core.

Stores (the ledger on SQLite, Redis, memory), the chain client and its transaction journal,
the watcher that mirrors chain events into the ledger, the settler that claims and settles,
and the in-process facilitator::

    >>> from channels.provider import open_store, ChainClient, Facilitator
    >>> store = await open_store("sqlite:///var/lib/paychan/ledger.sqlite3",
    ...                          chain_id=8453, contract=settlement)
"""

from .chain import (
    ChainClient,
    ClaimRow,
    OnChainChannel,
    SimulationFailed,
    TxFailed,
    TxPolicy,
    TxResult,
    TxReverted,
    TxTimeout,
)
from .eip1271 import is_valid_signature, verify_voucher_eip1271
from .facilitator import DepositResult, Facilitator, VerifyResult
from .settler import (
    ChainSync,
    LocalLease,
    RedisLease,
    SettlementReport,
    Settler,
    SettlerPolicy,
    lease_for,
)
from .store import IdempotencyRecord, Store, open_store
from .txjournal import JournalEntry, TxJournal
from .watcher import ChainEvent, Watcher

__all__ = [
    "ChainClient",
    "ChainEvent",
    "ChainSync",
    "ClaimRow",
    "DepositResult",
    "Facilitator",
    "IdempotencyRecord",
    "JournalEntry",
    "LocalLease",
    "OnChainChannel",
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
    "TxTimeout",
    "VerifyResult",
    "Watcher",
    "is_valid_signature",
    "lease_for",
    "open_store",
    "verify_voucher_eip1271",
]
