"""x402 v2 wire: round trips, interop with the reference `x402` package, strict errors."""

from __future__ import annotations

import base64
import copy
import json
import os

import pytest
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_signature_header,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig as X402ChannelConfig
from x402.mechanisms.evm.batch_settlement.types import VoucherFields
from x402.mechanisms.evm.batch_settlement.types import VoucherPayload as X402VoucherPayload
from x402.schemas import PaymentPayload as X402PaymentPayload
from x402.schemas import PaymentRequirements as X402PaymentRequirements

import channels
from channels import ErrorCode, PaymentError
from channels.protocol import (
    BatchExtra,
    ChannelConfig,
    ChannelStateSnapshot,
    Deposit,
    DepositPayload,
    Erc3009Authorization,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    Receipt,
    RefundPayload,
    ResourceInfo,
    ResponseExtra,
    SettleResponse,
    SignedReceipt,
    Voucher,
    VoucherPayload,
    VoucherStateSnapshot,
)


def requirements(**extra) -> PaymentRequirements:
    return PaymentRequirements(
        "eip155:31337",
        os.urandom(20),
        1_000,
        os.urandom(20),
        60,
        BatchExtra(os.urandom(20), 900, "USD Coin", "2", **extra),
    )


def config() -> ChannelConfig:
    return ChannelConfig(*(os.urandom(20) for _ in range(5)), 3600, os.urandom(32))


def voucher(amount: int = 5_000) -> Voucher:
    return Voucher(os.urandom(32), amount, os.urandom(65))


def deposit_payload() -> DepositPayload:
    auth = Erc3009Authorization(0, 1_770_000_000, os.urandom(32), os.urandom(65))
    return DepositPayload(config(), voucher(), Deposit(10**6, auth))


def encode(data: dict) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def error_of(data) -> PaymentError:
    header = data if isinstance(data, str) else encode(data)
    with pytest.raises(PaymentError) as info:
        channels.parse_payment_signature(header)
    return info.value


@pytest.mark.parametrize(
    "body",
    [
        deposit_payload(),
        VoucherPayload(config(), voucher()),
        RefundPayload(config(), voucher(), 1500),
        RefundPayload(config(), voucher()),
    ],
    ids=["deposit", "voucher", "refund-partial", "refund-full"],
)
def test_payment_payload_round_trip(body):
    payment = PaymentPayload(
        requirements(), body, ResourceInfo("https://x/v1/classify", "cls", "application/json")
    )
    parsed = channels.parse_payment_signature(channels.encode_payment_signature(payment))
    assert parsed == payment
    assert parsed.payload.type == body.type


def test_reference_client_payload_parses_and_ours_decodes_in_reference():
    reqs = requirements()
    cfg = config()
    v = voucher(4_200)
    reference = X402PaymentPayload(
        x402_version=2,
        accepted=X402PaymentRequirements.model_validate(reqs.to_json()),
        payload=X402VoucherPayload(
            channel_config=X402ChannelConfig.from_dict(cfg.to_json()),
            voucher=VoucherFields("0x" + v.channel_id.hex(), "4200", "0x" + v.signature.hex()),
        ).to_dict(),
    )
    parsed = channels.parse_payment_signature(encode_payment_signature_header(reference))
    assert parsed.payload == VoucherPayload(cfg, v)
    assert parsed.accepted == reqs

    back = decode_payment_signature_header(channels.encode_payment_signature(parsed))
    assert back.payload["voucher"]["maxClaimableAmount"] == "4200"
    assert back.accepted.pay_to == channels.protocol.checksum_address(reqs.pay_to)


def test_payment_required_round_trip_and_reference_decoding():
    cs = ChannelStateSnapshot(os.urandom(32), 10**6, 500, 0, 1, 3200)
    vs = VoucherStateSnapshot(3200, os.urandom(65))
    offer = requirements(min_deposit=10_000, channel_state=cs, voucher_state=vs)
    required = PaymentRequired(
        (offer,), ErrorCode.CUMULATIVE_AMOUNT_MISMATCH, ResourceInfo("https://x/y")
    )
    header = channels.protocol.encode_payment_required(required)
    assert channels.parse_payment_required(header) == required
    reference = decode_payment_required_header(header)
    assert reference.error == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    assert reference.accepts[0].extra["voucherState"]["signedMaxClaimable"] == "3200"


def test_payment_required_skips_other_schemes():
    data = PaymentRequired((requirements(),)).to_json()
    data["accepts"].insert(0, {"scheme": "exact", "network": "eip155:1", "whatever": True})
    parsed = PaymentRequired.from_json(data)
    assert len(parsed.accepts) == 1 and parsed.accepts[0].scheme == "batch-settlement"


