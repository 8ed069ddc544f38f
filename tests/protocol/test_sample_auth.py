"""The sample signature (channels/protocol/sample_auth.py): its EIP-712 digest equals
eth-account's, the header round-trips, a malformed one names its field, and the age window."""

from __future__ import annotations

import hashlib

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from channels.protocol import (
    CANONICAL_SETTLEMENT_ADDRESS,
    SampleAuthError,
    SampleAuthorization,
    Signer,
    check_sample_age,
    encode_sample_signature,
    parse_sample_signature,
)
from channels.protocol._fields import b64
from contracts import DEV_KEYS

CID = bytes(range(32))
IMAGE = hashlib.sha256(b"a cat").digest()


def test_digest_is_eip712_and_the_header_round_trips() -> None:
    auth = SampleAuthorization(CID, IMAGE, "okapi calf", "other_mammal", 1_765_000_000)
    typed = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Sample": [{"name": "channelId", "type": "bytes32"},
                       {"name": "imageSha256", "type": "bytes32"},
                       {"name": "label", "type": "string"}, {"name": "group", "type": "string"},
                       {"name": "signedAt", "type": "uint64"}],
        },
        "primaryType": "Sample",
        "domain": {"name": "paychan Sample", "version": "1", "chainId": 31337,
                   "verifyingContract": CANONICAL_SETTLEMENT_ADDRESS},
        "message": {"channelId": CID, "imageSha256": IMAGE, "label": "okapi calf",
                    "group": "other_mammal", "signedAt": 1_765_000_000},
    }
    theirs = Account.sign_message(encode_typed_data(full_message=typed), DEV_KEYS[1])
    assert auth.digest(31337, CANONICAL_SETTLEMENT_ADDRESS) == bytes(theirs.message_hash)
    signer = Signer(DEV_KEYS[1])
    signed = auth.signed(signer, 31337, CANONICAL_SETTLEMENT_ADDRESS)
    assert signed.signature == bytes(theirs.signature)  # deterministic, low s
    parsed = parse_sample_signature(encode_sample_signature(signed))
    assert parsed == signed
    assert parsed.signer(31337, CANONICAL_SETTLEMENT_ADDRESS) == signer.address_bytes
    assert parsed.signer(1, CANONICAL_SETTLEMENT_ADDRESS) != signer.address_bytes  # another chain


@pytest.mark.parametrize("change, field", [
    ({"channelId": "0x12"}, "channelId"),
    ({"imageSha256": None}, "imageSha256"),
    ({"label": 7}, "label"),
    ({"signedAt": -1}, "signedAt"),
    ({"signature": "0x" + "00" * 64}, "signature"),
    ({"group": "x" * 300}, "group"),
])
def test_a_malformed_header_names_its_field(change: dict[str, object], field: str) -> None:
    good = SampleAuthorization(CID, IMAGE, "tabby", "", 1, b"\x01" * 65).to_json()
    with pytest.raises(SampleAuthError) as err:
        parse_sample_signature(b64({**good, **change}))
    assert err.value.code == "bad_sample_signature" and err.value.field == field
    with pytest.raises(SampleAuthError, match="base64"):
        parse_sample_signature("%%%")


def test_the_age_window() -> None:
    check_sample_age(1_000, now=1_500, max_age_s=600)
    check_sample_age(1_050, now=1_000, max_age_s=600)  # a little skew is fine
    with pytest.raises(SampleAuthError) as old:
        check_sample_age(1_000, now=1_601, max_age_s=600)
    assert old.value.code == "sample_signature_expired" and "sign the sample again" in str(old.value)
    with pytest.raises(SampleAuthError) as ahead:
        check_sample_age(2_000, now=1_000, max_age_s=600)
    assert ahead.value.code == "sample_signature_in_future"
