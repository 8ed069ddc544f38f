"""Signer: same bytes as eth-account, low s, v in {27, 28}, never shows its key."""

from __future__ import annotations

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

import channels

# Well-known anvil dev keys (mnemonic "test test ... junk"), accounts #0 and #1.
ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
HALF_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2


def test_address_matches_eth_account():
    signer = channels.Signer(ANVIL_KEY_0)
    assert signer.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert signer.address_bytes == bytes.fromhex(signer.address[2:])
    assert (
        channels.Signer(bytes.fromhex(ANVIL_KEY_1[2:])).address
        == Account.from_key(ANVIL_KEY_1).address
    )


@settings(max_examples=50, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_signature_equals_eth_account_and_is_canonical(digest):
    ours = channels.Signer(ANVIL_KEY_1).sign_digest(digest)
    theirs = Account.unsafe_sign_hash(digest, ANVIL_KEY_1).signature
    assert ours == bytes(theirs)
    assert len(ours) == 65 and ours[64] in (27, 28)
    assert int.from_bytes(ours[32:64], "big") <= HALF_N
    assert channels.recover_signer(digest, ours) == Account.from_key(ANVIL_KEY_1).address


@pytest.mark.parametrize("bad", ["0x1234", "00" * 32, bytes(31), "0x" + "ff" * 32])
def test_rejects_invalid_keys(bad):
    with pytest.raises(ValueError):
        channels.Signer(bad)


def test_rejects_digest_of_wrong_length():
    with pytest.raises(ValueError, match="32 bytes"):
        channels.Signer(ANVIL_KEY_0).sign_digest(b"\x01" * 31)


def test_repr_hides_the_key():
    text = repr(channels.Signer(ANVIL_KEY_0))
    assert ANVIL_KEY_0[2:] not in text and "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" in text
