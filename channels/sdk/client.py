"""The payer SDK over HTTP: pay for paychan classifications (and any x402 resource) with a `Payer`.

    >>> async with PaymentClient.from_key(key, base_url="http://127.0.0.1:8402") as client:
    ...     result = await client.classify("cat.jpg", top_k=3)
    ...     result.top.label, result.top.probability, result.charged, result.model_version
    ('tiger cat', 0.39, 1000, '0x5f1e...')
    ...     await client.refund()                      # the unspent rest, cooperatively
    ...     await client.withdraw(rpc_url=rpc)         # or the timed escape hatch, on-chain

`classify` checks the image and `top_k` before any money moves, learns the terms from the
first 402, opens the channel with one deposit (`deposit=` base units, else `deposit_requests`
x the price, default 10; at least the server's minDeposit), pays every later image with a
voucher, tops the channel up with a new deposit payload when its balance no longer covers
the next image, adopts a corrective 402 after checking the payer's own signature in it,
retries `channel_busy` with a fresh voucher, and verifies the signed receipt (signature,
charge, request and answer digests, model version) of every answer. Several classifications
may run at once on one channel; a deposit in flight holds the others back until it lands, so
no voucher ever counts on money that is not on-chain yet.

Every paid request carries an `Idempotency-Key` (``pay_`` + 32 hex digits; also sent as the
x402 `payment-identifier` extension's id when the server's 402 declares that extension). When
no answer comes back (connection lost, timeout, 502/504) or a transient one does (503, 409
``idempotency_key_in_use``), the very same request is sent again — same key, same payment —
at most `retries` times with backoff (``Retry-After`` when given): a gateway that committed
the first answer replays it, so a lost answer is recovered and never charged twice. (A lost
answer is asked for again only from a server known to replay it: see `PaymentClient`.)

A payer whose state file is new or stale (another file of the same key paid, or the file was
lost, and the gateway has claimed since) recovers without a withdrawal: the gateway's
corrective 402 (``cumulative_amount_mismatch`` or ``cumulative_below_claimed``) and its
channel view carry the payer's own last voucher, which `Payer.adopt` checks before adopting
the charged total (never above what the payer signed, never below on-chain totalClaimed).
`sync()` rebuilds the local state from the gateway and the chain on demand.

`post/get/request` pay for any x402 batch-settlement resource the same way and hand back the
raw answer (`PaidResponse`). `SyncPaymentClient` wraps it all for scripts without asyncio.

Errors (all `ClientError`): `InputError` (bad image or argument: nothing was sent),
`PaymentRefused` (the server's 402, with its spec code), `RequestFailed` (any other non-2xx:
never charged), `ReceiptInvalid` (the answer failed verification: the channel is halted),
`GatewayUnreachable` (no answer; the price stays counted as maybe charged), `ChainError`
(a withdrawal transaction failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from ..protocol.errors import ErrorCode, PaymentError
from .payer import ChannelHalted, ChannelRecord, Payer, Payment, RecoveryRefused
from ..protocol.signing import Signer
from ..protocol.wire import (
    ChannelStateSnapshot,
    PaymentRequired,
    PaymentRequirements,
    SettleResponse,
    SignedReceipt,
    VoucherStateSnapshot,
    parse_payment_required,
    parse_payment_response,
)

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_STATE",
    "IDEMPOTENCY_KEY",
    "ChainError",
    "Classification",
    "ClientError",
    "GatewayUnreachable",
    "InputError",
    "PaidResponse",
    "PaymentClient",
    "PaymentRefused",
    "Prediction",
    "ReceiptInvalid",
    "RecoveryRefused",
    "RequestFailed",
    "SyncPaymentClient",
    "SyncResult",
    "WithdrawStatus",
    "load_image",
    "new_idempotency_key",
    "parse_channel_id",
    "read_onchain",
]

T = TypeVar("T")

DEFAULT_STATE = Path("~/.paychan/payer.sqlite")  # the payer's channels when no file is named
MAX_TOP_K = 1000  # ImageNet-1k has 1000 classes; the gateway's own cap (20 by default) may be lower

_MISMATCH = (ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, ErrorCode.CUMULATIVE_BELOW_CLAIMED)
_BUSY_RETRIES = 8  # channel_busy / overloaded answers retried by classify before giving up
_RETRY_AFTER_CAP_S = 5.0
IDEMPOTENCY_KEY = "Idempotency-Key"
PAYMENT_IDENTIFIER = "payment-identifier"  # the x402 extension naming the same id
DEFAULT_RETRIES = 3  # resends of one paid request whose answer was lost or transient
DEFAULT_RETRY_BACKOFF_S = 0.25  # first resend's wait; doubles per resend (capped, jittered)
# Answers after which the very same request (same key, same payment) is sent again. 503:
# the server did not serve it (nothing charged). 502/504 (a proxy lost the answer) and no
# answer at all: only to a server known to replay a charged answer for its key.
_NOT_SERVED = frozenset({503})
_ANSWER_LOST = frozenset({502, 504})
_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (  # (signature, offset, content type)
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"WEBP", 8, "image/webp"),
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})


# --------------------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of every error the SDK raises on purpose."""


class InputError(ClientError, ValueError):
    """A bad argument (image, top_k, amount, channel): raised before anything is sent or paid."""


class GatewayUnreachable(ClientError, ConnectionError):
    """The server could not be reached or did not answer in time."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        super().__init__(f"cannot reach {url}: {type(cause).__name__}: {cause}".rstrip(": "))


class PaymentRefused(ClientError, PaymentError):
    """The server answered 402 to a payment: `code` is the spec's error code (e.g.
    ``invalid_batch_settlement_evm_cumulative_exceeds_balance``). Nothing was charged.

    Also a `PaymentError`, so callers that catch the protocol core's error catch it too.
    """

    def __init__(
        self, code: str | None, message: str, required: PaymentRequired | None = None
    ) -> None:
        PaymentError.__init__(self, _code_of(code), "PAYMENT-REQUIRED", message)
        self.required = required

    def __str__(self) -> str:
        return f"payment refused ({self.code}): {self.message}"

    def __reduce__(self):  # type: ignore[override]
        return (type(self), (str(self.code), self.message))


class RequestFailed(ClientError):
    """A non-2xx answer other than 402 (bad image, overload, server error): never charged."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"HTTP {status} {code or ''}: {message}".replace("  ", " "))


class ReceiptInvalid(ChannelHalted, ClientError):
    """A paid answer failed verification (receipt signature, charge, digests, model version).

    The channel is halted (no more vouchers on it); recover what is left with `withdraw`.
    """


