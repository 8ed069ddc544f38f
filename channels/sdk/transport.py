"""The payer client's HTTP core: one aiohttp session, each URL's learned terms, and the
resend rules of a paid request (same Idempotency-Key, same payment).

`HttpCore` is the base of `channels.sdk.PaymentClient`; use that class, not this one::

    >>> async with PaymentClient(payer, base_url=url) as client:
    ...     status, headers, body = await client._send_paid("POST", url, jpeg, paid_headers)
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..protocol import PaymentRequired, PaymentRequirements
from .answers import (
    PAYMENT_IDENTIFIER,
    RETRY_AFTER_CAP_S,
    error_code,
    error_text,
    gateway_base,
    is_transient,
    payment_required,
    retry_after,
)
from .errors import GatewayUnreachable, InputError, PaymentRefused, RequestFailed
from .provenance import ModelCheck

if TYPE_CHECKING:
    import aiohttp

    from .payer import Payer

__all__ = ["DEFAULT_RETRIES", "DEFAULT_RETRY_BACKOFF_S", "HttpCore"]

DEFAULT_RETRIES = 3  # resends of one paid request whose answer was lost or transient
DEFAULT_RETRY_BACKOFF_S = 0.25  # first resend's wait; doubles per resend (capped, jittered)


class HttpCore:
    """Sends requests for a `Payer`'s client: see `channels.sdk.PaymentClient` for the
    arguments. `resent` counts the resends so far."""

    def __init__(
        self,
        payer: Payer,
        session: aiohttp.ClientSession | None = None,
        *,
        base_url: str | None = None,
        rpc_url: str | None = None,
        timeout_s: float = 120.0,
        retries: int = DEFAULT_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        registry: str | None = None,
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
        self._session: aiohttp.ClientSession | None = session
        self._own_session = session is None
        self._timeout_s = timeout_s
        self._offers: dict[str, PaymentRequirements] = {}
        # what each URL's 402 declared in `extensions` (the payment-identifier one is echoed)
        self._declared: dict[str, Mapping[str, Any]] = {}
        self._receipted: set[str] = set()  # URLs whose answers carried our signed receipt
        self._offer_locks: dict[str, asyncio.Lock] = {}
        self._deposit_locks: dict[bytes, asyncio.Lock] = {}
        self._own_payer = False
        # each receipt's model must be published by its signer (channels.sdk.provenance)
        self.model_check = ModelCheck(rpc_url, registry)
        self._advertised: dict[str, str | None] = {}  # gateway -> the registry it names

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
            if attempt >= self.retries or not is_transient(status, body, lost=lost):
                return status, got, body
            attempt += 1
            self.resent += 1
            await asyncio.sleep(retry_after(got, attempt, self._resend_wait(attempt)))

    def _resend_wait(self, attempt: int) -> float:
        """Seconds before resend `attempt` (1, 2, ...): retry_backoff_s doubled each time,
        with jitter so that a crowd of clients does not come back at once."""
        base = self.retry_backoff_s * 2.0 ** (attempt - 1)
        return min(base * random.uniform(0.75, 1.25), RETRY_AFTER_CAP_S)

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
                        raise RequestFailed(status, error_code(body),
                                            f"expected a 402 with payment terms from {url}")
                else:
                    required = payment_required(got, body)
                    if not required.accepts:
                        raise PaymentRefused(
                            required.error, f"{url} offers no batch-settlement terms"
                        )
                    return self._learn(url, required, required.accepts[0])
                self._offers[url] = offer
        return offer

    async def _pricing_offer(self, url: str) -> PaymentRequirements | None:
        """The one-image offer from GET /v1/pricing on the same server (paychan gateways)."""
        base = gateway_base(url) or self.base_url
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
            raise RequestFailed(status, error_code(body), error_text(body))
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            raise RequestFailed(status, None, f"{url} did not answer JSON") from None
        return data

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
