"""A payer whose state file is new or stale after a claim recovers without a withdrawal (the
spec's "Recovery After State Loss"), and refuses a forged corrective state.

Each test runs on a chain and gateway of its own (``paid_gateway.isolated()``: it claims, and
claims must not touch other tests' channels), with the real model, over real sockets. Before
this recovery, every request here after the claim got ``cumulative_below_claimed`` and the
only way out was the 15-minute timed withdrawal.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

import channels
from channels import PaymentClient
from channels.sdk import PaymentRefused, RecoveryRefused, read_onchain
from contracts import DEV_KEYS
from tests.sdk.gateway_thread import PRICE
from tests.sdk.proxies import RewritingProxy

pytestmark = pytest.mark.anvil

BELOW = str(channels.ErrorCode.CUMULATIVE_BELOW_CLAIMED)


def delete_state(state: Path) -> None:
    """Lose the payer's file (SQLite in WAL mode: the file and its -wal / -shm)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)


async def pay_twice_then_claim(paid_gateway, url: str, key: str, state: Path, salt: bytes,
                               image: Path) -> bytes:
    """Two paid images from `state`, then the gateway claims them: totalClaimed = 2 x price."""
    async with PaymentClient.from_key(key, state, base_url=url, salt=salt) as client:
        await client.classify(image, top_k=1)
        paid = await client.classify(image, top_k=1)
    claimed = paid_gateway.settle_now(url)
    assert claimed["claimed"] >= 2 * PRICE
    return bytes.fromhex(paid.channel_id[2:])


async def test_deleted_state_after_a_claim_then_classify_and_refund(paid_gateway, cat_jpeg, tmp_path) -> None:
    key, salt, state = DEV_KEYS[1], os.urandom(32), tmp_path / "payer.sqlite"
    with paid_gateway.isolated() as (node, url):
        cid = await pay_twice_then_claim(paid_gateway, url, key, state, salt, cat_jpeg)
        assert (await read_onchain(node.url, cid)).total_claimed == 2 * PRICE
        delete_state(state)
        async with PaymentClient.from_key(key, state, base_url=url, salt=salt) as client:
            result = await client.classify(cat_jpeg, top_k=1)  # below_claimed -> adopted -> paid
            refund = await client.refund()
            record = await client.channel()
        onchain = await read_onchain(node.url, cid)
    # charged once on top of the two claimed; no second deposit; the rest came back
    assert (result.charged, result.cumulative_charged, result.deposited) == (PRICE, 3 * PRICE, None)
    assert refund.success and refund.amount == 7 * PRICE
    assert (onchain.balance, onchain.total_claimed, onchain.withdraw_requested_at) == (3 * PRICE, 3 * PRICE, 0)
    assert (record.charged, record.balance) == (3 * PRICE, 3 * PRICE)


async def test_deleted_state_after_a_claim_then_refund_at_once(paid_gateway, cat_jpeg, tmp_path) -> None:
    key, salt, state = DEV_KEYS[2], os.urandom(32), tmp_path / "payer.sqlite"
    with paid_gateway.isolated() as (node, url):
        cid = await pay_twice_then_claim(paid_gateway, url, key, state, salt, cat_jpeg)
        delete_state(state)
        async with PaymentClient.from_key(key, state, base_url=url, salt=salt) as client:
            assert client.payer.channels() == []
            refund = await client.refund()  # the file knows nothing: rebuilt from the gateway first
            record = await client.channel()
        onchain = await read_onchain(node.url, cid)
    assert refund.success and refund.amount == 8 * PRICE
    assert (record.charged, record.balance) == (2 * PRICE, 2 * PRICE)
    assert (onchain.balance, onchain.total_claimed) == (2 * PRICE, 2 * PRICE)