def test_settle_response_round_trip_with_receipt():
    receipt = SignedReceipt(
        Receipt(os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32), 700, 3900),
        os.urandom(65),
    )
    extra = ResponseExtra(
        700, ChannelStateSnapshot(os.urandom(32), 10**5, 3200, 0, 1, 3900), None, receipt
    )
    response = SettleResponse(True, "eip155:31337", "", os.urandom(20), None, extra)
    header = channels.protocol.encode_payment_response(response)
    assert channels.parse_payment_response(header) == response
    reference = decode_payment_response_header(header)
    assert reference.amount == "" and reference.transaction == ""
    assert reference.extra["chargedAmount"] == "700"
    assert reference.extra["receipt"]["cumulativeCharged"] == "3900"


def test_matches_ignores_corrective_snapshots_but_not_price():
    offer = requirements()
    echoed = PaymentRequirements(
        offer.network,
        offer.asset,
        offer.amount,
        offer.pay_to,
        30,
        BatchExtra(
            offer.extra.receiver_authorizer,
            900,
            "USD Coin",
            "2",
            voucher_state=VoucherStateSnapshot(1, b"\x01"),
        ),
    )
    assert offer.matches(echoed)
    cheaper = PaymentRequirements(offer.network, offer.asset, 999, offer.pay_to, 60, offer.extra)
    assert not offer.matches(cheaper)


# --- strictness: every missing field names itself and its code --------------------------


def _leaves(data, prefix=""):
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _leaves(value, path)
        yield path


def _delete(data: dict, path: str) -> dict:
    data = copy.deepcopy(data)
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    del node[last]
    return data


EXPECTED_CODE = {
    "x402Version": ErrorCode.INVALID_X402_VERSION,
    "payload": ErrorCode.INVALID_PAYLOAD,
    "payload.type": ErrorCode.PAYLOAD_TYPE,
    "accepted.scheme": ErrorCode.INVALID_SCHEME,
    "accepted.extra.name": ErrorCode.MISSING_EIP712_DOMAIN,
    "accepted.extra.version": ErrorCode.MISSING_EIP712_DOMAIN,
    "payload.deposit.authorization.erc3009Authorization": ErrorCode.ERC3009_AUTHORIZATION_REQUIRED,
}
PAYLOAD_CODE = {
    "deposit": ErrorCode.DEPOSIT_PAYLOAD,
    "voucher": ErrorCode.VOUCHER_PAYLOAD,
    "refund": ErrorCode.REFUND_PAYLOAD,
}
OPTIONAL = {"resource", "resource.description", "resource.mimeType", "payload.amount"}


@pytest.mark.parametrize(
    "body",
    [deposit_payload(), VoucherPayload(config(), voucher()), RefundPayload(config(), voucher(), 5)],
    ids=["deposit", "voucher", "refund"],
)
def test_each_missing_field_is_named_with_its_code(body):
    full = PaymentPayload(requirements(), body, ResourceInfo("https://x", "d", "m")).to_json()
    checked = 0
    for path in _leaves(full):
        if path in OPTIONAL:
            continue
        err = error_of(_delete(full, path))
        expected = EXPECTED_CODE.get(path, PAYLOAD_CODE[body.type])
        assert err.code == expected, path
        if path not in ("payload", "x402Version", "payload.type"):
            assert err.field == path, (path, err.field)
        checked += 1
    assert checked >= 20


VOUCHER_FULL = PaymentPayload(requirements(), VoucherPayload(config(), voucher())).to_json()


