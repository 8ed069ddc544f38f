"""The payment gate: the gateway's side of a batch-settlement channel, per request.

It joins what ``channels`` owns — wire, verification, the pure ledger and its stores, the
chain client (``ChainClient``), the in-process facilitator (``Facilitator``: deposits,
refunds) and the chain sync (``ChainSync``: watcher + settler under a lease) — into the calls
the x402 middleware makes::

    refund = gate.refund_payment(header, request)             # None | 402 | verified refund
    response = await gate.refund(refund, request)             # claim charges, refund the rest
    checked = gate.check(header, units, request)              # 402 | verified payment (no I/O)
    held = await gate.reserve(checked, units, request)        # 402 | Hold (deposit submitted here)
    await gate.release(held)                                  # failure: nothing is charged
    response = await gate.commit(held, request, response)     # charge + PAYMENT-RESPONSE + receipt

The hot path (check, reserve, commit of a known channel) never touches the chain: vouchers
are verified in-process and the ledger store holds the channel state. The chain is read only
for a deposit payload (submitted through the facilitator) and for a channel the store does
not know (mirrored once from the chain).

``PaymentGate.open(config, metrics, chain=...)`` connects the chain, reads the token's
EIP-712 domain, opens the ledger store and builds the client, facilitator and chain sync;
``close()`` stops the sync and flushes and closes the store. ``settle_now()`` claims and
settles everything charged, now.

The gate's jobs live by module: its refusals in ``gateway.rejections``, refund serving in
``gateway.refunds``, what a paid answer carries (``PAYMENT-RESPONSE``, replays) in
``gateway.paid_answers``, channel and settlement reports in ``gateway.views``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from web3 import AsyncWeb3

from channels.protocol import (
    IDEMPOTENCY_KEY,
    PAYMENT_RESPONSE,
    AcceptInput,
    DepositPayload,
    ErrorCode,
    PaymentError,
    RefundPayload,
    Rejection,
    Signer,
    UnknownReservation,
    checksum_address,
    to_address,
    verify_deposit_authorization,
)
from channels.provider import (
    ChainClient,
    ChainHealth,
    ChainSync,
    Facilitator,
    is_transport_error,
    open_provider,
)
from channels.provider.store import is_redis_outage
from gateway.chain_setup import close_web3, connect_rpc, provider_config, token_domain, web3_of
from gateway.config import GatewayConfig
from gateway.errors import api_error
from gateway.keys import CHARGED, MODEL_VERSION_HASH
from gateway.metrics import GatewayMetrics, Gauge
from gateway.paid_answers import PaymentResponder, replay, request_digest
from gateway.receipts import ReceiptSigner
from gateway.refunds import serve_refund
from gateway.rejections import chain_unavailable, reject, resource_url, store_unavailable
from gateway.terms import EXPOSE_HEADERS, Terms, VerifiedPayment
from gateway.views import channel_view, settle_now

__all__ = ["Hold", "PaymentGate"]

log = logging.getLogger("paychan.payments")

@dataclass(slots=True)
class Hold:
    """A price reserved on a channel while its request runs."""

    payment: VerifiedPayment
    amount: int
    request_id: str
    deposit_tx: str = ""
    deposit_amount: int | None = None
    idempotency_key: str | None = None
    request_digest: str = ""  # what the Idempotency-Key was taken for (see request_digest)
    body_sha256: bytes = b""  # the request body's sha256, once hashed (receipt + key share it)


# ---------------------------------------------------------------------- the gate


class PaymentGate:
    """Verifies payments, holds and commits charges, signs receipts (one per gateway process).

    ``chain`` is the provider's ``ChainClient`` (its journal lives in ``store``),
    ``facilitator`` submits deposits and refunds, ``sync`` follows the chain and settles.
    """

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        terms: Terms,
        store: Any,
        receipts: ReceiptSigner,
        chain: ChainClient,
        facilitator: Facilitator,
        sync: ChainSync,
        *,
        owned_w3: AsyncWeb3[Any] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.terms = terms
        self.store = store
        self.receipts = receipts
        self.chain = chain
        self.facilitator = facilitator
        self.sync = sync
        self._owned_w3 = owned_w3
        self._sync_stopped = False
        self.responses = PaymentResponder(terms.network)
        # Request ids unique across processes sharing a Redis ledger: pid + boot nonce + counter.
        self._ids = itertools.count()
        self._id_prefix = f"{os.getpid():x}-{os.urandom(3).hex()}-"
        # Called after each committed charge with (hold, cumulative charged, request): the
        # usage log (gateway.earnings). Claimed/settled metrics count the chain's events there.
        self.charge_listeners: list[Callable[[Hold, int, web.Request], None]] = []
        metrics.add(Gauge("paychan_settler_leader", "1 while this process holds the settler lease.",
                          read=lambda: int(sync.leader)))
        metrics.add(Gauge("paychan_chain_rpc_retries", "RPC calls retried after a transport failure.",
                          read=lambda: chain.rpc_failures))
        health = chain.health
        if health is not None:  # what the gateway serves while the node is away (ChainHealth)
            metrics.add(Gauge("paychan_chain_reachable", "1 while the chain node answers.",
                              read=lambda: int(health.reachable)))
            metrics.add(Gauge("paychan_chain_offline_exposure", "Token units charged since the "
                              "chain node was last seen (capped by max_offline_exposure while it is away).",
                              read=lambda: health.exposure))

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, config: GatewayConfig, metrics: GatewayMetrics, *, chain: Any = None) -> PaymentGate:
        """Connect (or use the shared ``chain``: see ``web3_of``), read the terms, open the store.

        The gate always builds its own ``ChainClient`` over the connection, signing with
        ``config.key`` and journaling into the ledger store, so restarts finish what was sent.
        """
        wiring = provider_config(config)  # refuses a config without key or token, first
        owned_w3 = None
        if chain is None:
            w3 = owned_w3 = await connect_rpc(config.rpc_url)
        else:
            w3 = web3_of(chain)
        try:
            chain_id = int(await w3.eth.chain_id)
            signer = Signer(wiring.key)
            name, version = config.token_name, config.token_version
            if name is None or version is None:
                name2, version2 = await token_domain(w3, wiring.token)
                name, version = name or name2, version or version2
            receiver = to_address(config.receiver) if config.receiver else signer.address_bytes
            terms = Terms(
                chain_id=chain_id,
                settlement=checksum_address(config.settlement),
                token=to_address(wiring.token),
                receiver=receiver,
                receiver_authorizer=signer.address_bytes,
                price=config.price,
                withdraw_delay=config.withdraw_delay,
                token_name=name,
                token_version=version,
                max_timeout_seconds=config.max_timeout_seconds,
                min_deposit=config.min_deposit,
            )
            provider = await open_provider(w3, wiring, chain_id=chain_id)
            # Told by every RPC call whether the node answers (the chain sync polls it).
            provider.chain.health = ChainHealth(max_exposure=config.max_offline_exposure,
                                                stale_after_s=3 * config.chain_poll_s + 10)
        except BaseException:
            if owned_w3 is not None:
                await close_web3(owned_w3)
            raise
        receipts = ReceiptSigner(signer, chain_id=chain_id, settlement=terms.settlement)
        return cls(config, metrics, terms, provider.store, receipts, provider.chain,
                   provider.facilitator, provider.sync, owned_w3=owned_w3)

    async def stop_sync(self) -> None:
        """Stop the chain sync and give up its lease (idempotent)."""
        if not self._sync_stopped:
            self._sync_stopped = True
            await self.sync.stop()

    async def close(self) -> None:
        """Stop the sync, flush and close the store, disconnect an RPC connection we opened."""
        try:
            await self.stop_sync()
        finally:
            try:
                await self.store.close()  # flushes first
            finally:
                if self._owned_w3 is not None:
                    await close_web3(self._owned_w3)

    async def ping_chain(self) -> bool:
        await self.chain.w3.eth.block_number  # no retries: /readyz wants the truth now
        return True

    async def ping_store(self) -> bool:
        """The store answers and can still make a write durable (a SQLite store whose writer
        process died raises here, so /readyz reports it instead of answering ready)."""
        await self.store.get(bytes(32))
        await self.store.flush()
        return True

    # ------------------------------------------------------------------ 402s

    def requirements(self, units: int) -> dict[str, Any]:
        return self.terms.requirements_json(units)

    def challenge(self, units: int, request: web.Request) -> web.Response:
        return self.terms.challenge(units, resource_url(request))

    def reject(self, error: PaymentError, units: int, request: web.Request,
               rejection: Rejection | None = None) -> web.Response:
        """The 402 for a refused payment (see ``gateway.rejections.reject``)::

            return gate.reject(PaymentError(ErrorCode.CHANNEL_BUSY, "payload.voucher", why), 1, request)
        """
        return reject(self.terms, self.metrics, self.config.retry_after_s, error, units, request,
                      rejection)

    # ------------------------------------------------------------------ the calls

    def check(self, header: str, units: int, request: web.Request) -> VerifiedPayment | web.Response:
        """Parse and verify the payment (signature, channel binding, offer, deposit authorization).

        Synchronous: it is pure CPU (no store, no chain), so it costs no coroutine per request.
        """
        try:
            payment = self.terms.parse(header, units)
            if isinstance(payment.payload, RefundPayload):  # the middleware serves refunds first
                raise PaymentError(ErrorCode.PAYLOAD_TYPE, "payload.type",
                                   "a refund payload is answered before the request is priced")
            if isinstance(payment.payload, DepositPayload):
                verify_deposit_authorization(
                    payment.payload, self.terms.requirements(units), self.config.collector,
                    self.terms.settlement, now=int(time.time()),
                )
        except PaymentError as exc:
            return self.reject(exc, units, request)
        return payment

    def refund_payment(self, header: str, request: web.Request) -> VerifiedPayment | web.Response | None:
        """A verified refund payload from ``PAYMENT-SIGNATURE``; a 402 for a bad one; None when
        the header carries a voucher or deposit (the usual path then checks it)."""
        try:
            return self.terms.parse_refund(header)
        except PaymentError as exc:
            return self.reject(exc, 1, request)

    async def refund(self, payment: VerifiedPayment, request: web.Request) -> web.Response:
        """Serve a cooperative refund sent to the paid resource: claim every outstanding charge
        and refund the rest (see ``gateway.refunds.serve_refund``). Nothing is charged."""
        return await serve_refund(self, payment, request)

    async def reserve(self, payment: VerifiedPayment, units: int, request: web.Request) -> Hold | web.Response:
        """Hold the price (ledger acceptance rules); submit a deposit payload's deposit on-chain.
        A store that cannot be reached (Redis down) is 503 ``store_unavailable``."""
        request_id = self._id_prefix + str(next(self._ids))
        key = request.headers.get(IDEMPOTENCY_KEY)
        try:
            return await self._reserve(payment, units, request, request_id, key)
        except Exception as exc:
            if not is_redis_outage(exc):
                raise
            if key is not None:  # our pending marker may be stored: free it, now or (the
                try:             # store keeps it) as soon as Redis answers again
                    await self.store.release(payment.channel_id, request_id, idempotency_key=key)
                except Exception:  # noqa: BLE001, S110 - the outage reported below
                    pass
            raise store_unavailable(self.config) from None

    async def _reserve(self, payment: VerifiedPayment, units: int, request: web.Request,
                       request_id: str, key: str | None) -> Hold | web.Response:
        amount = self.terms.price_of(units)
        payload = payment.payload
        deposit_amount = payload.deposit.amount if isinstance(payload, DepositPayload) else 0
        digest, body_sha256 = "", b""
        if key is not None:
            body_sha256 = hashlib.sha256(await request.read()).digest()
            digest = request_digest(request.method, request.path_qs, body_sha256, amount)
            record = await self.store.begin_idempotent(payment.channel_id, key, request_id, time.time(),
                                                       digest=digest)
            if record is not None:
                return replay(record, digest, metrics=self.metrics,
                              retry_after_s=self.config.retry_after_s)
        offline = self._offline_refusal(amount, deposit=bool(deposit_amount))
        if offline is not None:
            if key is not None:
                await self.store.release(payment.channel_id, request_id, idempotency_key=key)
            raise offline
        voucher = payment.voucher
        inp = AcceptInput(payment.channel_id, voucher.max_claimable_amount, voucher.signature, amount,
                          request_id, time.time(), deposit_amount, payment.config)
        outcome = await self.store.accept(inp)
        hold = Hold(payment, amount, request_id, idempotency_key=key, request_digest=digest,
                    body_sha256=body_sha256)
        if isinstance(outcome, Rejection) and outcome.code == ErrorCode.CHANNEL_NOT_FOUND and not deposit_amount:
            # Unknown here but maybe funded on-chain (deposited elsewhere, or our state was
            # lost): mirror the chain's view once and try again (the spec's recovery baseline).
            try:
                health = self.chain.health
                if health is not None and not health.reachable:
                    raise ConnectionError("the chain node is unreachable")  # do not wait on it
                synced = await self._mirror_from_chain(payment)
            except Exception as exc:
                if key is not None:
                    await self.release(hold)  # drops the pending Idempotency-Key marker
                if is_transport_error(exc):
                    raise chain_unavailable(self.config) from None
                raise
            if synced:
                outcome = await self.store.accept(inp)
        if isinstance(outcome, Rejection):
            if key is not None:
                await self.release(hold)  # drops the pending Idempotency-Key marker
            return self.reject(PaymentError(outcome.code, "payload.voucher.maxClaimableAmount", outcome.message),
                                units, request, outcome)
        if deposit_amount and isinstance(payload, DepositPayload):
            try:
                # Verifies against the chain (block time, payer funds, balance), submits through
                # the collector, waits for the receipt, and mirrors the new balance into the store.
                done = await self.facilitator.submit_deposit(payload, self.terms.requirements(units))
            except PaymentError as exc:
                await self.release(hold)
                return self.reject(exc, units, request)
            except Exception as exc:
                await self.release(hold)
                if is_transport_error(exc):
                    raise chain_unavailable(self.config) from None
                raise
            self.metrics.deposits.inc()
            hold.deposit_tx, hold.deposit_amount = done.tx_hash, deposit_amount
        return hold

    def _offline_refusal(self, amount: int, *, deposit: bool) -> web.HTTPException | None:
        """While the chain node is unreachable: the 503 for a deposit (it needs the chain) or
        for a charge past ``max_offline_exposure``; None otherwise (``ChainHealth``)."""
        health = self.chain.health
        if health is None or health.reachable:
            return None
        down = f"the chain node has been unreachable for {health.down_for_s():.0f} s"
        retry = max(self.config.retry_after_s, 5)
        if deposit:
            return chain_unavailable(self.config, f"{down}; a deposit needs it: retry with the "
                                     "same payment once it answers (nothing was charged)",
                                     retry_after_s=retry)
        if not health.admits(amount):
            return chain_unavailable(self.config, f"{down} and this gateway has served "
                                     f"{health.exposure} token units since it was last seen "
                                     f"(max_offline_exposure {health.max_exposure}); retry once "
                                     "the node answers (nothing was charged)", retry_after_s=retry)
        return None

    async def _mirror_from_chain(self, payment: VerifiedPayment) -> bool:
        """Mirror a channel's on-chain state into the store; False when it holds nothing."""
        async with asyncio.timeout(self.config.request_timeout_s):
            onchain = await self.chain.read_channel(payment.channel_id)
        if not onchain.balance:
            return False
        await self.store.apply_fact(payment.channel_id, onchain.fact(), config=payment.config)
        return True

    async def release(self, hold: Hold) -> None:
        await self.store.release(hold.payment.channel_id, hold.request_id,
                                 idempotency_key=hold.idempotency_key)

    async def commit(self, hold: Hold, request: web.Request, response: web.Response) -> web.Response:
        """Charge the held price and attach ``PAYMENT-RESPONSE`` with the signed receipt.

        The answer is built from the committed state (the charge's cumulative and channel
        snapshot). With an Idempotency-Key it is built inside the store's atomic commit and
        stored with the charge, so a retry replays exactly this answer and is never charged.
        """
        payment = hold.payment
        body: bytes = response.body  # type: ignore[assignment]
        request_sha256 = hold.body_sha256 or hashlib.sha256(await request.read()).digest()
        version = request.get(MODEL_VERSION_HASH) or bytes(32)
        built: list[str] = []
        charges: list[Any] = []

        def answer(_state: Any, charge: Any) -> bytes:
            # Built inside the store's atomic commit, so its receipt is signed alone, now.
            receipt = self.receipts.sign(payment.channel_id, request_sha256, body, version, hold.amount,
                                         charge.cumulative)
            header = self.responses.header(hold, charge, receipt)
            built.append(header)
            charges.append(charge)
            return json.dumps({
                "status": response.status, "contentType": response.content_type,
                "body": base64.b64encode(body).decode(), "paymentResponse": header,
            }, separators=(",", ":")).encode()

        receipts: list[asyncio.Future[str]] = []

        def sign(charge: Any) -> None:
            # Called as soon as the charge is decided: the receipt's batch is signed while
            # the store writes the charge to disk, so the answer then waits for one, not two.
            receipts.append(self.receipts.sign_batched(payment.channel_id, request_sha256, body, version,
                                                       hold.amount, charge.cumulative))

        try:
            if hold.idempotency_key is None:
                charge = await self.store.commit(payment.channel_id, hold.request_id, hold.amount, time.time(),
                                                 on_charge=sign)
                header = self.responses.header(hold, charge, await receipts[0])
                charges.append(charge)
            else:
                await self.store.commit(payment.channel_id, hold.request_id, hold.amount, time.time(),
                                        idempotency_key=hold.idempotency_key,
                                        request_digest=hold.request_digest, response=answer)
                header = built[-1]  # the run that was written (a Redis retry re-runs it)
        except UnknownReservation:
            # The hold expired while the request ran: the answer is withheld and nothing is
            # charged (the voucher's headroom may already serve another request).
            raise api_error(503, "payment_expired", "the payment hold expired before the answer; "
                            "retry with a fresh voucher", retry_after=self.config.retry_after_s) from None
        except Exception as exc:
            # The store refused the charge (a dead SQLite writer, an unreachable Redis): nothing
            # was charged, so the hold goes too, at once, rather than blocking the channel
            # until it expires. After a charge that did commit, this release finds nothing.
            for receipt in receipts:
                receipt.cancel()  # never sent; it leaves its batch if that is not signed yet
            try:
                await self.release(hold)
            except Exception:  # noqa: BLE001 - the same failure; the one above is the one to report
                pass
            if is_redis_outage(exc):  # the charge may have landed: a resend by key finds out
                raise store_unavailable(self.config) from None
            raise
        self.metrics.charged.inc((), hold.amount)
        if self.chain.health is not None:
            self.chain.health.charged(hold.amount)
        request[CHARGED] = ("0x" + payment.channel_id.hex(), hold.amount, hold.request_id)  # access log
        for listener in self.charge_listeners:
            try:
                listener(hold, charges[-1].cumulative, request)
            except Exception:  # noqa: BLE001 - the charge is made; a listener never undoes it
                log.exception("charge listener failed")
        response.headers[PAYMENT_RESPONSE] = header
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response

    # ------------------------------------------------------------------ views and settlement

    async def channel_view(self, channel_hex: str) -> dict[str, Any] | None:
        """The server's view of a channel, as JSON (None when unknown; ``gateway.views``)."""
        return await channel_view(self.store, channel_hex)

    async def settle_now(self) -> dict[str, Any]:
        """Claim and settle everything charged, now, whatever the policy says; the round as
        JSON (``gateway.views.settle_now``). Raises ``channels.provider.TxFailed``."""
        return await settle_now(self.sync.settler, self.chain)