async def test_stale_state_of_another_file_pays_and_refunds(paid_gateway, cat_jpeg, tmp_path) -> None:
    """Two files of one key: B (new) pays after A's charges were claimed; A (now stale) then
    refunds on the paid route, where its refund voucher is below the claimed total once the
    first refund claimed B's charge: the 402 is corrective, A adopts it and refunds the rest."""
    key, salt = DEV_KEYS[3], os.urandom(32)
    with paid_gateway.isolated() as (node, url):
        cid = await pay_twice_then_claim(paid_gateway, url, key, tmp_path / "a.sqlite", salt, cat_jpeg)
        async with PaymentClient.from_key(key, tmp_path / "b.sqlite", base_url=url, salt=salt) as b:
            paid = await b.classify(cat_jpeg, top_k=1)  # B: below_claimed, adopts 2, pays the 3rd
        async with PaymentClient.from_key(key, tmp_path / "a.sqlite", base_url=url, salt=salt) as a:
            stale = await a.channel()
            part = await a.refund(url + "/v1/classify", 2 * PRICE)  # claims B's charge too
            rest = await a.refund(url + "/v1/classify")  # A's voucher (2) < claimed (3): corrective
            record = await a.channel()
        onchain = await read_onchain(node.url, cid)
    assert (paid.charged, paid.cumulative_charged, paid.deposited) == (PRICE, 3 * PRICE, None)
    assert (stale.charged, stale.signed_floor) == (2 * PRICE, 2 * PRICE)
    assert part.success and part.amount == 2 * PRICE
    assert rest.success and rest.amount == 5 * PRICE
    # A adopted the gateway's total, proven by B's voucher (the same key signed it)
    assert (record.charged, record.signed_floor, record.balance) == (3 * PRICE, 3 * PRICE, 3 * PRICE)
    assert (onchain.balance, onchain.total_claimed, onchain.withdraw_requested_at) == (3 * PRICE, 3 * PRICE, 0)


# --------------------------------------------------------------------------- forgeries


def _edit_required(headers: dict[str, str], body: bytes, edit) -> tuple[dict[str, str], bytes]:
    """Apply `edit(extra)` to accepts[0].extra of a 402 (its PAYMENT-REQUIRED and its body)."""
    data = json.loads(base64.b64decode(headers["PAYMENT-REQUIRED"]))
    edit(data["accepts"][0]["extra"])
    text = json.dumps(data).encode()
    return {**headers, "PAYMENT-REQUIRED": base64.b64encode(text).decode()}, text


def _forge_signature(chain_id: int, settlement: str, extra_or_view: dict) -> None:
    """A voucher over the same ceiling, signed by a key that is not the payer's."""
    vs = extra_or_view["voucherState"]
    cid = bytes.fromhex(extra_or_view.get("channelState", extra_or_view)["channelId"][2:])
    digest = channels.voucher_digest(chain_id, settlement, cid, int(vs["signedMaxClaimable"]))
    vs["signature"] = "0x" + channels.Signer(DEV_KEYS[9]).sign_digest(digest).hex()


async def test_forged_corrective_states_are_refused(paid_gateway, cat_jpeg, tmp_path) -> None:
    key, salt, state = DEV_KEYS[4], os.urandom(32), tmp_path / "payer.sqlite"
    with paid_gateway.isolated() as (node, url):
        settlement = node.deployment.settlement
        cid = await pay_twice_then_claim(paid_gateway, url, key, state, salt, cat_jpeg)
        delete_state(state)
        forgeries = {
            "signature": lambda extra: _forge_signature(31337, settlement, extra),
            "above": lambda extra: extra["channelState"].update(
                chargedCumulativeAmount=str(int(extra["voucherState"]["signedMaxClaimable"]) + 5 * PRICE)),
        }
        for name, forge in forgeries.items():

            async def rewrite(request, status, headers, body, forge=forge):
                if status == 402 and "voucherState" in base64.b64decode(
                        headers.get("PAYMENT-REQUIRED", "")).decode():
                    headers, body = _edit_required(headers, body, forge)
                return status, headers, body

            async with RewritingProxy(url, rewrite) as proxy, PaymentClient.from_key(
                    key, state, base_url=proxy, salt=salt) as client:
                with pytest.raises(PaymentRefused) as refused:
                    await client.classify(cat_jpeg, top_k=1)
                record = await client.channel()
            assert refused.value.code == BELOW, name
            assert "not adopted" in str(refused.value), name
            assert ("voucherState.signature" if name == "signature" else "chargedCumulativeAmount") in str(refused.value)
            assert (record.charged, record.balance) == (0, 0), name  # nothing adopted
        # a forged GET /v1/channels/ID: the refund of a new file refuses it, and refunds nothing
        delete_state(state)

        async def forge_view(request, status, headers, body):
            if request.path.startswith("/v1/channels/") and status == 200:
                view = json.loads(body)
                _forge_signature(31337, settlement, view)
                body = json.dumps(view).encode()
            return status, headers, body

        async with RewritingProxy(url, forge_view) as proxy, PaymentClient.from_key(
                key, state, base_url=proxy, salt=salt) as client:
            with pytest.raises(RecoveryRefused, match="voucherState.signature"):
                await client.refund()
            with pytest.raises(RecoveryRefused, match="voucherState.signature"):
                await client.sync()
        view = paid_gateway.channel_view(url, "0x" + cid.hex())
        onchain = await read_onchain(node.url, cid)
        # the gateway charged nothing more, nothing was refunded
        assert view["chargedCumulativeAmount"] == str(2 * PRICE) and view["reserved"] == "0"
        assert (onchain.balance, onchain.total_claimed) == (10 * PRICE, 2 * PRICE)
        # the genuine state, straight from the gateway, is adopted
        async with PaymentClient.from_key(key, state, base_url=url, salt=salt) as client:
            assert (await client.classify(cat_jpeg, top_k=1)).cumulative_charged == 3 * PRICE


