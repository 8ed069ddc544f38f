"""Open the provider side from one config: the ledger store, the chain client journaling into
it, the in-process facilitator and the chain sync (watcher + settler under a lease), wired
the one way the gateway, `paychan settle`, the benches and the tests all need::

    config = ProviderConfig(key=key, store="sqlite:///ledger.sqlite3", token=token,
                            settlement=dep.settlement, collector=dep.collector)
    async with await open_provider(w3, config) as provider:
        await provider.facilitator.submit_deposit(payload, requirements)
        report = await provider.settler.run_once(force=True)
    # closed: the sync stopped (its lease released), the store flushed and closed

Nothing is started: `provider.sync.start()` (or `app.cleanup_ctx.append(provider.sync.cleanup_ctx)`)
runs the background sync. The web3 connection stays the caller's to close.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

from web3 import AsyncWeb3

from channels.protocol import (
    CANONICAL_ERC3009_COLLECTOR_ADDRESS,
    CANONICAL_SETTLEMENT_ADDRESS,
    LedgerPolicy,
    Signer,
    checksum_address,
)

from .chain import ChainClient
from .chain_sync import ChainSync
from .facilitator import Facilitator
from .lease import Lease, LocalLease, lease_for
from .settler import Settler, SettlerPolicy
from .store import Store, open_store
from .tx_outcomes import TxPolicy
from .txjournal import TxJournal

__all__ = ["Provider", "ProviderConfig", "open_provider"]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """What the provider side is opened from.

    key: the provider's hex private key (sends every transaction, signs as receiverAuthorizer).
    store: the ledger store URL (`open_store`: sqlite:///PATH, redis://..., memory://).
    receiver: who is paid (None: the key's address). shared_lease_ttl_s: None runs the sync
    under a `LocalLease`; a TTL takes `lease_for(store)` (Redis: one settler among processes).
    """

    key: str
    store: str
    token: str
    settlement: str = CANONICAL_SETTLEMENT_ADDRESS
    collector: str = CANONICAL_ERC3009_COLLECTOR_ADDRESS
    receiver: str | None = None
    ledger_policy: LedgerPolicy | None = None
    tx_policy: TxPolicy | None = None
    settler_policy: SettlerPolicy | None = None
    shared_lease_ttl_s: float | None = None
    confirmations: int = 0
    start_block: int | None = None
    poll_s: float = 1.0


@dataclass(slots=True)
class Provider:
    """The wired provider side; `close()` (or `async with`) stops the sync and closes the store."""

    config: ProviderConfig
    chain_id: int
    store: Store
    chain: ChainClient
    signer: Signer
    facilitator: Facilitator
    sync: ChainSync

    @property
    def journal(self) -> TxJournal:
        """The transaction journal (kept in the ledger store)."""
        return self.chain.journal

    @property
    def settler(self) -> Settler:
        return self.sync.settler

    async def close(self) -> None:
        """Stop the sync (releasing its lease), then flush and close the store."""
        try:
            await self.sync.stop()
        finally:
            await self.store.close()

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_provider(
    w3: AsyncWeb3[Any], config: ProviderConfig, *, chain_id: int | None = None
) -> Provider:
    """Open the store and wire the chain client, facilitator and chain sync over `w3`.

    `chain_id` saves a read when the caller has it (else one `eth_chainId`, no retries, so an
    unreachable node fails at once). A failure after the store opened closes it again.

        provider = await open_provider(w3, ProviderConfig(key=k, store="memory://", token=t))
    """
    if chain_id is None:
        chain_id = int(await w3.eth.chain_id)
    settlement = checksum_address(config.settlement)
    store = await open_store(
        config.store, chain_id=chain_id, contract=settlement, policy=config.ledger_policy
    )
    try:
        signer = Signer(config.key)
        chain = ChainClient(
            w3,
            config.key,
            journal=TxJournal(store),
            settlement=settlement,
            collector=config.collector,
            policy=config.tx_policy,
        )
        lease: Lease = (
            LocalLease()
            if config.shared_lease_ttl_s is None
            else lease_for(
                config.store,
                chain_id=chain_id,
                settlement=settlement,
                ttl_s=config.shared_lease_ttl_s,
            )
        )
        sync = ChainSync(
            chain,
            store,
            authorizer=signer,
            receiver=checksum_address(config.receiver) if config.receiver else signer.address,
            token=config.token,
            lease=lease,
            policy=config.settler_policy,
            confirmations=config.confirmations,
            start_block=config.start_block,
            poll_s=config.poll_s,
        )
    except BaseException:
        await store.close()
        raise
    facilitator = Facilitator(chain, store, authorizer=signer)
    return Provider(config, chain_id, store, chain, signer, facilitator, sync)
