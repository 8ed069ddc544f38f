"""x402 v2 wire types for scheme `batch-settlement` (EVM), with strict parsing and encoding.

Frozen dataclasses with slots; amounts are ints, ids / signatures / addresses are raw bytes.
Parsing never trusts input: every missing or malformed field raises `PaymentError` naming
the dotted field and the spec's error code. Encoding writes the spec's JSON (decimal-string
amounts, checksum addresses, 0x-hex bytes).

    >>> payment = parse_payment_signature(request.headers["PAYMENT-SIGNATURE"])
    >>> payment.payload.voucher.max_claimable_amount
    5000
    >>> headers["PAYMENT-REQUIRED"] = encode_payment_required(PaymentRequired(accepts=(reqs,)))
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .eip712 import checksum_address
from .errors import ErrorCode, PaymentError

__all__ = [
    "SCHEME",
    "X402_VERSION",
    "BatchExtra",
    "ChannelConfig",
    "ChannelStateSnapshot",
    "Deposit",
    "DepositPayload",
    "Erc3009Authorization",
    "PaymentPayload",
    "PaymentRequired",
    "PaymentRequirements",
    "Receipt",
    "RefundPayload",
    "ResourceInfo",
    "ResponseExtra",
    "SchemePayload",
    "SettleResponse",
    "SignedReceipt",
    "Voucher",
    "VoucherPayload",
    "VoucherStateSnapshot",
    "chain_id_of",
    "encode_payment_required",
    "encode_payment_response",
    "encode_payment_signature",
    "parse_payment_required",
    "parse_payment_response",
    "parse_payment_signature",
]

SCHEME = "batch-settlement"
X402_VERSION = 2
MIN_WITHDRAW_DELAY = 900  # 15 minutes, the contract's bound
MAX_WITHDRAW_DELAY = 2_592_000  # 30 days

_U40 = 1 << 40
_U128 = 1 << 128
_U256 = 1 << 256
_C = ErrorCode

# The x402 v2 HTTP header names: the one place they are spelled (gateway and SDK import them).
PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
IDEMPOTENCY_KEY = "Idempotency-Key"


# --- strict field readers (code = the error code of the object being parsed) --------------


def _fail(code: ErrorCode, path: str, message: str) -> PaymentError:
    return PaymentError(code, path, message)


def _obj(value: Any, path: str, code: ErrorCode) -> dict[str, Any]:
    if value is None:
        raise _fail(code, path, "is required")
    if type(value) is not dict:
        raise _fail(code, path, f"must be a JSON object, got {type(value).__name__}")
    return value


def _get(data: dict[str, Any], key: str, path: str, code: ErrorCode) -> Any:
    try:
        return data[key]
    except KeyError:
        raise _fail(code, f"{path}.{key}", "is required") from None


def _str(value: Any, path: str, code: ErrorCode) -> str:
    if type(value) is not str:
        raise _fail(code, path, f"must be a string, got {type(value).__name__}")
    return value


def _uint(value: Any, path: str, code: ErrorCode, limit: int = _U128) -> int:
    """A decimal string (the spec) or a JSON integer, 0 <= x < limit."""
    t = type(value)
    if t is str:
        if not (0 < len(value) <= 78 and value.isascii() and value.isdigit()):
            raise _fail(code, path, f"must be a decimal integer string, got {value[:40]!r}")
        n = int(value)
    elif t is int:
        n = value
    else:
        raise _fail(code, path, f"must be a decimal integer string, got {t.__name__}")
    if not 0 <= n < limit:
        raise _fail(code, path, f"out of range: must satisfy 0 <= x < 2**{limit.bit_length() - 1}")
    return n


def _hex(value: Any, path: str, code: ErrorCode, size: int | None) -> bytes:
    """0x-prefixed hex; exactly `size` bytes, or any non-empty length when size is None."""
    if value is None:
        raise _fail(code, path, "is required")
    if type(value) is not str or value[:2] not in ("0x", "0X"):
        raise _fail(code, path, "must be a 0x-prefixed hex string")
    digits = value[2:]
    if size is not None and len(digits) != 2 * size:
        raise _fail(code, path, f"must be {size} bytes (0x + {2 * size} hex digits)")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raw = b""
    # fromhex skips whitespace between bytes: a length check rejects it along with ""
    if not raw or 2 * len(raw) != len(digits):
        raise _fail(code, path, "must be non-empty hex with an even number of digits")
    return raw


def _address(value: Any, path: str, code: ErrorCode) -> bytes:
    return _hex(value, path, code, 20)


def _b64_json(header: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(binascii.a2b_base64(header, strict_mode=True))
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise _fail(_C.INVALID_PAYLOAD, what, f"must be base64 of a JSON object ({exc})") from None
    return _obj(data, what, _C.INVALID_PAYLOAD)


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once, not per call as dumps(...) does


def _b64(data: dict[str, Any]) -> str:
    return base64.b64encode(_ENCODER.encode(data).encode()).decode()


def _hx(b: bytes) -> str:
    return "0x" + b.hex()


_CACHE_LIMIT = 4096
_CONFIG_CACHE: dict[tuple[Any, ...], Any] = {}
_REQUIREMENTS_CACHE: dict[tuple[Any, ...], Any] = {}


def _remember(cache: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:  # bounded: many distinct channels just refill it
        cache.clear()
    cache[key] = value


def chain_id_of(network: str) -> int:
    """The chain id of a CAIP-2 EVM network: `chain_id_of("eip155:8453") == 8453`."""
    prefix, _, ref = network.partition(":")
    if prefix != "eip155" or not (ref.isascii() and ref.isdigit()):
        raise ValueError(f"network must be 'eip155:<chainId>', got {network!r:.60}")
    return int(ref)


# --- channel identity and vouchers -------------------------------------------------------


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
            "salt": _hx(self.salt),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> ChannelConfig:
        d = _obj(data, path, code)
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
            _remember(_CONFIG_CACHE, key, config)
        return config

    @classmethod
    def _parse(cls, d: dict[str, Any], path: str, code: ErrorCode) -> ChannelConfig:
        g = d.get
        delay = g("withdrawDelay")
        if type(delay) is not int:
            delay = _uint(_get(d, "withdrawDelay", path, code), path + ".withdrawDelay", code, _U40)
        if not MIN_WITHDRAW_DELAY <= delay <= MAX_WITHDRAW_DELAY:
            raise _fail(
                _C.WITHDRAW_DELAY_OUT_OF_RANGE,
                path + ".withdrawDelay",
                f"must be between {MIN_WITHDRAW_DELAY} and {MAX_WITHDRAW_DELAY} seconds",
            )
        return cls(
            _address(g("payer"), path + ".payer", code),
            _address(g("payerAuthorizer"), path + ".payerAuthorizer", code),
            _address(g("receiver"), path + ".receiver", code),
            _address(g("receiverAuthorizer"), path + ".receiverAuthorizer", code),
            _address(g("token"), path + ".token", code),
            delay,
            _hex(g("salt"), path + ".salt", code, 32),
        )


@dataclass(frozen=True, slots=True)
class Voucher:
    """A signed cumulative ceiling: `Voucher(channel_id, 5_000, signature65)`."""

    channel_id: bytes
    max_claimable_amount: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "channelId": _hx(self.channel_id),
            "maxClaimableAmount": str(self.max_claimable_amount),
            "signature": _hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> Voucher:
        d = _obj(data, path, code)
        cid = d.get("channelId")
        if type(cid) is not str or len(cid) != 66:
            code_id = code if cid is None else _C.CHANNEL_ID_INVALID
            raise _fail(code_id, path + ".channelId", "must be 0x + 64 hex digits (bytes32)")
        return cls(
            _hex(cid, path + ".channelId", _C.CHANNEL_ID_INVALID, 32),
            _uint(_get(d, "maxClaimableAmount", path, code), path + ".maxClaimableAmount", code),
            _hex(_get(d, "signature", path, code), path + ".signature", code, None),
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
            "salt": _hx(self.salt),
            "signature": _hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> Erc3009Authorization:
        d = _obj(data, path, code)
        return cls(
            _uint(_get(d, "validAfter", path, code), path + ".validAfter", code, _U256),
            _uint(_get(d, "validBefore", path, code), path + ".validBefore", code, _U256),
            _hex(_get(d, "salt", path, code), path + ".salt", code, 32),
            _hex(_get(d, "signature", path, code), path + ".signature", code, None),
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
        d = _obj(data, path, code)
        amount = _uint(_get(d, "amount", path, code), path + ".amount", code)
        if amount == 0:
            raise _fail(code, path + ".amount", "must be positive")
        auth_path = path + ".authorization"
        auth = _obj(_get(d, "authorization", path, code), auth_path, code)
        erc3009 = auth.get("erc3009Authorization")
        if erc3009 is None:
            raise _fail(
                _C.ERC3009_AUTHORIZATION_REQUIRED,
                auth_path + ".erc3009Authorization",
                "this server takes ERC-3009 deposits only; sign receiveWithAuthorization",
            )
        if "permit2Authorization" in auth:
            raise _fail(code, auth_path, "exactly one of erc3009Authorization/permit2Authorization")
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
    "deposit": _C.DEPOSIT_PAYLOAD,
    "voucher": _C.VOUCHER_PAYLOAD,
    "refund": _C.REFUND_PAYLOAD,
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
        amount = _uint(amount, "payload.amount", _C.REFUND_AMOUNT_INVALID)
        if amount == 0:
            raise _fail(
                _C.REFUND_AMOUNT_INVALID,
                "payload.amount",
                "must be positive; omit it for a full refund",
            )
    return RefundPayload(config, voucher, amount)


# --- corrective snapshots -----------------------------------------------------------------


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
            "channelId": _hx(self.channel_id),
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
        d = _obj(data, path, code)
        cca = d.get("chargedCumulativeAmount")
        return cls(
            _hex(_get(d, "channelId", path, code), path + ".channelId", code, 32),
            _uint(_get(d, "balance", path, code), path + ".balance", code),
            _uint(_get(d, "totalClaimed", path, code), path + ".totalClaimed", code),
            _uint(d.get("withdrawRequestedAt", 0), path + ".withdrawRequestedAt", code, _U40),
            _uint(d.get("refundNonce", "0"), path + ".refundNonce", code, _U256),
            None if cca is None else _uint(cca, path + ".chargedCumulativeAmount", code),
        )


@dataclass(frozen=True, slots=True)
class VoucherStateSnapshot:
    """`extra.voucherState`: the payer's own last voucher, proving the server's cumulative."""

    signed_max_claimable: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "signedMaxClaimable": str(self.signed_max_claimable),
            "signature": _hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> VoucherStateSnapshot:
        d = _obj(data, path, code)
        return cls(
            _uint(_get(d, "signedMaxClaimable", path, code), path + ".signedMaxClaimable", code),
            _hex(_get(d, "signature", path, code), path + ".signature", code, None),
        )


# --- requirements and the 402 -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchExtra:
    """`PaymentRequirements.extra` for batch-settlement (token domain name/version included)."""

    receiver_authorizer: bytes
    withdraw_delay: int
    name: str
    version: str
    asset_transfer_method: str | None = None
    min_deposit: int | None = None
    channel_state: ChannelStateSnapshot | None = None
    voucher_state: VoucherStateSnapshot | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "receiverAuthorizer": checksum_address(self.receiver_authorizer),
            "withdrawDelay": self.withdraw_delay,
            "name": self.name,
            "version": self.version,
        }
        if self.asset_transfer_method is not None:
            out["assetTransferMethod"] = self.asset_transfer_method
        if self.min_deposit is not None:
            out["minDeposit"] = str(self.min_deposit)
        if self.channel_state is not None:
            out["channelState"] = self.channel_state.to_json()
        if self.voucher_state is not None:
            out["voucherState"] = self.voucher_state.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> BatchExtra:
        d = _obj(data, path, code)
        name, version = d.get("name"), d.get("version")
        for key, value in (("name", name), ("version", version)):
            if not value or type(value) is not str:
                raise _fail(
                    _C.MISSING_EIP712_DOMAIN,
                    f"{path}.{key}",
                    "the token's EIP-712 domain is required",
                )
        delay = d.get("withdrawDelay")
        if type(delay) is not int:
            delay = _uint(_get(d, "withdrawDelay", path, code), path + ".withdrawDelay", code, _U40)
        method = d.get("assetTransferMethod")
        if method is not None and method not in ("eip3009", "permit2"):
            raise _fail(code, path + ".assetTransferMethod", "must be 'eip3009' or 'permit2'")
        min_dep, cs, vs = d.get("minDeposit"), d.get("channelState"), d.get("voucherState")
        return cls(
            _address(_get(d, "receiverAuthorizer", path, code), path + ".receiverAuthorizer", code),
            delay,
            name,
            version,
            method,
            None if min_dep is None else _uint(min_dep, path + ".minDeposit", code),
            None
            if cs is None
            else ChannelStateSnapshot.from_json(cs, path + ".channelState", code),
            None
            if vs is None
            else VoucherStateSnapshot.from_json(vs, path + ".voucherState", code),
        )


@dataclass(frozen=True, slots=True)
class PaymentRequirements:
    """One `accepts[]` entry: the price per request and the server's channel parameters."""

    network: str
    asset: bytes
    amount: int
    pay_to: bytes
    max_timeout_seconds: int
    extra: BatchExtra
    scheme: str = SCHEME

    @property
    def chain_id(self) -> int:
        return chain_id_of(self.network)

    def matches(self, other: PaymentRequirements) -> bool:
        """Same offer, ignoring corrective snapshots: how a server checks `accepted`."""
        a, b = self.extra, other.extra
        return (
            self.scheme == other.scheme
            and self.network == other.network
            and self.asset == other.asset
            and self.amount == other.amount
            and self.pay_to == other.pay_to
            and a.receiver_authorizer == b.receiver_authorizer
            and a.withdraw_delay == b.withdraw_delay
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "network": self.network,
            "amount": str(self.amount),
            "asset": checksum_address(self.asset),
            "payTo": checksum_address(self.pay_to),
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": self.extra.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> PaymentRequirements:
        d = _obj(data, path, code)
        g = d.get
        extra = g("extra")
        # `accepted` repeats the server's own offer on every request: reuse its parse. Offers
        # carrying corrective snapshots (nested objects) are unhashable and parsed in full.
        try:
            amount, timeout = g("amount"), g("maxTimeoutSeconds")
            key = (
                g("scheme"),
                g("network"),
                amount,
                type(amount),
                g("asset"),
                g("payTo"),
                timeout,
                type(timeout),
                tuple([(k, v, type(v)) for k, v in extra.items()])
                if type(extra) is dict
                else extra,
            )
            hit = _REQUIREMENTS_CACHE.get(key)
        except TypeError:
            key, hit = None, None
        if hit is not None:
            return hit
        requirements = cls._parse(d, path, code)
        if key is not None:
            _remember(_REQUIREMENTS_CACHE, key, requirements)
        return requirements

    @classmethod
    def _parse(cls, d: dict[str, Any], path: str, code: ErrorCode) -> PaymentRequirements:
        scheme = d.get("scheme")
        if scheme != SCHEME:
            raise _fail(_C.INVALID_SCHEME, path + ".scheme", f"must be {SCHEME!r}")
        network = _str(_get(d, "network", path, code), path + ".network", code)
        if not network.startswith("eip155:") or not network[7:].isdigit() or not network.isascii():
            raise _fail(code, path + ".network", "must be a CAIP-2 EVM network 'eip155:<chainId>'")
        timeout = _get(d, "maxTimeoutSeconds", path, code)
        if type(timeout) is not int or timeout < 0:
            raise _fail(code, path + ".maxTimeoutSeconds", "must be a non-negative integer")
        return cls(
            network,
            _address(_get(d, "asset", path, code), path + ".asset", code),
            _uint(_get(d, "amount", path, code), path + ".amount", code),
            _address(_get(d, "payTo", path, code), path + ".payTo", code),
            timeout,
            BatchExtra.from_json(_get(d, "extra", path, code), path + ".extra", code),
        )


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """`resource`: what is being paid for."""

    url: str
    description: str | None = None
    mime_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url}
        if self.description is not None:
            out["description"] = self.description
        if self.mime_type is not None:
            out["mimeType"] = self.mime_type
        return out

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> ResourceInfo:
        d = _obj(data, path, code)
        desc, mime = d.get("description"), d.get("mimeType")
        return cls(
            _str(_get(d, "url", path, code), path + ".url", code),
            None if desc is None else _str(desc, path + ".description", code),
            None if mime is None else _str(mime, path + ".mimeType", code),
        )


