"""The payer's own side of the chain: read a channel, start and finalize the timed
withdrawal (the spec's escape hatch when the server will not refund).

    >>> state = await read_onchain("http://127.0.0.1:8545", "0x3f...")      # no key needed
    >>> state.balance, state.total_claimed, state.withdraw_requested_at
    >>> status = await start_withdrawal(payer, record, None, rpc_url)       # all not charged
    >>> status = await finish_withdrawal(payer, record, rpc_url)             # after the delay

web3 loads only here, and only when one of these runs (~1 s).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..protocol import CANONICAL_SETTLEMENT_ADDRESS, to_address
from .errors import ChainError, GatewayUnreachable, InputError
from .inputs import parse_channel_id
from .models import ChannelRecord, WithdrawStatus

if TYPE_CHECKING:
    from ..provider import ChainClient, OnChainChannel
    from ..provider.txjournal import SqliteKeyValue
    from .payer import Payer

__all__ = ["PayerChain", "finalize_withdraw", "start_withdrawal", "read_onchain"]


class PayerChain:
    """The payer's own on-chain calls (withdrawals) through `channels.provider.ChainClient`.

        >>> async with PayerChain(payer, rpc_url) as chain:
        ...     tx = await chain.send("initiateWithdraw", record, amount)

    The payer key signs and pays gas; its transactions are journaled next to the payer file
    (``<state>.tx``), so a crash between sending and the receipt never sends twice. Without a
    payer it only reads (a throwaway key identifies the reader; it signs nothing).
    """

    def __init__(self, payer: Payer | None, rpc_url: str | None, *,
                 settlement: bytes | None = None) -> None:
        if not rpc_url:
            raise InputError("no chain: pass rpc_url= (a JSON-RPC URL of the channel's chain)")
        self.payer = payer
        self.rpc_url = rpc_url
        self.settlement = settlement if payer is None else payer.settlement
        self._w3: Any = None  # web3's AsyncWeb3 (its types load only with it)
        self._kv: SqliteKeyValue | None = None

    async def __aenter__(self) -> PayerChain:
        from web3 import AsyncHTTPProvider, AsyncWeb3  # ~1 s: only withdrawals need it

        from ..provider import ChainClient, TxJournal
        from ..provider.txjournal import SqliteKeyValue

        self._w3 = AsyncWeb3(AsyncHTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))
        try:
            chain_id = int(await self._w3.eth.chain_id)
        except Exception as exc:  # any transport failure: name the URL
            await self._disconnect()
            raise GatewayUnreachable(self.rpc_url, exc) from exc
        if self.payer is None:
            path, key = ":memory:", "0x" + os.urandom(32).hex()
        else:
            path = self.payer.path
            key = self.payer.signer.private_key_hex()  # the payer's own key pays its gas
        self._kv = SqliteKeyValue(":memory:" if path == ":memory:" else path + ".tx")
        settlement = CANONICAL_SETTLEMENT_ADDRESS
        if self.settlement:
            settlement = "0x" + self.settlement.hex()
        self.chain: ChainClient = ChainClient(
            self._w3, key, journal=TxJournal(self._kv), settlement=settlement
        )
        self.chain_id = chain_id
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._kv is not None:
            self._kv.close()
        provider = getattr(self._w3, "provider", None)
        disconnect = getattr(provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def read(self, cid: bytes) -> OnChainChannel:
        """The channel at the latest block; GatewayUnreachable / ChainError on failure."""
        from ..provider import is_transport_error

        try:
            return await self.chain.read_channel(cid)
        except Exception as exc:
            if is_transport_error(exc):
                raise GatewayUnreachable(self.rpc_url, exc) from exc
            raise ChainError("read channel", str(exc)[:300]) from exc

    async def send(self, fn: str, rec: ChannelRecord, *args: Any) -> str:
        """Send `fn(config, *args)` from the payer key; its transaction hash once mined."""
        from ..provider import TxFailed, config_tuple, is_transport_error

        if rec.chain_id != self.chain_id:
            raise InputError(f"channel 0x{rec.channel_id.hex()} is on chain {rec.chain_id}, "
                             f"but {self.rpc_url} is chain {self.chain_id}")
        data = self.chain.encode(fn, config_tuple(rec.config), *args)
        try:
            meta = {"channel": "0x" + rec.channel_id.hex()}
            result = await self.chain.transact(fn, data, meta=meta)
        except TxFailed as exc:
            raise ChainError(fn, getattr(exc, "reason", None) or str(exc)) from exc
        except Exception as exc:
            if is_transport_error(exc):
                raise GatewayUnreachable(self.rpc_url, exc) from exc
            raise
        return result.tx_hash


async def read_onchain(
    rpc_url: str, channel_id: bytes | str, *, settlement: bytes | str | None = None
) -> OnChainChannel:
    """A channel as the chain has it (`channels.provider.OnChainChannel`), no key needed.

        >>> state = await read_onchain("http://127.0.0.1:8545", "0x3f...")
        >>> state.balance, state.total_claimed, state.withdraw_requested_at
    """
    cid = parse_channel_id(channel_id)
    where = to_address(settlement) if settlement is not None else None
    async with PayerChain(None, rpc_url, settlement=where) as chain:
        return await chain.read(cid)


async def start_withdrawal(
    payer: Payer, rec: ChannelRecord, amount: int | None, rpc_url: str | None
) -> WithdrawStatus:
    """Start the timed withdrawal of `amount` (None: what the payer was not charged for: the
    on-chain balance minus the larger of totalClaimed and the charges it proved).

        >>> status = await start_withdrawal(payer, payer.channel(cid), None, rpc_url)
        >>> status.ready_at                     # when finalize_withdraw may run
    """
    async with PayerChain(payer, rpc_url) as chain:
        onchain = await chain.read(rec.channel_id)
        if onchain.withdraw_requested_at:
            raise InputError(
                f"channel 0x{rec.channel_id.hex()} already has a withdrawal pending since "
                f"{onchain.withdraw_requested_at}: finalize it"
            )
        free = onchain.balance - max(onchain.total_claimed, rec.charged)
        if amount is None:
            amount = free
        if amount <= 0:
            charged = max(onchain.total_claimed, rec.charged)
            raise InputError(f"nothing to withdraw from 0x{rec.channel_id.hex()}: balance "
                             f"{onchain.balance}, charged {charged}")
        tx = await chain.send("initiateWithdraw", rec, amount)
        after = await chain.read(rec.channel_id)
    return WithdrawStatus("0x" + rec.channel_id.hex(), tx, amount,
                          after.withdraw_requested_at + rec.config.withdraw_delay, False,
                          after.balance)


async def finish_withdrawal(payer: Payer, rec: ChannelRecord, rpc_url: str | None) -> WithdrawStatus:
    """Complete a timed withdrawal once its delay has passed; the payer records the new
    on-chain balance. Raises ChainError(reason="WithdrawDelayNotElapsed") early.

        >>> status = await finish_withdrawal(payer, payer.channel(cid), rpc_url)
        >>> status.amount                       # tokens back to the payer
    """
    async with PayerChain(payer, rpc_url) as chain:
        before = await chain.read(rec.channel_id)
        if not before.withdraw_requested_at:
            raise InputError(f"channel 0x{rec.channel_id.hex()} has no withdrawal pending: "
                             "start one with withdraw()")
        tx = await chain.send("finalizeWithdraw", rec)
        after = await chain.read(rec.channel_id)
    payer.observe_chain(rec.channel_id, balance=after.balance, total_claimed=after.total_claimed)
    return WithdrawStatus("0x" + rec.channel_id.hex(), tx, before.balance - after.balance,
                          None, True, after.balance)
