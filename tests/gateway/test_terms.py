"""Terms: the prebuilt 402 challenge and PAYMENT-SIGNATURE checks (real keys, real ECDSA).

The well-known anvil dev keys #0 (provider) and #1 (payer) are used, labelled as such.
"""

from __future__ import annotations

import base64
import json

import pytest

import channels
from channels.protocol import CANONICAL_SETTLEMENT_ADDRESS as SETTLEMENT
from channels import (
    ChannelConfig,
    encode_payment_signature,
    ErrorCode,
    PaymentError,
    Signer,
    voucher_digest,
)
from channels.protocol import PaymentPayload, Voucher, VoucherPayload
from contracts import DEV_KEYS
from gateway.terms import Terms

PROVIDER = Signer(DEV_KEYS[0])  # well-known anvil test key #0
PAYER = Signer(DEV_KEYS[1])  # well-known anvil test key #1
TOKEN = bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3")
CHAIN = 31337


@pytest.fixture
def terms() -> Terms:
    return Terms(chain_id=CHAIN, settlement=SETTLEMENT, token=TOKEN, receiver=PROVIDER.address_bytes,
                 receiver_authorizer=PROVIDER.address_bytes, price=1000, withdraw_delay=900,
                 token_name="USD Coin", token_version="2")


def _config(salt: bytes = bytes(32)) -> ChannelConfig:
    return ChannelConfig(PAYER.address_bytes, PAYER.address_bytes, PROVIDER.address_bytes,
                         PROVIDER.address_bytes, TOKEN, 900, salt)


def _header(terms: Terms, ceiling: int, *, config: ChannelConfig | None = None, chain: int = CHAIN,
            cid: bytes | None = None, signer: Signer = PAYER, units: int = 1, tamper: bool = False) -> str:
    config = config or _config()
    cid = cid or channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    sig = signer.sign_digest(voucher_digest(chain, SETTLEMENT, cid, ceiling))
    if tamper:
        sig = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    payload = PaymentPayload(terms.requirements(units), VoucherPayload(config, Voucher(cid, ceiling, sig)))
    return encode_payment_signature(payload)


def test_challenge_header_equals_body_and_is_cached(terms: Terms) -> None:
    url = "http://127.0.0.1:8402/v1/classify"
    r1, r2 = terms.challenge(1, url), terms.challenge(1, url)
    assert r1.status == 402
    assert r1.body is r2.body  # prebuilt once
    decoded = json.loads(base64.b64decode(r1.headers["PAYMENT-REQUIRED"]))
    assert decoded == json.loads(r1.body)
    offer = decoded["accepts"][0]
    assert decoded["x402Version"] == 2 and decoded["resource"]["url"] == url
    assert offer["scheme"] == "batch-settlement" and offer["network"] == "eip155:31337"
    assert offer["amount"] == "1000" and offer["payTo"] == PROVIDER.address
    assert offer["extra"]["receiverAuthorizer"] == PROVIDER.address
    assert offer["extra"]["withdrawDelay"] == 900 and offer["extra"]["name"] == "USD Coin"
    assert json.loads(terms.challenge(3, url).body)["accepts"][0]["amount"] == "3000"


def test_parse_strict_then_fast_path(terms: Terms) -> None:
    first = terms.parse(_header(terms, 1000), 1)  # strict: caches the channel
    second = terms.parse(_header(terms, 2000), 1)  # fast path
    assert first.channel_id == second.channel_id == channels.protocol.channel_id(_config(), CHAIN, SETTLEMENT)
    assert second.voucher.max_claimable_amount == 2000
    assert second.channel_hex == "0x" + second.channel_id.hex()


@pytest.mark.parametrize("warm", [False, True], ids=["strict", "fast"])
def test_bad_payments_get_spec_codes(terms: Terms, warm: bool) -> None:
    if warm:
        terms.parse(_header(terms, 1000), 1)
    cases = {
        ErrorCode.VOUCHER_SIGNATURE: _header(terms, 3000, tamper=True),
        ErrorCode.CHANNEL_ID_MISMATCH: _header(terms, 3000, cid=bytes(31) + b"\x01"),
        # signed under another chain's domain: the signature recovers to someone else
        ErrorCode.VOUCHER_SIGNATURE.value + "#chain": _header(terms, 3000, chain=1),
        ErrorCode.INVALID_PAYLOAD: "not base64 at all!",
    }
    for expected, header in cases.items():
        with pytest.raises(PaymentError) as info:
            terms.parse(header, 1)
        assert info.value.code == str(expected).split("#")[0], header[:40]


def test_offer_mismatches(terms: Terms) -> None:
    other = Terms(chain_id=1, settlement=SETTLEMENT, token=TOKEN, receiver=PROVIDER.address_bytes,
                  receiver_authorizer=PROVIDER.address_bytes, price=1000, withdraw_delay=900,
                  token_name="USD Coin", token_version="2")
    with pytest.raises(PaymentError) as info:  # a payment for another network
        terms.parse(_header(other, 1000), 1)
    assert info.value.code == ErrorCode.NETWORK_MISMATCH
    with pytest.raises(PaymentError) as info:  # accepted for 1 image, request has 2
        terms.parse(_header(terms, 1000), 2)
    assert info.value.code == ErrorCode.CHARGE_EXCEEDS_SIGNED_CUMULATIVE
    wrong_receiver = ChannelConfig(PAYER.address_bytes, PAYER.address_bytes, PAYER.address_bytes,
                                   PROVIDER.address_bytes, TOKEN, 900, bytes(32))
    with pytest.raises(PaymentError) as info:
        terms.parse(_header(terms, 1000, config=wrong_receiver), 1)
    assert info.value.code == ErrorCode.RECEIVER_MISMATCH


def test_rejection_carries_corrective_state(terms: Terms) -> None:
    cid = channels.protocol.channel_id(_config(), CHAIN, SETTLEMENT)
    err = PaymentError(ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, "payload.voucher.maxClaimableAmount", "low")
    resp = terms.rejection(
        err, 1, "http://x/v1/classify",
        channel_state=channels.protocol.ChannelStateSnapshot(cid, 10_000, 0, 0, 0, 3000),
        voucher_state=channels.protocol.VoucherStateSnapshot(3000, b"\x01" * 65),
    )
    body = json.loads(resp.body)
    assert resp.status == 402 and body == json.loads(base64.b64decode(resp.headers["PAYMENT-REQUIRED"]))
    assert body["error"] == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    extra = body["accepts"][0]["extra"]
    assert extra["channelState"]["chargedCumulativeAmount"] == "3000"
    assert extra["voucherState"]["signedMaxClaimable"] == "3000"
    parsed = channels.protocol.PaymentRequired.from_json(body)  # our own client reads it back
    assert parsed.accepts[0].extra.channel_state.charged_cumulative_amount == 3000
