"""Our payment terms and everything derived from them once, at startup.

The 402 challenge is the same bytes for every request of a given price, so its header and
body are built once per (units, resource URL) and reused. Parsing a ``PAYMENT-SIGNATURE``
has three tiers, fastest first:

1. a *layout* seen before: a client sends the same base64 text for everything up to the
   voucher's ``maxClaimableAmount`` (our offer, its channel config, its channel id) on every
   request, so that prefix is compared as a string with one validated before, and only the
   short tail (amount and signature) is decoded — no JSON parse of the ~1 KB header;
2. a known channel echoing our exact offer: the decoded JSON is compared with what was
   already validated for that channel instead of being re-validated field by field;
3. anything new goes through ``channels.protocol``'s strict parser (``PaymentPayload.from_json``),
   which names the field and the fix.

Every tier ends in the same voucher signature check (one public-key recovery)::

    terms = Terms(chain_id=31337, token=..., receiver=..., receiver_authorizer=..., price=1000,
                  withdraw_delay=900, token_name="USD Coin", token_version="2")
    response = terms.challenge(units=1, url="http://127.0.0.1:8402/v1/classify")
    payment = terms.parse(header, units=1)      # channels.protocol.PaymentPayload or PaymentError
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from channels.protocol import (
    PAYMENT_REQUIRED,
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    BatchExtra,
    ChannelConfig,
    ChannelStateSnapshot,
    ErrorCode,
    PaymentError,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    SchemePayload,
    Voucher,
    VoucherPayload,
    VoucherStateSnapshot,
    domain_separator,
    signed_by,
    verify_voucher,
    voucher_digest_with,
    voucher_struct_prefix,
)
from channels.protocol import channel_id as compute_channel_id

__all__ = ["EXPOSE_HEADERS", "Terms", "VerifiedPayment"]

_loads: Callable[[bytes], Any]
try:  # orjson parses the ~1 KB payment JSON 3x faster than json (5 us per paid request)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - same results, slower
    _loads = json.loads

# Access-Control-Expose-Headers of every payment answer: browsers may read the x402 headers.
EXPOSE_HEADERS = f"{PAYMENT_REQUIRED}, {PAYMENT_RESPONSE}"
_U128 = 1 << 128
_AMOUNT_KEY = b'"maxClaimableAmount":"'
# What follows the amount key in a voucher-last layout: the ceiling, the signature, and the
# closing braces of voucher, payload and the root object (nothing else may follow).
_TAIL = re.compile(rb'([0-9]{1,39})","signature":"0x([0-9a-fA-F]{130})"\}\}\}')
_CHANNELS_LIMIT = 100_000  # validated channel configs remembered for the fast tiers
_LAYOUTS_LIMIT = 100_000  # layouts remembered (one per channel and client encoding)
_LAYOUT_LENGTHS_LIMIT = 8  # distinct prefix lengths tried per header (one per encoding)


@dataclass(slots=True)
class _Layout:
    """A validated ``PAYMENT-SIGNATURE`` up to its voucher amount, for the string fast path.

    ``rest`` is what the base64 prefix (whole 4-character groups) does not cover of the JSON
    prefix (0-2 bytes); the decoded tail must start with it.
    """

    rest: bytes
    config: ChannelConfig
    channel_id: bytes
    channel_hex: str
    accepted_amount: int  # accepts[0].amount the client echoed (checked against units each time)
    struct_prefix: bytes  # voucher_struct_prefix(channel_id), kept for every later voucher


@dataclass(slots=True)
class VerifiedPayment:
    """A payment whose voucher signature and channel binding are checked."""

    payload: SchemePayload
    channel_id: bytes
    channel_hex: str  # "0x" + 64 lowercase hex digits
    config: ChannelConfig
    voucher: Voucher


class Terms:
    """The offer (``accepts[0]``) for N units, prebuilt challenges, and payment parsing."""

    def __init__(
        self,
        *,
        chain_id: int,
        settlement: str,
        token: bytes,
        receiver: bytes,
        receiver_authorizer: bytes,
        price: int,
        withdraw_delay: int,
        token_name: str,
        token_version: str,
        max_timeout_seconds: int = 3600,
        min_deposit: int | None = None,
        description: str = "Image classification, priced per image",
    ) -> None:
        self.chain_id = chain_id
        self.network = f"eip155:{chain_id}"
        self.settlement = settlement
        self.token = token
        self.receiver = receiver
        self.receiver_authorizer = receiver_authorizer
        self.price = price
        self.withdraw_delay = withdraw_delay
        self.extra = BatchExtra(
            receiver_authorizer, withdraw_delay, token_name, token_version,
            asset_transfer_method="eip3009",
            min_deposit=min_deposit if min_deposit is not None else 100 * price,
        )
        self.max_timeout_seconds = max_timeout_seconds
        self.description = description
        self._requirements: dict[int, PaymentRequirements] = {}
        self._requirements_json: dict[int, dict[str, Any]] = {}
        self._challenges: dict[tuple[int, str], tuple[bytes, str]] = {}
        # channel id (hex, as sent) -> (channelConfig JSON as validated, parsed config, id, id hex,
        # its voucher_struct_prefix)
        self._channels: dict[str, tuple[dict[str, Any], ChannelConfig, bytes, str, bytes]] = {}
        # base64 prefix of a validated header -> its layout; the prefix lengths in use
        self._layouts: dict[str, _Layout] = {}
        self._layout_lengths: list[int] = []
        self._domain = domain_separator(chain_id, settlement)

    # ------------------------------------------------------------------ the offer

    def price_of(self, units: int) -> int:
        """What ``units`` cost: ``terms.price_of(3) == 3 * terms.price`` (the one place)."""
        return units * self.price

    def requirements(self, units: int) -> PaymentRequirements:
        req = self._requirements.get(units)
        if req is None:
            req = PaymentRequirements(
                self.network, self.token, self.price_of(units), self.receiver,
                self.max_timeout_seconds, self.extra,
            )
            self._requirements[units] = req
            self._requirements_json[units] = req.to_json()
        return req

    def requirements_json(self, units: int) -> dict[str, Any]:
        self.requirements(units)
        return self._requirements_json[units]

    def challenge(self, units: int, url: str) -> web.Response:
        """The 402 for a request without payment: prebuilt header and body."""
        key = (units, url)
        cached = self._challenges.get(key)
        if cached is None:
            required = PaymentRequired(
                accepts=(self.requirements(units),),
                error=f"{PAYMENT_SIGNATURE} header is required",
                resource=ResourceInfo(url, self.description, "application/json"),
            )
            text = json.dumps(required.to_json(), separators=(",", ":"))
            cached = (text.encode(), base64.b64encode(text.encode()).decode())
            if len(self._challenges) < 4096:  # distinct URLs are few; never grow unbounded
                self._challenges[key] = cached
        body, header = cached
        return web.Response(
            status=402, body=body, content_type="application/json",
            headers={PAYMENT_REQUIRED: header, "Access-Control-Expose-Headers": EXPOSE_HEADERS},
        )

    def rejection(
        self,
        error: PaymentError,
        units: int,
        url: str,
        *,
        channel_state: ChannelStateSnapshot | None = None,
        voucher_state: VoucherStateSnapshot | None = None,
    ) -> web.Response:
        """A 402 naming the spec's error code; corrective snapshots ride in accepts[0].extra."""
        req = self.requirements(units)
        if channel_state is not None or voucher_state is not None:
            extra = BatchExtra(
                req.extra.receiver_authorizer, req.extra.withdraw_delay, req.extra.name,
                req.extra.version, req.extra.asset_transfer_method, req.extra.min_deposit,
                channel_state, voucher_state,
            )
            req = PaymentRequirements(
                req.network, req.asset, req.amount, req.pay_to, req.max_timeout_seconds, extra
            )
        required = PaymentRequired(
            accepts=(req,), error=str(error.code),
            resource=ResourceInfo(url, self.description, "application/json"),
        ).to_json()
        # Not part of the x402 schema (clients ignore unknown keys): the field and the fix.
        required["message"] = (f"{error.field}: " if error.field else "") + error.message
        text = json.dumps(required, separators=(",", ":"))
        return web.Response(
            status=402, body=text.encode(), content_type="application/json",
            headers={
                PAYMENT_REQUIRED: base64.b64encode(text.encode()).decode(),
                "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            },
        )

    # ------------------------------------------------------------------ parsing

    def parse(self, header: str, units: int) -> VerifiedPayment:
        """Decode, validate and signature-check a ``PAYMENT-SIGNATURE`` header.

        Raises PaymentError with the spec's code. Checks: x402 v2, scheme, our offer
        (network, asset, payTo, receiverAuthorizer, withdrawDelay), the channel config
        against our terms, channel id binding and the payerAuthorizer's voucher signature.
        """
        for length in self._layout_lengths:
            layout = self._layouts.get(header[:length])
            if layout is not None:
                fast = self._parse_layout(layout, header, length, units)
                if fast is not None:
                    return fast
                break
        try:
            raw = binascii.a2b_base64(header, strict_mode=True)
            data = _loads(raw)
        except (binascii.Error, ValueError, TypeError, RecursionError) as exc:  # orjson's error is a ValueError
            raise PaymentError(
                ErrorCode.INVALID_PAYLOAD, PAYMENT_SIGNATURE,
                f"must be base64 of a JSON object ({exc})",
            ) from None
        fast = self._parse_fast(data, units) if type(data) is dict else None
        payment = fast if fast is not None else self._parse_strict(data, units)
        if isinstance(payment.payload, VoucherPayload):
            accepted = data["accepted"]  # a dict: validated by either parser
            self._learn_layout(header, raw, payment, int(accepted["amount"]))
        return payment

    def parse_refund(self, header: str) -> VerifiedPayment | None:
        """The cooperative refund a ``PAYMENT-SIGNATURE`` carries, verified; None when it
        carries anything else (``parse`` then handles it, errors included).

        A header in a known voucher layout answers None at once, so a paid request pays one
        prefix lookup for this; a refund is checked against our offer (any units: a refund
        charges nothing), the channel config and the payerAuthorizer's signature::

            refund = terms.parse_refund(header)      # VerifiedPayment(payload=RefundPayload) | None
        """
        for length in self._layout_lengths:
            if header[:length] in self._layouts:
                return None
        try:
            raw = binascii.a2b_base64(header, strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            return None
        if b'"refund"' not in raw:
            return None
        try:
            data = _loads(raw)
        except (ValueError, TypeError, RecursionError):
            return None
        payload = data.get("payload") if type(data) is dict else None
        if type(payload) is not dict or payload.get("type") != "refund":
            return None
        return self._parse_strict(data, 0)

    def _parse_layout(self, layout: _Layout, header: str, length: int, units: int) -> VerifiedPayment | None:
        """The tail after a known prefix: amount and signature, else None (slower tiers decide)."""
        if layout.accepted_amount < self.price_of(units):
            return None  # the strict parser names the error
        try:
            tail = binascii.a2b_base64(header[length:], strict_mode=True)
        except binascii.Error:
            return None
        rest = layout.rest
        if not tail.startswith(rest):
            return None
        match = _TAIL.fullmatch(tail, len(rest))
        if match is None:
            return None
        amount = int(match[1])
        if amount >= _U128:
            return None
        return self._verified(layout.config, layout.channel_id, layout.channel_hex, amount,
                              bytes.fromhex(match[2].decode()), layout.struct_prefix)

    def _verified(self, config: ChannelConfig, cid: bytes, cid_hex: str, amount: int,
                  signature: bytes, struct_prefix: bytes) -> VerifiedPayment:
        """The voucher signature check shared by the fast tiers (the strict one has its own)."""
        digest = voucher_digest_with(self._domain, struct_prefix, amount)
        if signed_by(digest, signature, config.payer_authorizer, "payload.voucher.signature") is not None:
            raise PaymentError(
                ErrorCode.VOUCHER_SIGNATURE, "payload.voucher.signature",
                "is not signed by the channel's payerAuthorizer",
            )
        voucher = Voucher(cid, amount, signature)
        return VerifiedPayment(VoucherPayload(config, voucher), cid, cid_hex, config, voucher)

    def _learn_layout(self, header: str, raw: bytes, payment: VerifiedPayment, accepted_amount: int) -> None:
        """Remember a validated voucher header's layout when its voucher comes last, as our
        SDK and the reference clients write it; other layouts keep the slower tiers."""
        at = raw.rfind(_AMOUNT_KEY)
        if at < 0:
            return
        cut = at + len(_AMOUNT_KEY)
        match = _TAIL.fullmatch(raw, cut)
        voucher = payment.voucher
        if (
            match is None
            or int(match[1]) != voucher.max_claimable_amount
            or bytes.fromhex(match[2].decode()) != voucher.signature
        ):
            return
        whole = cut // 3 * 3
        prefix = binascii.b2a_base64(raw[:whole], newline=False).decode()
        if not header.startswith(prefix) or prefix in self._layouts:
            return
        length = len(prefix)
        if length not in self._layout_lengths:
            if len(self._layout_lengths) >= _LAYOUT_LENGTHS_LIMIT:
                return
            self._layout_lengths.append(length)
        if len(self._layouts) >= _LAYOUTS_LIMIT:  # bounded: a flood of fresh channels cannot grow it
            self._layouts.clear()
        self._layouts[prefix] = _Layout(
            raw[whole:cut], payment.config, payment.channel_id, payment.channel_hex,
            accepted_amount, voucher_struct_prefix(payment.channel_id),
        )

    def _parse_fast(self, data: dict[str, Any], units: int) -> VerifiedPayment | None:
        """Known channel + our exact offer + voucher payload: check only what changed."""
        payload = data.get("payload")
        if (
            type(payload) is not dict
            or payload.get("type") != "voucher"
            or data.get("x402Version") != 2
            or data.get("accepted") != self.requirements_json(units)
        ):
            return None
        voucher_json = payload.get("voucher")
        if type(voucher_json) is not dict:
            return None
        cid_hex = voucher_json.get("channelId")
        known = self._channels.get(cid_hex) if type(cid_hex) is str else None
        if known is None or payload.get("channelConfig") != known[0]:
            return None
        config, cid, cid_hex, prefix = known[1], known[2], known[3], known[4]
        amount_s, sig_s = voucher_json.get("maxClaimableAmount"), voucher_json.get("signature")
        # The common shape, checked inline; anything unusual goes to the strict parser, which
        # names the field and the fix.
        if (
            type(amount_s) is not str or not 0 < len(amount_s) <= 39 or not amount_s.isascii()
            or not amount_s.isdigit() or type(sig_s) is not str or len(sig_s) != 132
            or sig_s[:2] != "0x"
        ):
            return None
        amount = int(amount_s)
        try:
            signature = bytes.fromhex(sig_s[2:])
        except ValueError:
            return None
        if amount >= _U128 or len(signature) != 65:
            return None
        return self._verified(config, cid, cid_hex, amount, signature, prefix)

    def _parse_strict(self, data: Any, units: int) -> VerifiedPayment:
        payment = PaymentPayload.from_json(data)
        self._check_accepted(payment.accepted, units)
        inner = payment.payload
        config = inner.channel_config
        self._check_config(config)
        if config.payer_authorizer == bytes(20):
            raise PaymentError(
                ErrorCode.VOUCHER_SIGNATURE, "payload.channelConfig.payerAuthorizer",
                "smart-wallet (EIP-1271) vouchers are not accepted here; set payerAuthorizer "
                "to an EOA",
            )
        verify_voucher(config, inner.voucher, self.chain_id, self.settlement)
        cid = inner.voucher.channel_id
        cid_hex = "0x" + cid.hex()
        # Bounded like the layouts: anyone can sign vouchers for channels that hold nothing, so
        # a flood of them must cost a cache refill, not memory.
        if len(self._channels) >= _CHANNELS_LIMIT:
            self._channels.clear()
        raw = data["payload"]  # a dict: PaymentPayload.from_json validated it
        self._channels[raw["voucher"]["channelId"]] = (
            raw["channelConfig"], config, cid, cid_hex, voucher_struct_prefix(cid),
        )
        return VerifiedPayment(inner, cid, cid_hex, config, inner.voucher)

    def _check_accepted(self, accepted: PaymentRequirements, units: int) -> None:
        field = "accepted."
        if accepted.network != self.network:
            raise PaymentError(ErrorCode.NETWORK_MISMATCH, field + "network",
                               f"this gateway takes {self.network}, not {accepted.network}")
        if accepted.asset != self.token:
            raise PaymentError(ErrorCode.TOKEN_MISMATCH, field + "asset", "must be our asset")
        if accepted.pay_to != self.receiver:
            raise PaymentError(ErrorCode.RECEIVER_MISMATCH, field + "payTo", "must be our payTo")
        if accepted.extra.receiver_authorizer != self.receiver_authorizer:
            raise PaymentError(ErrorCode.RECEIVER_AUTHORIZER_MISMATCH,
                               field + "extra.receiverAuthorizer", "must be our receiverAuthorizer")
        if accepted.extra.withdraw_delay != self.withdraw_delay:
            raise PaymentError(ErrorCode.WITHDRAW_DELAY_MISMATCH, field + "extra.withdrawDelay",
                               f"must be {self.withdraw_delay}")
        cost = self.price_of(units)
        if accepted.amount < cost:
            raise PaymentError(
                ErrorCode.CHARGE_EXCEEDS_SIGNED_CUMULATIVE, field + "amount",
                f"this request costs {cost} ({units} x {self.price}); "
                "take accepts[0] of this request's 402",
            )

    def _check_config(self, config: ChannelConfig) -> None:
        field = "payload.channelConfig."
        if config.receiver != self.receiver:
            raise PaymentError(ErrorCode.RECEIVER_MISMATCH, field + "receiver", "must equal payTo")
        if config.receiver_authorizer != self.receiver_authorizer:
            raise PaymentError(ErrorCode.RECEIVER_AUTHORIZER_MISMATCH, field + "receiverAuthorizer",
                               "must equal extra.receiverAuthorizer")
        if config.token != self.token:
            raise PaymentError(ErrorCode.TOKEN_MISMATCH, field + "token", "must equal asset")
        if config.withdraw_delay != self.withdraw_delay:
            raise PaymentError(ErrorCode.WITHDRAW_DELAY_MISMATCH, field + "withdrawDelay",
                               f"must equal extra.withdrawDelay ({self.withdraw_delay})")

    def channel_id_of(self, config: ChannelConfig) -> bytes:
        return compute_channel_id(config, self.chain_id, self.settlement)
