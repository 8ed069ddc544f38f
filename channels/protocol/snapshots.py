"""The corrective snapshots: the server's view of a channel and the payer's last voucher.

They ride in a 402's `accepts[0].extra` and in `PAYMENT-RESPONSE` `extra`::

    >>> ChannelStateSnapshot(cid, balance=10_000, total_claimed=0, charged_cumulative_amount=3_000)
    >>> VoucherStateSnapshot.from_json(extra["voucherState"], "extra.voucherState", code)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._fields import U40, U256, hex_bytes, hx, json_object, member, uint
from .errors import ErrorCode

__all__ = ["ChannelStateSnapshot", "VoucherStateSnapshot"]


@dataclass(frozen=True, slots=True)
class ChannelStateSnapshot:
    """`extra.channelState`: the server's view of one channel."""

    channel_id: bytes
    balance: int
    total_claimed: int
    withdraw_requested_at: int = 0
    refund_nonce: int = 0
    charged_cumulative_amount: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channelId": hx(self.channel_id),
            "balance": str(self.balance),
            "totalClaimed": str(self.total_claimed),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": str(self.refund_nonce),
        }
        if self.charged_cumulative_amount is not None:
            out["chargedCumulativeAmount"] = str(self.charged_cumulative_amount)
        return out

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> ChannelStateSnapshot:
        d = json_object(data, path, code)
        cca = d.get("chargedCumulativeAmount")
        return cls(
            hex_bytes(member(d, "channelId", path, code), path + ".channelId", code, 32),
            uint(member(d, "balance", path, code), path + ".balance", code),
            uint(member(d, "totalClaimed", path, code), path + ".totalClaimed", code),
            uint(d.get("withdrawRequestedAt", 0), path + ".withdrawRequestedAt", code, U40),
            uint(d.get("refundNonce", "0"), path + ".refundNonce", code, U256),
            None if cca is None else uint(cca, path + ".chargedCumulativeAmount", code),
        )


@dataclass(frozen=True, slots=True)
class VoucherStateSnapshot:
    """`extra.voucherState`: the payer's own last voucher, proving the server's cumulative."""

    signed_max_claimable: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "signedMaxClaimable": str(self.signed_max_claimable),
            "signature": hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> VoucherStateSnapshot:
        d = json_object(data, path, code)
        return cls(
            uint(member(d, "signedMaxClaimable", path, code), path + ".signedMaxClaimable", code),
            hex_bytes(member(d, "signature", path, code), path + ".signature", code, None),
        )

