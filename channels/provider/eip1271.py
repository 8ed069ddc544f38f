"""The slow path: vouchers of channels whose payerAuthorizer is zero (smart-wallet payers).

Mirrors OpenZeppelin's `SignatureChecker.isValidSignatureNow`, which the contract applies at
claim time: a payer without code is checked by ECDSA recovery, a payer with code by an
`isValidSignature(bytes32,bytes)` eth_call that must return the EIP-1271 magic value.
Kept apart from `channels.protocol.verify` because it needs the network:

    >>> await verify_voucher_eip1271(w3, payload.channel_config, payload.voucher, 8453, settlement)
"""

from __future__ import annotations

from typing import Any

from web3.exceptions import ContractLogicError

try:  # the embedded chain reports a revert in its own type; nodes report ContractLogicError
    from eth_tester.exceptions import TransactionFailed

    _REVERTED: tuple[type[Exception], ...] = (ContractLogicError, TransactionFailed)
except ImportError:  # pragma: no cover
    _REVERTED = (ContractLogicError,)

from channels.protocol import (
    ChannelConfig,
    ErrorCode,
    PaymentError,
    Voucher,
    channel_id,
    checksum_address,
    keccak256,
    recover_address,
    voucher_digest,
)

__all__ = ["EIP1271_MAGIC", "is_valid_signature", "verify_voucher_eip1271"]

EIP1271_MAGIC = keccak256(b"isValidSignature(bytes32,bytes)")[:4]  # 0x1626ba7e
_MAGIC_WORD = EIP1271_MAGIC + bytes(28)  # abi-decoded as bytes32, as OpenZeppelin compares it


def _calldata(digest: bytes, signature: bytes) -> bytes:
    padding = bytes(-len(signature) % 32)
    return (
        EIP1271_MAGIC
        + digest
        + (64).to_bytes(32, "big")
        + len(signature).to_bytes(32, "big")
        + signature
        + padding
    )


async def is_valid_signature(
    w3: Any, account: str | bytes, digest: bytes, signature: bytes, *, block: str = "latest"
) -> bool:
    """Whether `account` accepts `signature` over `digest` (ECDSA for EOAs, EIP-1271 otherwise).

    Raises PaymentError(RPC_READ_FAILED) when the node cannot be asked.

        >>> await is_valid_signature(w3, payer, digest, sig)
        True
    """
    address = checksum_address(account)
    try:
        code = await w3.eth.get_code(address, block)
    except Exception as exc:  # transport or node failure: not a verdict on the signature
        raise PaymentError(
            ErrorCode.RPC_READ_FAILED, "payload.channelConfig.payer", str(exc)
        ) from exc
    if not code:
        try:
            return recover_address(digest, signature) == bytes.fromhex(address[2:])
        except PaymentError:
            return False
    try:
        result = await w3.eth.call({"to": address, "data": _calldata(digest, signature)}, block)
    except _REVERTED:  # the wallet reverted: it does not accept the signature
        return False
    except Exception as exc:
        raise PaymentError(
            ErrorCode.RPC_READ_FAILED, "payload.channelConfig.payer", str(exc)
        ) from exc
    return bytes(result[:32]) == _MAGIC_WORD


async def verify_voucher_eip1271(
    w3: Any, config: ChannelConfig, voucher: Voucher, chain_id: int, contract: str | bytes
) -> None:
    """`channels.verify_voucher` for payerAuthorizer == 0: the payer itself must accept it.

    Raises PaymentError CHANNEL_ID_MISMATCH, VOUCHER_SIGNATURE or RPC_READ_FAILED.
    """
    if voucher.channel_id != channel_id(config, chain_id, contract):
        raise PaymentError(
            ErrorCode.CHANNEL_ID_MISMATCH,
            "payload.voucher.channelId",
            "is not the EIP-712 hash of channelConfig on this chain and contract",
        )
    digest = voucher_digest(chain_id, contract, voucher.channel_id, voucher.max_claimable_amount)
    if not await is_valid_signature(w3, config.payer, digest, voucher.signature):
        raise PaymentError(
            ErrorCode.VOUCHER_SIGNATURE,
            "payload.voucher.signature",
            f"the payer {checksum_address(config.payer)} does not accept it (EIP-1271/ECDSA)",
        )