@pytest.mark.parametrize(
    "path, value, code",
    [
        ("payload.voucher.maxClaimableAmount", "-5", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", "1e3", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", 1.5, ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", True, ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", str(2**128), ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", "\u0661\u0662", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.maxClaimableAmount", "", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.channelId", "0x1234", ErrorCode.CHANNEL_ID_INVALID),
        ("payload.voucher.channelId", "0x" + "zz" * 32, ErrorCode.CHANNEL_ID_INVALID),
        ("payload.voucher.channelId", 5, ErrorCode.CHANNEL_ID_INVALID),
        ("payload.voucher.signature", "0x", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.signature", "0xabc", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.signature", "abcd", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.voucher.signature", "0xab cd", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.channelConfig.payer", "0x" + "11" * 19, ErrorCode.VOUCHER_PAYLOAD),
        ("payload.channelConfig.payer", "0x" + "1" * 38 + " 1", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.channelConfig.salt", "0x00", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.channelConfig.withdrawDelay", 899, ErrorCode.WITHDRAW_DELAY_OUT_OF_RANGE),
        ("payload.channelConfig.withdrawDelay", 2_592_001, ErrorCode.WITHDRAW_DELAY_OUT_OF_RANGE),
        ("payload.channelConfig.withdrawDelay", "soon", ErrorCode.VOUCHER_PAYLOAD),
        ("payload.channelConfig", [], ErrorCode.VOUCHER_PAYLOAD),
        ("payload.type", "claim", ErrorCode.PAYLOAD_TYPE),
        ("payload.type", ["voucher"], ErrorCode.PAYLOAD_TYPE),
        ("accepted.scheme", "exact", ErrorCode.INVALID_SCHEME),
        ("accepted.network", "solana:mainnet", ErrorCode.VOUCHER_PAYLOAD),
        ("accepted.extra.name", "", ErrorCode.MISSING_EIP712_DOMAIN),
        ("accepted.maxTimeoutSeconds", "60", ErrorCode.VOUCHER_PAYLOAD),
        ("x402Version", 1, ErrorCode.INVALID_X402_VERSION),
    ],
)
def test_malformed_values_are_rejected(path, value, code):
    data = copy.deepcopy(VOUCHER_FULL)
    node = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    err = error_of(data)
    assert err.code == code
    assert err.field == path


def test_refund_amount_must_be_positive():
    data = PaymentPayload(requirements(), RefundPayload(config(), voucher(), 1)).to_json()
    for bad in ("0", "-1", "x"):
        data["payload"]["amount"] = bad
        err = error_of(data)
        assert err.code == ErrorCode.REFUND_AMOUNT_INVALID and err.field == "payload.amount"


def test_permit2_deposit_is_refused_with_its_code():
    data = PaymentPayload(requirements(), deposit_payload()).to_json()
    data["payload"]["deposit"]["authorization"] = {"permit2Authorization": {}}
    err = error_of(data)
    assert err.code == ErrorCode.ERC3009_AUTHORIZATION_REQUIRED


@pytest.mark.parametrize(
    "header",
    [
        "not base64!",
        base64.b64encode(b"{nope").decode(),
        base64.b64encode(b"[1,2]").decode(),
        "eyJ4IjoxfQ",
        base64.b64encode(b"[" * 5000).decode(),
        "",
    ],
    ids=["not-base64", "not-json", "array", "bad-padding", "deep-nesting", "empty"],
)
def test_undecodable_headers_are_invalid_payload(header):
    err = error_of(header)
    assert err.code == ErrorCode.INVALID_PAYLOAD


def test_error_message_names_field_and_code():
    err = error_of(_delete(VOUCHER_FULL, "payload.voucher.signature"))
    assert str(err) == (
        "invalid_batch_settlement_evm_voucher_payload [payload.voucher.signature]: is required"
    )


def test_parse_cache_stays_strict_for_lookalike_values():
    """1 == True and 900 == 900.0 in Python: a cached parse must not accept them."""
    data = copy.deepcopy(VOUCHER_FULL)
    channels.parse_payment_signature(encode(data))  # warm the caches with the valid one
    lookalikes = [
        ("payload.channelConfig.withdrawDelay", 900.0),
        ("accepted.maxTimeoutSeconds", 60.0),
        ("accepted.amount", 1000),  # int, not the spec's string: valid, but parsed afresh
        ("accepted.extra.withdrawDelay", 900.0),
    ]
    for path, value in lookalikes:
        mutated = copy.deepcopy(data)
        node = mutated
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        if isinstance(value, float):
            assert error_of(mutated).field == path
        else:
            assert channels.parse_payment_signature(encode(mutated)).accepted.amount == 1000


def test_reference_client_deposit_parses_and_verifies():
    """The official x402 client's first payment (a deposit) passes our parse and checks."""
    import time

    from eth_account import Account
    from x402.mechanisms.evm.batch_settlement.client.scheme import BatchSettlementEvmScheme

    # Well-known anvil dev keys (mnemonic "test test ... junk"): #1 payer, #2 gateway.
    payer_key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
    gateway = channels.Signer("0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a")
    offer = PaymentRequirements(
        "eip155:31337",
        os.urandom(20),
        1_000,
        os.urandom(20),
        300,
        BatchExtra(gateway.address_bytes, 900, "USD Coin", "2"),
    )
    accepted = X402PaymentRequirements.model_validate(offer.to_json())
    inner = BatchSettlementEvmScheme(Account.from_key(payer_key)).create_payment_payload(accepted)
    header = encode_payment_signature_header(
        X402PaymentPayload(x402_version=2, accepted=accepted, payload=inner)
    )
    payment = channels.parse_payment_signature(header)
    body = payment.payload
    assert isinstance(body, DepositPayload) and payment.accepted.matches(offer)
    settlement = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS
    channels.protocol.verify_voucher(body.channel_config, body.voucher, 31337, settlement)
    channels.protocol.verify_deposit_authorization(
        body, offer, channels.protocol.CANONICAL_ERC3009_COLLECTOR_ADDRESS, settlement, now=int(time.time())
    )
