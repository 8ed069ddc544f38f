"""Receipts answered in one event-loop tick share one signature over their Merkle root."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

import channels
from contracts import DEV_KEYS
from gateway.receipts import ReceiptSigner

SETTLEMENT = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS
PROVIDER = channels.Signer(DEV_KEYS[0])  # well-known anvil dev key #0


def _parse(text: str) -> channels.SignedReceipt:
    return channels.SignedReceipt.from_json(json.loads(text), "receipt", channels.ErrorCode.INVALID_PAYLOAD)


def _ask(i: int) -> tuple[bytes, bytes, bytes, bytes, int, int]:
    return (i.to_bytes(32, "big"), b"image %d" % i, b'{"answer":%d}' % i, bytes(32), 10, 10 * (i + 1))


def _call(i: int) -> tuple[bytes, bytes, bytes, bytes, int, int]:
    """`_ask(i)` as the signer takes it: the request body's sha256, not the body."""
    cid, request, answer, version, charged, cumulative = _ask(i)
    return cid, hashlib.sha256(request).digest(), answer, version, charged, cumulative


@pytest.mark.parametrize("count", [1, 2, 3, 7, 32, 33])
async def test_a_tick_of_receipts_is_one_signature_each_verifiable(count: int) -> None:
    signer = ReceiptSigner(PROVIDER, chain_id=31337, settlement=SETTLEMENT, max_batch=64)
    texts = await asyncio.gather(*(signer.sign_batched(*_call(i)) for i in range(count)))
    receipts = [_parse(t) for t in texts]
    assert len({r.signature for r in receipts}) == 1  # one signature for the whole tick
    for i, r in enumerate(receipts):
        channels.verify_receipt(r, 31337, SETTLEMENT, PROVIDER.address)
        cid, request, answer, _, charged, cumulative = _ask(i)
        assert r.receipt.channel_id == cid and r.receipt.cumulative_charged == cumulative
        assert r.receipt.request_digest == hashlib.sha256(request).digest()
        assert r.receipt.result_digest == hashlib.sha256(answer).digest()
        assert len(r.proof) <= (count - 1).bit_length()  # at most ceil(log2(count)) siblings
    # a receipt with its figures changed, or with another receipt's proof, fails
    if count > 1:
        forged = channels.SignedReceipt(receipts[1].receipt, receipts[0].signature, receipts[0].proof)
        with pytest.raises(channels.PaymentError):
            channels.verify_receipt(forged, 31337, SETTLEMENT, PROVIDER.address)
    bumped = channels.protocol.Receipt(*_ask(0)[:1], receipts[0].receipt.request_digest,
                                   receipts[0].receipt.result_digest, bytes(32), 10, 11)
    with pytest.raises(channels.PaymentError):
        channels.verify_receipt(channels.SignedReceipt(bumped, receipts[0].signature, receipts[0].proof),
                                31337, SETTLEMENT, PROVIDER.address)


async def test_batches_are_capped_and_ticks_do_not_mix() -> None:
    signer = ReceiptSigner(PROVIDER, chain_id=31337, settlement=SETTLEMENT, max_batch=4)
    texts = await asyncio.gather(*(signer.sign_batched(*_call(i)) for i in range(10)))
    signatures = [_parse(t).signature for t in texts]
    assert [signatures.count(s) for s in dict.fromkeys(signatures)] == [4, 4, 2]
    later = _parse(await signer.sign_batched(*_call(99)))  # a new tick: a batch of one
    assert later.proof == () and later.signature not in signatures
    channels.verify_receipt(later, 31337, SETTLEMENT, PROVIDER.address)


def test_a_receipt_signed_alone_has_an_empty_proof() -> None:
    signer = ReceiptSigner(PROVIDER, chain_id=31337, settlement=SETTLEMENT)
    receipt = _parse(signer.sign(*_call(5)))
    assert receipt.proof == ()
    channels.verify_receipt(receipt, 31337, SETTLEMENT, PROVIDER.address)
    with pytest.raises(ValueError, match="max_batch"):
        ReceiptSigner(PROVIDER, chain_id=31337, settlement=SETTLEMENT, max_batch=0)


async def test_a_receipt_cancelled_before_its_batch_is_signed_leaves_the_batch() -> None:
    signer = ReceiptSigner(PROVIDER, chain_id=31337, settlement=SETTLEMENT)
    first = signer.sign_batched(*_call(1))
    second = signer.sign_batched(*_call(2))
    first.cancel()  # e.g. its charge failed to reach the disk: it is never signed
    receipt = _parse(await second)
    channels.verify_receipt(receipt, 31337, SETTLEMENT, PROVIDER.address)
    assert first.cancelled() and receipt.proof == ()  # signed alone: a batch of one
