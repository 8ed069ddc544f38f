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
charge, request and answer digests, model version) of every answer; with `rpc_url`, also that
the answer's model is published in the ModelRegistry the receipt key owns
(`channels.sdk.provenance`). Several classifications
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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from ..protocol import (
    IDEMPOTENCY_KEY,
    PAYMENT_RESPONSE,
    PAYMENT_SIGNATURE,
    ErrorCode,
    PaymentError,
    PaymentRequirements,
    Signer,
    parse_payment_response,
)
from .answers import (
    MISMATCH,
    busy_backoff,
    classification_of,
    error_code,
    gateway_base,
    header,
    new_idempotency_key,
    payment_required,
    raise_for_answer,
    retry_after,
    without_header,
)
from .channel_ops import ChannelOps
from .errors import ChannelHalted, ClientError, InputError, ReceiptInvalid
from .inputs import DEFAULT_STATE, check_top_k, load_image, state_path
from .models import Classification, PaidResponse, Payment
from .payer import Payer
from .samples import SampleOps
from .transport import DEFAULT_RETRIES, DEFAULT_RETRY_BACKOFF_S

__all__ = ["PaymentClient"]

_BUSY_RETRIES = 8  # channel_busy / overloaded answers retried by classify before giving up


class PaymentClient(SampleOps, ChannelOps):
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
        registry: the ModelRegistry whose owner must be the receipt key and where every
            answer's model must be published (default: the one the gateway advertises in
            /v1/models); read through `rpc_url`, unchecked (one warning) without it. See
            `channels.sdk.provenance`.

    The first request to a URL learns the terms from a 402; later ones pay at once. A
    corrective 402 is adopted (after `Payer.adopt` checks the payer's own signature) and
    the request is retried once. Requests may run concurrently on one channel. `resent`
    counts the resends so far.
    """

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
        registry: str | None = None,
    ) -> PaymentClient:
        """A client with its own `Payer` for `key` (hex), its channels kept in `state`.

        `deposit` sizes each deposit in token base units; else `deposit_requests` x the price
        (default 10). `state` defaults to ~/.paychan/payer.sqlite (its folder is created).
        The payer requires our signed receipt on every answer. `close()` closes the file.
        `retries` / `retry_backoff_s`: see the class.
        """
        path = state_path(state)
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
                         retries=retries, retry_backoff_s=retry_backoff_s, registry=registry)
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
        await self.model_check.close()

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
        check_top_k(top_k)
        endpoint = url or self._endpoint("/v1/classify")
        query = f"top_k={top_k}" + (f"&model={quote(model, safe='')}" if model else "")
        target = endpoint + ("&" if "?" in endpoint else "?") + query
        answer = await self._paid_request(
            "POST", target, body, {"Content-Type": content_type},
            offer_key=endpoint, busy_retries=_BUSY_RETRIES, require_receipt=True,
        )
        raise_for_answer(answer)
        result = classification_of(answer, name)
        await self._check_model(answer, endpoint)
        return result

    async def _check_model(self, answer: PaidResponse, endpoint: str) -> None:
        """ReceiptInvalid unless the receipt's model is published in the ModelRegistry that
        the receipt's signer owns (channels.sdk.provenance; skipped, warned, without rpc_url)."""
        check = self.model_check
        payment, settlement = answer.payment, answer.settlement
        assert payment is not None and settlement is not None and settlement.extra is not None
        receipt = settlement.extra.receipt
        assert receipt is not None
        advertised = None
        if check.active and check.registry is None:
            base = gateway_base(endpoint) or self.base_url or endpoint
            if base not in self._advertised:  # asked once per gateway; only the chain is trusted
                try:
                    listing = await self._get_json(base + "/v1/models")
                except ClientError:
                    listing = {}
                named = listing.get("registry")
                self._advertised[base] = (str(named["address"]) if isinstance(named, dict)
                                          and named.get("address") else None)
            advertised = self._advertised[base]
        signer = "0x" + payment.requirements.extra.receiver_authorizer.hex()
        try:
            await check.verify(signer, receipt.receipt.model_version, payment.channel_id, advertised)
        except ReceiptInvalid as exc:
            self.payer.halt(payment.channel_id, exc.reason)
            raise

    async def models(self, url: str | None = None) -> list[dict[str, Any]]:
        """The gateway's model versions (GET /v1/models): id, architecture, version, default."""
        answer = await self._get_json(url or self._endpoint("/v1/models"))
        return list(answer.get("models", []))

    async def pricing(self, url: str | None = None) -> dict[str, Any]:
        """The gateway's price per image and payment terms (GET /v1/pricing)."""
        return await self._get_json(url or self._endpoint("/v1/pricing"))

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
                    required = payment_required(got, body)
                    if not required.accepts:
                        return PaidResponse(status, got, body, required=required)
                    offer = self._learn(offer_key, required, required.accepts[0])
        request_digest = hashlib.sha256(data).digest() if data is not None else None
        # One key for this logical request, kept across every resend and re-signed payment.
        key = header(headers, IDEMPOTENCY_KEY) or new_idempotency_key()
        headers = {**without_header(headers, IDEMPOTENCY_KEY), IDEMPOTENCY_KEY: key}
        corrected = False
        busy = 0
        while True:
            payment, holding = await self._pay(offer, self._identifier(offer_key, key))
            replays = bool(require_receipt) or self._replays(offer_key)
            try:
                try:
                    status, got, body = await self._send_paid(
                        method, url, data, {**headers, PAYMENT_SIGNATURE: payment.header},
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
                    running = status == 409 and error_code(body) == "idempotency_key_in_use"
                    self.payer.release(payment, maybe_charged=running)
                    if status == 429 and busy < busy_retries:
                        busy += 1  # the gateway is full: wait, then a fresh voucher
                        await asyncio.sleep(retry_after(got, busy))
                        continue
                    return PaidResponse(status, got, body, payment)
                required = payment_required(got, body)
                refused = None
                if not corrected and required.error in MISMATCH:
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
                    await asyncio.sleep(busy_backoff(busy))
                    continue
                return PaidResponse(status, got, body, payment, required=required,
                                    recovery_refused=refused)
            finally:
                if holding is not None:
                    holding.release()

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
        raw = got.get(PAYMENT_RESPONSE)
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
