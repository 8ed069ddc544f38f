"""Our payment terms and everything derived from them once, at startup.

The 402 challenge is the same bytes for every request of a given price, so its header and
body are built once per (units, resource URL) and reused. Parsing a ``PAYMENT-SIGNATURE``
takes a fast path for the common case (a known channel echoing our exact offer): the
decoded JSON is compared with what was already validated for that channel instead of being
re-validated field by field; anything new goes through ``channels.wire``'s strict parser::

    terms = Terms(chain_id=31337, token=..., receiver=..., receiver_authorizer=..., price=1000,
                  withdraw_delay=900, token_name="USD Coin", token_version="2")
    response = terms.challenge(units=1, url="http://127.0.0.1:8402/v1/classify")
    payment = terms.parse(header, units=1)      # channels.PaymentPayload or PaymentError
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from aiohttp import web

from channels.eip712 import channel_id as compute_channel_id
from channels.eip712 import voucher_digest
from channels.errors import ErrorCode, PaymentError
from channels.verify import recover_address, verify_voucher
from channels.wire import (
    BatchExtra,
    ChannelConfig,
    ChannelStateSnapshot,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    Voucher,
    VoucherPayload,
    VoucherStateSnapshot,
)

__all__ = ["Terms", "VerifiedPayment"]

try:  # orjson parses the ~1 KB payment JSON 3x faster than json (5 us per paid request)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - same results, slower
    _loads = json.loads

_EXPOSE = "PAYMENT-REQUIRED, PAYMENT-RESPONSE"
_U128 = 1 << 128


@dataclass(frozen=True, slots=True)
class VerifiedPayment:
    """A payment whose voucher signature and channel binding are checked."""

    payload: object  # channels.DepositPayload | VoucherPayload | RefundPayload
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
        self._requirements_json: dict[int, dict] = {}
        self._challenges: dict[tuple[int, str], tuple[bytes, str]] = {}
        # channel id (hex, as sent) -> (channelConfig JSON as validated, parsed config, id, id hex)
        self._channels: dict[str, tuple[dict, ChannelConfig, bytes, str]] = {}

    # ------------------------------------------------------------------ the offer

    def requirements(self, units: int) -> PaymentRequirements:
        req = self._requirements.get(units)
        if req is None:
            req = PaymentRequirements(
                self.network, self.token, units * self.price, self.receiver,
                self.max_timeout_seconds, self.extra,
            )
            self._requirements[units] = req
            self._requirements_json[units] = req.to_json()
        return req

    def requirements_json(self, units: int) -> dict:
        self.requirements(units)
        return self._requirements_json[units]

    def challenge(self, units: int, url: str) -> web.Response:
        """The 402 for a request without payment: prebuilt header and body."""
        key = (units, url)
        cached = self._challenges.get(key)
        if cached is None:
            required = PaymentRequired(
                accepts=(self.requirements(units),),
                error="PAYMENT-SIGNATURE header is required",
                resource=ResourceInfo(url, self.description, "application/json"),
            )
            text = json.dumps(required.to_json(), separators=(",", ":"))
            cached = (text.encode(), base64.b64encode(text.encode()).decode())
            if len(self._challenges) < 4096:  # distinct URLs are few; never grow unbounded
                self._challenges[key] = cached
        body, header = cached
        return web.Response(
            status=402, body=body, content_type="application/json",
            headers={"PAYMENT-REQUIRED": header, "Access-Control-Expose-Headers": _EXPOSE},
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
                "PAYMENT-REQUIRED": base64.b64encode(text.encode()).decode(),
                "Access-Control-Expose-Headers": _EXPOSE,
            },
        )

    # ------------------------------------------------------------------ parsing

    def parse(self, header: str, units: int) -> VerifiedPayment:
        """Decode, validate and signature-check a ``PAYMENT-SIGNATURE`` header.

        Raises PaymentError with the spec's code. Checks: x402 v2, scheme, our offer
        (network, asset, payTo, receiverAuthorizer, withdrawDelay), the channel config
        against our terms, channel id binding and the payerAuthorizer's voucher signature.
        """
        try:
            data = _loads(binascii.a2b_base64(header, strict_mode=True))
        except (binascii.Error, ValueError, TypeError, RecursionError) as exc:  # orjson's error is a ValueError
            raise PaymentError(
                ErrorCode.INVALID_PAYLOAD, "PAYMENT-SIGNATURE",
                f"must be base64 of a JSON object ({exc})",
            ) from None
        fast = self._parse_fast(data, units) if type(data) is dict else None
        return fast if fast is not None else self._parse_strict(data, units)

    def _parse_fast(self, data: dict, units: int) -> VerifiedPayment | None:
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
        config, cid = known[1], known[2]
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
        voucher = Voucher(cid, amount, signature)
        digest = voucher_digest(
            self.chain_id, self.settlement, voucher.channel_id, voucher.max_claimable_amount
        )
        signer = recover_address(digest, voucher.signature, field="payload.voucher.signature")
        if signer != config.payer_authorizer:
            raise PaymentError(
                ErrorCode.VOUCHER_SIGNATURE, "payload.voucher.signature",
                "is not signed by the channel's payerAuthorizer",
            )
        return VerifiedPayment(VoucherPayload(config, voucher), cid, known[3], config, voucher)

    def _parse_strict(self, data: object, units: int) -> VerifiedPayment:
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
        if len(self._channels) < 1_000_000:  # bounded: a flood of fresh channels cannot grow it
            raw = data["payload"]  # type: ignore[index]
            self._channels[raw["voucher"]["channelId"]] = (raw["channelConfig"], config, cid, cid_hex)
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
        if accepted.amount < units * self.price:
            raise PaymentError(
                ErrorCode.CHARGE_EXCEEDS_SIGNED_CUMULATIVE, field + "amount",
                f"this request costs {units * self.price} ({units} x {self.price}); "
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
