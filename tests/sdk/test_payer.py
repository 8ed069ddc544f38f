"""The payer core: payloads that verify, durable cumulative state, client rules, recovery."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.batch_settlement.types import DepositPayload as X402DepositPayload

import channels
from channels import ErrorCode
from channels.sdk import ChannelHalted, Payer, Payment, PaymentClient
from channels.protocol import (
    BatchExtra,
    ChannelStateSnapshot,
    DepositPayload,
    PaymentRequired,
    PaymentRequirements,
    Receipt,
    RefundPayload,
    ResponseExtra,
    SettleResponse,
    SignedReceipt,
    VoucherPayload,
    VoucherStateSnapshot,
)

# Well-known anvil dev keys (mnemonic "test test ... junk"): payer #1, gateway #2, stranger #3.
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
GATEWAY_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
STRANGER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
CHAIN = 31337
SETTLEMENT = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS
COLLECTOR = channels.protocol.CANONICAL_ERC3009_COLLECTOR_ADDRESS
PRICE = 1_000
GATEWAY = channels.Signer(GATEWAY_KEY)


@pytest.fixture
def offer() -> PaymentRequirements:
    return PaymentRequirements(
        f"eip155:{CHAIN}",
        os.urandom(20),
        PRICE,
        os.urandom(20),
        300,
        BatchExtra(GATEWAY.address_bytes, 900, "USD Coin", "2"),
    )


@pytest.fixture
def payer_path(tmp_path):
    return tmp_path / "payer.sqlite"


@pytest.fixture
def payer(payer_path):
    with Payer(channels.Signer(PAYER_KEY), payer_path) as p:
        yield p


def answer(
    payment: Payment,
    charged: int,
    cumulative: int,
    balance: int = 10 * PRICE,
    *,
    receipt_signer: channels.Signer | None = None,
    channel_id: bytes | None = None,
    request_digest: bytes = bytes(32),
) -> SettleResponse:
    """The PAYMENT-RESPONSE a spec-following server sends for a served request."""
    cid = channel_id or payment.channel_id
    receipt = None
    if receipt_signer is not None:
        body = Receipt(cid, request_digest, b"\x02" * 32, b"\x03" * 32, charged, cumulative)
        sig = receipt_signer.sign_digest(channels.protocol.receipt_digest(CHAIN, SETTLEMENT, body))
        receipt = SignedReceipt(body, sig)
    extra = ResponseExtra(
        charged, ChannelStateSnapshot(cid, balance, 0, 0, 0, cumulative), None, receipt
    )
    amount = payment.deposit_amount
    return SettleResponse(
        True, payment.requirements.network, "0xabc" if amount else "", None, amount, extra
    )


def opened(payer: Payer, offer: PaymentRequirements) -> Payment:
    first = payer.pay(offer)
    payer.settle(first, answer(first, PRICE, PRICE))
    return first


def test_first_payment_is_a_deposit_that_verifies(payer, offer):
    payment = payer.pay(offer)
    body = payment.payload.payload
    assert isinstance(body, DepositPayload)
    assert payment.ceiling == PRICE and body.deposit.amount == 10 * PRICE
    assert body.channel_config.payer == channels.Signer(PAYER_KEY).address_bytes
    assert body.channel_config.receiver_authorizer == GATEWAY.address_bytes
    channels.protocol.verify_voucher(body.channel_config, body.voucher, CHAIN, SETTLEMENT)
    channels.protocol.verify_deposit_authorization(body, offer, COLLECTOR, SETTLEMENT, now=int(time.time()))
    # the header is what goes on the wire, and the reference package reads it too
    parsed = channels.parse_payment_signature(payment.header)
    assert parsed == payment.payload
    X402DepositPayload.from_dict(payment.payload.payload.to_json())


def test_reference_facilitator_accepts_our_voucher(payer, offer):
    payment = payer.pay(offer)
    v = payment.payload.payload.voucher
    assert verify_batch_settlement_voucher_typed_data(
        None,
        "0x" + v.channel_id.hex(),
        str(v.max_claimable_amount),
        channels.Signer(PAYER_KEY).address,
        channels.Signer(PAYER_KEY).address,
        "0x" + v.signature.hex(),
        CHAIN,
    )


def test_vouchers_follow_the_charged_total(payer, offer):
    opened(payer, offer)
    second = payer.pay(offer)
    assert isinstance(second.payload.payload, VoucherPayload)
    assert second.ceiling == 2 * PRICE
    record = payer.settle(second, answer(second, 700, PRICE + 700))  # dynamic price: 700 of 1000
    assert record.charged == 1_700
    assert payer.pay(offer).ceiling == 2_700


def test_balance_short_triggers_a_top_up(payer_path, offer):
    with Payer(channels.Signer(PAYER_KEY), payer_path, deposit_amount=2 * PRICE) as payer:
        first = payer.pay(offer)
        payer.settle(first, answer(first, PRICE, PRICE, balance=2 * PRICE))
        second = payer.pay(offer)
        payer.settle(second, answer(second, PRICE, 2 * PRICE, balance=2 * PRICE))
        third = payer.pay(offer)
        assert isinstance(third.payload.payload, DepositPayload)
        assert third.deposit_amount == 2 * PRICE and third.ceiling == 3 * PRICE


def test_restart_never_signs_below_what_was_signed(payer_path, offer):
    signer = channels.Signer(PAYER_KEY)
    with Payer(signer, payer_path) as payer:
        opened(payer, offer)
        in_flight = [payer.pay(offer) for _ in range(3)]  # crash before any answer
        assert [p.ceiling for p in in_flight] == [2 * PRICE, 3 * PRICE, 4 * PRICE]
    with Payer(signer, payer_path) as restarted:
        record = restarted.channel(in_flight[0].channel_id)
        assert record.charged == PRICE and record.signed_max == 4 * PRICE
        nxt = restarted.pay(offer)
        assert nxt.ceiling == 4 * PRICE
        assert isinstance(nxt.payload.payload, VoucherPayload)


def test_in_flight_requests_settle_in_any_order(payer, offer):
    opened(payer, offer)
    batch = [payer.pay(offer) for _ in range(4)]
    assert [p.ceiling for p in batch] == [2000, 3000, 4000, 5000]
    assert payer.in_flight(batch[0].channel_id) == 4 * PRICE
    # the server commits in its own order: 3rd, 1st, 4th; the 2nd fails (released)
    payer.settle(batch[2], answer(batch[2], PRICE, 2 * PRICE))
    payer.settle(batch[0], answer(batch[0], PRICE, 3 * PRICE))
    payer.settle(batch[3], answer(batch[3], 500, 3 * PRICE + 500))
    payer.release(batch[1])
    record = payer.channel(batch[0].channel_id)
    assert record.charged == 3_500 and record.halted is None
    assert payer.in_flight(batch[0].channel_id) == 0
    assert payer.pay(offer).ceiling == 5_000  # never below the 5,000 already signed


def test_timeout_charges_are_absorbed_when_the_server_reports_them(payer, offer):
    opened(payer, offer)
    lost = payer.pay(offer)
    payer.release(lost, maybe_charged=True)  # no answer: the server may have charged it
    nxt = payer.pay(offer)
    assert nxt.ceiling == 3 * PRICE
    payer.settle(nxt, answer(nxt, PRICE, 3 * PRICE))  # it had: cumulative includes the lost one
    assert payer.channel(nxt.channel_id).charged == 3 * PRICE


@pytest.mark.parametrize(
    "case",
    ["over-price", "cumulative-too-high", "cumulative-too-low", "other-channel", "low-balance"],
)
def test_a_dishonest_answer_halts_the_channel(payer_path, offer, case):
    signer = channels.Signer(PAYER_KEY)
    with Payer(signer, payer_path) as payer:
        opened(payer, offer)
        p = payer.pay(offer)
        response = {
            "over-price": answer(p, PRICE + 1, 2 * PRICE + 1),
            "cumulative-too-high": answer(p, PRICE, 3 * PRICE),
            "cumulative-too-low": answer(p, PRICE, PRICE),
            "other-channel": answer(p, PRICE, 2 * PRICE, channel_id=os.urandom(32)),
            "low-balance": answer(p, PRICE, 2 * PRICE, balance=PRICE),
        }[case]
        with pytest.raises(ChannelHalted):
            payer.settle(p, response)
        assert payer.channel(p.channel_id).charged == PRICE
    with Payer(signer, payer_path) as restarted, pytest.raises(ChannelHalted):
        restarted.pay(offer)  # halted survives a restart


def test_receipts_are_checked(payer_path, offer):
    with Payer(channels.Signer(PAYER_KEY), payer_path, require_receipt=True) as payer:
        first = payer.pay(offer)
        payer.settle(
            first, answer(first, PRICE, PRICE, receipt_signer=GATEWAY), request_digest=bytes(32)
        )
        second = payer.pay(offer)
        with pytest.raises(ChannelHalted, match="receipt"):
            payer.settle(second, answer(second, PRICE, 2 * PRICE))  # no receipt


@pytest.mark.parametrize("bad", ["stranger", "request-digest"])
def test_forged_receipts_halt(payer, offer, bad):
    opened(payer, offer)
    p = payer.pay(offer)
    signer = channels.Signer(STRANGER_KEY) if bad == "stranger" else GATEWAY
    with pytest.raises(ChannelHalted):
        payer.settle(
            p, answer(p, PRICE, 2 * PRICE, receipt_signer=signer), request_digest=b"\x09" * 32
        )


def corrective(payment: Payment, charged: int, signed: int, sig: bytes) -> PaymentRequired:
    offer = payment.requirements
    extra = BatchExtra(
        offer.extra.receiver_authorizer,
        offer.extra.withdraw_delay,
        "USD Coin",
        "2",
        channel_state=ChannelStateSnapshot(payment.channel_id, 10 * PRICE, 0, 0, 0, charged),
        voucher_state=VoucherStateSnapshot(signed, sig),
    )
    reqs = PaymentRequirements(
        offer.network, offer.asset, offer.amount, offer.pay_to, offer.max_timeout_seconds, extra
    )
    return PaymentRequired((reqs,), ErrorCode.CUMULATIVE_AMOUNT_MISMATCH)


def test_corrective_402_is_adopted_only_with_our_own_signature(payer_path, offer):
    signer = channels.Signer(PAYER_KEY)
    with Payer(signer, payer_path) as payer:
        opened(payer, offer)
        pending = [payer.pay(offer) for _ in range(3)]  # ceilings 2000, 3000, 4000
    # the file survived but the answers were lost; the server served the first two
    with Payer(signer, payer_path) as payer:
        p = payer.pay(offer)
        assert p.ceiling == 4 * PRICE
        forged_sig = channels.Signer(STRANGER_KEY).sign_digest(
            channels.voucher_digest(CHAIN, SETTLEMENT, p.channel_id, 3 * PRICE)
        )
        assert not payer.recover(p, corrective(p, 3 * PRICE, 3 * PRICE, forged_sig))
        assert payer.channel(p.channel_id).charged == PRICE

        ours = pending[1].payload.payload.voucher.signature  # our voucher at 3000
        assert not payer.recover(
            p, corrective(p, 3 * PRICE + 1, 3 * PRICE, ours)
        )  # charge > signed
        p = payer.pay(offer)
        assert payer.recover(p, corrective(p, 3 * PRICE, 3 * PRICE, ours))
        record = payer.channel(p.channel_id)
        assert record.charged == 3 * PRICE and record.signed_max == 4 * PRICE
        retry = payer.pay(offer)
        assert retry.ceiling == 4 * PRICE  # exactly charged + price, as a standard server wants


def test_corrective_402_with_another_error_is_ignored(payer, offer):
    opened(payer, offer)
    p = payer.pay(offer)
    sig = p.payload.payload.voucher.signature
    required = corrective(p, 2 * PRICE, 2 * PRICE, sig)
    other = PaymentRequired(required.accepts, ErrorCode.CUMULATIVE_EXCEEDS_BALANCE)
    assert not payer.recover(p, other)
    assert payer.in_flight(p.channel_id) == 0


def test_refund_signs_the_zero_charge_voucher(payer, offer):
    opened(payer, offer)
    p = payer.pay(offer)
    payer.settle(p, answer(p, 400, 1_400))
    refund = payer.refund(offer, amount=3_000)
    body = refund.payload.payload
    assert isinstance(body, RefundPayload) and body.amount == 3_000
    assert body.voucher.max_claimable_amount == 1_400
    channels.protocol.verify_voucher(body.channel_config, body.voucher, CHAIN, SETTLEMENT)
    cs = ChannelStateSnapshot(refund.channel_id, 7_000, 1_400, 0, 1, 1_400)
    record = payer.settle(
        refund, SettleResponse(True, offer.network, "0xdef", None, 3_000, ResponseExtra(None, cs))
    )
    assert record.balance == 7_000 and record.charged == 1_400


def test_refund_needs_a_quiet_channel(payer, offer):
    opened(payer, offer)
    payer.pay(offer)
    with pytest.raises(ValueError, match="in flight"):
        payer.refund(offer)


def test_resync_from_chain_for_a_fresh_file(payer, offer):
    payer.resync(offer, balance=50 * PRICE, total_claimed=7 * PRICE)
    p = payer.pay(offer)
    assert p.ceiling == 8 * PRICE and isinstance(p.payload.payload, VoucherPayload)


# --- PaymentClient over real HTTP against a small spec-following server ----------------


class SpecServer:
    """A minimal x402 batch-settlement resource server built from channels' own parts.

    It follows the spec and our in-flight rule (ceiling >= charged + reserved + price),
    verifies every voucher, and answers with channelState and a signed receipt. It is the
    counterparty of these SDK tests until the gateway exists; it holds state in memory.
    """

    def __init__(self, offer: PaymentRequirements) -> None:
        self.offer = offer
        self.charged: dict[bytes, int] = {}
        self.reserved: dict[bytes, int] = {}
        self.balance: dict[bytes, int] = {}
        self.last: dict[bytes, tuple[int, bytes]] = {}

    def required(self, error=None, cid=None) -> web.Response:
        offer = self.offer
        if cid is not None:
            signed, sig = self.last[cid]
            extra = BatchExtra(
                offer.extra.receiver_authorizer,
                offer.extra.withdraw_delay,
                "USD Coin",
                "2",
                channel_state=ChannelStateSnapshot(
                    cid, self.balance[cid], 0, 0, 0, self.charged[cid]
                ),
                voucher_state=VoucherStateSnapshot(signed, sig),
            )
            offer = PaymentRequirements(
                offer.network,
                offer.asset,
                offer.amount,
                offer.pay_to,
                offer.max_timeout_seconds,
                extra,
            )
        required = PaymentRequired((offer,), error)
        return web.json_response(
            required.to_json(),
            status=402,
            headers={"PAYMENT-REQUIRED": channels.protocol.encode_payment_required(required)},
        )

    def refund(self, p: RefundPayload) -> web.Response:
        cid = p.voucher.channel_id
        if p.voucher.max_claimable_amount != self.charged[cid]:
            return self.required(ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, cid)
        available = self.balance[cid] - self.charged[cid]
        if available <= 0:
            return self.required(ErrorCode.REFUND_NO_BALANCE)
        amount = min(p.amount or available, available)
        self.balance[cid] -= amount
        state = ChannelStateSnapshot(
            cid, self.balance[cid], self.charged[cid], 0, 1, self.charged[cid]
        )
        response = SettleResponse(
            True,
            self.offer.network,
            "0x02",
            p.channel_config.payer,
            amount,
            ResponseExtra(None, state),
        )
        return web.json_response(
            {}, headers={"PAYMENT-RESPONSE": channels.protocol.encode_payment_response(response)}
        )

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("PAYMENT-SIGNATURE")
        if header is None:
            return self.required()
        try:
            payment = channels.parse_payment_signature(header)
            p = payment.payload
            cfg, v = p.channel_config, p.voucher
            channels.protocol.verify_voucher(cfg, v, CHAIN, SETTLEMENT)
            cid = v.channel_id
            if isinstance(p, DepositPayload):
                channels.protocol.verify_deposit_authorization(
                    p, self.offer, COLLECTOR, SETTLEMENT, now=int(time.time())
                )
                self.balance[cid] = self.balance.get(cid, 0) + p.deposit.amount
                self.charged.setdefault(cid, 0)
        except channels.PaymentError as exc:
            return self.required(exc.code)
        if cid not in self.balance:
            return self.required(ErrorCode.MISSING_CHANNEL)
        if isinstance(p, RefundPayload):
            return self.refund(p)
        price = self.offer.amount
        charged, reserved = self.charged[cid], self.reserved.get(cid, 0)
        if v.max_claimable_amount < charged + reserved + price:
            return self.required(ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, cid)
        if v.max_claimable_amount > self.balance[cid]:
            return self.required(ErrorCode.CUMULATIVE_EXCEEDS_BALANCE)
        self.reserved[cid] = reserved + price
        if cid not in self.last or v.max_claimable_amount > self.last[cid][0]:
            self.last[cid] = (v.max_claimable_amount, v.signature)
        await asyncio.sleep(0.001 * (v.max_claimable_amount // price % 5))  # interleave
        self.reserved[cid] -= price
        if body == b"fail":
            return web.Response(status=500, text="model failed: not charged")
        self.charged[cid] += price
        receipt = Receipt(
            cid, hashlib.sha256(body).digest(), bytes(32), bytes(32), price, self.charged[cid]
        )
        signed = SignedReceipt(
            receipt, GATEWAY.sign_digest(channels.protocol.receipt_digest(CHAIN, SETTLEMENT, receipt))
        )
        state = ChannelStateSnapshot(cid, self.balance[cid], 0, 0, 0, self.charged[cid])
        deposit = p.deposit.amount if isinstance(p, DepositPayload) else None
        response = SettleResponse(
            True,
            self.offer.network,
            "0x01" if deposit else "",
            cfg.payer,
            deposit,
            ResponseExtra(price, state, None, signed),
        )
        return web.json_response(
            {"ok": True}, headers={"PAYMENT-RESPONSE": channels.protocol.encode_payment_response(response)}
        )


@pytest.fixture
async def server(offer):
    spec = SpecServer(offer)
    app = web.Application()
    app.router.add_post("/paid", spec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield spec, f"http://127.0.0.1:{port}/paid"
    await runner.cleanup()


async def test_client_pays_sixteen_in_flight_on_one_channel(server, payer_path):
    spec, url = server
    payer = Payer(
        channels.Signer(PAYER_KEY),
        payer_path,
        deposit_amount=100 * PRICE,
        settlement=SETTLEMENT,
        collector=COLLECTOR,
        require_receipt=True,
    )
    async with PaymentClient(payer) as client:
        first = await client.post(url, data=b"image-0")
        assert first.status == 200 and isinstance(first.payment.payload.payload, DepositPayload)
        answers = await asyncio.gather(*(client.post(url, data=b"image-%d" % i) for i in range(16)))
        assert [a.status for a in answers] == [200] * 16
        failed = await client.post(url, data=b"fail")
        assert failed.status == 500
    cid = first.payment.channel_id
    assert spec.charged[cid] == 17 * PRICE
    record = payer.channel(cid)
    assert record.charged == 17 * PRICE and record.halted is None
    assert payer.in_flight(cid) == 0
    payer.close()


async def test_client_recovers_from_a_lost_file_through_the_corrective_402(server, tmp_path):
    spec, url = server
    signer = channels.Signer(PAYER_KEY)
    kwargs = {"deposit_amount": 100 * PRICE, "settlement": SETTLEMENT, "collector": COLLECTOR}
    with Payer(signer, tmp_path / "a.sqlite", **kwargs) as payer:
        async with PaymentClient(payer) as client:
            for i in range(3):
                assert (await client.post(url, data=b"x%d" % i)).status == 200
    # the payer lost its file; the channel (same key, same salt) still has a record and balance
    with Payer(signer, tmp_path / "b.sqlite", **kwargs) as fresh:
        fresh.resync(spec.offer, balance=100 * PRICE, total_claimed=0)  # nothing claimed yet
        async with PaymentClient(fresh) as client:
            answer = await client.post(url, data=b"again")
        assert answer.status == 200
        record = fresh.channels()[0]
        assert record.charged == 4 * PRICE


async def test_client_refund_round_trip(server, payer_path):
    spec, url = server
    payer = Payer(channels.Signer(PAYER_KEY), payer_path, deposit_amount=10 * PRICE)
    async with PaymentClient(payer) as client:
        assert (await client.post(url, data=b"a")).status == 200
        settlement = await client.refund(url, amount=4 * PRICE)
        assert settlement.amount == 4 * PRICE
        cid = payer.channels()[0].channel_id
        assert payer.channel(cid).balance == 6 * PRICE and spec.balance[cid] == 6 * PRICE
        settlement = await client.refund(url)  # the rest
        assert settlement.amount == 5 * PRICE and payer.channel(cid).balance == PRICE
        with pytest.raises(channels.PaymentError) as info:
            await client.refund(url)
        assert info.value.code == ErrorCode.REFUND_NO_BALANCE
    payer.close()


# --- the payer's signatures against the real contracts (embedded py-evm chain) ------------


async def test_payer_deposit_and_voucher_are_accepted_by_the_contracts(payer_path):
    """Our ERC-3009 authorization deposits, our voucher claims, our ClaimBatch authorizes."""
    from eth_abi import encode as abi_encode
    from eth_tester.exceptions import TransactionFailed as EthTesterTransactionFailed
    from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI

    from contracts import DEV_KEYS, embedded_chain, send_transaction

    chain = embedded_chain()
    w3, dep = chain.w3, chain.deployment
    chain_id = await w3.eth.chain_id
    settlement = w3.eth.contract(address=dep.settlement, abi=BATCH_SETTLEMENT_ABI)
    gateway = channels.Signer(DEV_KEYS[2])  # the receiver authorizer (dev key #2)
    offer = PaymentRequirements(
        f"eip155:{chain_id}",
        channels.protocol.to_address(dep.token),
        PRICE,
        gateway.address_bytes,
        300,
        BatchExtra(gateway.address_bytes, 900, "Test USDC", "2"),
    )
    payer = Payer(
        channels.Signer(DEV_KEYS[1]),
        payer_path,
        settlement=dep.settlement,
        collector=dep.collector,
        deposit_amount=10 * PRICE,
    )
    first = payer.pay(offer)
    body = first.payload.payload
    cfg = body.channel_config
    config_tuple = (
        *(channels.protocol.checksum_address(a) for a in (cfg.payer, cfg.payer_authorizer, cfg.receiver)),
        *(channels.protocol.checksum_address(a) for a in (cfg.receiver_authorizer, cfg.token)),
        cfg.withdraw_delay,
        cfg.salt,
    )
    auth = body.deposit.authorization
    collector_data = abi_encode(
        ["uint256", "uint256", "uint256", "bytes"],
        [auth.valid_after, auth.valid_before, int.from_bytes(auth.salt, "big"), auth.signature],
    )
    deposit = settlement.encode_abi(
        "deposit", args=[config_tuple, body.deposit.amount, dep.collector, collector_data]
    )
    await send_transaction(w3, DEV_KEYS[2], {"to": dep.settlement, "data": deposit}, what="deposit")
    cid = first.channel_id
    assert await settlement.functions.getChannelId(config_tuple).call() == cid
    assert await settlement.functions.channels(cid).call() == [10 * PRICE, 0]

    payer.settle(first, answer(first, PRICE, PRICE))
    second = payer.pay(offer)
    payer.settle(second, answer(second, PRICE, 2 * PRICE))
    voucher = second.payload.payload.voucher
    claims = [((config_tuple, voucher.max_claimable_amount), voucher.signature, 2 * PRICE)]
    entry = channels.protocol.ClaimEntry(cid, voucher.max_claimable_amount, 2 * PRICE)
    batch_sig = gateway.sign_digest(channels.protocol.claim_batch_digest(chain_id, dep.settlement, [entry]))
    claim = settlement.encode_abi("claimWithSignature", args=[claims, batch_sig])
    relayer = DEV_KEYS[3]  # anyone may relay a signed claim batch
    await send_transaction(w3, relayer, {"to": dep.settlement, "data": claim}, what="claim")
    assert await settlement.functions.channels(cid).call() == [10 * PRICE, 2 * PRICE]

    # a voucher from another key does not claim: the contract rejects what verify_voucher rejects
    stranger = channels.Signer(DEV_KEYS[4])
    forged = stranger.sign_digest(channels.voucher_digest(chain_id, dep.settlement, cid, 5 * PRICE))
    with pytest.raises(channels.PaymentError):
        channels.protocol.verify_voucher(
            cfg, channels.protocol.Voucher(cid, 5 * PRICE, forged), chain_id, dep.settlement
        )
    entry = channels.protocol.ClaimEntry(cid, 5 * PRICE, 5 * PRICE)
    batch_sig = gateway.sign_digest(channels.protocol.claim_batch_digest(chain_id, dep.settlement, [entry]))
    claims = [((config_tuple, 5 * PRICE), forged, 5 * PRICE)]
    claim = settlement.encode_abi("claimWithSignature", args=[claims, batch_sig])
    invalid_signature = channels.protocol.keccak256(b"InvalidSignature()")[:4]  # the revert's selector
    with pytest.raises(EthTesterTransactionFailed) as reverted:
        await send_transaction(w3, relayer, {"to": dep.settlement, "data": claim}, what="claim")
    assert str(invalid_signature) in str(reverted.value)  # eth-tester: "reverted: b'...'"
    assert await settlement.functions.channels(cid).call() == [10 * PRICE, 2 * PRICE]
    payer.close()


# --- property: against an honest server, every payment is accepted and nothing halts -------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("pay")),
        st.tuples(st.just("serve"), st.integers(0, 7), st.integers(0, PRICE)),
        st.tuples(st.just("fail"), st.integers(0, 7)),
        st.tuples(st.just("timeout"), st.integers(0, 7), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_honest_server_accepts_every_payment_under_any_interleaving(ops):
    """The server's rule (ceiling >= charged + reserved + price, ceiling <= balance) always
    holds for the payer's vouchers, and its cumulative reports never trip the client rules."""
    offer = PaymentRequirements(
        f"eip155:{CHAIN}", b"\x01" * 20, PRICE, b"\x02" * 20, 300,
        BatchExtra(GATEWAY.address_bytes, 900, "USD Coin", "2"),
    )  # fmt: skip
    payer = Payer(channels.Signer(PAYER_KEY), ":memory:", deposit_amount=1_000 * PRICE)
    charged = reserved = balance = 0
    in_flight: list[Payment] = []
    for op in ops:
        if op[0] == "pay":
            p = payer.pay(offer)
            if p.deposit_amount:
                balance += p.deposit_amount
            assert p.ceiling >= charged + reserved + PRICE  # the server accepts it
            assert p.ceiling <= balance
            reserved += PRICE
            in_flight.append(p)
            continue
        if not in_flight:
            continue
        p = in_flight.pop(op[1] % len(in_flight))
        reserved -= PRICE
        if op[0] == "serve":
            charged += op[2]
            payer.settle(p, answer(p, op[2], charged, balance))
        elif op[0] == "fail":
            payer.release(p)
        else:  # the answer is lost; the server may or may not have charged
            if op[2]:
                charged += PRICE
            payer.release(p, maybe_charged=True)
    record = payer.channels()[0] if payer.channels() else None
    if record is not None:
        assert record.halted is None
        assert record.charged <= charged  # never more than the server charged
    payer.close()


