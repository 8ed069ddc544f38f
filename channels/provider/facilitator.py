"""The gateway as its own x402 facilitator: verify and submit batch-settlement payloads in-process.

In-process (the gateway's payment gate), typed::

    fac = Facilitator(chain, store, authorizer=Signer(key))
    verdict = await fac.verify(payment.payload, requirements)      # VerifyResult (isValid, channel snapshot)
    done = await fac.submit_deposit(payload, requirements)         # DepositResult; ledger gets Deposited
    response = await fac.refund(refund_payload, requirements)      # SettleResponse (claims charged first)

Over HTTP for other x402 servers (see gateway/facilitator_routes.py), JSON in, JSON out::

    await fac.verify_json({"x402Version": 2, "paymentPayload": {...}, "paymentRequirements": {...}})
    await fac.settle_json(body)        # payload types deposit, claim, settle, refund (server-enriched)
    fac.supported(chain_id)            # GET /supported

Errors are the spec's codes (`channels.ErrorCode`) in `invalidReason` / `errorReason`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .chain import (
    ChainClient,
    ClaimRow,
    OnChainChannel,
    SimulationFailed,
    TxFailed,
    TxResult,
    is_transport_error,
)
from ..protocol.eip712 import (
    ZERO_ADDRESS,
    ClaimEntry,
    channel_id,
    checksum_address,
    claim_batch_digest,
    refund_digest,
)
from ..protocol.errors import ErrorCode, PaymentError
from ..protocol.ledger import Rejection
from ..protocol.signing import Signer
from ..protocol.verify import verify_channel_terms, verify_deposit_authorization, verify_voucher
from ..protocol.wire import (
    ChannelConfig,
    ChannelStateSnapshot,
    DepositPayload,
    PaymentPayload,
    PaymentRequirements,
    RefundPayload,
    ResponseExtra,
    SettleResponse,
    Voucher,
    VoucherPayload,
)

__all__ = ["DepositResult", "Facilitator", "VerifyResult"]

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

    # --- helpers ------------------------------------------------------------------------------

    async def _network_check(
        self, accepted: PaymentRequirements | None, requirements: PaymentRequirements
    ) -> None:
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

    async def _read(self, cid: bytes) -> OnChainChannel:
        try:
            return await self.chain.read_channel(cid)
        except Exception as exc:  # noqa: BLE001 - any read failure is the spec's rpc_read_failed
            raise PaymentError(
                ErrorCode.RPC_READ_FAILED, None, f"could not read the channel: {exc}"
            ) from None

    async def _check_voucher(
        self,
        config: ChannelConfig,
        voucher: Voucher,
        requirements: PaymentRequirements,
        field: str = "payload.voucher",
    ) -> bytes:
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
            await self._network_check(accepted, requirements)
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
        cid = await self._check_voucher(payload.channel_config, payload.voucher, requirements)
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
        state = await self._read(cid)
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
        cid = await self._check_voucher(payload.channel_config, payload.voucher, requirements)
        state = await self._read(cid)
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
            await self._network_check(None, requirements)
            await self._verify_deposit(payload, requirements)
        with _tx_errors(ErrorCode.DEPOSIT_SIMULATION_FAILED, ErrorCode.DEPOSIT_TRANSACTION_FAILED,
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
            await self._network_check(accepted, requirements)
            done = await self.submit_deposit(payload, requirements)  # type: ignore[arg-type]
        except PaymentError as err:
            return SettleResponse(
                False,
                network,
                payer=payload.channel_config.payer,  # type: ignore[union-attr]
                error_reason=str(err.code),
                error_message=err.message,
            )
        charged = await self._charged(payload.voucher.channel_id)  # type: ignore[union-attr]
        return SettleResponse(
            True,
            network,
            done.tx_hash,
            payload.channel_config.payer,  # type: ignore[union-attr]
            payload.deposit.amount,  # type: ignore[union-attr]
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
            await self._network_check(accepted, requirements)
            if bytes(config.receiver_authorizer) != self.authorizer.address_bytes:
                raise PaymentError(
                    ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
                    "payload.channelConfig.receiverAuthorizer",
                    f"is not this gateway's authorizer {self.authorizer.address}",
                )
            onchain = await self._verify_voucher(payload, requirements)
            return await self._refund_ours(
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

    async def _refund_ours(
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
            entries = [ClaimEntry(cid, plan.max_claimable, plan.claim_total)]
            claim_first = (
                rows,
                self.authorizer.sign_digest(
                    claim_batch_digest(requirements.chain_id, settlement, entries)
                ),
            )
        signature = self.authorizer.sign_digest(
            refund_digest(requirements.chain_id, settlement, cid, plan.nonce, plan.amount)
        )
        try:
            with _tx_errors(ErrorCode.REFUND_SIMULATION_FAILED,
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

    # --- JSON (the HTTP endpoints) -----------------------------------------------------------

    def supported(self, chain_id: int) -> dict[str, Any]:
        """GET /supported: the kinds we verify/settle and the addresses that sign for us."""
        extra = {"receiverAuthorizer": self.authorizer.address} if self.authorizer else None
        kind: dict[str, Any] = {"x402Version": 2, "scheme": SCHEME, "network": f"eip155:{chain_id}"}
        if extra:
            kind["extra"] = extra
        return {"kinds": [kind], "extensions": [], "signers": {"eip155:*": [self.chain.address]}}

    async def verify_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /verify body -> answer (isValid false with a reason on any bad input)."""
        try:
            payment, requirements = _parse_request(body, client_payload=True)
        except PaymentError as err:
            return VerifyResult.invalid(err).to_json()
        result = await self.verify(payment.payload, requirements, payment.accepted)
        return result.to_json()

    async def settle_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /settle body -> SettleResponse JSON. Payload types: deposit; claim; settle;
        refund (server-enriched: amount, refundNonce, claims, signatures as the x402 reference)."""
        network = _network_of(body)
        try:
            raw = body["paymentPayload"]["payload"]
            kind = raw.get("type") if isinstance(raw, dict) else None
        except (KeyError, TypeError):
            return _fail(
                network,
                PaymentError(ErrorCode.INVALID_PAYLOAD, "paymentPayload.payload", "is missing"),
            )
        try:
            if kind == "deposit":
                payment, requirements = _parse_request(body, client_payload=True)
                return (await self.settle_deposit(payment, requirements)).to_json()
            requirements = _parse_requirements(body)
            await self._network_check(None, requirements)
            if kind == "claim":
                return (await self._settle_claims(raw, requirements)).to_json()
            if kind == "settle":
                return (await self._settle_sweep(raw, requirements)).to_json()
            if kind == "refund" and ("refundNonce" in raw or "claims" in raw):
                return (await self._settle_enriched_refund(raw, requirements)).to_json()
            if kind == "refund":
                payment, requirements = _parse_request(body, client_payload=True)
                return (
                    await self.refund(payment.payload, requirements, payment.accepted)
                ).to_json()  # type: ignore[arg-type]
            raise PaymentError(
                ErrorCode.UNKNOWN_SETTLE_ACTION,
                "paymentPayload.payload.type",
                f"{kind!r}: settle takes deposit, claim, settle or refund",
            )
        except PaymentError as err:
            return _fail(network, err)
        except Exception as exc:  # an outage or a bug: answer in the spec's shape, not a 500
            if not is_transport_error(exc):
                log.exception("settle failed")
            return _fail(
                network,
                PaymentError(ErrorCode.RPC_READ_FAILED, None, f"{type(exc).__name__}: {exc}"),
            )

    async def _settle_claims(
        self, raw: dict[str, Any], requirements: PaymentRequirements
    ) -> SettleResponse:
        claims = [
            _voucher_claim(c, f"paymentPayload.payload.claims[{i}]")
            for i, c in enumerate(raw.get("claims") or [])
        ]
        if not claims:
            raise PaymentError(ErrorCode.CLAIM_PAYLOAD, "paymentPayload.payload.claims", "is empty")
        sig = await self._claim_signature(raw.get("claimAuthorizerSignature"), claims, requirements)
        with _tx_errors(ErrorCode.CLAIM_SIMULATION_FAILED, ErrorCode.CLAIM_TRANSACTION_FAILED,
                        "paymentPayload.payload"):
            result = await self.chain.claim(claims, sig)
        from web3.logs import DISCARD

        claimed = sum(
            int(e["args"]["claimAmount"])
            for e in self.chain.settlement.events.Claimed().process_receipt(
                result.receipt, errors=DISCARD
            )
        )
        return SettleResponse(True, requirements.network, result.tx_hash, amount=claimed)

    async def _claim_signature(
        self, given: Any, claims: list[ClaimRow], requirements: PaymentRequirements
    ) -> bytes:
        if given:
            return bytes.fromhex(str(given).removeprefix("0x"))
        authorizers = {bytes(c.config.receiver_authorizer) for c in claims}
        if self.authorizer is None or authorizers != {self.authorizer.address_bytes}:
            raise PaymentError(
                ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
                "paymentPayload.payload.claimAuthorizerSignature",
                "missing, and the claims' receiverAuthorizer is not this facilitator's key",
            )
        entries = [
            ClaimEntry(
                channel_id(c.config, requirements.chain_id, self.chain.settlement_address),
                c.max_claimable,
                c.total_claimed,
            )
            for c in claims
        ]
        return self.authorizer.sign_digest(
            claim_batch_digest(requirements.chain_id, self.chain.settlement_address, entries)
        )

    async def _settle_sweep(
        self, raw: dict[str, Any], requirements: PaymentRequirements
    ) -> SettleResponse:
        try:
            receiver = checksum_address(raw["receiver"])
            token = checksum_address(raw["token"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PaymentError(
                ErrorCode.SETTLE_PAYLOAD,
                "paymentPayload.payload",
                "needs receiver and token addresses",
            ) from None
        claimed, settled = await self.chain.receiver_totals(receiver, token)
        if claimed <= settled:
            raise PaymentError(
                ErrorCode.NOTHING_TO_SETTLE,
                "paymentPayload.payload.receiver",
                "nothing claimed is waiting to be settled",
            )
        with _tx_errors(ErrorCode.SETTLE_SIMULATION_FAILED, ErrorCode.SETTLE_TRANSACTION_FAILED,
                        "paymentPayload.payload"):
            result = await self.chain.settle(receiver, token)
        return SettleResponse(True, requirements.network, result.tx_hash, amount=claimed - settled)

    async def _settle_enriched_refund(
        self, raw: dict[str, Any], requirements: PaymentRequirements
    ) -> SettleResponse:
        from ..protocol.wire import ChannelConfig as _CC

        path = "paymentPayload.payload"
        try:
            config = _CC.from_json(
                raw["channelConfig"], path + ".channelConfig", ErrorCode.REFUND_PAYLOAD
            )
            amount = int(raw["amount"])
            nonce = int(raw["refundNonce"])
        except PaymentError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PaymentError(
                ErrorCode.REFUND_PAYLOAD, path, "needs channelConfig, amount and refundNonce"
            ) from None
        if amount <= 0:
            raise PaymentError(
                ErrorCode.REFUND_AMOUNT_INVALID, path + ".amount", "must be positive"
            )
        cid = channel_id(config, requirements.chain_id, self.chain.settlement_address)
        given = raw.get("refundAuthorizerSignature")
        ours = (
            self.authorizer is not None
            and bytes(config.receiver_authorizer) == self.authorizer.address_bytes
        )
        if not given and ours and self.store is not None:
            # Our key would sign: only against our ledger (every charge claimed first, the
            # channel locked), never for an amount a caller names over charges not yet claimed.
            return await self._refund_ours(cid, config, amount, requirements, await self._read(cid))
        claims = [
            _voucher_claim(c, f"{path}.claims[{i}]") for i, c in enumerate(raw.get("claims") or [])
        ]
        claim_first = (
            (
                claims,
                await self._claim_signature(
                    raw.get("claimAuthorizerSignature"), claims, requirements
                ),
            )
            if claims
            else None
        )
        if given:
            signature = bytes.fromhex(str(given).removeprefix("0x"))
        elif ours:
            signature = self.authorizer.sign_digest(
                refund_digest(
                    requirements.chain_id, self.chain.settlement_address, cid, nonce, amount
                )
            )
        else:
            raise PaymentError(
                ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
                path + ".refundAuthorizerSignature",
                "missing, and the channel's receiverAuthorizer is not this facilitator's key",
            )
        before = await self._read(cid)
        with _tx_errors(ErrorCode.REFUND_SIMULATION_FAILED, ErrorCode.REFUND_TRANSACTION_FAILED, path):
            result = await self.chain.refund_with_signature(
                config, amount, nonce, signature, claim_first=claim_first
            )
        after = await self.chain.read_channel(cid, result.block_number)
        if self.store is not None and await self.store.get(cid) is not None:
            await self.store.apply_fact(cid, after.fact())
        return SettleResponse(
            True,
            requirements.network,
            result.tx_hash,
            config.payer,
            before.balance - after.balance,
            ResponseExtra(channel_state=after.snapshot()),
        )


# --------------------------------------------------------------------------- parsing


def _network_of(body: Any) -> str:
    try:
        return str(body["paymentRequirements"]["network"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return ""


@contextlib.contextmanager
def _tx_errors(
    simulation: ErrorCode, failed: ErrorCode, field: str, revert: str = "{}"
) -> Iterator[None]:
    """Turn a transaction's failure into the spec's error: ``simulation`` when it would revert
    (``revert`` formats the reason), ``failed`` when it was sent and did not succeed."""
    try:
        yield
    except SimulationFailed as exc:  # a TxFailed too: caught first
        raise PaymentError(simulation, field, revert.format(exc.reason)) from None
    except TxFailed as exc:
        raise PaymentError(failed, field, str(exc)) from None


def _fail(network: str, err: PaymentError) -> dict[str, Any]:
    return SettleResponse(
        False, network, error_reason=str(err.code), error_message=err.message
    ).to_json()


def _parse_requirements(body: Any) -> PaymentRequirements:
    if not isinstance(body, dict):
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, None, "the body must be a JSON object")
    if body.get("x402Version", 2) != 2:
        raise PaymentError(ErrorCode.INVALID_X402_VERSION, "x402Version", "must be 2")
    if "paymentRequirements" not in body:
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, "paymentRequirements", "is missing")
    return PaymentRequirements.from_json(
        body["paymentRequirements"], "paymentRequirements", ErrorCode.INVALID_PAYLOAD
    )


def _parse_request(
    body: Any, *, client_payload: bool
) -> tuple[PaymentPayload, PaymentRequirements]:
    requirements = _parse_requirements(body)
    if "paymentPayload" not in body:
        raise PaymentError(ErrorCode.INVALID_PAYLOAD, "paymentPayload", "is missing")
    return PaymentPayload.from_json(body["paymentPayload"]), requirements


def _voucher_claim(data: Any, path: str) -> ClaimRow:
    code = ErrorCode.CLAIM_PAYLOAD
    try:
        voucher = data["voucher"]
        config = ChannelConfig.from_json(voucher["channel"], path + ".voucher.channel", code)
        return ClaimRow(
            config,
            int(voucher["maxClaimableAmount"]),
            bytes.fromhex(str(data["signature"]).removeprefix("0x")),
            int(data["totalClaimed"]),
        )
    except PaymentError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PaymentError(
            code, path, "needs voucher.channel, voucher.maxClaimableAmount, signature, totalClaimed"
        ) from None
