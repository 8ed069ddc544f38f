"""EIP-712 digests equal eth-account's encode_typed_data and x402's own helpers."""

from __future__ import annotations

import pytest
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.constants import (
    CHANNEL_CONFIG_TYPES,
    CLAIM_BATCH_TYPES,
    RECEIVE_AUTHORIZATION_TYPES,
    REFUND_TYPES,
    VOUCHER_TYPES,
)
from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_deposit_nonce
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig as X402ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

import channels
from channels.protocol import eip712
from channels.protocol import ChannelConfig, Receipt

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
RECEIPT_TYPES = {
    "Receipt": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "requestDigest", "type": "bytes32"},
        {"name": "resultDigest", "type": "bytes32"},
        {"name": "modelVersion", "type": "bytes32"},
        {"name": "chargedAmount", "type": "uint128"},
        {"name": "cumulativeCharged", "type": "uint128"},
    ]
}

addresses = st.binary(min_size=20, max_size=20)
bytes32 = st.binary(min_size=32, max_size=32)
u128 = st.integers(min_value=0, max_value=2**128 - 1)
u256 = st.integers(min_value=0, max_value=2**256 - 1)
chain_ids = st.integers(min_value=1, max_value=2**64)
configs = st.builds(
    ChannelConfig,
    addresses,
    addresses,
    addresses,
    addresses,
    addresses,
    st.integers(min_value=900, max_value=2_592_000),
    bytes32,
)


def reference_digest(chain_id, contract, types, primary, message, name=None, version=None):
    domain = {
        "name": name or "x402 Batch Settlement",
        "version": version or "1",
        "chainId": chain_id,
        "verifyingContract": channels.protocol.checksum_address(contract),
    }
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": _DOMAIN_FIELDS, **types},
            "primaryType": primary,
            "domain": domain,
            "message": message,
        }
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


@settings(max_examples=60, deadline=None)
@given(chain_id=chain_ids, contract=addresses, cid=bytes32, amount=u128)
def test_voucher_digest_equals_eth_account(chain_id, contract, cid, amount):
    expected = reference_digest(
        chain_id,
        contract,
        VOUCHER_TYPES,
        "Voucher",
        {"channelId": cid, "maxClaimableAmount": amount},
    )
    assert channels.voucher_digest(chain_id, contract, cid, amount) == expected
    assert (
        channels.voucher_digest(chain_id, channels.protocol.checksum_address(contract), cid, amount)
        == expected
    )


@settings(max_examples=60, deadline=None)
@given(chain_id=chain_ids, contract=addresses, cid=bytes32, nonce=u256, amount=u128)
def test_refund_digest_equals_eth_account(chain_id, contract, cid, nonce, amount):
    message = {"channelId": cid, "nonce": nonce, "amount": amount}
    expected = reference_digest(chain_id, contract, REFUND_TYPES, "Refund", message)
    assert channels.protocol.refund_digest(chain_id, contract, cid, nonce, amount) == expected


@settings(max_examples=40, deadline=None)
@given(
    chain_id=chain_ids,
    contract=addresses,
    rows=st.lists(st.tuples(bytes32, u128, u128), min_size=0, max_size=6),
)
def test_claim_batch_digest_equals_eth_account(chain_id, contract, rows):
    entries = [channels.protocol.ClaimEntry(c, m, t) for c, m, t in rows]
    message = {
        "claims": [{"channelId": c, "maxClaimableAmount": m, "totalClaimed": t} for c, m, t in rows]
    }
    expected = reference_digest(chain_id, contract, CLAIM_BATCH_TYPES, "ClaimBatch", message)
    assert channels.protocol.claim_batch_digest(chain_id, contract, entries) == expected


@settings(max_examples=60, deadline=None)
@given(config=configs, chain_id=chain_ids, contract=addresses)
def test_channel_id_equals_eth_account(config, chain_id, contract):
    message = {
        "payer": channels.protocol.checksum_address(config.payer),
        "payerAuthorizer": channels.protocol.checksum_address(config.payer_authorizer),
        "receiver": channels.protocol.checksum_address(config.receiver),
        "receiverAuthorizer": channels.protocol.checksum_address(config.receiver_authorizer),
        "token": channels.protocol.checksum_address(config.token),
        "withdrawDelay": config.withdraw_delay,
        "salt": config.salt,
    }
    expected = reference_digest(chain_id, contract, CHANNEL_CONFIG_TYPES, "ChannelConfig", message)
    assert channels.protocol.channel_id(config, chain_id, contract) == expected