_CHILD = r"""
import sys
import channels
from channels.sdk.payer import Payer
from channels.protocol import BatchExtra, PaymentRequirements

gateway = channels.Signer(sys.argv[3])
offer = PaymentRequirements("eip155:31337", b"\x01" * 20, 1000, b"\x02" * 20, 300,
                            BatchExtra(gateway.address_bytes, 900, "USD Coin", "2"))
payer = Payer(channels.Signer(sys.argv[2]), sys.argv[1], deposit_amount=10**12)
while True:  # pay forever, never answered; print each ceiling once pay() has returned
    print(payer.pay(offer).ceiling, flush=True)
"""


def test_a_killed_payer_resumes_above_every_ceiling_it_handed_out(payer_path):
    """SIGKILL mid-stream: every ceiling that left pay() is on disk (WAL, synchronous=FULL)."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(payer_path), PAYER_KEY, GATEWAY_KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        seen = [int(child.stdout.readline()) for _ in range(25)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert seen == [PRICE * (i + 1) for i in range(25)]
    offer = PaymentRequirements(
        f"eip155:{CHAIN}", b"\x01" * 20, PRICE, b"\x02" * 20, 300,
        BatchExtra(GATEWAY.address_bytes, 900, "USD Coin", "2"),
    )  # fmt: skip
    with Payer(channels.Signer(PAYER_KEY), payer_path) as payer:
        assert payer.pay(offer).ceiling >= seen[-1]
