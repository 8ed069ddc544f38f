"""What a server offers: `PaymentRequirements` (one `accepts[]` entry), its `BatchExtra`,
and the 402 answer `PaymentRequired`, with strict parsing and the spec's JSON::

    >>> offer = PaymentRequirements("eip155:8453", usdc, 1_000, pay_to, 3600,
    ...                             BatchExtra(authorizer, 900, "USD Coin", "2"))
    >>> PaymentRequired(accepts=(offer,), error="PAYMENT-SIGNATURE header is required").to_json()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._fields import U40, address, json_object, member, fail, remember, string, uint
from .eip712 import checksum_address
from .errors import ErrorCode
from .snapshots import ChannelStateSnapshot, VoucherStateSnapshot

__all__ = [
    "SCHEME",
    "X402_VERSION",
    "BatchExtra",
    "PaymentRequired",
    "PaymentRequirements",
    "ResourceInfo",
    "chain_id_of",
]

SCHEME = "batch-settlement"
X402_VERSION = 2

# `accepted` repeats the server's own offer on every request: parses of the same JSON values.
_REQUIREMENTS_CACHE: dict[tuple[Any, ...], PaymentRequirements] = {}


def chain_id_of(network: str) -> int:
    """The chain id of a CAIP-2 EVM network: `chain_id_of("eip155:8453") == 8453`."""
    prefix, _, ref = network.partition(":")
    if prefix != "eip155" or not (ref.isascii() and ref.isdigit()):
        raise ValueError(f"network must be 'eip155:<chainId>', got {network!r:.60}")
    return int(ref)


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
        d = json_object(data, path, code)
        name = _domain_part(d, "name", path)
        version = _domain_part(d, "version", path)
        delay = d.get("withdrawDelay")
        if type(delay) is not int:
            delay = uint(member(d, "withdrawDelay", path, code), path + ".withdrawDelay", code, U40)
        method = d.get("assetTransferMethod")
        if method is not None and method not in ("eip3009", "permit2"):
            raise fail(code, path + ".assetTransferMethod", "must be 'eip3009' or 'permit2'")
        min_dep, cs, vs = d.get("minDeposit"), d.get("channelState"), d.get("voucherState")
        return cls(
            address(member(d, "receiverAuthorizer", path, code), path + ".receiverAuthorizer", code),
            delay,
            name,
            version,
            method,
            None if min_dep is None else uint(min_dep, path + ".minDeposit", code),
            None
            if cs is None
            else ChannelStateSnapshot.from_json(cs, path + ".channelState", code),
            None
            if vs is None
            else VoucherStateSnapshot.from_json(vs, path + ".voucherState", code),
        )


def _domain_part(d: dict[str, Any], key: str, path: str) -> str:
    """`extra.name` / `extra.version`: the token's EIP-712 domain, a non-empty string."""
    value = d.get(key)
    if not value or type(value) is not str:
        raise fail(
            ErrorCode.MISSING_EIP712_DOMAIN, f"{path}.{key}", "the token's EIP-712 domain is required"
        )
    return value


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
        d = json_object(data, path, code)
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
            remember(_REQUIREMENTS_CACHE, key, requirements)
        return requirements

    @classmethod
    def _parse(cls, d: dict[str, Any], path: str, code: ErrorCode) -> PaymentRequirements:
        scheme = d.get("scheme")
        if scheme != SCHEME:
            raise fail(ErrorCode.INVALID_SCHEME, path + ".scheme", f"must be {SCHEME!r}")
        network = string(member(d, "network", path, code), path + ".network", code)
        if not network.startswith("eip155:") or not network[7:].isdigit() or not network.isascii():
            raise fail(code, path + ".network", "must be a CAIP-2 EVM network 'eip155:<chainId>'")
        timeout = member(d, "maxTimeoutSeconds", path, code)
        if type(timeout) is not int or timeout < 0:
            raise fail(code, path + ".maxTimeoutSeconds", "must be a non-negative integer")
        return cls(
            network,
            address(member(d, "asset", path, code), path + ".asset", code),
            uint(member(d, "amount", path, code), path + ".amount", code),
            address(member(d, "payTo", path, code), path + ".payTo", code),
            timeout,
            BatchExtra.from_json(member(d, "extra", path, code), path + ".extra", code),
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
        d = json_object(data, path, code)
        desc, mime = d.get("description"), d.get("mimeType")
        return cls(
            string(member(d, "url", path, code), path + ".url", code),
            None if desc is None else string(desc, path + ".description", code),
            None if mime is None else string(mime, path + ".mimeType", code),
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
        code, path = ErrorCode.INVALID_PAYLOAD, "paymentRequired"
        d = json_object(data, path, code)
        if d.get("x402Version") != X402_VERSION:
            raise fail(ErrorCode.INVALID_X402_VERSION, path + ".x402Version", "must be 2")
        accepts = d.get("accepts")
        if type(accepts) is not list:
            raise fail(code, path + ".accepts", "must be a list")
        offers = tuple(
            PaymentRequirements.from_json(a, f"{path}.accepts[{i}]", code)
            for i, a in enumerate(accepts)
            if type(a) is dict and a.get("scheme") == SCHEME
        )
        err, res, ext = d.get("error"), d.get("resource"), d.get("extensions")
        return cls(
            offers,
            None if err is None else string(err, path + ".error", code),
            None if res is None else ResourceInfo.from_json(res, path + ".resource", code),
            None if ext is None else json_object(ext, path + ".extensions", code),
        )

