"""Typed-data hashing, signing and transaction helpers for tests, benchmarks and the demo.

This mirrors the x402 batch-settlement EIP-712 encoding independently of the contract, so
tests can check one against the other. Production code (gateway, SDK) uses ``channels``.

Example::

    kit = SettlementKit(chain.w3, chain.deployment)
    ch = kit.channel(payer_key=DEV_KEYS[1], receiver=addr, receiver_authorizer=auth_addr)
    await kit.deposit(DEV_KEYS[0], ch, 1_000_000)
    await kit.claim_with_signature(DEV_KEYS[0], [kit.voucher_claim(ch, 5000, 5000)], auth_key)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_account import Account
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.types import TxReceipt

from contracts.artifacts import artifact
from contracts.deploy import Deployment
from contracts.transact import send_transaction

DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
CHANNEL_CONFIG_TYPEHASH = keccak(
    text="ChannelConfig(address payer,address payerAuthorizer,address receiver,"
    "address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
)
VOUCHER_TYPEHASH = keccak(text="Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
REFUND_TYPEHASH = keccak(text="Refund(bytes32 channelId,uint256 nonce,uint128 amount)")
CLAIM_ENTRY_TYPEHASH = keccak(text="ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
CLAIM_BATCH_TYPEHASH = keccak(
    text="ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
)
RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak(
    text="ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    "uint256 validBefore,bytes32 nonce)"
)
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


def domain_separator(name: str, version: str, chain_id: int, contract: str) -> bytes:
    return keccak(encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
                         [DOMAIN_TYPEHASH, keccak(text=name), keccak(text=version), chain_id, contract]))


def typed_hash(ds: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + ds + struct_hash)


def sign_hash(key: str, digest: bytes) -> bytes:
    """65-byte r||s||v signature (low s, v in 27/28)."""
    return bytes(Account.unsafe_sign_hash(digest, key).signature)


@dataclass(frozen=True)
class Channel:
    config: tuple[str, str, str, str, str, int, bytes]
    id: bytes
    payer_key: str
    voucher_key: str  # payerAuthorizer's key when set, else the payer's

    @property
    def payer(self) -> str:
        return self.config[0]


class SettlementKit:
    """Builds and sends the settlement's calls for one Deployment."""

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, *, chain_id: int | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.chain_id = chain_id if chain_id is not None else deployment.chain_id
        self.settlement = w3.eth.contract(address=deployment.settlement, abi=artifact("BatchSettlement")["abi"])
        self.token = w3.eth.contract(address=deployment.token, abi=artifact("TestUSDC")["abi"]) if deployment.token else None
        self.ds = domain_separator("x402 Batch Settlement", "1", self.chain_id, deployment.settlement)

    # ---- hashing (independent of the contract)

    def channel_id(self, config: tuple[Any, ...]) -> bytes:
        enc = encode(["bytes32", "address", "address", "address", "address", "address", "uint40", "bytes32"],
                     [CHANNEL_CONFIG_TYPEHASH, *config])
        return typed_hash(self.ds, keccak(enc))

    def voucher_digest(self, channel_id: bytes, max_claimable: int) -> bytes:
        return typed_hash(self.ds, keccak(encode(["bytes32", "bytes32", "uint128"],
                                                 [VOUCHER_TYPEHASH, channel_id, max_claimable])))

    def refund_digest(self, channel_id: bytes, nonce: int, amount: int) -> bytes:
        return typed_hash(self.ds, keccak(encode(["bytes32", "bytes32", "uint256", "uint128"],
                                                 [REFUND_TYPEHASH, channel_id, nonce, amount])))

    def claim_batch_digest(self, rows: list[tuple[Any, ...]]) -> bytes:
        entries = b"".join(
            keccak(encode(["bytes32", "bytes32", "uint128", "uint128"],
                          [CLAIM_ENTRY_TYPEHASH, self.channel_id(r[0][0]), r[0][1], r[2]]))
            for r in rows
        )
        return typed_hash(self.ds, keccak(encode(["bytes32", "bytes32"], [CLAIM_BATCH_TYPEHASH, keccak(entries)])))

    # ---- building rows

    def channel(self, *, payer_key: str, receiver: str, receiver_authorizer: str,
                payer_authorizer_key: str | None = None, withdraw_delay: int = 900,
                salt: bytes | None = None, token: str | None = None) -> Channel:
        payer = Account.from_key(payer_key).address
        pa = Account.from_key(payer_authorizer_key).address if payer_authorizer_key else ZERO_ADDRESS
        token = token or self.deployment.token
        if token is None:
            raise ValueError("channel: pass token=, this deployment has no test token")
        config = (payer, pa, to_checksum_address(receiver), to_checksum_address(receiver_authorizer),
                  token, withdraw_delay, salt if salt is not None else os.urandom(32))
        return Channel(config, self.channel_id(config), payer_key, payer_authorizer_key or payer_key)

    def voucher_claim(self, ch: Channel, max_claimable: int, total_claimed: int, *,
                      key: str | None = None, channel_id: bytes | None = None) -> tuple[Any, ...]:
        """A VoucherClaim tuple signed by the channel's voucher key (or ``key``)."""
        sig = sign_hash(key or ch.voucher_key, self.voucher_digest(channel_id or ch.id, max_claimable))
        return ((ch.config, max_claimable), sig, total_claimed)

    def collector_data(self, ch: Channel, amount: int, *, salt: int | None = None, valid_after: int = 0,
                       valid_before: int | None = None, key: str | None = None) -> bytes:
        """ERC-3009 receiveWithAuthorization to the collector, nonce keccak(channelId, salt), as x402 clients do."""
        salt = salt if salt is not None else int.from_bytes(os.urandom(32), "big")
        valid_before = valid_before if valid_before is not None else int(time.time()) + 10 * 365 * 86400
        nonce = keccak(encode(["bytes32", "uint256"], [ch.id, salt]))
        token_ds = domain_separator("Test USDC", "2", self.chain_id, ch.config[4])
        struct = keccak(encode(["bytes32", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
                               [RECEIVE_WITH_AUTHORIZATION_TYPEHASH, ch.payer, self.deployment.collector,
                                amount, valid_after, valid_before, nonce]))
        sig = sign_hash(key or ch.payer_key, typed_hash(token_ds, struct))
        return encode(["uint256", "uint256", "uint256", "bytes"], [valid_after, valid_before, salt, sig])

    # ---- transactions

    async def send(self, key: str, fn: str, args: list[Any], *, gas: int | None = None,
                   to: ChecksumAddress | None = None) -> TxReceipt:
        contract = self.settlement if to is None else self.w3.eth.contract(address=to, abi=artifact("TestUSDC")["abi"])
        data = contract.encode_abi(fn, args)
        return await send_transaction(self.w3, key, {"to": contract.address, "data": data}, what=fn, gas=gas)

    async def deposit(self, sender_key: str, ch: Channel, amount: int, *, gas: int | None = None,
                      collector_data: bytes | None = None, collector: ChecksumAddress | None = None) -> TxReceipt:
        data = collector_data if collector_data is not None else self.collector_data(ch, amount)
        return await self.send(sender_key, "deposit",
                               [ch.config, amount, collector or self.deployment.collector, data], gas=gas)

    async def claim_with_signature(self, sender_key: str, rows: list[tuple[Any, ...]], authorizer_key: str,
                                   *, gas: int | None = None) -> TxReceipt:
        sig = sign_hash(authorizer_key, self.claim_batch_digest(rows))
        return await self.send(sender_key, "claimWithSignature", [rows, sig], gas=gas)

    async def channel_state(self, ch: Channel) -> tuple[int, int]:
        balance, total_claimed = await self.settlement.functions.channels(ch.id).call()
        return int(balance), int(total_claimed)

    async def token_balance(self, address: str) -> int:
        assert self.token is not None
        return int(await self.token.functions.balanceOf(address).call())