def test_adopt_checks_the_proof_without_a_server(tmp_path) -> None:
    """`Payer.adopt` alone: its own voucher is adopted (never below totalClaimed); another
    key's voucher, a charge above the signed maximum, or another channel are refused."""
    from channels.protocol import (
        BatchExtra, ChannelStateSnapshot, PaymentRequirements, VoucherStateSnapshot,
    )

    settlement = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS
    provider = channels.Signer(DEV_KEYS[0]).address_bytes
    offer = PaymentRequirements("eip155:31337", b"\x05" * 20, PRICE, provider, 60,
                                BatchExtra(provider, 900, "USDC", "2"))
    payer = channels.Payer(channels.Signer(DEV_KEYS[5]), tmp_path / "p.sqlite", settlement=settlement)
    cid = payer.channel_id(offer)

    def proof(ceiling: int, key: str = DEV_KEYS[5]) -> VoucherStateSnapshot:
        digest = channels.voucher_digest(31337, settlement, cid, ceiling)
        return VoucherStateSnapshot(ceiling, channels.Signer(key).sign_digest(digest))

    def state(charged: int, claimed: int = 0, channel: bytes = cid) -> ChannelStateSnapshot:
        return ChannelStateSnapshot(channel, 10 * PRICE, claimed, 0, 0, charged)

    for snapshot, voucher, field in (
        (state(3 * PRICE), proof(3 * PRICE, DEV_KEYS[6]), "voucherState.signature"),
        (state(4 * PRICE), proof(3 * PRICE), "chargedCumulativeAmount"),
        (state(3 * PRICE, claimed=4 * PRICE), proof(3 * PRICE), "totalClaimed"),
        (state(3 * PRICE, channel=b"\x01" * 32), proof(3 * PRICE), "channelId"),
        (state(3 * PRICE), None, "voucherState"),
    ):
        with pytest.raises(RecoveryRefused, match=field):
            payer.adopt(offer, snapshot, voucher)
        assert payer.channel(cid) is None  # nothing written
    rec = payer.adopt(offer, state(3 * PRICE, claimed=2 * PRICE), proof(4 * PRICE), total_claimed=3 * PRICE)
    assert (rec.charged, rec.signed_floor, rec.balance) == (3 * PRICE, 4 * PRICE, 10 * PRICE)
    # the next voucher starts from the adopted state (floor: the proven 4 x price)
    assert payer.pay(offer).ceiling == 4 * PRICE
    payer.close()


def test_a_charge_inside_an_adopted_total_is_not_counted_twice(tmp_path) -> None:
    """Found by the SIGKILL test: with payments in flight, a corrective 402 adopts the
    server's total, which may already hold one of them (committed, answer still on its way,
    e.g. a replay after a crash). Settling that one later must not add it again, or the
    payer halts the channel ("server reports cumulative N, below the N+1 it charged")."""
    from tests.sdk.test_payer import (
        PAYER_KEY, PRICE as P, answer, corrective, offer as offer_fixture,
    )

    offer = offer_fixture.__wrapped__()
    with channels.Payer(channels.Signer(PAYER_KEY), tmp_path / "p.sqlite") as payer:
        first = payer.pay(offer)
        payer.settle(first, answer(first, P, P))
        a, b = payer.pay(offer), payer.pay(offer)  # ceilings 2P and 3P, both in flight
        # the server commits `a` (cumulative 2P), its answer is slow; `b` meets a corrective
        # 402 proving 2P with the payer's own voucher at 3P (b's)
        proof = b.payload.payload.voucher.signature
        assert payer.recover(b, corrective(b, 2 * P, 3 * P, proof))
        assert payer.channel(first.channel_id).charged == 2 * P  # a's charge, adopted
        payer.settle(a, answer(a, P, 2 * P))  # a's answer: inside the adopted 2P
        assert payer.channel(first.channel_id).charged == 2 * P
        c = payer.pay(offer)  # b again, re-signed: charged 3P
        record = payer.settle(c, answer(c, P, 3 * P))
    assert record.charged == 3 * P and record.halted is None