class ChainError(ClientError):
    """An on-chain call of the payer's (initiateWithdraw, finalizeWithdraw) failed: `reason`
    is the contract's error name where it reverted (e.g. ``WithdrawDelayNotElapsed``)."""

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{action} failed: {reason}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class PaidResponse:
    """An HTTP answer with what it cost: `payment` None when nothing was paid."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    payment: Payment | None = None
    settlement: SettleResponse | None = None
    required: PaymentRequired | None = None  # the 402's terms, when the answer is a 402
    recovery_refused: str | None = None  # why a corrective 402's state was not adopted

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One of the top-k ImageNet classes: ``Prediction("tiger cat", 282, 0.39, "cat")``."""

    label: str
    index: int
    probability: float
    group: str  # dog, cat, other mammal, bird, ..., or "not an animal"

    @property
    def score(self) -> float:
        return self.probability

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "group": self.group}


@dataclass(frozen=True, slots=True)
class Classification:
    """A paid, verified classification of one image (amounts in token base units)."""

    predictions: tuple[Prediction, ...]
    model_id: str
    model_version: str  # 0x + the 32-byte content hash of the weights that answered
    charged: int  # this image's charge
    cumulative_charged: int  # the channel's total charge so far
    balance: int  # the channel's balance as the gateway reports it
    channel_id: str  # 0x-hex
    receipt: SignedReceipt  # verified: signer, charge, request/answer digests, model version
    deposit_tx: str | None = None  # the deposit transaction when this request opened/topped up
    deposited: int | None = None
    image: str | None = None  # the file name, when classified from a path
    receipt_verified: bool = field(default=True)  # always True: an unverified one raises

    @property
    def top(self) -> Prediction:
        """The most probable class."""
        return self.predictions[0]

    @property
    def remaining(self) -> int:
        """What the channel's balance still covers (balance minus everything charged)."""
        return max(self.balance - self.cumulative_charged, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "predictions": [p.to_json() for p in self.predictions],
            "model": {"id": self.model_id, "version": self.model_version},
            "charged": str(self.charged),
            "cumulativeCharged": str(self.cumulative_charged),
            "balance": str(self.balance),
            "channelId": self.channel_id,
            "depositTransaction": self.deposit_tx,
            "deposited": None if self.deposited is None else str(self.deposited),
            "receipt": self.receipt.to_json(),
            "receiptVerified": self.receipt_verified,
        }


@dataclass(frozen=True, slots=True)
class WithdrawStatus:
    """A timed withdrawal: started (`ready_at` is when it may be finalized) or finalized."""

    channel_id: str
    tx_hash: str
    amount: int  # requested (initiate) or transferred to the payer (finalize)
    ready_at: int | None  # unix time the delay ends (chain clock); None once finalized
    finalized: bool
    balance: int  # the channel's on-chain balance after the transaction

    def to_json(self) -> dict[str, Any]:
        return {"channelId": self.channel_id, "transaction": self.tx_hash,
                "amount": str(self.amount), "readyAt": self.ready_at,
                "finalized": self.finalized, "balance": str(self.balance)}


@dataclass(frozen=True, slots=True)
class SyncResult:
    """A channel rebuilt by `PaymentClient.sync` (amounts in token base units).

    `source` says what the record now rests on: ``gateway`` (the gateway's charged total,
    proven by the payer's own voucher), ``gateway+chain`` (the same, floored and funded by
    the chain's figures), or ``chain`` (no proof at the gateway: on-chain totalClaimed, the
    spec's cold-start baseline). `before` is the record as it was (None: the file had none).
    """

    channel_id: str
    source: str
    record: ChannelRecord
    before: ChannelRecord | None
    gateway: dict[str, Any] | None  # GET /v1/channels/ID as answered (None: unknown there)
    chain: dict[str, Any] | None  # the chain's figures (None: no rpc_url)

    def to_json(self) -> dict[str, Any]:
        rec, before = self.record, self.before
        return {
            "channelId": self.channel_id,
            "source": self.source,
            "balance": str(rec.balance),
            "charged": str(rec.charged),
            "remaining": str(max(rec.balance - rec.charged, 0)),
            "signedMax": str(rec.signed_max),
            "before": None if before is None else {
                "balance": str(before.balance), "charged": str(before.charged),
                "signedMax": str(before.signed_max)},
            "gateway": self.gateway,
            "chain": self.chain,
        }


# --------------------------------------------------------------------------- the client


