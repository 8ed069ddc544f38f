"""A payer's channel beyond paying for requests: its record and the gateway's view of it,
the cooperative refund, the rebuild of a lost or stale state file (sync), and the timed
withdrawal on chain.

`ChannelOps` is a base of `channels.sdk.PaymentClient`; call these on the client::

    >>> rec = await client.channel()                   # the payer's record (ChannelRecord)
    >>> settlement = await client.refund()             # the unspent rest, cooperatively
    >>> result = await client.sync()                   # rebuilt from the gateway's proof
    >>> status = await client.withdraw(rpc_url=rpc)    # or the timed escape hatch

A stale file recovers without a withdrawal: the gateway's channel view (or corrective 402)
carries the payer's own last voucher, which `Payer.adopt` checks before adopting the charged
total (never above what the payer signed, never below on-chain totalClaimed).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..protocol import (
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    ChannelStateSnapshot,
    ErrorCode,
    PaymentError,
    PaymentRequired,
    PaymentRequirements,
    SettleResponse,
    VoucherStateSnapshot,
    parse_payment_response,
)
from .answers import MISMATCH, error_code, error_text, gateway_base, payment_required
from .errors import (
    ChainError,
    GatewayUnreachable,
    InputError,
    PaymentRefused,
    RecoveryRefused,
    RequestFailed,
)
from .inputs import parse_channel_id
from .models import ChannelRecord, Payment, SyncResult, WithdrawStatus
from .onchain import PayerChain, finish_withdrawal, read_onchain, start_withdrawal
from .transport import HttpCore

if TYPE_CHECKING:
    from ..provider import OnChainChannel

__all__ = ["ChannelOps"]


class ChannelOps(HttpCore):
    """Status, refund, sync and withdrawal of the payer's channels (see the module)."""

    async def channel(self, channel_id: bytes | str | None = None) -> ChannelRecord:
        """The payer's record of a channel: the one named, else this payer's channel with the
        gateway at base_url (its terms are fetched if not known yet), else the only one stored."""
        if channel_id is not None:
            cid = parse_channel_id(channel_id)
            rec = self.payer.channel(cid)
            if rec is None:
                raise InputError(
                    f"channel 0x{cid.hex()} is not in the payer file {self.payer.path}"
                )
            return rec
        if self.base_url is not None:
            offer = await self._offer_for(self._endpoint("/v1/classify"))
            rec = self.payer.channel(self.payer.channel_id(offer))
            if rec is None:
                raise InputError(f"no channel with {self.base_url} yet: classify an image first")
            return rec
        records = self.payer.channels()
        if len(records) != 1:
            raise InputError(
                f"the payer file holds {len(records)} channels: "
                "name one (channel_id) or give base_url"
            )
        return records[0]

    async def channel_status(self, channel_id: bytes | str | None = None) -> dict[str, Any] | None:
        """The gateway's view of a channel (GET /v1/channels/{id}); None when it does not know it.

        `channel_id` defaults to this payer's channel with the gateway (see `channel`).
        """
        cid = (await self.channel(channel_id)).channel_id
        try:
            return await self._get_json(self._endpoint(f"/v1/channels/0x{cid.hex()}"))
        except RequestFailed as exc:
            if exc.status == 404:
                return None
            raise

    async def refund(
        self, url: str | None = None, amount: int | None = None, *, method: str = "POST"
    ) -> SettleResponse:
        """Ask the server for a cooperative refund of the unspent balance (None: all of it).

            >>> settlement = await client.refund()             # everything not charged
            >>> settlement.amount, settlement.transaction      # refunded, refund tx hash

        The payload is the spec's refund (a zero-charge voucher at the charged total).
        Without `url` it goes to the gateway's facilitator (POST base_url +
        "/facilitator/settle"), which claims every charge and refunds the rest in one
        transaction. With `url` it goes to that paid resource as a PAYMENT-SIGNATURE header,
        as the spec describes for any x402 server. Raises PaymentRefused with the server's
        code (e.g. ``..._refund_no_balance``, ``..._channel_busy``).

        A payer file that is new or stale (the refund voucher is below what is claimed on
        chain: ``..._cumulative_below_claimed``) is rebuilt from the server's proof (the
        corrective 402's state, else the gateway's GET /v1/channels/ID) after `Payer.adopt`
        checks it, and the refund is sent once more.
        """
        if amount is not None and (isinstance(amount, bool) or amount <= 0):
            raise InputError(
                f"refund amount must be a positive number of base units, got {amount!r}"
            )
        offer = await self._offer_for(url or self._endpoint("/v1/classify"), method=method)
        if self.payer.channel(self.payer.channel_id(offer)) is None:
            await self._adopt_view(offer, url)  # a new file: the gateway's proof, else the chain
        recovered = False
        while True:
            payment = self._refund_payment(offer, amount)
            settlement, required = await self._send_refund(url, offer, payment, method)
            self.payer.settle(payment, settlement)
            if settlement.success:
                return settlement
            refused = None
            if not recovered and settlement.error_reason in MISMATCH:
                refused = await self._recover_refund(payment, offer, url, required)
                if refused is None:
                    recovered = True
                    continue
            note = f"; the server's state was not adopted: {refused}" if refused else ""
            raise PaymentRefused(
                settlement.error_reason or str(ErrorCode.REFUND_TRANSACTION_FAILED),
                f"refund failed: {settlement.error_message}{note}", required,
            )

    async def _send_refund(
        self, url: str | None, offer: PaymentRequirements, payment: Payment, method: str
    ) -> tuple[SettleResponse, PaymentRequired | None]:
        """Send a signed refund; its settlement (success or not) and, with `url`, the 402's
        terms when refused (they may carry the corrective state)."""
        if url is None:
            body = json.dumps({"x402Version": 2, "paymentPayload": payment.payload.to_json(),
                               "paymentRequirements": offer.to_json()}).encode()
            target = self._endpoint("/facilitator/settle")
            status, got, answer = await self._send(
                "POST", target, body, {"Content-Type": "application/json"}
            )
            if status != 200:
                raise RequestFailed(status, error_code(answer), f"refund: {error_text(answer)}")
            try:
                return SettleResponse.from_json(json.loads(answer)), None
            except (ValueError, PaymentError) as exc:
                raise RequestFailed(status, None, f"{target} answered no SettleResponse: {exc}")
        status, got, answer = await self._send(
            method, url, None, {PAYMENT_SIGNATURE: payment.header}
        )
        required = payment_required(got, answer) if status == 402 else None
        raw = got.get(PAYMENT_RESPONSE)
        if raw is None:
            if required is not None:
                raise PaymentRefused(
                    required.error, f"refund refused: {error_text(answer)}", required
                )
            raise RequestFailed(status, error_code(answer), f"refund: {error_text(answer)}")
        return parse_payment_response(raw), required

    async def _recover_refund(
        self,
        payment: Payment,
        offer: PaymentRequirements,
        url: str | None,
        required: PaymentRequired | None,
    ) -> str | None:
        """Adopt the server's proven state after a refund refused as stale; why not, or None."""
        if required is not None and any(a.extra.voucher_state for a in required.accepts):
            figures = await self._chain_figures(payment.channel_id)
            return self.payer.recover_reason(payment, required, **figures)
        try:
            await self._adopt_view(offer, url)
        except (RecoveryRefused, InputError) as exc:
            return str(exc)
        return None

    def _refund_payment(self, offer: PaymentRequirements, amount: int | None) -> Payment:
        try:
            return self.payer.refund(offer, amount)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    async def sync(self, url: str | None = None) -> SyncResult:
        """Rebuild the local state of this payer's channel with the gateway, from the gateway
        and the chain (`paychan channel sync`): for a lost or stale state file.

            >>> result = await client.sync()
            >>> result.source, result.record.charged, result.record.balance
            ('gateway+chain', 5000, 10000)

        The gateway's charged total is adopted only with its proof, the payer's own last
        voucher, checked by `Payer.adopt` (never above what the payer signed, never below
        on-chain totalClaimed when `rpc_url` is set); without a proof there, the chain's
        totalClaimed is the baseline (needs `rpc_url`). `url`: the paid endpoint whose terms
        name the channel (default base_url + "/v1/classify"). Raises RecoveryRefused when
        the gateway's proof fails, InputError when there is nothing to rebuild from.
        """
        offer = await self._offer_for(url or self._endpoint("/v1/classify"))
        return await self._rebuild(offer, url)

    async def _adopt_view(self, offer: PaymentRequirements, url: str | None) -> ChannelRecord:
        """Rebuild this payer's channel for `offer` from the gateway's view (GET
        /v1/channels/ID: its charged total with the payer's own last voucher), floored at the
        chain's figures when `rpc_url` is set; from the chain alone when the gateway has no
        proof. Raises RecoveryRefused (the proof failed `Payer.adopt`) or InputError."""
        return (await self._rebuild(offer, url)).record

    async def _rebuild(self, offer: PaymentRequirements, url: str | None) -> SyncResult:
        cid = self.payer.channel_id(offer)
        before = self.payer.channel(cid)
        view = await self._channel_view(cid, url)
        onchain = await self._onchain_figures(cid) if self.rpc_url else None
        proof = view.get("voucherState") if view is not None else None
        if view is not None and proof:
            state = ChannelStateSnapshot.from_json(view, "channel", ErrorCode.INVALID_PAYLOAD)
            voucher = VoucherStateSnapshot.from_json(proof, "voucherState",
                                                     ErrorCode.INVALID_PAYLOAD)
            record = self.payer.adopt(
                offer, state, voucher,
                total_claimed=None if onchain is None else onchain["totalClaimed"],
                balance=None if onchain is None else onchain["balance"],
            )
            source = "gateway" if onchain is None else "gateway+chain"
        elif onchain is not None and (onchain["balance"] or before is not None):
            self.payer.resync(offer, balance=onchain["balance"],
                              total_claimed=onchain["totalClaimed"])
            record, source = self.payer.channel(cid), "chain"  # type: ignore[assignment]
        else:
            where = "does not know it" if view is None else "holds no voucher of it"
            raise InputError(
                f"channel 0x{cid.hex()}: the gateway {where}"
                + (" and it holds nothing on chain: classify an image first"
                   if onchain is not None else
                   "; pass rpc_url= (paychan channel sync --rpc URL) to rebuild from the chain")
            )
        chain = None if onchain is None else {k: str(v) if isinstance(v, int) else v
                                              for k, v in onchain.items()}
        return SyncResult("0x" + cid.hex(), source, record, before, view, chain)

    async def _channel_view(self, cid: bytes, url: str | None) -> dict[str, Any] | None:
        """GET /v1/channels/ID on the gateway serving `url` (default base_url); None: 404."""
        base = gateway_base(url) if url is not None else None
        target = (base or self._endpoint("")) + f"/v1/channels/0x{cid.hex()}"
        try:
            return await self._get_json(target)
        except RequestFailed as exc:
            if exc.status == 404:
                return None
            raise

    async def _onchain_figures(self, cid: bytes) -> dict[str, Any]:
        """The channel on chain (`rpc_url`): balance, totalClaimed, withdrawal, refund nonce."""
        onchain = await read_onchain(self.rpc_url or "", cid, settlement=self.payer.settlement)
        return {"balance": onchain.balance, "totalClaimed": onchain.total_claimed,
                "withdrawRequestedAt": onchain.withdraw_requested_at,
                "refundNonce": onchain.refund_nonce}

    async def _chain_figures(self, cid: bytes) -> dict[str, int | None]:
        """`Payer.recover`'s chain arguments: read when `rpc_url` is set and answers, else
        None each (the server's snapshot then floors the adopted charge)."""
        if not self.rpc_url:
            return {"total_claimed": None, "balance": None}
        try:
            onchain = await self._onchain_figures(cid)
        except (GatewayUnreachable, ChainError):  # recovery still works from the proof alone
            return {"total_claimed": None, "balance": None}
        return {"total_claimed": onchain["totalClaimed"], "balance": onchain["balance"]}

    async def withdraw(
        self,
        amount: int | None = None,
        *,
        channel_id: bytes | str | None = None,
        rpc_url: str | None = None,
    ) -> WithdrawStatus:
        """Start the timed withdrawal on-chain (`initiateWithdraw`, the payer key pays gas).

            >>> status = await client.withdraw(rpc_url=rpc)
            >>> status.amount, status.ready_at

        `amount` None withdraws what this payer has not been charged for: the on-chain balance
        minus the larger of totalClaimed and the charges it proved. The gateway claims its
        charges during the delay (withdrawDelay, 15 min or more); then `finalize_withdraw`.
        """
        if amount is not None and (isinstance(amount, bool) or amount <= 0):
            raise InputError(
                f"withdraw amount must be a positive number of base units, got {amount!r}"
            )
        rec = await self.channel(channel_id)
        return await start_withdrawal(self.payer, rec, amount, rpc_url or self.rpc_url)

    async def finalize_withdraw(
        self, *, channel_id: bytes | str | None = None, rpc_url: str | None = None
    ) -> WithdrawStatus:
        """Complete a timed withdrawal once its delay has passed (`finalizeWithdraw`): the
        tokens go back to the payer. Raises ChainError(reason="WithdrawDelayNotElapsed") early.

            >>> (await client.finalize_withdraw(rpc_url=rpc)).finalized
            True
        """
        rec = await self.channel(channel_id)
        return await finish_withdrawal(self.payer, rec, rpc_url or self.rpc_url)

    async def onchain(
        self, channel_id: bytes | str | None = None, *, rpc_url: str | None = None
    ) -> OnChainChannel:
        """The channel as the chain has it (`channels.provider.OnChainChannel`).

            >>> (await client.onchain(rpc_url=rpc)).total_claimed
        """
        rec = await self.channel(channel_id)
        async with PayerChain(self.payer, rpc_url or self.rpc_url) as chain:
            return await chain.read(rec.channel_id)