@settings(max_examples=30, deadline=None)
@given(config=configs, chain_id=chain_ids)
def test_channel_id_equals_x402_at_canonical_address(config, chain_id):
    x = X402ChannelConfig.from_dict(config.to_json())
    got = channels.protocol.channel_id(config, chain_id, channels.protocol.CANONICAL_SETTLEMENT_ADDRESS)
    assert "0x" + got.hex() == compute_channel_id(x, chain_id)


@settings(max_examples=40, deadline=None)
@given(
    chain_id=chain_ids,
    token=addresses,
    name=st.text(min_size=1, max_size=20),
    version=st.text(min_size=1, max_size=5),
    frm=addresses,
    to=addresses,
    value=u256,
    after=u256,
    before=u256,
    nonce=bytes32,
)
def test_receive_with_authorization_equals_eth_account(
    chain_id, token, name, version, frm, to, value, after, before, nonce
):
    message = {
        "from": channels.protocol.checksum_address(frm),
        "to": channels.protocol.checksum_address(to),
        "value": value,
        "validAfter": after,
        "validBefore": before,
        "nonce": nonce,
    }
    expected = reference_digest(
        chain_id,
        token,
        RECEIVE_AUTHORIZATION_TYPES,
        "ReceiveWithAuthorization",
        message,
        name,
        version,
    )
    got = channels.protocol.receive_with_authorization_digest(
        chain_id,
        token,
        name,
        version,
        from_=frm,
        to=to,
        value=value,
        valid_after=after,
        valid_before=before,
        nonce=nonce,
    )
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(
    chain_id=chain_ids,
    contract=addresses,
    ids=st.tuples(bytes32, bytes32, bytes32, bytes32),
    charged=u128,
    cumulative=u128,
    proof=st.lists(bytes32, max_size=6),
)
def test_receipt_digest_equals_eth_account(chain_id, contract, ids, charged, cumulative, proof):
    """The leaf is eth-account's hashStruct(Receipt); the signed digest is eth-account's
    ReceiptBatch(root) digest, root = the sorted-pair Merkle fold of the proof (OpenZeppelin)."""
    receipt = Receipt(*ids, charged, cumulative)
    message = {
        "channelId": ids[0],
        "requestDigest": ids[1],
        "resultDigest": ids[2],
        "modelVersion": ids[3],
        "chargedAmount": charged,
        "cumulativeCharged": cumulative,
    }
    domain = {"name": "paychan Receipt", "version": "1", "chainId": chain_id,
              "verifyingContract": channels.protocol.checksum_address(contract)}
    leaf = encode_typed_data(full_message={
        "types": {"EIP712Domain": _DOMAIN_FIELDS, **RECEIPT_TYPES}, "primaryType": "Receipt",
        "domain": domain, "message": message,
    }).body
    assert channels.protocol.receipt_hash(receipt) == leaf
    root = leaf
    for sibling in proof:
        root = keccak(b"".join(sorted((root, sibling))))
    expected = reference_digest(
        chain_id, contract, {"ReceiptBatch": [{"name": "root", "type": "bytes32"}]}, "ReceiptBatch",
        {"root": root}, "paychan Receipt", "1",
    )
    assert channels.protocol.receipt_root(leaf, proof) == root
    assert channels.protocol.receipt_digest(chain_id, contract, receipt, proof) == expected


@settings(max_examples=40, deadline=None)
@given(cid=bytes32, salt=bytes32)
def test_erc3009_nonce_equals_x402(cid, salt):
    expected = build_erc3009_deposit_nonce("0x" + cid.hex(), "0x" + salt.hex())
    assert "0x" + channels.protocol.erc3009_deposit_nonce(cid, salt).hex() == expected