@dataclass(frozen=True, slots=True)
class PaymentRequired:
    """The 402 answer (header `PAYMENT-REQUIRED` and body).

    Parsing keeps only the `batch-settlement` offers of `accepts`; others are skipped.
    """

    accepts: tuple[PaymentRequirements, ...]
    error: str | None = None
    resource: ResourceInfo | None = None
    extensions: Mapping[str, Any] | None = None
    x402_version: int = X402_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"x402Version": self.x402_version}
        if self.error is not None:
            out["error"] = str(self.error)
        if self.resource is not None:
            out["resource"] = self.resource.to_json()
        out["accepts"] = [a.to_json() for a in self.accepts]
        if self.extensions is not None:
            out["extensions"] = dict(self.extensions)
        return out

    @classmethod
    def from_json(cls, data: Any) -> PaymentRequired:
        code, path = _C.INVALID_PAYLOAD, "paymentRequired"
        d = _obj(data, path, code)
        if d.get("x402Version") != X402_VERSION:
            raise _fail(_C.INVALID_X402_VERSION, path + ".x402Version", "must be 2")
        accepts = d.get("accepts")
        if type(accepts) is not list:
            raise _fail(code, path + ".accepts", "must be a list")
        offers = tuple(
            PaymentRequirements.from_json(a, f"{path}.accepts[{i}]", code)
            for i, a in enumerate(accepts)
            if type(a) is dict and a.get("scheme") == SCHEME
        )
        err, res, ext = d.get("error"), d.get("resource"), d.get("extensions")
        return cls(
            offers,
            None if err is None else _str(err, path + ".error", code),
            None if res is None else ResourceInfo.from_json(res, path + ".resource", code),
            None if ext is None else _obj(ext, path + ".extensions", code),
        )


