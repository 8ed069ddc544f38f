"""Chain access for the provider: read the settlement contract, build its calldata, and send
its transactions (deposits relayed for payers, claims, settles, refunds) through one
journaled `TxSender` (channels/provider/transactions.py)::

    chain = ChainClient(w3, provider_key, journal=TxJournal(store),
                        settlement=dep.settlement, collector=dep.collector)
    await chain.recover()                                  # finish what a previous run sent
    state = await chain.read_channel(channel_id)           # OnChainChannel
    result = await chain.deposit(deposit_payload)          # TxResult(tx_hash, receipt, ...)
    result = await chain.claim(rows, authorizer_signature) # claimWithSignature
    result = await chain.settle(receiver, token)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import AsyncWeb3

from channels.protocol import (
    CANONICAL_ERC3009_COLLECTOR_ADDRESS,
    CANONICAL_SETTLEMENT_ADDRESS,
    ChannelConfig,
    ChannelStateSnapshot,
    ClaimRow,
    DepositPayload,
    Synced,
    channel_id,
    checksum_address,
    keccak256,
)

from .chain_health import ChainHealth
from .transactions import TxSender
from .tx_outcomes import TxFailed, TxPolicy, TxResult
from .txjournal import JournalEntry, TxJournal

__all__ = ["ChainClient", "OnChainChannel", "config_tuple", "settlement_abi"]

T = TypeVar("T")


def settlement_abi() -> list[dict[str, Any]]:
    """The BatchSettlement ABI (ABI-identical to the canonical x402 contract)."""
    from contracts import artifact  # the committed build; contracts imports nothing of ours

    abi: list[dict[str, Any]] = artifact("BatchSettlement")["abi"]
    return abi


def _error_selectors(abi: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for item in abi:
        if item["type"] == "error":
            sig = f"{item['name']}({','.join(i['type'] for i in item.get('inputs', []))})"
            out["0x" + keccak256(sig.encode())[:4].hex()] = item["name"]
    return out



@dataclass(frozen=True, slots=True)
class OnChainChannel:
    """`channels(id)`, `pendingWithdrawals(id)` and `refundNonce(id)` read at one block."""

    channel_id: bytes
    balance: int
    total_claimed: int
    withdraw_amount: int = 0
    withdraw_requested_at: int = 0  # block time the withdrawal started (0: none pending)
    refund_nonce: int = 0
    block_number: int | None = None

    @property
    def exists(self) -> bool:
        return self.balance > 0 or self.total_claimed > 0

    def snapshot(self, charged: int | None = None) -> ChannelStateSnapshot:
        return ChannelStateSnapshot(
            self.channel_id,
            self.balance,
            self.total_claimed,
            self.withdraw_requested_at,
            self.refund_nonce,
            charged,
        )

    def fact(self) -> Synced:
        """The ledger fact that mirrors this snapshot."""
        return Synced(
            self.balance,
            self.total_claimed,
            self.withdraw_requested_at,
            self.refund_nonce,
            self.withdraw_amount if self.withdraw_requested_at else None,
        )



def config_tuple(config: ChannelConfig) -> tuple[Any, ...]:
    """A ChannelConfig as the contract's ABI tuple."""
    return (
        checksum_address(config.payer),
        checksum_address(config.payer_authorizer),
        checksum_address(config.receiver),
        checksum_address(config.receiver_authorizer),
        checksum_address(config.token),
        int(config.withdraw_delay),
        bytes(config.salt),
    )


def _hex(b: bytes | str) -> str:
    return b if isinstance(b, str) else "0x" + bytes(b).hex()



# --------------------------------------------------------------------------- the client