def test_type_strings_are_the_contracts():
    assert eip712.CLAIM_BATCH_TYPE == (
        "ClaimBatch(ClaimEntry[] claims)"
        "ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    )
    assert eip712.VOUCHER_TYPE == "Voucher(bytes32 channelId,uint128 maxClaimableAmount)"
    assert eip712.REFUND_TYPE == "Refund(bytes32 channelId,uint256 nonce,uint128 amount)"


def test_keccak_known_vector():
    assert channels.protocol.keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


def test_checksum_address_matches_eip55():
    assert channels.protocol.checksum_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed") == (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    )


@pytest.mark.parametrize(
    "bad", ["0x123", "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed00", "0x" + "g" * 40, b"\x00" * 19]
)
def test_to_address_rejects_malformed(bad):
    with pytest.raises(ValueError, match="address"):
        channels.protocol.to_address(bad)


@pytest.mark.parametrize("amount", [-1, 2**128])
def test_voucher_digest_rejects_out_of_range_amounts(amount):
    with pytest.raises(ValueError, match="uint128"):
        channels.voucher_digest(1, bytes(20), bytes(32), amount)


def test_domain_separator_is_cached_per_chain_and_contract():
    a = channels.protocol.domain_separator(1, bytes(20))
    assert channels.protocol.domain_separator(1, bytes(20)) is a
    assert channels.protocol.domain_separator(2, bytes(20)) != a
    assert channels.protocol.domain_separator(1, b"\x01" * 20) != a


# --- the contract's own view functions on the embedded chain ------------------------------


@pytest.fixture(scope="module")
def onchain():
    """(run, settlement contract, chain id) on a fresh embedded chain with our contracts."""
    import asyncio

    from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI

    from contracts import embedded_chain

    chain = embedded_chain()
    loop = asyncio.new_event_loop()
    # the canonical x402 ABI: our contract must answer it unchanged
    contract = chain.w3.eth.contract(address=chain.deployment.settlement, abi=BATCH_SETTLEMENT_ABI)
    chain_id = loop.run_until_complete(chain.w3.eth.chain_id)
    yield loop.run_until_complete, contract, chain_id
    loop.close()


def _config_tuple(config: ChannelConfig) -> tuple:
    return (
        channels.protocol.checksum_address(config.payer),
        channels.protocol.checksum_address(config.payer_authorizer),
        channels.protocol.checksum_address(config.receiver),
        channels.protocol.checksum_address(config.receiver_authorizer),
        channels.protocol.checksum_address(config.token),
        config.withdraw_delay,
        config.salt,
    )


@settings(max_examples=25, deadline=None)
@given(cid=bytes32, amount=u128)
def test_voucher_digest_equals_contract(onchain, cid, amount):
    run, contract, chain_id = onchain
    expected = run(contract.functions.getVoucherDigest(cid, amount).call())
    assert channels.voucher_digest(chain_id, contract.address, cid, amount) == expected


@settings(max_examples=25, deadline=None)
@given(cid=bytes32, nonce=u256, amount=u128)
def test_refund_digest_equals_contract(onchain, cid, nonce, amount):
    run, contract, chain_id = onchain
    expected = run(contract.functions.getRefundDigest(cid, nonce, amount).call())
    assert channels.protocol.refund_digest(chain_id, contract.address, cid, nonce, amount) == expected


@settings(max_examples=25, deadline=None)
@given(config=configs)
def test_channel_id_equals_contract(onchain, config):
    run, contract, chain_id = onchain
    expected = run(contract.functions.getChannelId(_config_tuple(config)).call())
    assert channels.protocol.channel_id(config, chain_id, contract.address) == expected


@settings(max_examples=15, deadline=None)
@given(
    rows=st.lists(
        st.tuples(configs, u128, u128, st.binary(min_size=0, max_size=70)), min_size=0, max_size=4
    )
)
def test_claim_batch_digest_equals_contract(onchain, rows):
    run, contract, chain_id = onchain
    claims = [((_config_tuple(c), ceiling), sig, total) for c, ceiling, total, sig in rows]
    expected = run(contract.functions.getClaimBatchDigest(claims).call())
    entries = [
        channels.protocol.ClaimEntry(channels.protocol.channel_id(c, chain_id, contract.address), ceiling, total)
        for c, ceiling, total, _ in rows
    ]
    assert channels.protocol.claim_batch_digest(chain_id, contract.address, entries) == expected
