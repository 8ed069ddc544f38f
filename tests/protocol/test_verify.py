"""Voucher verification: eth-account signatures pass; every tampering fails with its code."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES

import channels
from channels import ErrorCode, PaymentError
from channels.protocol import ChannelConfig, Voucher

ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
ANVIL_KEY_2 = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
CHAIN = 31337
SETTLEMENT = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS
AUTHORIZER = Account.from_key(ANVIL_KEY_1)


def make_config(authorizer: bytes = bytes.fromhex(AUTHORIZER.address[2:])) -> ChannelConfig:
    return ChannelConfig(
        os.urandom(20),
        authorizer,
        os.urandom(20),
        os.urandom(20),
        os.urandom(20),
        900,
        os.urandom(32),
    )


def eth_account_voucher(config: ChannelConfig, amount: int, key: str = ANVIL_KEY_1) -> Voucher:
    """A voucher signed the way the x402 reference client signs it (eth-account typed data)."""
    cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    signed = Account.sign_typed_data(
        key,
        domain_data={
            "name": "x402 Batch Settlement",
            "version": "1",
            "chainId": CHAIN,
            "verifyingContract": SETTLEMENT,
        },
        message_types=VOUCHER_TYPES,
        message_data={"channelId": cid, "maxClaimableAmount": amount},
    )
    return Voucher(cid, amount, bytes(signed.signature))


def code_of(config: ChannelConfig, voucher: Voucher) -> PaymentError:
    with pytest.raises(PaymentError) as info:
        channels.protocol.verify_voucher(config, voucher, CHAIN, SETTLEMENT)
    return info.value


def test_eth_account_voucher_verifies():
    config = make_config()
    voucher = eth_account_voucher(config, 123_456)
    channels.protocol.verify_voucher(config, voucher, CHAIN, SETTLEMENT)
    digest = channels.voucher_digest(CHAIN, SETTLEMENT, voucher.channel_id, 123_456)
    assert channels.recover_signer(digest, voucher.signature) == AUTHORIZER.address
    assert channels.recover_signer(digest, "0x" + voucher.signature.hex()) == AUTHORIZER.address


def test_recover_signer_matches_eth_account_recover():
    config = make_config()
    voucher = eth_account_voucher(config, 7)
    signable = encode_typed_data(
        domain_data={
            "name": "x402 Batch Settlement",
            "version": "1",
            "chainId": CHAIN,
            "verifyingContract": SETTLEMENT,
        },
        message_types=VOUCHER_TYPES,
        message_data={"channelId": voucher.channel_id, "maxClaimableAmount": 7},
    )
    digest = channels.voucher_digest(CHAIN, SETTLEMENT, voucher.channel_id, 7)
    assert channels.recover_signer(digest, voucher.signature) == Account.recover_message(
        signable, signature=voucher.signature
    )


TAMPER_POSITIONS = {
    "r0": 0,
    "r7": 7,
    "r15": 15,
    "r31": 31,
    "s0": 32,
    "s7": 39,
    "s15": 47,
    "s31": 63,
    "v": 64,
}


@pytest.mark.parametrize("index", TAMPER_POSITIONS.values(), ids=TAMPER_POSITIONS.keys())
def test_every_byte_class_tampered_fails(index):
    """A flipped bit in r, in s or in v: never verifies."""
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    sig = bytearray(voucher.signature)
    sig[index] ^= 0x01
    err = code_of(config, Voucher(voucher.channel_id, 1000, bytes(sig)))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE
    assert err.field == "payload.voucher.signature"


def test_amount_tampered_fails():
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    err = code_of(config, Voucher(voucher.channel_id, 1001, voucher.signature))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "not payerAuthorizer" in err.message


def test_other_signer_fails():
    config = make_config()
    voucher = eth_account_voucher(config, 1000, key=ANVIL_KEY_2)
    assert code_of(config, voucher).code == ErrorCode.VOUCHER_SIGNATURE


def test_high_s_twin_is_rejected():
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    sig = voucher.signature
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (N - s).to_bytes(32, "big") + bytes((55 - sig[64],))  # same key, high s
    err = code_of(config, Voucher(voucher.channel_id, 1000, twin))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "upper half" in err.message


@pytest.mark.parametrize("v", [0, 1, 29, 255])
def test_bad_v_is_rejected(v):
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    err = code_of(config, Voucher(voucher.channel_id, 1000, voucher.signature[:64] + bytes((v,))))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "v must be 27 or 28" in err.message


@pytest.mark.parametrize("length", [0, 64, 66, 130])
def test_wrong_length_is_rejected(length):
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    sig = (voucher.signature * 3)[:length]
    err = code_of(config, Voucher(voucher.channel_id, 1000, sig))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "65 bytes" in err.message


@pytest.mark.parametrize(
    "r, s",
    [(0, 1), (1, 0), (N, 1), (2**256 - 1, 1)],
    ids=["r=0", "s=0", "r=n", "r=max"],
)
def test_out_of_range_scalars_are_rejected(r, s):
    config = make_config()
    cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x1b"
    assert code_of(config, Voucher(cid, 1, sig)).code == ErrorCode.VOUCHER_SIGNATURE


def test_wrong_channel_id_is_a_mismatch():
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    other = make_config()
    err = code_of(other, voucher)
    assert err.code == ErrorCode.CHANNEL_ID_MISMATCH and err.field == "payload.voucher.channelId"


def test_other_chain_is_a_mismatch():
    config = make_config()
    voucher = eth_account_voucher(config, 1000)
    with pytest.raises(PaymentError) as info:
        channels.protocol.verify_voucher(config, voucher, CHAIN + 1, SETTLEMENT)
    assert info.value.code == ErrorCode.CHANNEL_ID_MISMATCH


def test_zero_payer_authorizer_points_to_eip1271():
    config = make_config(authorizer=bytes(20))
    cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    err = code_of(config, Voucher(cid, 1, b"\x01" * 65))
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "eip1271" in err.message


def test_deposit_authorization_and_receipt_checks():
    """The deposit ERC-3009 signature and a receipt, both through the same recovery."""
    payer = channels.Signer(ANVIL_KEY_1)
    gateway = channels.Signer(ANVIL_KEY_2)
    receipt = channels.protocol.Receipt(
        os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32), 5, 10
    )
    digest = channels.protocol.receipt_digest(CHAIN, SETTLEMENT, receipt)
    signed = channels.SignedReceipt(receipt, gateway.sign_digest(digest))
    channels.verify_receipt(signed, CHAIN, SETTLEMENT, gateway.address)
    with pytest.raises(PaymentError, match="not the receiver authorizer"):
        channels.verify_receipt(signed, CHAIN, SETTLEMENT, payer.address)
    forged = channels.SignedReceipt(
        channels.protocol.Receipt(
            receipt.channel_id,
            receipt.request_digest,
            receipt.result_digest,
            receipt.model_version,
            6,
            10,
        ),
        signed.signature,
    )
    with pytest.raises(PaymentError):
        channels.verify_receipt(forged, CHAIN, SETTLEMENT, gateway.address)


# --- EIP-1271 slow path on the embedded py-evm chain ------------------------------------

# A hand-assembled wallet: isValidSignature returns the magic value iff
# keccak256(signature) == slot 0 and hash == slot 1, else a zero word.
WALLET_CODE = bytes.fromhex(
    "604435"  # len = calldataload(0x44)
    "80"
    "6064"
    "6000"
    "37"  # calldatacopy(0, 0x64, len)
    "6000"
    "20"  # keccak256(0, len)
    "6000"
    "54"
    "14"  # == sload(0)
    "6004"
    "35"
    "6001"
    "54"
    "14"  # calldataload(4) == sload(1)
    "16"  # and
    "631626ba7e"
    "60e0"
    "1b"
    "02"  # * (magic << 224)
    "6000"
    "52"
    "6020"
    "6000"
    "f3"  # mstore(0, .); return(0, 32)
)
REVERTING_CODE = bytes.fromhex("60006000fd")


async def _chain_with_wallets(accounts: dict[bytes, tuple[bytes, dict[int, int]]]):
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import AsyncWeb3
    from web3.providers.eth_tester import AsyncEthereumTesterProvider

    state = PyEVMBackend.generate_genesis_state(num_accounts=1)
    for address, (code, storage) in accounts.items():
        state[address] = {"balance": 0, "nonce": 1, "code": code, "storage": storage}
    provider = AsyncEthereumTesterProvider()
    provider.ethereum_tester = EthereumTester(PyEVMBackend(genesis_state=state))
    return AsyncWeb3(provider)


async def test_eip1271_wallet_accepts_only_its_signature():
    from channels.provider.eip1271 import verify_voucher_eip1271

    wallet, reverting = os.urandom(20), os.urandom(20)
    config = ChannelConfig(
        wallet, bytes(20), os.urandom(20), os.urandom(20), os.urandom(20), 900, os.urandom(32)
    )
    cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    signature = os.urandom(97)  # smart-wallet signatures need not be 65 bytes
    digest = channels.voucher_digest(CHAIN, SETTLEMENT, cid, 777)
    storage = {
        0: int.from_bytes(channels.protocol.keccak256(signature), "big"),
        1: int.from_bytes(digest, "big"),
    }
    w3 = await _chain_with_wallets(
        {wallet: (WALLET_CODE, storage), reverting: (REVERTING_CODE, {})}
    )

    await verify_voucher_eip1271(w3, config, Voucher(cid, 777, signature), CHAIN, SETTLEMENT)
    with pytest.raises(PaymentError) as info:  # same signature, another amount
        await verify_voucher_eip1271(w3, config, Voucher(cid, 778, signature), CHAIN, SETTLEMENT)
    assert info.value.code == ErrorCode.VOUCHER_SIGNATURE
    with pytest.raises(PaymentError):  # another signature
        await verify_voucher_eip1271(
            w3, config, Voucher(cid, 777, signature[:-1] + b"\x00"), CHAIN, SETTLEMENT
        )
    with pytest.raises(PaymentError) as info:
        await verify_voucher_eip1271(
            w3, make_config(bytes(20)), Voucher(cid, 777, signature), CHAIN, SETTLEMENT
        )
    assert info.value.code == ErrorCode.CHANNEL_ID_MISMATCH

    reverting_config = ChannelConfig(
        reverting,
        bytes(20),
        config.receiver,
        config.receiver_authorizer,
        config.token,
        900,
        config.salt,
    )
    rcid = channels.protocol.channel_id(reverting_config, CHAIN, SETTLEMENT)
    with pytest.raises(PaymentError) as info:
        await verify_voucher_eip1271(
            w3, reverting_config, Voucher(rcid, 1, signature), CHAIN, SETTLEMENT
        )
    assert info.value.code == ErrorCode.VOUCHER_SIGNATURE


async def test_eip1271_path_uses_ecdsa_for_a_payer_without_code():
    from channels.provider.eip1271 import verify_voucher_eip1271

    payer = channels.Signer(ANVIL_KEY_1)
    config = ChannelConfig(
        payer.address_bytes,
        bytes(20),
        os.urandom(20),
        os.urandom(20),
        os.urandom(20),
        900,
        os.urandom(32),
    )
    cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
    sig = payer.sign_digest(channels.voucher_digest(CHAIN, SETTLEMENT, cid, 5))
    w3 = await _chain_with_wallets({})
    await verify_voucher_eip1271(w3, config, Voucher(cid, 5, sig), CHAIN, SETTLEMENT)
    other = channels.Signer(ANVIL_KEY_2).sign_digest(
        channels.voucher_digest(CHAIN, SETTLEMENT, cid, 5)
    )
    with pytest.raises(PaymentError):
        await verify_voucher_eip1271(w3, config, Voucher(cid, 5, other), CHAIN, SETTLEMENT)


@pytest.mark.parametrize(
    "field, code",
    [
        ("token", ErrorCode.TOKEN_MISMATCH),
        ("receiver", ErrorCode.RECEIVER_MISMATCH),
        ("receiver_authorizer", ErrorCode.RECEIVER_AUTHORIZER_MISMATCH),
        ("withdraw_delay", ErrorCode.WITHDRAW_DELAY_MISMATCH),
    ],
)
def test_channel_terms_must_match_the_offer(field, code):
    from dataclasses import replace

    offer = channels.PaymentRequirements(
        f"eip155:{CHAIN}",
        os.urandom(20),
        1000,
        os.urandom(20),
        60,
        channels.protocol.BatchExtra(os.urandom(20), 900, "USD Coin", "2"),
    )
    config = ChannelConfig(
        os.urandom(20),
        os.urandom(20),
        offer.pay_to,
        offer.extra.receiver_authorizer,
        offer.asset,
        900,
        bytes(32),
    )
    channels.protocol.verify_channel_terms(config, offer)
    bad = replace(config, **{field: 3600 if field == "withdraw_delay" else os.urandom(20)})
    with pytest.raises(PaymentError) as info:
        channels.protocol.verify_channel_terms(bad, offer)
    assert info.value.code == code


def test_known_authorizer_fast_path_still_rejects_others():
    """After one good voucher the authorizer's point is cached; other keys still fail."""
    from channels.protocol import verify

    config = make_config()
    channels.protocol.verify_voucher(config, eth_account_voucher(config, 10), CHAIN, SETTLEMENT)
    assert config.payer_authorizer in verify._KNOWN_POINTS
    channels.protocol.verify_voucher(config, eth_account_voucher(config, 20), CHAIN, SETTLEMENT)
    stranger = eth_account_voucher(config, 30, key=ANVIL_KEY_2)
    err = code_of(config, stranger)
    assert err.code == ErrorCode.VOUCHER_SIGNATURE and "not payerAuthorizer" in err.message
    wrong_amount = eth_account_voucher(config, 40)
    assert code_of(config, Voucher(wrong_amount.channel_id, 41, wrong_amount.signature))
