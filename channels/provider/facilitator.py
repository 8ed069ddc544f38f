"""The gateway as its own x402 facilitator, in-process: verify and submit batch-settlement
payloads (deposits, cooperative refunds) against the chain and the ledger::

    fac = Facilitator(chain, store, authorizer=Signer(key))
    verdict = await fac.verify(payment.payload, requirements)      # VerifyResult (isValid, channel snapshot)
    done = await fac.submit_deposit(payload, requirements)         # DepositResult; ledger gets Deposited
    response = await fac.refund(refund_payload, requirements)      # SettleResponse (claims charged first)

The x402 HTTP JSON side (POST /verify, /settle, GET /supported) over this object is
channels/provider/facilitator_json.py. Errors are the spec's codes
(`channels.protocol.ErrorCode`) in `invalidReason` / `errorReason`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from channels.protocol import (
    ZERO_ADDRESS,
    ChannelConfig,
    ChannelStateSnapshot,
    ClaimRow,
    DepositPayload,
    ErrorCode,
    PaymentError,
    PaymentPayload,
    PaymentRequirements,
    RefundPayload,
    Rejection,
    ResponseExtra,
    SettleResponse,
    Signer,
    Voucher,
    VoucherPayload,
    checksum_address,
    claim_batch,
    refund_digest,
    sign_claim_batch,
    verify_channel_terms,
    verify_deposit_authorization,
    verify_voucher,
)

from .chain import ChainClient, OnChainChannel
from .tx_outcomes import SimulationFailed, TxFailed, TxResult

__all__ = ["SCHEME", "DepositResult", "Facilitator", "VerifyResult", "tx_errors"]

log = logging.getLogger("paychan.facilitator")
SCHEME = "batch-settlement"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The x402 `/verify` answer: `isValid`, the spec's `invalidReason`, the channel snapshot."""

    is_valid: bool
    payer: bytes | None = None
    channel_state: ChannelStateSnapshot | None = None
    invalid_reason: str | None = None
    invalid_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"isValid": self.is_valid}
        if self.invalid_reason is not None:
            out["invalidReason"] = str(self.invalid_reason)
        if self.invalid_message is not None:
            out["invalidMessage"] = self.invalid_message
        if self.payer is not None:
            out["payer"] = checksum_address(self.payer)
        if self.channel_state is not None:
            out["extra"] = self.channel_state.to_json()
        return out

    @classmethod
    def invalid(cls, err: PaymentError, payer: bytes | None = None) -> VerifyResult:
        return cls(False, payer, invalid_reason=str(err.code), invalid_message=err.message)


@dataclass(frozen=True, slots=True)
class DepositResult:
    """A landed deposit: its transaction and the channel right after it."""

    tx_hash: str
    channel: OnChainChannel
    result: TxResult

    @property
    def balance(self) -> int:
        return self.channel.balance


