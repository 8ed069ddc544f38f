"""The x402 facilitator's HTTP JSON side: POST /verify, POST /settle and GET /supported
bodies in, answers out, over an in-process `Facilitator` (see gateway/facilitator_routes.py)::

    await verify_json(fac, {"x402Version": 2, "paymentPayload": {...}, "paymentRequirements": {...}})
    await settle_json(fac, body)      # payload types deposit, claim, settle, refund (server-enriched)
    supported_json(fac, chain_id)     # GET /supported

Errors are the spec's codes (`channels.protocol.ErrorCode`) in `invalidReason` / `errorReason`;
every answer is in the spec's shape, an outage included (never an exception).
"""

from __future__ import annotations

import logging
from typing import Any

from web3.logs import DISCARD

from channels.protocol import (
    ChannelConfig,
    ClaimRow,
    ErrorCode,
    PaymentError,
    PaymentPayload,
    PaymentRequirements,
    RefundPayload,
    ResponseExtra,
    SettleResponse,
    Voucher,
    channel_id,
    checksum_address,
    claim_batch,
    refund_digest,
    sign_claim_batch,
)

from .facilitator import SCHEME, Facilitator, VerifyResult, tx_errors
from .tx_outcomes import is_transport_error

__all__ = ["settle_json", "supported_json", "verify_json"]

log = logging.getLogger("paychan.facilitator")


def supported_json(fac: Facilitator, chain_id: int) -> dict[str, Any]:
    """GET /supported: the kinds we verify/settle and the addresses that sign for us.

        supported_json(fac, await fac.chain.chain_id())   # {"kinds": [...], "signers": {...}}
    """
    extra = {"receiverAuthorizer": fac.authorizer.address} if fac.authorizer else None
    kind: dict[str, Any] = {"x402Version": 2, "scheme": SCHEME, "network": f"eip155:{chain_id}"}
    if extra:
        kind["extra"] = extra
    return {"kinds": [kind], "extensions": [], "signers": {"eip155:*": [fac.chain.address]}}


async def verify_json(fac: Facilitator, body: dict[str, Any]) -> dict[str, Any]:
    """POST /verify body -> answer (isValid false with a reason on any bad input).

        answer = await verify_json(fac, body)      # {"isValid": True, "payer": ..., "extra": ...}
    """
    try:
        payment, requirements = _parse_request(body, client_payload=True)
    except PaymentError as err:
        return VerifyResult.invalid(err).to_json()
    result = await fac.verify(payment.payload, requirements, payment.accepted)
    return result.to_json()


async def settle_json(fac: Facilitator, body: dict[str, Any]) -> dict[str, Any]:
    """POST /settle body -> SettleResponse JSON. Payload types: deposit; claim; settle;
    refund (server-enriched: amount, refundNonce, claims, signatures as the x402 reference).

        answer = await settle_json(fac, body)      # {"success": True, "transaction": ...}
    """
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
            return (await fac.settle_deposit(payment, requirements)).to_json()
        requirements = _parse_requirements(body)
        await fac.check_network(None, requirements)
        if kind == "claim":
            return (await _settle_claims(fac, raw, requirements)).to_json()
        if kind == "settle":
            return (await _settle_sweep(fac, raw, requirements)).to_json()
        if kind == "refund" and ("refundNonce" in raw or "claims" in raw):
            return (await _settle_enriched_refund(fac, raw, requirements)).to_json()
        if kind == "refund":
            payment, requirements = _parse_request(body, client_payload=True)
            if not isinstance(payment.payload, RefundPayload):  # the type said refund
                raise PaymentError(
                    ErrorCode.PAYLOAD_TYPE, "paymentPayload.payload.type", "must be a refund"
                )
            return (await fac.refund(payment.payload, requirements, payment.accepted)).to_json()
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
    fac: Facilitator, raw: dict[str, Any], requirements: PaymentRequirements
) -> SettleResponse:
    claims = [
        _voucher_claim(c, f"paymentPayload.payload.claims[{i}]")
        for i, c in enumerate(raw.get("claims") or [])
    ]
    if not claims:
        raise PaymentError(ErrorCode.CLAIM_PAYLOAD, "paymentPayload.payload.claims", "is empty")
    sig = await _claim_signature(fac, raw.get("claimAuthorizerSignature"), claims, requirements)
    with tx_errors(ErrorCode.CLAIM_SIMULATION_FAILED, ErrorCode.CLAIM_TRANSACTION_FAILED,
                   "paymentPayload.payload"):
        result = await fac.chain.claim(claims, sig)
    claimed = sum(
        int(e["args"]["claimAmount"])
        for e in fac.chain.settlement.events.Claimed().process_receipt(
            result.receipt, errors=DISCARD
        )
    )
    return SettleResponse(True, requirements.network, result.tx_hash, amount=claimed)