class PaymentClient:
    """Pays for HTTP requests over x402 batch-settlement with a `Payer` (aiohttp).

        >>> async with PaymentClient(payer, base_url="http://127.0.0.1:8402") as client:
        ...     result = await client.classify("cat.jpg")           # typed, verified
        ...     answer = await client.post(url, data=jpeg, headers={"Content-Type": "image/jpeg"})
        ...     answer.status, answer.json(), answer.settlement.extra.charged_amount

    Args:
        payer: signs and remembers the channel (its deposit policy sizes deposits).
        session: an aiohttp ClientSession to share (default: one of its own).
        base_url: the gateway, for `classify`, `models`, `channel_status`, `refund`.
        rpc_url: a JSON-RPC node of the channel's chain, for `withdraw` / `finalize_withdraw`,
            `sync`, and to floor an adopted state at the chain's totalClaimed.
        timeout_s: per HTTP request.
        retries: resends of a paid request whose answer was lost (connection error, timeout,
            502/504) or transient (503, 409 idempotency_key_in_use): same Idempotency-Key,
            same payment, so the gateway replays what it already charged. 0 turns them off.
            A lost answer is asked for again only from a server known to replay it: a
            paychan gateway (`classify`, or any URL whose answers carried our signed receipt)
            or one whose 402 declares x402's `payment-identifier`; another server could serve
            and charge the request again, so there the loss raises GatewayUnreachable.
        retry_backoff_s: the first resend's wait when the answer names no Retry-After;
            doubled per resend, jittered, capped at 5 s.

    The first request to a URL learns the terms from a 402; later ones pay at once. A
    corrective 402 is adopted (after `Payer.adopt` checks the payer's own signature) and
    the request is retried once. Requests may run concurrently on one channel. `resent`
    counts the resends so far.
    """

    def __init__(
        self,
        payer: Payer,
        session: Any = None,
        *,
        base_url: str | None = None,
        rpc_url: str | None = None,
        timeout_s: float = 120.0,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be a whole number >= 0, got {retries!r}")
        if retry_backoff_s < 0:
            raise InputError(f"retry_backoff_s must be >= 0 seconds, got {retry_backoff_s!r}")
        self.payer = payer
        self.base_url = base_url.rstrip("/") if base_url else None
        self.rpc_url = rpc_url
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.resent = 0
        self._session = session
        self._own_session = session is None
        self._timeout_s = timeout_s
        self._offers: dict[str, PaymentRequirements] = {}
        # what each URL's 402 declared in `extensions` (the payment-identifier one is echoed)
        self._declared: dict[str, Mapping[str, Any]] = {}
        self._receipted: set[str] = set()  # URLs whose answers carried our signed receipt
        self._offer_locks: dict[str, asyncio.Lock] = {}
        self._deposit_locks: dict[bytes, asyncio.Lock] = {}
        self._own_payer = False

    @classmethod
    def from_key(
        cls,
        key: str,
        state: str | Path = DEFAULT_STATE,
        *,
        base_url: str | None = None,
        rpc_url: str | None = None,
        deposit: int | None = None,
        deposit_requests: int | None = None,
        salt: bytes = bytes(32),
        timeout_s: float = 120.0,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
    ) -> PaymentClient:
        """A client with its own `Payer` for `key` (hex), its channels kept in `state`.

        `deposit` sizes each deposit in token base units; else `deposit_requests` x the price
        (default 10). `state` defaults to ~/.paychan/payer.sqlite (its folder is created).
        The payer requires our signed receipt on every answer. `close()` closes the file.
        `retries` / `retry_backoff_s`: see the class.
        """
        path = _state_path(state)
        kwargs: dict[str, Any] = {}
        if deposit_requests is not None:
            kwargs["deposit_requests"] = deposit_requests
        try:
            signer = Signer(key)
            payer = Payer(signer, path, salt=salt, deposit_amount=deposit, require_receipt=True,
                          **kwargs)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        try:
            client = cls(payer, base_url=base_url, rpc_url=rpc_url, timeout_s=timeout_s,
                         retries=retries, retry_backoff_s=retry_backoff_s)
        except InputError:
            payer.close()
            raise
        client._own_payer = True
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client opened it (and the payer, if `from_key`)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_payer:
            self.payer.close()
            self._own_payer = False

    # --- classification ---------------------------------------------------------------

    async def classify(
        self,
        image: str | os.PathLike[str] | bytes,
        *,
        top_k: int = 5,
        model: str | None = None,
        url: str | None = None,
    ) -> Classification:
        """Pay for and classify one image (a path or the encoded bytes); see the module docstring.

            >>> result = await client.classify("cat.jpg", top_k=3)
            >>> [(p.label, round(p.score, 2)) for p in result.predictions]

        `url` is the classify endpoint (default: base_url + "/v1/classify"). Raises InputError
        before paying for a missing/unreadable/non-image file or top_k outside 1..1000,
        PaymentRefused, RequestFailed (e.g. 400 top_k above the gateway's cap, 422 a broken
        image; uncharged), ReceiptInvalid, GatewayUnreachable.
        """
        body, content_type, name = load_image(image)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InputError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
        endpoint = url or self._endpoint("/v1/classify")
        query = f"top_k={top_k}" + (f"&model={_quote(model)}" if model else "")
        target = endpoint + ("&" if "?" in endpoint else "?") + query
        answer = await self._paid_request(
            "POST", target, body, {"Content-Type": content_type},
            offer_key=endpoint, busy_retries=_BUSY_RETRIES, require_receipt=True,
        )
        _raise_for_answer(answer)
        return _classification(answer, name)

    # --- free gateway reads -----------------------------------------------------------

    async def models(self, url: str | None = None) -> list[dict[str, Any]]:
        """The gateway's model versions (GET /v1/models): id, architecture, version, default."""
        answer = await self._get_json(url or self._endpoint("/v1/models"))
        return list(answer.get("models", []))

    async def pricing(self, url: str | None = None) -> dict[str, Any]:
        """The gateway's price per image and payment terms (GET /v1/pricing)."""
        return await self._get_json(url or self._endpoint("/v1/pricing"))

    async def channel_status(self, channel_id: bytes | str | None = None) -> dict[str, Any] | None:
        """The gateway's view of a channel (GET /v1/channels/{id}); None when it does not know it.

        `channel_id` defaults to this payer's channel with the gateway (see `channel`).
        """
        cid = (await self.channel(channel_id)).channel_id
        try:
            return await self._get_json(self._endpoint(f"/v1/channels/0x{cid.hex()}"))
        except RequestFailed as exc:
            if exc.status == 404:
                return None
            raise

    async def channel(self, channel_id: bytes | str | None = None) -> ChannelRecord:
        """The payer's record of a channel: the one named, else this payer's channel with the
        gateway at base_url (its terms are fetched if not known yet), else the only one stored."""
        if channel_id is not None:
            cid = parse_channel_id(channel_id)
            rec = self.payer.channel(cid)
            if rec is None:
                raise InputError(
                    f"channel 0x{cid.hex()} is not in the payer file {self.payer.path}"
                )
            return rec
        if self.base_url is not None:
            offer = await self._offer_for(self._endpoint("/v1/classify"))
            rec = self.payer.channel(self.payer.channel_id(offer))
            if rec is None:
                raise InputError(f"no channel with {self.base_url} yet: classify an image first")
            return rec
        records = self.payer.channels()
        if len(records) != 1:
            raise InputError(
                f"the payer file holds {len(records)} channels: "
                "name one (channel_id) or give base_url"
            )
        return records[0]

    # --- leaving the channel ----------------------------------------------------------

    async def refund(
        self, url: str | None = None, amount: int | None = None, *, method: str = "POST"
    ) -> SettleResponse:
        """Ask the server for a cooperative refund of the unspent balance (None: all of it).

            >>> settlement = await client.refund()             # everything not charged
            >>> settlement.amount, settlement.transaction      # refunded, refund tx hash

        The payload is the spec's refund (a zero-charge voucher at the charged total).
        Without `url` it goes to the gateway's facilitator (POST base_url +
        "/facilitator/settle"), which claims every charge and refunds the rest in one
        transaction. With `url` it goes to that paid resource as a PAYMENT-SIGNATURE header,
        as the spec describes for any x402 server. Raises PaymentRefused with the server's
        code (e.g. ``..._refund_no_balance``, ``..._channel_busy``).

        A payer file that is new or stale (the refund voucher is below what is claimed on
        chain: ``..._cumulative_below_claimed``) is rebuilt from the server's proof (the
        corrective 402's state, else the gateway's GET /v1/channels/ID) after `Payer.adopt`
        checks it, and the refund is sent once more.
        """
        if amount is not None and (isinstance(amount, bool) or amount <= 0):
            raise InputError(
                f"refund amount must be a positive number of base units, got {amount!r}"
            )
        offer = await self._offer_for(url or self._endpoint("/v1/classify"), method=method)
        if self.payer.channel(self.payer.channel_id(offer)) is None:
            await self._adopt_view(offer, url)  # a new file: the gateway's proof, else the chain
        recovered = False
        while True:
            payment = self._refund_payment(offer, amount)
            settlement, required = await self._send_refund(url, offer, payment, method)
            self.payer.settle(payment, settlement)
            if settlement.success:
                return settlement
            refused = None
            if not recovered and settlement.error_reason in _MISMATCH:
                refused = await self._recover_refund(payment, offer, url, required)
                if refused is None:
                    recovered = True
                    continue
            note = f"; the server's state was not adopted: {refused}" if refused else ""
            raise PaymentRefused(
                settlement.error_reason or str(ErrorCode.REFUND_TRANSACTION_FAILED),
                f"refund failed: {settlement.error_message}{note}", required,
            )

    async def _send_refund(
        self, url: str | None, offer: PaymentRequirements, payment: Payment, method: str
    ) -> tuple[SettleResponse, PaymentRequired | None]:
        """Send a signed refund; its settlement (success or not) and, with `url`, the 402's
        terms when refused (they may carry the corrective state)."""
        if url is None:
            body = json.dumps({"x402Version": 2, "paymentPayload": payment.payload.to_json(),
                               "paymentRequirements": offer.to_json()}).encode()
            target = self._endpoint("/facilitator/settle")
            status, got, answer = await self._send(
                "POST", target, body, {"Content-Type": "application/json"}
            )
            if status != 200:
                raise RequestFailed(status, _error_code(answer), f"refund: {_error_text(answer)}")
            try:
                return SettleResponse.from_json(json.loads(answer)), None
            except (ValueError, PaymentError) as exc:
                raise RequestFailed(status, None, f"{target} answered no SettleResponse: {exc}")
        status, got, answer = await self._send(
            method, url, None, {"PAYMENT-SIGNATURE": payment.header}
        )
        required = _payment_required(got, answer) if status == 402 else None
        raw = got.get("PAYMENT-RESPONSE")
        if raw is None:
            if required is not None:
                raise PaymentRefused(
                    required.error, f"refund refused: {_error_text(answer)}", required
                )
            raise RequestFailed(status, _error_code(answer), f"refund: {_error_text(answer)}")
        return parse_payment_response(raw), required

    async def _recover_refund(
        self,
        payment: Payment,
        offer: PaymentRequirements,
        url: str | None,
        required: PaymentRequired | None,
    ) -> str | None:
        """Adopt the server's proven state after a refund refused as stale; why not, or None."""
        if required is not None and any(a.extra.voucher_state for a in required.accepts):
            figures = await self._chain_figures(payment.channel_id)
            return self.payer.recover_reason(payment, required, **figures)
        try:
            await self._adopt_view(offer, url)
        except (RecoveryRefused, InputError) as exc:
            return str(exc)
        return None

    async def _adopt_view(self, offer: PaymentRequirements, url: str | None) -> ChannelRecord:
        """Rebuild this payer's channel for `offer` from the gateway's view (GET
        /v1/channels/ID: its charged total with the payer's own last voucher), floored at the
        chain's figures when `rpc_url` is set; from the chain alone when the gateway has no
        proof. Raises RecoveryRefused (the proof failed `Payer.adopt`) or InputError."""
        return (await self._rebuild(offer, url)).record

    async def _rebuild(self, offer: PaymentRequirements, url: str | None) -> SyncResult:
        cid = self.payer.channel_id(offer)
        before = self.payer.channel(cid)
        view = await self._channel_view(cid, url)
        onchain = await self._onchain_figures(cid) if self.rpc_url else None
        proof = view.get("voucherState") if view is not None else None
        if view is not None and proof:
            state = ChannelStateSnapshot.from_json(view, "channel", ErrorCode.INVALID_PAYLOAD)
            voucher = VoucherStateSnapshot.from_json(proof, "voucherState",
                                                     ErrorCode.INVALID_PAYLOAD)
            record = self.payer.adopt(
                offer, state, voucher,
                total_claimed=None if onchain is None else onchain["totalClaimed"],
                balance=None if onchain is None else onchain["balance"],
            )
            source = "gateway" if onchain is None else "gateway+chain"
        elif onchain is not None and (onchain["balance"] or before is not None):
            self.payer.resync(offer, balance=onchain["balance"],
                              total_claimed=onchain["totalClaimed"])
            record, source = self.payer.channel(cid), "chain"  # type: ignore[assignment]
        else:
            where = "does not know it" if view is None else "holds no voucher of it"
            raise InputError(
                f"channel 0x{cid.hex()}: the gateway {where}"
                + (" and it holds nothing on chain: classify an image first"
                   if onchain is not None else
                   "; pass rpc_url= (paychan channel sync --rpc URL) to rebuild from the chain")
            )
        chain = None if onchain is None else {k: str(v) if isinstance(v, int) else v
                                              for k, v in onchain.items()}
        return SyncResult("0x" + cid.hex(), source, record, before, view, chain)

    async def sync(self, url: str | None = None) -> SyncResult:
        """Rebuild the local state of this payer's channel with the gateway, from the gateway
        and the chain (`paychan channel sync`): for a lost or stale state file.

            >>> result = await client.sync()
            >>> result.source, result.record.charged, result.record.balance
            ('gateway+chain', 5000, 10000)

        The gateway's charged total is adopted only with its proof, the payer's own last
        voucher, checked by `Payer.adopt` (never above what the payer signed, never below
        on-chain totalClaimed when `rpc_url` is set); without a proof there, the chain's
        totalClaimed is the baseline (needs `rpc_url`). `url`: the paid endpoint whose terms
        name the channel (default base_url + "/v1/classify"). Raises RecoveryRefused when
        the gateway's proof fails, InputError when there is nothing to rebuild from.
        """
        offer = await self._offer_for(url or self._endpoint("/v1/classify"))
        return await self._rebuild(offer, url)

    async def _channel_view(self, cid: bytes, url: str | None) -> dict[str, Any] | None:
        """GET /v1/channels/ID on the gateway serving `url` (default base_url); None: 404."""
        base = _base_of(url) if url is not None else None
        target = (base or self._endpoint("")) + f"/v1/channels/0x{cid.hex()}"
        try:
            return await self._get_json(target)
        except RequestFailed as exc:
            if exc.status == 404:
                return None
            raise

    async def _onchain_figures(self, cid: bytes) -> dict[str, Any]:
        """The channel on chain (`rpc_url`): balance, totalClaimed, withdrawal, refund nonce."""
        onchain = await read_onchain(self.rpc_url or "", cid, settlement=self.payer.settlement)
        return {"balance": onchain.balance, "totalClaimed": onchain.total_claimed,
                "withdrawRequestedAt": onchain.withdraw_requested_at,
                "refundNonce": onchain.refund_nonce}

    async def _chain_figures(self, cid: bytes) -> dict[str, int | None]:
        """`Payer.recover`'s chain arguments: read when `rpc_url` is set and answers, else
        None each (the server's snapshot then floors the adopted charge)."""
        if not self.rpc_url:
            return {"total_claimed": None, "balance": None}
        try:
            onchain = await self._onchain_figures(cid)
        except (GatewayUnreachable, ChainError):  # recovery still works from the proof alone
            return {"total_claimed": None, "balance": None}
        return {"total_claimed": onchain["totalClaimed"], "balance": onchain["balance"]}

    def _refund_payment(self, offer: PaymentRequirements, amount: int | None) -> Payment:
        try:
            return self.payer.refund(offer, amount)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    async def withdraw(
        self,
        amount: int | None = None,
        *,
        channel_id: bytes | str | None = None,
        rpc_url: str | None = None,
    ) -> WithdrawStatus:
        """Start the timed withdrawal on-chain (`initiateWithdraw`, the payer key pays gas).

        `amount` None withdraws what this payer has not been charged for: the on-chain balance
        minus the larger of totalClaimed and the charges it proved. The gateway claims its
        charges during the delay (withdrawDelay, 15 min or more); then `finalize_withdraw`.
        """
        if amount is not None and (isinstance(amount, bool) or amount <= 0):
            raise InputError(
                f"withdraw amount must be a positive number of base units, got {amount!r}"
            )
        rec = await self.channel(channel_id)
        async with _PayerChain(self.payer, rpc_url or self.rpc_url) as chain:
            onchain = await chain.read(rec.channel_id)
            if onchain.withdraw_requested_at:
                raise InputError(
                    f"channel 0x{rec.channel_id.hex()} already has a withdrawal pending since "
                    f"{onchain.withdraw_requested_at}: finalize it"
                )
            free = onchain.balance - max(onchain.total_claimed, rec.charged)
            if amount is None:
                amount = free
            if amount <= 0:
                charged = max(onchain.total_claimed, rec.charged)
                raise InputError(f"nothing to withdraw from 0x{rec.channel_id.hex()}: balance "
                                 f"{onchain.balance}, charged {charged}")
            tx = await chain.send("initiateWithdraw", rec, amount)
            after = await chain.read(rec.channel_id)
        return WithdrawStatus("0x" + rec.channel_id.hex(), tx, amount,
                              after.withdraw_requested_at + rec.config.withdraw_delay, False,
                              after.balance)

    async def finalize_withdraw(
        self, *, channel_id: bytes | str | None = None, rpc_url: str | None = None
    ) -> WithdrawStatus:
        """Complete a timed withdrawal once its delay has passed (`finalizeWithdraw`): the
        tokens go back to the payer. Raises ChainError(reason="WithdrawDelayNotElapsed") early."""
        rec = await self.channel(channel_id)
        async with _PayerChain(self.payer, rpc_url or self.rpc_url) as chain:
            before = await chain.read(rec.channel_id)
            if not before.withdraw_requested_at:
                raise InputError(f"channel 0x{rec.channel_id.hex()} has no withdrawal pending: "
                                 "start one with withdraw()")
            tx = await chain.send("finalizeWithdraw", rec)
            after = await chain.read(rec.channel_id)
        self.payer.observe_chain(rec.channel_id, balance=after.balance,
                                 total_claimed=after.total_claimed)
        return WithdrawStatus("0x" + rec.channel_id.hex(), tx, before.balance - after.balance,
                              None, True, after.balance)

    async def onchain(
        self, channel_id: bytes | str | None = None, *, rpc_url: str | None = None
    ) -> Any:
        """The channel as the chain has it (`channels.provider.chain.OnChainChannel`)."""
        rec = await self.channel(channel_id)
        async with _PayerChain(self.payer, rpc_url or self.rpc_url) as chain:
            return await chain.read(rec.channel_id)

    # --- generic x402 requests ----------------------------------------------------------

    async def post(self, url: str, **kwargs: Any) -> PaidResponse:
        return await self.request("POST", url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> PaidResponse:
        return await self.request("GET", url, **kwargs)

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PaidResponse:
        """Send a request, paying when the server asks for it (see the class docstring).

        Returns every answer as it came (402 and errors included); only a paid answer that
        fails verification raises (ChannelHalted).
        """
        return await self._paid_request(method, url, data, dict(headers or {}), offer_key=url)

    # --- internals ----------------------------------------------------------------------

    async def _paid_request(
        self,
        method: str,
        url: str,
        data: bytes | None,
        headers: dict[str, str],
        *,
        offer_key: str,
        busy_retries: int = 0,
        require_receipt: bool | None = None,
    ) -> PaidResponse:
        offer = self._offers.get(offer_key)
        if offer is None:
            async with self._offer_lock(offer_key):  # concurrent first requests probe once
                offer = self._offers.get(offer_key)
                if offer is None:
                    status, got, body = await self._send(method, url, data, headers)
                    if status != 402:
                        return PaidResponse(status, got, body)
                    required = _payment_required(got, body)
                    if not required.accepts:
                        return PaidResponse(status, got, body, required=required)
                    offer = self._learn(offer_key, required, required.accepts[0])
        request_digest = hashlib.sha256(data).digest() if data is not None else None
        # One key for this logical request, kept across every resend and re-signed payment.
        key = _header(headers, IDEMPOTENCY_KEY) or new_idempotency_key()
        headers = {**_without(headers, IDEMPOTENCY_KEY), IDEMPOTENCY_KEY: key}
        corrected = False
        busy = 0
        while True:
            payment, holding = await self._pay(offer, self._identifier(offer_key, key))
            replays = bool(require_receipt) or self._replays(offer_key)
            try:
                try:
                    status, got, body = await self._send_paid(
                        method, url, data, {**headers, "PAYMENT-SIGNATURE": payment.header},
                        lost=replays,
                    )
                except BaseException:  # no answer even after resends: it may have been charged
                    self.payer.release(payment, maybe_charged=True)
                    raise
                if 200 <= status < 300:
                    answer = self._settle(payment, status, got, body, request_digest, require_receipt)
                    extra = answer.settlement.extra if answer.settlement else None
                    if extra is not None and extra.receipt is not None:
                        self._receipted.add(offer_key)  # a paychan gateway: it replays by key
                    return answer
                if status != 402:
                    # Errors are never charged, but a first attempt still running (409 after
                    # every resend) may yet be: its price stays counted until an answer tells.
                    running = status == 409 and _error_code(body) == "idempotency_key_in_use"
                    self.payer.release(payment, maybe_charged=running)
                    if status == 429 and busy < busy_retries:
                        busy += 1  # the gateway is full: wait, then a fresh voucher
                        await asyncio.sleep(_retry_after(got, busy))
                        continue
                    return PaidResponse(status, got, body, payment)
                required = _payment_required(got, body)
                refused = None
                if not corrected and required.error in _MISMATCH:
                    figures = await self._chain_figures(payment.channel_id)
                    refused = self.payer.recover_reason(payment, required, **figures)
                    if refused is None:
                        corrected = True  # adopted the server's proven state: sign again, once
                        continue
                self.payer.release(payment)
                fresh = next((a for a in required.accepts if not a.extra.channel_state), None)
                if fresh is not None:
                    offer = self._learn(offer_key, required, fresh)  # the terms may have changed
                if required.error == ErrorCode.CHANNEL_BUSY and busy < busy_retries:
                    busy += 1  # other requests of ours hold the channel: a fresh voucher fits
                    await asyncio.sleep(_backoff(busy))
                    continue
                return PaidResponse(status, got, body, payment, required=required,
                                    recovery_refused=refused)
            finally:
                if holding is not None:
                    holding.release()

    async def _send_paid(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str],
        *, lost: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one paid request; resend the very same bytes (same Idempotency-Key, same
        payment) when a transient answer came (503, 409 ``idempotency_key_in_use``) and,
        with `lost`, when the answer was lost (no answer, timeout, 502/504); at most
        `retries` times.

            >>> status, headers, body = await client._send_paid("POST", url, jpeg, headers)

        Safe because the key makes the gateway replay an answer it already charged (never a
        second charge), and a refused or failed attempt charged nothing and freed the key.
        `lost` False: the server is not known to replay by key, and a resend could be served
        and charged again. Waits the answer's Retry-After (capped at 5 s), else a doubling
        jittered backoff. Raises GatewayUnreachable when the last attempt got no answer.
        """
        attempt = 0
        while True:
            try:
                status, got, body = await self._send(method, url, data, headers)
            except GatewayUnreachable:
                if attempt >= self.retries or not lost:
                    raise
                attempt += 1
                self.resent += 1
                await asyncio.sleep(self._resend_wait(attempt))
                continue
            if attempt >= self.retries or not _transient(status, body, lost=lost):
                return status, got, body
            attempt += 1
            self.resent += 1
            await asyncio.sleep(_retry_after(got, attempt, self._resend_wait(attempt)))

    def _resend_wait(self, attempt: int) -> float:
        """Seconds before resend `attempt` (1, 2, ...): retry_backoff_s doubled each time,
        with jitter so that a crowd of clients does not come back at once."""
        base = self.retry_backoff_s * 2 ** (attempt - 1)
        return min(base * random.uniform(0.75, 1.25), _RETRY_AFTER_CAP_S)

    def _learn(
        self, offer_key: str, required: PaymentRequired, offer: PaymentRequirements
    ) -> PaymentRequirements:
        """Remember a URL's offer and what its 402 declared in `extensions`."""
        self._offers[offer_key] = offer
        if required.extensions is not None:
            self._declared[offer_key] = required.extensions
        return offer

    def _replays(self, offer_key: str) -> bool:
        """Whether the server of `offer_key` is known to replay a charged answer for its
        Idempotency-Key: its answers carried our signed receipt (a paychan gateway), or its
        402 declared x402's `payment-identifier` extension."""
        return offer_key in self._receipted or isinstance(
            self._declared.get(offer_key, {}).get(PAYMENT_IDENTIFIER), Mapping)

    def _identifier(self, offer_key: str, key: str) -> dict[str, Any] | None:
        """The x402 `payment-identifier` extension carrying `key`, echoed only to a server
        whose 402 declared it (as the reference client does): one that did not would ignore
        it, and ours keys on the Idempotency-Key header (its fast parser takes the payload
        only when the voucher comes last)."""
        declared = self._declared.get(offer_key, {}).get(PAYMENT_IDENTIFIER)
        if not isinstance(declared, Mapping):
            return None
        info = declared.get("info")
        return {PAYMENT_IDENTIFIER: {**declared,
                                     "info": {**(info if isinstance(info, Mapping) else {}),
                                              "id": key}}}

    async def _pay(
        self, offer: PaymentRequirements, extensions: dict[str, Any] | None = None
    ) -> tuple[Payment, asyncio.Lock | None]:
        """Sign the next payment; a deposit keeps the channel's deposit lock until answered.

        While a deposit (opening or top-up) is in flight, later payments wait for it: a
        voucher signed against a balance the chain does not have yet would be refused.
        """
        lock = self._deposit_locks.setdefault(self.payer.channel_id(offer), asyncio.Lock())
        await lock.acquire()
        try:
            payment = self.payer.pay(offer, extensions=extensions)
        except BaseException:
            lock.release()
            raise
        if payment.deposit_amount is None:
            lock.release()
            return payment, None
        return payment, lock

    def _settle(
        self,
        payment: Payment,
        status: int,
        got: Mapping[str, str],
        body: bytes,
        request_digest: bytes | None,
        require_receipt: bool | None,
    ) -> PaidResponse:
        raw = got.get("PAYMENT-RESPONSE")
        if raw is None:  # served but not said what it cost: count it as maybe charged
            self.payer.release(payment, maybe_charged=True)
            if require_receipt:
                raise ReceiptInvalid(payment.channel_id, "a paid answer without PAYMENT-RESPONSE")
            return PaidResponse(status, got, body, payment)
        try:
            settlement = parse_payment_response(raw)
        except PaymentError:
            self.payer.release(payment, maybe_charged=True)
            raise
        result_digest = hashlib.sha256(body).digest() if require_receipt else None
        try:
            self.payer.settle(payment, settlement, request_digest=request_digest,
                              result_digest=result_digest, require_receipt=require_receipt)
        except ChannelHalted as exc:
            if require_receipt:
                raise ReceiptInvalid(exc.channel_id, exc.reason) from exc
            raise
        return PaidResponse(status, got, body, payment, settlement)

    async def _offer_for(self, url: str, *, method: str = "POST") -> PaymentRequirements:
        """The terms of a paid URL: known from an earlier 402, or probed with an empty request."""
        offer = self._offers.get(url)
        if offer is not None:
            return offer
        async with self._offer_lock(url):
            offer = self._offers.get(url)
            if offer is None:
                status, got, body = await self._send(method, url, None, {})
                if status != 402:
                    # the gateway checks the image before the payment: ask for its terms instead
                    offer = await self._pricing_offer(url) if status in (400, 415) else None
                    if offer is None:
                        raise RequestFailed(status, _error_code(body),
                                            f"expected a 402 with payment terms from {url}")
                else:
                    required = _payment_required(got, body)
                    if not required.accepts:
                        raise PaymentRefused(
                            required.error, f"{url} offers no batch-settlement terms"
                        )
                    return self._learn(url, required, required.accepts[0])
                self._offers[url] = offer
        return offer

    async def _pricing_offer(self, url: str) -> PaymentRequirements | None:
        """The one-image offer from GET /v1/pricing on the same server (paychan gateways)."""
        base = _base_of(url) or self.base_url
        if base is None:
            return None
        status, _, body = await self._send("GET", base + "/v1/pricing", None, {})
        if status != 200:
            return None
        accepts = json.loads(body).get("accepts") or []
        if not accepts:
            return None
        return PaymentRequired.from_json({"x402Version": 2, "accepts": accepts}).accepts[0]

    def _offer_lock(self, key: str) -> asyncio.Lock:
        return self._offer_locks.setdefault(key, asyncio.Lock())

    def _endpoint(self, path: str) -> str:
        if self.base_url is None:
            raise InputError("no gateway: pass base_url= to PaymentClient (or a url=)")
        return self.base_url + path

    async def _get_json(self, url: str) -> dict[str, Any]:
        status, _, body = await self._send("GET", url, None, {})
        if status != 200:
            raise RequestFailed(status, _error_code(body), _error_text(body))
        try:
            return json.loads(body)
        except ValueError:
            raise RequestFailed(status, None, f"{url} did not answer JSON") from None

    async def _send(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        import aiohttp  # the payer core needs no HTTP; importing aiohttp costs ~0.3 s

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            )
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                return resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                asyncio.TimeoutError) as exc:  # no answer, or one cut off mid-body: lost
            raise GatewayUnreachable(url, exc) from exc
        except aiohttp.InvalidURL as exc:
            raise InputError(f"not a URL: {url!r}") from exc


class SyncPaymentClient:
    """`PaymentClient` for scripts without asyncio: the same calls, blocking.

        >>> with SyncPaymentClient.from_key(key, base_url="http://127.0.0.1:8402") as client:
        ...     print(client.classify("cat.jpg").top.label)
        ...     client.refund()

    It runs its own event loop; do not use it inside a running one (use PaymentClient there).
    """

    def __init__(self, client: PaymentClient) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = client

    @classmethod
    def from_key(
        cls, key: str, state: str | Path = DEFAULT_STATE, **kwargs: Any
    ) -> SyncPaymentClient:
        """See `PaymentClient.from_key` (same arguments)."""
        return cls(PaymentClient.from_key(key, state, **kwargs))

    @property
    def payer(self) -> Payer:
        return self.client.payer

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coro)
        coro.close()
        raise RuntimeError("SyncPaymentClient cannot run inside an event loop: use PaymentClient")

    def classify(self, image: str | os.PathLike[str] | bytes, **kwargs: Any) -> Classification:
        return self._run(self.client.classify(image, **kwargs))

    def classify_many(
        self, images: list[str | os.PathLike[str] | bytes], *, concurrency: int = 4, **kwargs: Any
    ) -> list[Classification | ClientError]:
        """Classify several images, `concurrency` at a time on one channel; each entry is the
        result or the ClientError that image met (InputError is raised at once, before paying)."""
        for image in images:
            load_image(image)  # every input checked before the first payment
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(image: Any) -> Classification | ClientError:
            async with gate:
                try:
                    return await self.client.classify(image, **kwargs)
                except (PaymentRefused, RequestFailed) as exc:
                    return exc

        async def run() -> list[Classification | ClientError]:
            return list(await asyncio.gather(*(one(i) for i in images)))

        return self._run(run())

    def models(self, url: str | None = None) -> list[dict[str, Any]]:
        return self._run(self.client.models(url))

    def pricing(self, url: str | None = None) -> dict[str, Any]:
        return self._run(self.client.pricing(url))

    def channel(self, channel_id: bytes | str | None = None) -> ChannelRecord:
        return self._run(self.client.channel(channel_id))

    def channel_status(self, channel_id: bytes | str | None = None) -> dict[str, Any] | None:
        return self._run(self.client.channel_status(channel_id))

    def refund(self, amount: int | None = None, *, url: str | None = None) -> SettleResponse:
        return self._run(self.client.refund(url, amount))

    def sync(self, url: str | None = None) -> SyncResult:
        return self._run(self.client.sync(url))

    def withdraw(self, amount: int | None = None, **kwargs: Any) -> WithdrawStatus:
        return self._run(self.client.withdraw(amount, **kwargs))

    def finalize_withdraw(self, **kwargs: Any) -> WithdrawStatus:
        return self._run(self.client.finalize_withdraw(**kwargs))

    def request(self, method: str, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.request(method, url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.post(url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.get(url, **kwargs))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self.client.close())
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def read_onchain(
    rpc_url: str, channel_id: bytes | str, *, settlement: bytes | str | None = None
) -> Any:
    """A channel as the chain has it (`channels.provider.chain.OnChainChannel`), no key needed.

        >>> state = await read_onchain("http://127.0.0.1:8545", "0x3f...")
        >>> state.balance, state.total_claimed, state.withdraw_requested_at
    """
    from ..protocol.eip712 import to_address

    cid = parse_channel_id(channel_id)
    where = to_address(settlement) if settlement is not None else None
    async with _PayerChain(None, rpc_url, settlement=where) as chain:
        return await chain.read(cid)


# --------------------------------------------------------------------------- inputs


def load_image(image: str | os.PathLike[str] | bytes) -> tuple[bytes, str, str | None]:
    """(bytes, content type, file name or None) of an image path or its bytes; InputError if
    it is missing, unreadable, empty or not a JPEG, PNG, WebP, GIF or BMP (by its first bytes).

        >>> body, content_type, name = load_image("cat.jpg")
    """
    name: str | None = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        what = "the image bytes"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        name = str(image)
        what = name
        if path.is_dir():
            raise InputError(f"{name}: is a folder, not an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror})") from None
    else:
        raise InputError(f"image must be a path or bytes, got {type(image).__name__}")
    if not data:
        raise InputError(f"{what}: is empty")
    content_type = sniff_image(data)
    if content_type is None:
        raise InputError(f"{what}: not a JPEG, PNG, WebP, GIF or BMP image")
    return data, content_type, name


def sniff_image(data: bytes) -> str | None:
    """The image content type from the first bytes, or None."""
    for magic, offset, content_type in _IMAGE_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            if content_type == "image/webp" and data[:4] != b"RIFF":
                continue
            return content_type
    return None


def parse_channel_id(value: bytes | str) -> bytes:
    """A 32-byte channel id from bytes or 0x-hex; InputError otherwise."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) == 32:
            return bytes(value)
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise InputError(f"channel id must be 0x followed by 64 hex digits, got {value!r}")


# --------------------------------------------------------------------------- helpers


def _state_path(state: str | Path) -> str:
    if str(state) == ":memory:":
        return ":memory:"
    path = Path(state).expanduser()
    if path.is_dir():
        raise InputError(f"state: {path} is a folder; give a file such as {path / 'payer.sqlite'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _backoff(attempt: int) -> float:
    """A short jittered wait before retrying channel_busy (our own requests hold the channel)."""
    return random.uniform(0.01, 0.05) * min(2 ** (attempt - 1), 16)


def _retry_after(headers: Mapping[str, str], attempt: int, default: float | None = None) -> float:
    """The answer's Retry-After in seconds (capped at 5 s), else `default` (else _backoff)."""
    try:
        wait = float(headers.get("Retry-After", ""))
    except ValueError:
        wait = _backoff(attempt) if default is None else default
    return min(max(wait, 0.0), _RETRY_AFTER_CAP_S)


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key, also valid as an x402 `payment-identifier` id (16-128 of
    ``[A-Za-z0-9_-]``).

        >>> new_idempotency_key()
        'pay_7d5d747be160e280504c099d984bcfe0'
    """
    return "pay_" + uuid.uuid4().hex


def _transient(status: int, body: bytes, *, lost: bool) -> bool:
    """An answer after which the same request may be sent again as is (see _send_paid);
    `lost`: also those that say the answer was lost on the way (502, 504)."""
    if status in _NOT_SERVED or (lost and status in _ANSWER_LOST):
        return True
    return status == 409 and _error_code(body) == "idempotency_key_in_use"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, its name matched case-insensitively (None: absent)."""
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def _without(headers: Mapping[str, str], name: str) -> dict[str, str]:
    lower = name.lower()
    return {k: v for k, v in headers.items() if k.lower() != lower}


def _base_of(url: str) -> str | None:
    """A paychan gateway's base URL from one of its /v1/ URLs (None: not such a URL)."""
    return url.split("/v1/", 1)[0] if "/v1/" in url else None


def _code_of(code: str | None) -> ErrorCode | str:
    try:
        return ErrorCode(code)
    except ValueError:
        return code or "payment_refused"


def _payment_required(headers: Mapping[str, str], body: bytes) -> PaymentRequired:
    raw = headers.get("PAYMENT-REQUIRED")
    if raw is not None:
        return parse_payment_required(raw)
    try:
        data = json.loads(body)
    except ValueError:
        raise PaymentError(
            ErrorCode.INVALID_PAYLOAD, "PAYMENT-REQUIRED", "a 402 without x402 terms"
        ) from None
    return PaymentRequired.from_json(data)


def _error_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(body: bytes) -> str | None:
    data = _error_json(body)
    err = data.get("error")
    if isinstance(err, dict):
        return err.get("code")
    return err if isinstance(err, str) else data.get("code")


def _error_text(body: bytes) -> str:
    data = _error_json(body)
    err = data.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if data.get("message"):
        return str(data["message"])
    if isinstance(err, str):
        return err
    return body[:200].decode("utf-8", "replace") or "(empty body)"


def _raise_for_answer(answer: PaidResponse) -> None:
    if answer.status == 402:
        required = answer.required
        code = required.error if required else None
        note = answer.recovery_refused
        text = _error_text(answer.body) + (
            f"; the server's corrective state was not adopted: {note}" if note else "")
        raise PaymentRefused(code, text, required)
    if not 200 <= answer.status < 300:
        raise RequestFailed(answer.status, _error_code(answer.body), _error_text(answer.body))


def _classification(answer: PaidResponse, name: str | None) -> Classification:
    settlement, payment = answer.settlement, answer.payment
    assert settlement is not None and settlement.extra is not None and payment is not None
    receipt = settlement.extra.receipt
    assert receipt is not None  # require_receipt=True made settle check it
    cid = payment.channel_id
    try:
        data = answer.json()
        model = data["model"]
        preds = tuple(
            Prediction(str(p["label"]), int(p["index"]), float(p["probability"]), str(p["group"]))
            for p in data["results"][0]["predictions"]
        )
        version = str(model["version"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ReceiptInvalid(cid, f"the paid answer is not a classification ({exc!r})") from None
    if bytes.fromhex(version.removeprefix("0x")) != receipt.receipt.model_version:
        raise ReceiptInvalid(cid, f"the answer names model {version} but the receipt signs "
                                  f"0x{receipt.receipt.model_version.hex()}")
    cs = settlement.extra.channel_state
    assert cs is not None and settlement.extra.charged_amount is not None
    return Classification(
        predictions=preds,
        model_id=str(model.get("id", "")),
        model_version=version if version.startswith("0x") else "0x" + version,
        charged=settlement.extra.charged_amount,
        cumulative_charged=cs.charged_cumulative_amount or 0,
        balance=cs.balance,
        channel_id="0x" + cid.hex(),
        receipt=receipt,
        deposit_tx=settlement.transaction or None,
        deposited=payment.deposit_amount if settlement.transaction else None,
        image=name,
    )


class _PayerChain:
    """The payer's own on-chain calls (withdrawals) through `channels.provider.chain.ChainClient`.

    The payer key signs and pays gas; its transactions are journaled next to the payer file
    (``<state>.tx``), so a crash between sending and the receipt never sends twice. Without a
    payer it only reads (a throwaway key identifies the reader; it signs nothing).
    """

    def __init__(self, payer: Payer | None, rpc_url: str | None, *,
                 settlement: bytes | None = None) -> None:
        if not rpc_url:
            raise InputError("no chain: pass rpc_url= (a JSON-RPC URL of the channel's chain)")
        self.payer = payer
        self.rpc_url = rpc_url
        self.settlement = settlement if payer is None else payer.settlement
        self._w3: Any = None
        self._kv: Any = None

    async def __aenter__(self) -> _PayerChain:
        from web3 import AsyncHTTPProvider, AsyncWeb3  # ~1 s: only withdrawals need it

        from ..provider.chain import ChainClient
        from ..protocol.eip712 import CANONICAL_SETTLEMENT_ADDRESS
        from ..provider.txjournal import SqliteKeyValue, TxJournal

        self._w3 = AsyncWeb3(AsyncHTTPProvider(self.rpc_url, request_kwargs={"timeout": 30}))
        try:
            chain_id = int(await self._w3.eth.chain_id)
        except Exception as exc:  # any transport failure: name the URL
            await self._disconnect()
            raise GatewayUnreachable(self.rpc_url, exc) from exc
        if self.payer is None:
            path, key = ":memory:", "0x" + os.urandom(32).hex()
        else:
            path = self.payer.path
            key = self.payer.signer.private_key_hex()  # the payer's own key pays its gas
        self._kv = SqliteKeyValue(":memory:" if path == ":memory:" else path + ".tx")
        settlement = CANONICAL_SETTLEMENT_ADDRESS
        if self.settlement:
            settlement = "0x" + self.settlement.hex()
        self.chain = ChainClient(self._w3, key, journal=TxJournal(self._kv), settlement=settlement)
        self.chain_id = chain_id
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._kv is not None:
            self._kv.close()
        provider = getattr(self._w3, "provider", None)
        disconnect = getattr(provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def read(self, cid: bytes) -> Any:
        from ..provider.chain import is_transport_error

        try:
            return await self.chain.read_channel(cid)
        except Exception as exc:
            if is_transport_error(exc):
                raise GatewayUnreachable(self.rpc_url, exc) from exc
            raise ChainError("read channel", str(exc)[:300]) from exc

    async def send(self, fn: str, rec: ChannelRecord, *args: Any) -> str:
        from ..provider.chain import TxFailed, config_tuple, is_transport_error

        if rec.chain_id != self.chain_id:
            raise InputError(f"channel 0x{rec.channel_id.hex()} is on chain {rec.chain_id}, "
                             f"but {self.rpc_url} is chain {self.chain_id}")
        data = self.chain.encode(fn, config_tuple(rec.config), *args)
        try:
            meta = {"channel": "0x" + rec.channel_id.hex()}
            result = await self.chain.transact(fn, data, meta=meta)
        except TxFailed as exc:
            raise ChainError(fn, getattr(exc, "reason", None) or str(exc)) from exc
        except Exception as exc:
            if is_transport_error(exc):
                raise GatewayUnreachable(self.rpc_url, exc) from exc
            raise
        return result.tx_hash