# --- what the payer sends ----------------------------------------------------------------


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
        d = _obj(data, "paymentPayload", _C.INVALID_PAYLOAD)
        if d.get("x402Version") != X402_VERSION:
            raise _fail(_C.INVALID_X402_VERSION, "x402Version", "must be 2 (x402 v2)")
        payload = d.get("payload")
        if type(payload) is not dict:
            raise _fail(_C.INVALID_PAYLOAD, "payload", "must be a JSON object")
        kind = payload.get("type")
        code = _PAYLOAD_CODES.get(kind) if type(kind) is str else None
        if code is None:
            raise _fail(_C.PAYLOAD_TYPE, "payload.type", "must be 'deposit', 'voucher' or 'refund'")
        accepted = PaymentRequirements.from_json(d.get("accepted"), "accepted", code)
        res, ext = d.get("resource"), d.get("extensions")
        return cls(
            accepted,
            _parse_scheme_payload(payload, code),
            None if res is None else ResourceInfo.from_json(res, "resource", code),
            None if ext is None else _obj(ext, "extensions", code),
        )


# --- what the server answers -------------------------------------------------------------


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
            "channelId": _hx(r.channel_id),
            "requestDigest": _hx(r.request_digest),
            "resultDigest": _hx(r.result_digest),
            "modelVersion": _hx(r.model_version),
            "chargedAmount": str(r.charged_amount),
            "cumulativeCharged": str(r.cumulative_charged),
            "proof": [_hx(p) for p in self.proof],
            "signature": _hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any, path: str, code: ErrorCode) -> SignedReceipt:
        d = _obj(data, path, code)

        def b32(key: str) -> bytes:
            return _hex(_get(d, key, path, code), f"{path}.{key}", code, 32)

        receipt = Receipt(
            b32("channelId"),
            b32("requestDigest"),
            b32("resultDigest"),
            b32("modelVersion"),
            _uint(_get(d, "chargedAmount", path, code), path + ".chargedAmount", code),
            _uint(_get(d, "cumulativeCharged", path, code), path + ".cumulativeCharged", code),
        )
        raw_proof = d.get("proof", [])
        if type(raw_proof) is not list or len(raw_proof) > _MAX_PROOF:
            raise _fail(code, path + ".proof", f"must be a list of at most {_MAX_PROOF} 32-byte hex strings")
        proof = tuple(_hex(p, f"{path}.proof[{i}]", code, 32) for i, p in enumerate(raw_proof))
        return cls(receipt, _hex(_get(d, "signature", path, code), path + ".signature", code, 65), proof)


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
        d = _obj(data, path, code)
        ca, cs, vs, rc = (
            d.get(k) for k in ("chargedAmount", "channelState", "voucherState", "receipt")
        )
        return cls(
            None if ca is None else _uint(ca, path + ".chargedAmount", code),
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
        code, path = _C.INVALID_PAYLOAD, "paymentResponse"
        d = _obj(data, path, code)
        success = d.get("success")
        if type(success) is not bool:
            raise _fail(code, path + ".success", "must be true or false")
        payer, amount, extra = d.get("payer"), d.get("amount"), d.get("extra")
        reason, message = d.get("errorReason"), d.get("errorMessage")
        return cls(
            success,
            _str(_get(d, "network", path, code), path + ".network", code),
            _str(d.get("transaction", ""), path + ".transaction", code),
            None if payer is None else _address(payer, path + ".payer", code),
            None if amount in (None, "") else _uint(amount, path + ".amount", code, _U256),
            None if extra is None else ResponseExtra.from_json(extra, path + ".extra", code),
            None if reason is None else _str(reason, path + ".errorReason", code),
            None if message is None else _str(message, path + ".errorMessage", code),
        )


# --- headers -----------------------------------------------------------------------------


def parse_payment_signature(header: str | bytes) -> PaymentPayload:
    """Decode and strictly validate the `PAYMENT-SIGNATURE` header (raises PaymentError)."""
    return PaymentPayload.from_json(_b64_json(header, PAYMENT_SIGNATURE))


def encode_payment_signature(payment: PaymentPayload) -> str:
    """The `PAYMENT-SIGNATURE` header value for a payment."""
    return _b64(payment.to_json())


def parse_payment_required(header: str | bytes) -> PaymentRequired:
    """Decode the `PAYMENT-REQUIRED` header (a 402 body: `PaymentRequired.from_json`)."""
    return PaymentRequired.from_json(_b64_json(header, PAYMENT_REQUIRED))


def encode_payment_required(required: PaymentRequired) -> str:
    """The `PAYMENT-REQUIRED` header value (send `required.to_json()` as the body too)."""
    return _b64(required.to_json())


def parse_payment_response(header: str | bytes) -> SettleResponse:
    """Decode the `PAYMENT-RESPONSE` header of a paid answer."""
    return SettleResponse.from_json(_b64_json(header, PAYMENT_RESPONSE))


def encode_payment_response(response: SettleResponse) -> str:
    """The `PAYMENT-RESPONSE` header value."""
    return _b64(response.to_json())
