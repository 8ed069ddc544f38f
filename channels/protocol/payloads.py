"""What a payer sends: the channel identity, vouchers, deposits, the three scheme payloads
(deposit, voucher, refund) and the `PAYMENT-SIGNATURE` body `PaymentPayload`::

    >>> payment = PaymentPayload(offer, VoucherPayload(config, Voucher(cid, 5_000, sig65)))
    >>> PaymentPayload.from_json(payment.to_json()) == payment
    True

Parsing never trusts input: a missing or malformed field raises `PaymentError` naming the
dotted field and the spec's error code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ._fields import (
    U40,
    U256,
    address,
    fail,
    hex_bytes,
    hx,
    json_object,
    member,
    remember,
    uint,
)
from .eip712 import checksum_address
from .errors import ErrorCode
from .offers import X402_VERSION, PaymentRequirements, ResourceInfo

__all__ = [
    "MAX_WITHDRAW_DELAY",
    "MIN_WITHDRAW_DELAY",
    "ChannelConfig",
    "Deposit",
    "DepositPayload",
    "Erc3009Authorization",
    "PaymentPayload",
    "RefundPayload",
    "SchemePayload",
    "Voucher",
    "VoucherPayload",
]

MIN_WITHDRAW_DELAY = 900  # 15 minutes, the contract's bound
MAX_WITHDRAW_DELAY = 2_592_000  # 30 days

# A channel's config repeats on every request: parses of the same JSON values.
_CONFIG_CACHE: dict[tuple[Any, ...], ChannelConfig] = {}


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """The immutable channel identity; `channels.channel_id(config, chain_id, settlement)`."""

    payer: bytes
    payer_authorizer: bytes
    receiver: bytes
    receiver_authorizer: bytes
    token: bytes
    withdraw_delay: int
    salt: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "payer": checksum_address(self.payer),
            "payerAuthorizer": checksum_address(self.payer_authorizer),
            "receiver": checksum_address(self.receiver),
            "receiverAuthorizer": checksum_address(self.receiver_authorizer),
            "token": checksum_address(self.token),
            "withdrawDelay": self.withdraw_delay,
            "salt": hx(self.salt),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> ChannelConfig:
        d = json_object(data, path, code)
        g = d.get
        delay = g("withdrawDelay")
        # A channel's config repeats on every request: reuse the parse of the same JSON values.
        try:
            key = (
                g("payer"),
                g("payerAuthorizer"),
                g("receiver"),
                g("receiverAuthorizer"),
                g("token"),
                delay,
                type(delay),
                g("salt"),
            )
            hit = _CONFIG_CACHE.get(key)
        except TypeError:  # an unhashable (malformed) value: the full checks below say which
            key, hit = None, None
        if hit is not None:
            return hit
        config = cls._parse(d, path, code)
        if key is not None:
            remember(_CONFIG_CACHE, key, config)
        return config

    @classmethod
    def _parse(cls, d: dict[str, Any], path: str, code: ErrorCode) -> ChannelConfig:
        g = d.get
        delay = g("withdrawDelay")
        if type(delay) is not int:
            delay = uint(member(d, "withdrawDelay", path, code), path + ".withdrawDelay", code, U40)
        if not MIN_WITHDRAW_DELAY <= delay <= MAX_WITHDRAW_DELAY:
            raise fail(
                ErrorCode.WITHDRAW_DELAY_OUT_OF_RANGE,
                path + ".withdrawDelay",
                f"must be between {MIN_WITHDRAW_DELAY} and {MAX_WITHDRAW_DELAY} seconds",
            )
        return cls(
            address(g("payer"), path + ".payer", code),
            address(g("payerAuthorizer"), path + ".payerAuthorizer", code),
            address(g("receiver"), path + ".receiver", code),
            address(g("receiverAuthorizer"), path + ".receiverAuthorizer", code),
            address(g("token"), path + ".token", code),
            delay,
            hex_bytes(g("salt"), path + ".salt", code, 32),
        )


@dataclass(frozen=True, slots=True)
class Voucher:
    """A signed cumulative ceiling: `Voucher(channel_id, 5_000, signature65)`."""

    channel_id: bytes
    max_claimable_amount: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "channelId": hx(self.channel_id),
            "maxClaimableAmount": str(self.max_claimable_amount),
            "signature": hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> Voucher:
        d = json_object(data, path, code)
        cid = d.get("channelId")
        if type(cid) is not str or len(cid) != 66:
            code_id = code if cid is None else ErrorCode.CHANNEL_ID_INVALID
            raise fail(code_id, path + ".channelId", "must be 0x + 64 hex digits (bytes32)")
        return cls(
            hex_bytes(cid, path + ".channelId", ErrorCode.CHANNEL_ID_INVALID, 32),
            uint(member(d, "maxClaimableAmount", path, code), path + ".maxClaimableAmount", code),
            hex_bytes(member(d, "signature", path, code), path + ".signature", code, None),
        )


@dataclass(frozen=True, slots=True)
class Erc3009Authorization:
    """The wire part of a `receiveWithAuthorization` deposit (the rest comes from the config)."""

    valid_after: int
    valid_before: int
    salt: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "salt": hx(self.salt),
            "signature": hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> Erc3009Authorization:
        d = json_object(data, path, code)
        return cls(
            uint(member(d, "validAfter", path, code), path + ".validAfter", code, U256),
            uint(member(d, "validBefore", path, code), path + ".validBefore", code, U256),
            hex_bytes(member(d, "salt", path, code), path + ".salt", code, 32),
            hex_bytes(member(d, "signature", path, code), path + ".signature", code, None),
        )


@dataclass(frozen=True, slots=True)
class Deposit:
    """`deposit` of a deposit payload: amount plus its ERC-3009 authorization (Permit2: later)."""

    amount: int
    authorization: Erc3009Authorization

    def to_json(self) -> dict[str, Any]:
        return {
            "amount": str(self.amount),
            "authorization": {"erc3009Authorization": self.authorization.to_json()},
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> Deposit:
        d = json_object(data, path, code)
        amount = uint(member(d, "amount", path, code), path + ".amount", code)
        if amount == 0:
            raise fail(code, path + ".amount", "must be positive")
        auth_path = path + ".authorization"
        auth = json_object(member(d, "authorization", path, code), auth_path, code)
        erc3009 = auth.get("erc3009Authorization")
        if erc3009 is None:
            raise fail(
                ErrorCode.ERC3009_AUTHORIZATION_REQUIRED,
                auth_path + ".erc3009Authorization",
                "this server takes ERC-3009 deposits only; sign receiveWithAuthorization",
            )
        if "permit2Authorization" in auth:
            raise fail(code, auth_path, "exactly one of erc3009Authorization/permit2Authorization")
        return cls(
            amount,
            Erc3009Authorization.from_json(erc3009, auth_path + ".erc3009Authorization", code),
        )


# --- the three payer payloads ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DepositPayload:
    """type=deposit: opens or tops up a channel and carries the first voucher."""

    type: ClassVar[str] = "deposit"
    channel_config: ChannelConfig
    voucher: Voucher
    deposit: Deposit

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "deposit",
            "channelConfig": self.channel_config.to_json(),
            "voucher": self.voucher.to_json(),
            "deposit": self.deposit.to_json(),
        }


@dataclass(frozen=True, slots=True)
class VoucherPayload:
    """type=voucher: a new cumulative ceiling on an open channel."""

    type: ClassVar[str] = "voucher"
    channel_config: ChannelConfig
    voucher: Voucher

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "voucher",
            "channelConfig": self.channel_config.to_json(),
            "voucher": self.voucher.to_json(),
        }


@dataclass(frozen=True, slots=True)
class RefundPayload:
    """type=refund: zero-charge voucher; `amount` None asks for a full refund."""

    type: ClassVar[str] = "refund"
    channel_config: ChannelConfig
    voucher: Voucher
    amount: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "refund",
            "channelConfig": self.channel_config.to_json(),
            "voucher": self.voucher.to_json(),
        }
        if self.amount is not None:
            out["amount"] = str(self.amount)
        return out


SchemePayload = DepositPayload | VoucherPayload | RefundPayload

_PAYLOAD_CODES = {
    "deposit": ErrorCode.DEPOSIT_PAYLOAD,
    "voucher": ErrorCode.VOUCHER_PAYLOAD,
    "refund": ErrorCode.REFUND_PAYLOAD,
}


def _parse_scheme_payload(d: dict[str, Any], code: ErrorCode) -> SchemePayload:
    kind = d["type"]
    config = ChannelConfig.from_json(d.get("channelConfig"), "payload.channelConfig", code)
    voucher = Voucher.from_json(d.get("voucher"), "payload.voucher", code)
    if kind == "voucher":
        return VoucherPayload(config, voucher)
    if kind == "deposit":
        return DepositPayload(
            config, voucher, Deposit.from_json(d.get("deposit"), "payload.deposit", code)
        )
    amount = d.get("amount")
    if amount is not None:
        amount = uint(amount, "payload.amount", ErrorCode.REFUND_AMOUNT_INVALID)
        if amount == 0:
            raise fail(
                ErrorCode.REFUND_AMOUNT_INVALID,
                "payload.amount",
                "must be positive; omit it for a full refund",
            )
    return RefundPayload(config, voucher, amount)



@dataclass(frozen=True, slots=True)
class PaymentPayload:
    """Header `PAYMENT-SIGNATURE`: the offer accepted and the scheme payload."""

    accepted: PaymentRequirements
    payload: SchemePayload
    resource: ResourceInfo | None = None
    extensions: Mapping[str, Any] | None = None
    x402_version: int = X402_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "x402Version": self.x402_version,
            "accepted": self.accepted.to_json(),
            "payload": self.payload.to_json(),
        }
        if self.resource is not None:
            out["resource"] = self.resource.to_json()
        if self.extensions is not None:
            out["extensions"] = dict(self.extensions)
        return out

    @classmethod
    def from_json(cls, data: Any) -> PaymentPayload:
        d = json_object(data, "paymentPayload", ErrorCode.INVALID_PAYLOAD)
        if d.get("x402Version") != X402_VERSION:
            raise fail(ErrorCode.INVALID_X402_VERSION, "x402Version", "must be 2 (x402 v2)")
        payload = d.get("payload")
        if type(payload) is not dict:
            raise fail(ErrorCode.INVALID_PAYLOAD, "payload", "must be a JSON object")
        kind = payload.get("type")
        code = _PAYLOAD_CODES.get(kind) if type(kind) is str else None
        if code is None:
            raise fail(ErrorCode.PAYLOAD_TYPE, "payload.type", "must be 'deposit', 'voucher' or 'refund'")
        accepted = PaymentRequirements.from_json(d.get("accepted"), "accepted", code)
        res, ext = d.get("resource"), d.get("extensions")
        return cls(
            accepted,
            _parse_scheme_payload(payload, code),
            None if res is None else ResourceInfo.from_json(res, "resource", code),
            None if ext is None else json_object(ext, "extensions", code),
        )