async def _claim_signature(
    fac: Facilitator, given: Any, claims: list[ClaimRow], requirements: PaymentRequirements
) -> bytes:
    if given:
        return bytes.fromhex(str(given).removeprefix("0x"))
    authorizers = {bytes(c.config.receiver_authorizer) for c in claims}
    if fac.authorizer is None or authorizers != {fac.authorizer.address_bytes}:
        raise PaymentError(
            ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
            "paymentPayload.payload.claimAuthorizerSignature",
            "missing, and the claims' receiverAuthorizer is not this facilitator's key",
        )
    return sign_claim_batch(
        fac.authorizer, claim_batch(claims, requirements.chain_id, fac.chain.settlement_address)
    )


async def _settle_sweep(
    fac: Facilitator, raw: dict[str, Any], requirements: PaymentRequirements
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
    claimed, settled = await fac.chain.receiver_totals(receiver, token)
    if claimed <= settled:
        raise PaymentError(
            ErrorCode.NOTHING_TO_SETTLE,
            "paymentPayload.payload.receiver",
            "nothing claimed is waiting to be settled",
        )
    with tx_errors(ErrorCode.SETTLE_SIMULATION_FAILED, ErrorCode.SETTLE_TRANSACTION_FAILED,
                   "paymentPayload.payload"):
        result = await fac.chain.settle(receiver, token)
    return SettleResponse(True, requirements.network, result.tx_hash, amount=claimed - settled)


async def _settle_enriched_refund(
    fac: Facilitator, raw: dict[str, Any], requirements: PaymentRequirements
) -> SettleResponse:
    path = "paymentPayload.payload"
    try:
        config = ChannelConfig.from_json(
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
    cid = channel_id(config, requirements.chain_id, fac.chain.settlement_address)
    given = raw.get("refundAuthorizerSignature")
    ours = (
        fac.authorizer is not None
        and bytes(config.receiver_authorizer) == fac.authorizer.address_bytes
    )
    if not given and ours and fac.store is not None:
        # Our key would sign: only when the payer asked (its zero-charge voucher, which the
        # spec's refund payload carries, signed by it; else anyone could close anyone's
        # channel on our gas), and only against our ledger (every charge claimed first, the
        # channel locked), never for an amount a caller names over charges not yet claimed.
        voucher = Voucher.from_json(raw.get("voucher"), path + ".voucher", ErrorCode.REFUND_PAYLOAD)
        if voucher.channel_id != cid:
            raise PaymentError(ErrorCode.CHANNEL_ID_MISMATCH, path + ".voucher.channelId",
                               "is not the id of channelConfig: sign the refund voucher for it")
        await fac.check_voucher(config, voucher, requirements, path + ".voucher")
        onchain = await fac.read_onchain(cid)
        return await fac.refund_from_ledger(cid, config, amount, requirements, onchain)
    claims = [
        _voucher_claim(c, f"{path}.claims[{i}]") for i, c in enumerate(raw.get("claims") or [])
    ]
    claim_first = (
        (
            claims,
            await _claim_signature(
                fac, raw.get("claimAuthorizerSignature"), claims, requirements
            ),
        )
        if claims
        else None
    )
    if given:
        signature = bytes.fromhex(str(given).removeprefix("0x"))
    elif ours and fac.authorizer is not None:
        signature = fac.authorizer.sign_digest(
            refund_digest(
                requirements.chain_id, fac.chain.settlement_address, cid, nonce, amount
            )
        )
    else:
        raise PaymentError(
            ErrorCode.AUTHORIZER_ADDRESS_MISMATCH,
            path + ".refundAuthorizerSignature",
            "missing, and the channel's receiverAuthorizer is not this facilitator's key",
        )
    before = await fac.read_onchain(cid)
    with tx_errors(ErrorCode.REFUND_SIMULATION_FAILED, ErrorCode.REFUND_TRANSACTION_FAILED, path):
        result = await fac.chain.refund_with_signature(
            config, amount, nonce, signature, claim_first=claim_first
        )
    after = await fac.chain.read_channel(cid, result.block_number)
    if fac.store is not None and await fac.store.get(cid) is not None:
        await fac.store.apply_fact(cid, after.fact())
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
