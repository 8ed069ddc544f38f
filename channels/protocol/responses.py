"""What a server answers: `PAYMENT-RESPONSE` (`SettleResponse`), its `extra` and our signed
receipt (`Receipt`, `SignedReceipt`)::

    >>> response = SettleResponse(True, "eip155:8453", payer=payer, amount=None,
    ...                           extra=ResponseExtra(charged_amount=1_000, channel_state=snap))
    >>> SettleResponse.from_json(response.to_json()) == response
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._fields import U256, address, fail, hex_bytes, hx, json_object, member, string, uint
from .eip712 import checksum_address
from .errors import ErrorCode
from .snapshots import ChannelStateSnapshot, VoucherStateSnapshot

__all__ = ["Receipt", "ResponseExtra", "SettleResponse", "SignedReceipt"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Our signed receipt body (EIP-712 `Receipt`, see `channels.protocol.eip712.receipt_digest`)."""

    channel_id: bytes
    request_digest: bytes
    result_digest: bytes
    model_version: bytes
    charged_amount: int
    cumulative_charged: int


_MAX_PROOF = 32  # a proof of 32 levels covers 2**32 receipts per signature: plenty


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """`extra.receipt`: a Receipt, the Merkle `proof` (bottom-up siblings, 32 bytes each)
    from its leaf to the root of its batch, and the receiver authorizer's 65-byte signature
    over that root (`channels.protocol.eip712.receipt_digest`). A batch of one has an empty proof."""

    receipt: Receipt
    signature: bytes
    proof: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "channelId": hx(r.channel_id),
            "requestDigest": hx(r.request_digest),
            "resultDigest": hx(r.result_digest),
            "modelVersion": hx(r.model_version),
            "chargedAmount": str(r.charged_amount),
            "cumulativeCharged": str(r.cumulative_charged),
            "proof": [hx(p) for p in self.proof],
            "signature": hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> SignedReceipt:
        d = json_object(data, path, code)

        def b32(key: str) -> bytes:
            return hex_bytes(member(d, key, path, code), f"{path}.{key}", code, 32)

        receipt = Receipt(
            b32("channelId"),
            b32("requestDigest"),
            b32("resultDigest"),
            b32("modelVersion"),
            uint(member(d, "chargedAmount", path, code), path + ".chargedAmount", code),
            uint(member(d, "cumulativeCharged", path, code), path + ".cumulativeCharged", code),
        )
        raw_proof = d.get("proof", [])
        if type(raw_proof) is not list or len(raw_proof) > _MAX_PROOF:
            raise fail(code, path + ".proof", f"must be a list of at most {_MAX_PROOF} 32-byte hex strings")
        proof = tuple(hex_bytes(p, f"{path}.proof[{i}]", code, 32) for i, p in enumerate(raw_proof))
        return cls(receipt, hex_bytes(member(d, "signature", path, code), path + ".signature", code, 65), proof)


@dataclass(frozen=True, slots=True)
class ResponseExtra:
    """`PAYMENT-RESPONSE` `extra`: the charge, the channel snapshot and our receipt."""

    charged_amount: int | None = None
    channel_state: ChannelStateSnapshot | None = None
    voucher_state: VoucherStateSnapshot | None = None
    receipt: SignedReceipt | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.charged_amount is not None:
            out["chargedAmount"] = str(self.charged_amount)
        if self.channel_state is not None:
            out["channelState"] = self.channel_state.to_json()
        if self.voucher_state is not None:
            out["voucherState"] = self.voucher_state.to_json()
        if self.receipt is not None:
            out["receipt"] = self.receipt.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> ResponseExtra:
        d = json_object(data, path, code)
        ca, cs, vs, rc = (
            d.get(k) for k in ("chargedAmount", "channelState", "voucherState", "receipt")
        )
        return cls(
            None if ca is None else uint(ca, path + ".chargedAmount", code),
            None
            if cs is None
            else ChannelStateSnapshot.from_json(cs, path + ".channelState", code),
            None
            if vs is None
            else VoucherStateSnapshot.from_json(vs, path + ".voucherState", code),
            None if rc is None else SignedReceipt.from_json(rc, path + ".receipt", code),
        )


@dataclass(frozen=True, slots=True)
class SettleResponse:
    """Header `PAYMENT-RESPONSE`. `amount` None is the spec's "" (no on-chain transfer)."""

    success: bool
    network: str
    transaction: str = ""
    payer: bytes | None = None
    amount: int | None = None
    extra: ResponseExtra | None = None
    error_reason: str | None = None
    error_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": self.success,
            "transaction": self.transaction,
            "network": self.network,
        }
        if self.payer is not None:
            out["payer"] = checksum_address(self.payer)
        out["amount"] = "" if self.amount is None else str(self.amount)
        if self.extra is not None:
            out["extra"] = self.extra.to_json()
        if self.error_reason is not None:
            out["errorReason"] = str(self.error_reason)
        if self.error_message is not None:
            out["errorMessage"] = self.error_message
        return out

    @classmethod
    def from_json(cls, data: Any) -> SettleResponse:
        code, path = ErrorCode.INVALID_PAYLOAD, "paymentResponse"
        d = json_object(data, path, code)
        success = d.get("success")
        if type(success) is not bool:
            raise fail(code, path + ".success", "must be true or false")
        payer, amount, extra = d.get("payer"), d.get("amount"), d.get("extra")
        reason, message = d.get("errorReason"), d.get("errorMessage")
        return cls(
            success,
            string(member(d, "network", path, code), path + ".network", code),
            string(d.get("transaction", ""), path + ".transaction", code),
            None if payer is None else address(payer, path + ".payer", code),
            None if amount in (None, "") else uint(amount, path + ".amount", code, U256),
            None if extra is None else ResponseExtra.from_json(extra, path + ".extra", code),
            None if reason is None else string(reason, path + ".errorReason", code),
            None if message is None else string(message, path + ".errorMessage", code),
        )