class ChainClient:
    """The provider's view of the settlement contract and its one sending key.

    `w3` is any AsyncWeb3 (HTTP to anvil or a node, or the embedded eth-tester chain);
    `key` a hex private key (the gateway's; it pays gas); `journal` where every signed
    transaction is recorded before it is sent.
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        key: str,
        *,
        journal: TxJournal,
        settlement: str = CANONICAL_SETTLEMENT_ADDRESS,
        collector: str = CANONICAL_ERC3009_COLLECTOR_ADDRESS,
        policy: TxPolicy | None = None,
    ) -> None:
        self.w3 = w3
        self.settlement_address: ChecksumAddress = to_checksum_address(settlement)
        self.collector_address = checksum_address(collector)
        abi = settlement_abi()
        self.settlement = w3.eth.contract(address=self.settlement_address, abi=abi)
        self._errors = _error_selectors(abi)
        self._tx = TxSender(
            w3, key, journal=journal, policy=policy or TxPolicy(), revert_reason=self.revert_reason
        )
        self.address: str = self._tx.address
        self.journal = journal
        self.policy = self._tx.policy

    # --- plumbing -------------------------------------------------------------------------

    @property
    def health(self) -> ChainHealth | None:
        """Told of every RPC call that reached the node or did not (None: nobody asks)."""
        return self._tx.health

    @health.setter
    def health(self, health: ChainHealth | None) -> None:
        self._tx.health = health

    @property
    def rpc_failures(self) -> int:
        """Transport failures retried so far (outages show here)."""
        return self._tx.rpc_failures

    async def rpc(
        self, call: Callable[[], Awaitable[T]], *, what: str, deadline_s: float | None = None
    ) -> T:
        """Run an RPC call, retrying transport failures with backoff (see `TxSender.rpc`).

            block = await chain.rpc(lambda: chain.w3.eth.get_block("latest"), what="block")
        """
        return await self._tx.rpc(call, what=what, deadline_s=deadline_s)

    async def chain_id(self) -> int:
        return await self._tx.chain_id()

    async def block_number(self) -> int:
        return int(await self.rpc(lambda: self.w3.eth.block_number, what="eth_blockNumber"))

    def revert_reason(self, exc: BaseException) -> str:
        """The contract's custom error name for a revert, else the node's message."""
        data = getattr(exc, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str | bytes):
            h = _hex(data) if isinstance(data, bytes) else data
            name = self._errors.get(h[:10].lower())
            if name:
                return name
        text = str(exc)
        for sel, name in self._errors.items():
            if sel in text.lower():
                return name
        return text[:300]

    # --- reads ------------------------------------------------------------------------------

    async def read_channel(
        self, channel_id: bytes, block: int | Literal["latest"] = "latest"
    ) -> OnChainChannel:
        """The channel's on-chain state (three eth_calls at one block).

            state = await chain.read_channel(cid, result.block_number)   # or the latest block
        """
        fns = self.settlement.functions
        at = await self.block_number() if block == "latest" else block

        async def read() -> tuple[Any, Any, Any]:
            return await asyncio.gather(
                fns.channels(channel_id).call(block_identifier=at),
                fns.pendingWithdrawals(channel_id).call(block_identifier=at),
                fns.refundNonce(channel_id).call(block_identifier=at),
            )

        (balance, claimed), (w_amount, w_at), nonce = await self.rpc(
            read, what="read channel", deadline_s=60
        )
        return OnChainChannel(
            channel_id, int(balance), int(claimed), int(w_amount), int(w_at), int(nonce), at
        )

    async def receiver_totals(self, receiver: str, token: str) -> tuple[int, int]:
        """`receivers(receiver, token)`: (totalClaimed, totalSettled) of that receiver."""
        call = self.settlement.functions.receivers(
            checksum_address(receiver), checksum_address(token)
        ).call
        claimed, settled = await self.rpc(call, what="receivers", deadline_s=60)
        return int(claimed), int(settled)

    async def token_balance(self, token: str, account: str) -> int:
        data = HexStr("0x70a08231" + bytes(12).hex() + checksum_address(account)[2:].lower())
        raw = await self.rpc(
            lambda: self.w3.eth.call({"to": to_checksum_address(token), "data": data}),
            what="balanceOf",
            deadline_s=60,
        )
        return int.from_bytes(bytes(raw), "big")

    # --- calldata ---------------------------------------------------------------------------

    def encode(self, fn: str, *args: Any) -> bytes:
        return bytes.fromhex(self.settlement.encode_abi(fn, args=list(args))[2:])

    def deposit_calldata(self, payload: DepositPayload) -> bytes:
        auth = payload.deposit.authorization
        collector_data = abi_encode(
            ["uint256", "uint256", "uint256", "bytes"],
            [auth.valid_after, auth.valid_before, int.from_bytes(auth.salt, "big"), auth.signature],
        )
        return self.encode(
            "deposit",
            config_tuple(payload.channel_config),
            payload.deposit.amount,
            self.collector_address,
            collector_data,
        )

    def claim_calldata(self, rows: Sequence[ClaimRow], authorizer_signature: bytes) -> bytes:
        return self.encode(
            "claimWithSignature", [_claim_tuple(r) for r in rows], authorizer_signature
        )

    def refund_calldata(
        self, config: ChannelConfig, amount: int, nonce: int, signature: bytes
    ) -> bytes:
        return self.encode("refundWithSignature", config_tuple(config), amount, nonce, signature)

    def settle_calldata(self, receiver: str, token: str) -> bytes:
        return self.encode("settle", checksum_address(receiver), checksum_address(token))

    # --- the transactions ---------------------------------------------------------------------

    async def deposit(
        self, payload: DepositPayload, *, meta: dict[str, Any] | None = None
    ) -> TxResult:
        """Submit a payer's ERC-3009 deposit through the collector (the provider pays gas)."""
        return await self.transact(
            "deposit",
            self.deposit_calldata(payload),
            meta={
                "channel": _hex(payload.voucher.channel_id),
                "amount": str(payload.deposit.amount),
                **(meta or {}),
            },
        )

    async def claim(
        self,
        rows: Sequence[ClaimRow],
        authorizer_signature: bytes,
        *,
        meta: dict[str, Any] | None = None,
    ) -> TxResult:
        """`claimWithSignature(rows, sig)`: rows share one receiverAuthorizer, who signed ClaimBatch."""
        if not rows:
            raise ValueError("claim: rows is empty; pass at least one ClaimRow")
        cid = await self.chain_id()
        channels_meta = [
            [_hex(channel_id(r.config, cid, self.settlement_address)), str(r.total_claimed)] for r in rows
        ]
        return await self.transact(
            "claim",
            self.claim_calldata(rows, authorizer_signature),
            meta={"channels": channels_meta, **(meta or {})},
        )

    async def settle(self, receiver: str, token: str) -> TxResult:
        """`settle(receiver, token)`: sweep the claimed, unsettled amount to the receiver."""
        return await self.transact(
            "settle",
            self.settle_calldata(receiver, token),
            meta={"receiver": checksum_address(receiver), "token": checksum_address(token)},
        )

    async def refund_with_signature(
        self,
        config: ChannelConfig,
        amount: int,
        nonce: int,
        signature: bytes,
        *,
        claim_first: tuple[Sequence[ClaimRow], bytes] | None = None,
    ) -> TxResult:
        """`refundWithSignature`, optionally after a claim in the same transaction (multicall),
        so the refund can never hand back units already charged."""
        refund = self.refund_calldata(config, amount, nonce, signature)
        meta = {"amount": str(amount), "nonce": nonce}
        if claim_first and claim_first[0]:
            data = self.encode("multicall", [self.claim_calldata(*claim_first), refund])
            return await self.transact("refund", data, meta={**meta, "with_claim": True})
        return await self.transact("refund", refund, meta=meta)

    async def transact(
        self,
        kind: str,
        data: bytes,
        *,
        to: str | None = None,
        gas: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> TxResult:
        """Estimate, sign, journal, send and follow one transaction (to the settlement
        contract unless `to`) to a successful receipt; see `TxSender.transact`.

            result = await chain.transact("settle", chain.settle_calldata(receiver, token))
        """
        return await self._tx.transact(
            kind, data, to=to or self.settlement_address, gas=gas, meta=meta
        )

    async def wait(self, entry: JournalEntry, *, timeout_s: float | None = None) -> TxResult:
        """Follow a journaled transaction to its receipt (bumping fees while it sits unmined)."""
        return await self._tx.wait(entry, timeout_s=timeout_s)

    async def recover(self, *, timeout_s: float | None = None) -> list[TxResult | TxFailed]:
        """Finish every pending transaction a previous run of this key left in the journal
        (one TxResult or TxFailed per pending entry, nonce order; see `TxSender.recover`)."""
        return await self._tx.recover(timeout_s=timeout_s)


def _claim_tuple(r: ClaimRow) -> tuple[Any, ...]:
    return (
        (config_tuple(r.config), int(r.max_claimable)),
        bytes(r.signature),
        int(r.total_claimed),
    )
