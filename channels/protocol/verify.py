"""Fast ECDSA verification of vouchers, deposit authorizations and receipts (no network).

The hot path is `verify_voucher`: channel id binding (cached), the voucher digest (cached
domain separator), one libsecp256k1 recovery through coincurve, and a 20-byte compare:

    >>> verify_voucher(payment.payload.channel_config, payment.payload.voucher, 8453, settlement)
    >>> recover_signer(digest, signature)
    '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266'

Signatures must be 65 bytes r‖s‖v with v in {27, 28} and low s (as OpenZeppelin's ECDSA and
the contract require). Channels whose payerAuthorizer is zero need the EIP-1271 slow path in
`channels.provider.eip1271`.
"""

from __future__ import annotations

from typing import Any

from coincurve import PublicKey

from .eip712 import (
    ZERO_ADDRESS,
    channel_id,
    checksum_address,
    erc3009_deposit_nonce,
    keccak256,
    receipt_digest,
    receive_with_authorization_digest,
    to_address,
    voucher_digest,
)
from .errors import ErrorCode, PaymentError
from .offers import PaymentRequirements
from .payloads import ChannelConfig, DepositPayload, Voucher
from .responses import SignedReceipt

__all__ = [
    "recover_address",
    "recover_signer",
    "signed_by",
    "verify_channel_terms",
    "verify_deposit_authorization",
    "verify_receipt",
    "verify_voucher",
]

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Big-endian, equal length: comparing the bytes compares the numbers.
_HALF_N = (_N // 2).to_bytes(32, "big")
_ZERO32 = bytes(32)
_RECID = {27: 0, 28: 1}

# libsecp256k1 through coincurve's own cffi binding: the recovery without coincurve's Python
# wrapper objects, and a recovered point's 64 bytes read without serializing it.
from coincurve._libsecp256k1 import ffi as _ffi, lib as _lib  # noqa: E402
from coincurve.context import GLOBAL_CONTEXT as _CONTEXT  # noqa: E402

_CTX = _CONTEXT.ctx

# payerAuthorizer (20 bytes) -> its public point as libsecp256k1 holds it (64 bytes). Equal
# internal bytes mean the same point within this process, so a voucher from a known
# authorizer needs no serialization and no keccak (about 5 µs of the hot path).
_KNOWN_POINTS: dict[bytes, bytes] = {}
_KNOWN_POINTS_LIMIT = 65_536


def _recover_point(digest: bytes, signature: bytes, code: ErrorCode, field: str | None) -> Any:
    """The public point (a ``secp256k1_pubkey *``) that signed ``digest``; PaymentError(code,
    field) for a malformed or non-canonical signature."""
    if len(signature) != 65:
        raise PaymentError(code, field, f"must be 65 bytes r||s||v, got {len(signature)}")
    recid = _RECID.get(signature[64])
    if recid is None:
        raise PaymentError(code, field, f"v must be 27 or 28, got {signature[64]}")
    s = signature[32:64]
    if s > _HALF_N:
        raise PaymentError(code, field, "s is in the upper half of the curve order (malleable)")
    if s == _ZERO32 or signature[:32] == _ZERO32:
        raise PaymentError(code, field, "r and s must be non-zero")
    if len(digest) != 32:
        raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
    parsed = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
    point = _ffi.new("secp256k1_pubkey *")
    if not (
        _lib.secp256k1_ecdsa_recoverable_signature_parse_compact(_CTX, parsed, signature, recid)
        and _lib.secp256k1_ecdsa_recover(_CTX, point, parsed, digest)
    ):  # r >= n, or no curve point for r: nothing recovers
        raise PaymentError(code, field, "does not recover to any public key")
    return point


def _address_of(point: Any) -> bytes:
    return keccak256(PublicKey(point).format(compressed=False)[1:])[12:]


def recover_address(
    digest: bytes,
    signature: bytes,
    *,
    code: ErrorCode = ErrorCode.VOUCHER_SIGNATURE,
    field: str | None = "signature",
) -> bytes:
    """The 20-byte address that signed `digest`; PaymentError(code, field) when malformed.

    >>> recover_address(digest, sig65) == signer.address_bytes
    True
    """
    return _address_of(_recover_point(digest, signature, code, field))


def signed_by(digest: bytes, signature: bytes, expected: bytes, field: str) -> bytes | None:
    """None when `expected` (20 bytes) signed `digest`; else the 20-byte address that did.

    Raises PaymentError(VOUCHER_SIGNATURE, field) for a malformed signature. A signer seen
    before is recognised by its public point, without serializing it or hashing it::

        >>> signed_by(digest, sig65, config.payer_authorizer, "payload.voucher.signature")
        None
    """
    recovered = _recover_point(digest, signature, ErrorCode.VOUCHER_SIGNATURE, field)
    point = _ffi.buffer(recovered, 64)[:]
    if _KNOWN_POINTS.get(expected) == point:
        return None
    signer = _address_of(recovered)
    if signer != expected:
        return signer
    if len(_KNOWN_POINTS) >= _KNOWN_POINTS_LIMIT:
        _KNOWN_POINTS.clear()
    _KNOWN_POINTS[expected] = point
    return None


def recover_signer(digest: bytes, signature: bytes | str) -> str:
    """The checksum address that signed a 32-byte digest (65-byte r||s||v, low s).

    >>> recover_signer(voucher_digest(8453, settlement, cid, 1000), sig)
    '0x70997970C51812dc3A010C7d01b50e0d17dc79C8'
    """
    if isinstance(signature, str):
        signature = bytes.fromhex(signature.removeprefix("0x"))
    if len(digest) != 32:
        raise ValueError(f"digest must be 32 bytes, got {len(digest)}")
    return checksum_address(recover_address(digest, signature))


def verify_voucher(
    config: ChannelConfig,
    voucher: Voucher,
    chain_id: int,
    contract: str | bytes,
    *,
    field: str = "payload.voucher",
) -> None:
    """Check that the voucher belongs to `config` and is signed by its payerAuthorizer.

    Raises PaymentError: CHANNEL_ID_MISMATCH, or VOUCHER_SIGNATURE (also when payerAuthorizer
    is zero: those channels go through `channels.provider.eip1271.verify_voucher_eip1271`).

        >>> verify_voucher(p.channel_config, p.voucher, 31337, settlement)
    """
    if voucher.channel_id != channel_id(config, chain_id, contract):
        raise PaymentError(
            ErrorCode.CHANNEL_ID_MISMATCH,
            field + ".channelId",
            "is not the EIP-712 hash of channelConfig on this chain and contract",
        )
    authorizer = config.payer_authorizer
    if authorizer == ZERO_ADDRESS:
        raise PaymentError(
            ErrorCode.VOUCHER_SIGNATURE,
            "payload.channelConfig.payerAuthorizer",
            "is zero: verify with channels.provider.eip1271.verify_voucher_eip1271 (smart-wallet path)",
        )
    digest = voucher_digest(chain_id, contract, voucher.channel_id, voucher.max_claimable_amount)
    signer = signed_by(digest, voucher.signature, authorizer, field + ".signature")
    if signer is not None:
        raise PaymentError(
            ErrorCode.VOUCHER_SIGNATURE,
            field + ".signature",
            f"signed by {checksum_address(signer)}, not payerAuthorizer "
            f"{checksum_address(authorizer)}",
        )


def verify_channel_terms(config: ChannelConfig, offer: PaymentRequirements) -> None:
    """The spec's rules 2-5: the channel pays this server, in its token, on its terms.

    Raises PaymentError TOKEN_MISMATCH, RECEIVER_MISMATCH, RECEIVER_AUTHORIZER_MISMATCH or
    WITHDRAW_DELAY_MISMATCH.

        >>> verify_channel_terms(payment.payload.channel_config, my_offer)
    """
    path = "payload.channelConfig."
    if config.token != offer.asset:
        raise PaymentError(ErrorCode.TOKEN_MISMATCH, path + "token", "is not the asset offered")
    if config.receiver != offer.pay_to:
        raise PaymentError(ErrorCode.RECEIVER_MISMATCH, path + "receiver", "is not payTo")
    if config.receiver_authorizer != offer.extra.receiver_authorizer:
        raise PaymentError(
            ErrorCode.RECEIVER_AUTHORIZER_MISMATCH,
            path + "receiverAuthorizer",
            "is not extra.receiverAuthorizer",
        )
    if config.withdraw_delay != offer.extra.withdraw_delay:
        raise PaymentError(
            ErrorCode.WITHDRAW_DELAY_MISMATCH,
            path + "withdrawDelay",
            f"must be {offer.extra.withdraw_delay} (extra.withdrawDelay)",
        )


def verify_deposit_authorization(
    payload: DepositPayload,
    requirements: PaymentRequirements,
    collector: str | bytes,
    contract: str | bytes,
    *,
    now: int,
) -> None:
    """Check the ERC-3009 `receiveWithAuthorization` of a deposit before submitting it.

    The signer must be the payer (EOA); `to` is the deposit collector; the nonce binds the
    channel id and the authorization salt exactly as the collector rebuilds it.

        >>> verify_deposit_authorization(p, reqs, collector, settlement, now=int(time.time()))
    """
    auth = payload.deposit.authorization
    field = "payload.deposit.authorization.erc3009Authorization"
    if auth.valid_after > now:
        raise PaymentError(
            ErrorCode.VALID_AFTER_IN_FUTURE, field + ".validAfter", "is in the future"
        )
    if auth.valid_before <= now:
        raise PaymentError(ErrorCode.VALID_BEFORE_EXPIRED, field + ".validBefore", "has passed")
    chain_id = requirements.chain_id
    cid = channel_id(payload.channel_config, chain_id, contract)
    digest = receive_with_authorization_digest(
        chain_id,
        payload.channel_config.token,
        requirements.extra.name,
        requirements.extra.version,
        from_=payload.channel_config.payer,
        to=collector,
        value=payload.deposit.amount,
        valid_after=auth.valid_after,
        valid_before=auth.valid_before,
        nonce=erc3009_deposit_nonce(cid, auth.salt),
    )
    code = ErrorCode.RECEIVE_AUTHORIZATION_SIGNATURE
    signer = recover_address(digest, auth.signature, code=code, field=field + ".signature")
    if signer != payload.channel_config.payer:
        raise PaymentError(
            code,
            field + ".signature",
            f"signed by {checksum_address(signer)}, not the payer "
            f"{checksum_address(payload.channel_config.payer)}",
        )


def verify_receipt(
    receipt: SignedReceipt, chain_id: int, contract: str | bytes, signer: str | bytes
) -> None:
    """Check a gateway receipt was signed by `signer` (the receiver authorizer): the
    signature over the root its Merkle proof leads to (see `channels.protocol.eip712.receipt_digest`).

    >>> verify_receipt(response.extra.receipt, 31337, settlement, reqs.extra.receiver_authorizer)
    """
    digest = receipt_digest(chain_id, contract, receipt.receipt, receipt.proof)
    code = ErrorCode.INVALID_PAYLOAD
    got = recover_address(digest, receipt.signature, code=code, field="extra.receipt.signature")
    if got != to_address(signer):
        raise PaymentError(
            code,
            "extra.receipt.signature",
            f"signed by {checksum_address(got)}, not the receiver authorizer "
            f"{checksum_address(signer)}",
        )
