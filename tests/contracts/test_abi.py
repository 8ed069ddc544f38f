"""Our BatchSettlement ABI equals the x402 reference ABI; constants, type hashes and ids match x402."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from x402.mechanisms.evm.batch_settlement import constants as x402c
from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
from x402.mechanisms.evm.batch_settlement.encoding import (
    build_erc3009_collector_data,
    build_erc3009_deposit_nonce,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from contracts import CANONICAL_COLLECTOR, CANONICAL_SETTLEMENT, artifact, embedded_chain

ROOT = Path(__file__).resolve().parents[2]


def _type(p: dict[str, Any]) -> str:
    """Canonical ABI type with tuple components expanded (struct layout)."""
    t = p["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_type(c) for c in p["components"]) + ")" + t[len("tuple"):]
    return t


def _layout(p: dict[str, Any]) -> Any:
    """Names and types, recursively: the struct layout."""
    if p["type"].startswith("tuple"):
        return (p.get("name"), p["type"], tuple(_layout(c) for c in p["components"]))
    return (p.get("name"), p["type"])


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_type(i) for i in item['inputs'])})"


OURS = {(i["type"], i["name"]): i for i in artifact("BatchSettlement")["abi"] if "name" in i}


@pytest.mark.parametrize("ref", BATCH_SETTLEMENT_ABI, ids=lambda r: r["name"])
def test_every_reference_entry_is_ours_exactly(ref: dict[str, Any]) -> None:
    ours = OURS.get((ref["type"], ref["name"]))
    assert ours is not None, f"missing {ref['type']} {ref['name']}"
    assert keccak(text=_signature(ours)) == keccak(text=_signature(ref))  # selector / event topic
    assert [_layout(i) for i in ours["inputs"]] == [_layout(i) for i in ref["inputs"]]
    if ref["type"] == "function":
        assert [_type(o) for o in ours["outputs"]] == [_type(o) for o in ref["outputs"]]
        assert [o["name"] for o in ours["outputs"]] == [o["name"] for o in ref["outputs"]]
        assert ours["stateMutability"] == ref["stateMutability"]
    else:
        assert [i["indexed"] for i in ours["inputs"]] == [i["indexed"] for i in ref["inputs"]]


def test_canonical_events_have_canonical_topics() -> None:
    expected = {
        "ChannelCreated": "ChannelCreated(bytes32,(address,address,address,address,address,uint40,bytes32))",
        "ChannelClosed": "ChannelClosed(bytes32,(address,address,address,address,address,uint40,bytes32))",
        "Deposited": "Deposited(bytes32,address,uint128,uint128)",
        "Claimed": "Claimed(bytes32,address,uint128,uint128)",
        "Settled": "Settled(address,address,address,uint128)",
        "Refunded": "Refunded(bytes32,address,uint128)",
        "WithdrawInitiated": "WithdrawInitiated(bytes32,uint128,uint40)",
        "WithdrawFinalized": "WithdrawFinalized(bytes32,address,uint128)",
    }
    for name, sig in expected.items():
        assert _signature(OURS[("event", name)]) == sig


def test_addresses_and_constants_match_x402() -> None:
    assert CANONICAL_SETTLEMENT == x402c.BATCH_SETTLEMENT_ADDRESS
    assert CANONICAL_COLLECTOR == x402c.ERC3009_DEPOSIT_COLLECTOR_ADDRESS


async def test_type_hashes_and_channel_id_match_x402() -> None:
    chain = embedded_chain()
    s = chain.w3.eth.contract(address=chain.deployment.settlement, abi=artifact("BatchSettlement")["abi"])
    f = s.functions
    assert await f.CHANNEL_CONFIG_TYPEHASH().call() == x402c.CHANNEL_CONFIG_TYPEHASH
    assert await f.VOUCHER_TYPEHASH().call() == keccak(text="Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
    assert await f.MIN_WITHDRAW_DELAY().call() == x402c.MIN_WITHDRAW_DELAY
    assert await f.MAX_WITHDRAW_DELAY().call() == x402c.MAX_WITHDRAW_DELAY
    domain = await f.eip712Domain().call()
    assert domain[1:5] == [x402c.BATCH_SETTLEMENT_DOMAIN_NAME, x402c.BATCH_SETTLEMENT_DOMAIN_VERSION,
                           chain.deployment.chain_id, CANONICAL_SETTLEMENT]
    cfg = ChannelConfig("0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, "0x" + "44" * 20,
                        chain.deployment.token, 900, "0x" + "00" * 31 + "07")
    ours = await f.getChannelId((*[chain.w3.to_checksum_address(a) for a in
                                   (cfg.payer, cfg.payer_authorizer, cfg.receiver, cfg.receiver_authorizer, cfg.token)],
                                 900, bytes.fromhex(cfg.salt[2:]))).call()
    assert "0x" + ours.hex() == compute_channel_id(cfg, chain.deployment.chain_id)


def test_collector_encoding_matches_reference_client() -> None:
    """Our testkit builds nonce and collectorData exactly as the x402 client does."""
    from eth_abi import decode

    cid = "0x" + "ab" * 32
    data = build_erc3009_collector_data("0", "99", "0x05", "0x" + "cd" * 65)
    assert decode(["uint256", "uint256", "uint256", "bytes"], data) == (0, 99, 5, b"\xcd" * 65)
    assert build_erc3009_deposit_nonce(cid, "0x05") == "0x" + keccak(bytes.fromhex("ab" * 32) + (5).to_bytes(32, "big")).hex()


@pytest.mark.slow
def test_fresh_compile_equals_committed_artifacts() -> None:
    """`node contracts/build.js --check` recompiles with the pinned solcjs and compares byte for byte."""
    result = subprocess.run(["node", "contracts/build.js", "--check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