class Facilitator:
    """Verifies and submits deposit / refund payloads (and, for /settle, claim and settle actions).

    chain: the provider's ChainClient (it pays gas). store: the ledger store to mirror what
    lands into (None: a facilitator for others, with no ledger). authorizer: the
    receiverAuthorizer key that signs Refund and ClaimBatch (None: callers must bring signatures).
    """

    def __init__(
        self,
        chain: ChainClient,
        store: Any | None = None,
        *,
        authorizer: Signer | None = None,
        clock: Any = time.time,
    ) -> None:
        self.chain = chain
        self.store = store
        self.authorizer = authorizer
        self.clock = clock

    # --- checks both sides share ---------------------------------------------------------------

    async def check_network(
        self, accepted: PaymentRequirements | None, requirements: PaymentRequirements
    ) -> None:
        """Raise the spec's PaymentError unless the scheme is ours and the network is this chain.

            await fac.check_network(payment.accepted, requirements)
        """
        if requirements.scheme != SCHEME or (accepted is not None and accepted.scheme != SCHEME):
            raise PaymentError(
                ErrorCode.INVALID_SCHEME, "paymentRequirements.scheme", f"must be {SCHEME!r}"
            )
        if accepted is not None and accepted.network != requirements.network:
            raise PaymentError(
                ErrorCode.NETWORK_MISMATCH,
                "paymentPayload.accepted.network",
                f"{accepted.network} is not {requirements.network}",
            )
        chain_id = await self.chain.chain_id()
        if requirements.chain_id != chain_id:
            raise PaymentError(
                ErrorCode.NETWORK_MISMATCH,
                "paymentRequirements.network",
                f"this facilitator is on eip155:{chain_id}, not {requirements.network}",
            )

    async def read_onchain(self, cid: bytes) -> OnChainChannel:
        """The channel as the chain has it; any read failure is the spec's rpc_read_failed.

            state = await fac.read_onchain(cid)    # OnChainChannel, or PaymentError
        """
        try:
            return await self.chain.read_channel(cid)
        except Exception as exc:  # noqa: BLE001 - any read failure is the spec's rpc_read_failed
            raise PaymentError(
                ErrorCode.RPC_READ_FAILED, None, f"could not read the channel: {exc}"
            ) from None

    async def check_voucher(
        self,
        config: ChannelConfig,
        voucher: Voucher,
        requirements: PaymentRequirements,
        field: str = "payload.voucher",
    ) -> bytes:
        """Raise the spec's PaymentError unless `config` matches our terms and `voucher` is
        signed by its payer (ERC-1271 on chain for a smart wallet); returns the channel id.

            cid = await fac.check_voucher(config, voucher, requirements)
        """
        settlement = self.chain.settlement_address
        chain_id = requirements.chain_id
        verify_channel_terms(config, requirements)
        if config.payer_authorizer == ZERO_ADDRESS:  # smart-wallet payer: ERC-1271 on chain
            from .eip1271 import verify_voucher_eip1271

            await verify_voucher_eip1271(self.chain.w3, config, voucher, chain_id, settlement)
        else:
            verify_voucher(config, voucher, chain_id, settlement, field=field)
        return voucher.channel_id

    # --- verify -------------------------------------------------------------------------------

    async def verify(
        self,
        payload: Any,
        requirements: PaymentRequirements,
        accepted: PaymentRequirements | None = None,
    ) -> VerifyResult:
        """Check a deposit, voucher or refund payload against the requirements and the chain."""
        payer = getattr(getattr(payload, "channel_config", None), "payer", None)
        try:
            await self.check_network(accepted, requirements)
            if isinstance(payload, DepositPayload):
                state = await self._verify_deposit(payload, requirements)
            elif isinstance(payload, VoucherPayload | RefundPayload):
                state = await self._verify_voucher(payload, requirements)
            else:
                raise PaymentError(
                    ErrorCode.PAYLOAD_TYPE,
                    "paymentPayload.payload.type",
                    "verify takes deposit, voucher or refund payloads",
                )
        except PaymentError as err:
            return VerifyResult.invalid(err, payer)
        return VerifyResult(True, payer, state.snapshot())

    async def _verify_deposit(
        self, payload: DepositPayload, requirements: PaymentRequirements
    ) -> OnChainChannel:
        cid = await self.check_voucher(payload.channel_config, payload.voucher, requirements)
        amount = payload.deposit.amount
        if amount <= 0:
            raise PaymentError(
                ErrorCode.DEPOSIT_PAYLOAD, "payload.deposit.amount", "must be positive"
            )
        minimum = requirements.extra.min_deposit
        if minimum is not None and amount < minimum:
            raise PaymentError(
                ErrorCode.DEPOSIT_BELOW_MIN_DEPOSIT,
                "payload.deposit.amount",
                f"{amount} is below the minimum deposit {minimum}",
            )
        block = await self.chain.w3.eth.get_block("latest")
        verify_deposit_authorization(
            payload,
            requirements,
            self.chain.collector_address,
            self.chain.settlement_address,
            now=int(block["timestamp"]),
        )
        state = await self.read_onchain(cid)
        try:
            funds = await self.chain.token_balance(
                checksum_address(payload.channel_config.token),
                checksum_address(payload.channel_config.payer),
            )
        except Exception as exc:  # noqa: BLE001 - any read failure is the spec's rpc_read_failed
            raise PaymentError(
                ErrorCode.RPC_READ_FAILED, None, f"could not read the payer's balance: {exc}"
            ) from None
        if funds < amount:
            raise PaymentError(
                ErrorCode.INSUFFICIENT_BALANCE,
                "payload.deposit.amount",
                f"the payer holds {funds}, less than the deposit {amount}",
            )
        ceiling = payload.voucher.max_claimable_amount
        if ceiling > state.balance + amount:
            raise PaymentError(
                ErrorCode.CUMULATIVE_EXCEEDS_BALANCE,
                "payload.voucher.maxClaimableAmount",
                f"{ceiling} exceeds the balance after the deposit ({state.balance + amount})",
            )
        if ceiling <= state.total_claimed:
            raise PaymentError(
                ErrorCode.CUMULATIVE_BELOW_CLAIMED,
                "payload.voucher.maxClaimableAmount",
                f"{ceiling} is not above what is claimed already ({state.total_claimed})",
            )
        return state

    async def _verify_voucher(
        self, payload: VoucherPayload | RefundPayload, requirements: PaymentRequirements
    ) -> OnChainChannel:
        cid = await self.check_voucher(payload.channel_config, payload.voucher, requirements)
        state = await self.read_onchain(cid)
        if state.balance == 0:
            raise PaymentError(
                ErrorCode.CHANNEL_NOT_FOUND,
                "payload.voucher.channelId",
                "the channel has no balance on chain: send a deposit payload",
            )
        ceiling = payload.voucher.max_claimable_amount
        if ceiling > state.balance:
            raise PaymentError(
                ErrorCode.CUMULATIVE_EXCEEDS_BALANCE,
                "payload.voucher.maxClaimableAmount",
                f"{ceiling} exceeds the channel balance {state.balance}",
            )
        below = (
            ceiling < state.total_claimed
            if isinstance(payload, RefundPayload)
            else ceiling <= state.total_claimed
        )
        if below:
            raise PaymentError(
                ErrorCode.CUMULATIVE_BELOW_CLAIMED,
                "payload.voucher.maxClaimableAmount",
                f"{ceiling} is below what is claimed already ({state.total_claimed})",
            )
        return state

    # --- deposits -----------------------------------------------------------------------------

    async def submit_deposit(
        self, payload: DepositPayload, requirements: PaymentRequirements, *, verified: bool = False
    ) -> DepositResult:
        """Verify (unless `verified`), submit the deposit, and mirror the new balance into the
        store (with the channel's config) before returning. Raises PaymentError with the spec's
        codes: the verify codes, DEPOSIT_SIMULATION_FAILED, DEPOSIT_TRANSACTION_FAILED."""
        if not verified:
            await self.check_network(None, requirements)
            await self._verify_deposit(payload, requirements)
        with tx_errors(ErrorCode.DEPOSIT_SIMULATION_FAILED, ErrorCode.DEPOSIT_TRANSACTION_FAILED,
                        "payload.deposit", "the deposit would revert ({})"):
            result = await self.chain.deposit(payload)
        cid = payload.voucher.channel_id
        state = await self.chain.read_channel(cid, result.block_number)
        if self.store is not None:
            await self.store.apply_fact(cid, state.fact(), config=payload.channel_config)
        return DepositResult(result.tx_hash, state, result)

    async def settle_deposit(
        self, payment: PaymentPayload | DepositPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        """`submit_deposit` as the x402 SettleResponse (extra.channelState = after the deposit)."""
        payload = payment.payload if isinstance(payment, PaymentPayload) else payment
        accepted = payment.accepted if isinstance(payment, PaymentPayload) else None
        network = requirements.network
        try:
            await self.check_network(accepted, requirements)
            if not isinstance(payload, DepositPayload):
                raise PaymentError(
                    ErrorCode.PAYLOAD_TYPE, "paymentPayload.payload.type", "must be a deposit"
                )
            done = await self.submit_deposit(payload, requirements)
        except PaymentError as err:
            return SettleResponse(
                False,
                network,
                payer=payload.channel_config.payer,
                error_reason=str(err.code),
                error_message=err.message,
            )
        charged = await self._charged(payload.voucher.channel_id)
        return SettleResponse(
            True,
            network,
            done.tx_hash,
            payload.channel_config.payer,
            payload.deposit.amount,
            ResponseExtra(channel_state=done.channel.snapshot(charged)),
        )

    async def _charged(self, cid: bytes) -> int | None:
        if self.store is None:
            return None
        st = await self.store.get(cid)
        return st.charged if st is not None else None

    # --- refunds -------------------------------------------------------------------------------

    async def refund(
        self,
        payload: RefundPayload,
        requirements: PaymentRequirements,
        accepted: PaymentRequirements | None = None,
    ) -> SettleResponse:
        """A payer's cooperative refund: claim what the ledger charged (same transaction), then
        `refundWithSignature` the rest (or `payload.amount`). Needs the store and the authorizer."""
        network = requirements.network
        config = payload.channel_config
        try:
            if self.authorizer is None or self.store is None:
                raise PaymentError(
                    ErrorCode.REFUND_PAYLOAD,
                    None,
                    "this facilitator has no ledger/authorizer key to refund with",
                )
            await self.check_network(accepted, requirements)
            if bytes(config.receiver_authorizer) != self.authorizer.address_bytes:
                raise PaymentError(
                    ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
                    "payload.channelConfig.receiverAuthorizer",
                    f"is not this gateway's authorizer {self.authorizer.address}",
                )
            onchain = await self._verify_voucher(payload, requirements)
            return await self.refund_from_ledger(
                payload.voucher.channel_id, config, payload.amount, requirements, onchain
            )
        except PaymentError as err:
            return SettleResponse(
                False,
                network,
                payer=config.payer,
                error_reason=str(err.code),
                error_message=err.message,
            )

    async def refund_from_ledger(
        self,
        cid: bytes,
        config: ChannelConfig,
        requested: int | None,
        requirements: PaymentRequirements,
        onchain: OnChainChannel,
    ) -> SettleResponse:
        """Refund one of our channels from our ledger (see `_refund_locked`), mirroring the
        chain before and after; the answer is the spec's refund SettleResponse."""
        assert self.store is not None
        await self.store.apply_fact(cid, onchain.fact(), config=config)
        result = await self._refund_locked(cid, config, requested, requirements)
        after = await self.chain.read_channel(cid, result.block_number)
        st = await self.store.apply_fact(cid, after.fact())  # refundNonce moved: the lock ends
        return SettleResponse(
            True,
            requirements.network,
            result.tx_hash,
            config.payer,
            onchain.balance - after.balance,
            ResponseExtra(channel_state=after.snapshot(st.charged)),
        )

    async def _refund_locked(
        self,
        cid: bytes,
        config: ChannelConfig,
        requested: int | None,
        requirements: PaymentRequirements,
    ) -> TxResult:
        """Decide the refund under the ledger's lock (no voucher is accepted until it lands),
        sign it, and submit claim + refund in one transaction.

        A transaction that surely did not change the chain (it would revert, or reverted)
        releases the lock at once; one whose fate is unknown (a timeout, a lost connection)
        keeps it until a chain fact shows the refund landed or the lock expires, because
        releasing it early is exactly the window in which answers would be served for free.
        """
        assert self.store is not None and self.authorizer is not None
        plan = await self.store.begin_refund(cid, requested, self.clock())
        if isinstance(plan, Rejection):
            raise PaymentError(plan.code, "payload", plan.message)
        settlement = self.chain.settlement_address
        claim_first = None
        if plan.needs_claim:
            rows = [ClaimRow(config, plan.max_claimable, plan.signature, plan.claim_total)]
            batch = claim_batch(rows, requirements.chain_id, settlement)
            claim_first = (batch.rows, sign_claim_batch(self.authorizer, batch))
        signature = self.authorizer.sign_digest(
            refund_digest(requirements.chain_id, settlement, cid, plan.nonce, plan.amount)
        )
        try:
            with tx_errors(ErrorCode.REFUND_SIMULATION_FAILED,
                           ErrorCode.REFUND_TRANSACTION_FAILED, "payload"):
                result = await self.chain.refund_with_signature(
                    config, plan.amount, plan.nonce, signature, claim_first=claim_first
                )
        except PaymentError:  # it would revert, or it reverted: the chain did not move
            await self.store.end_spend(cid, plan.nonce)
            raise
        except BaseException:
            log.warning("refund of 0x%s at nonce %d: outcome unknown; the channel stays locked "
                        "until the chain shows it or the lock expires", cid.hex(), plan.nonce)
            raise
        return result


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def tx_errors(
    simulation: ErrorCode, failed: ErrorCode, field: str, revert: str = "{}"
) -> Iterator[None]:
    """Turn a transaction's failure into the spec's error: ``simulation`` when it would revert
    (``revert`` formats the reason), ``failed`` when it was sent and did not succeed.

        with tx_errors(ErrorCode.CLAIM_SIMULATION_FAILED, ErrorCode.CLAIM_TRANSACTION_FAILED, "p"):
            result = await chain.claim(rows, signature)
    """
    try:
        yield
    except SimulationFailed as exc:  # a TxFailed too: caught first
        raise PaymentError(simulation, field, revert.format(exc.reason)) from None
    except TxFailed as exc:
        raise PaymentError(failed, field, str(exc)) from None

