"""Fixed addresses and the well-known dev keys.

The canonical settlement and collector addresses are the x402 ones
(``x402.mechanisms.evm.batch_settlement.constants``), so unmodified x402 clients find our
contracts on dev chains. The token and registry have no canonical address; these two are ours,
used on the embedded chain and by ``paychan devnet``.
"""

from __future__ import annotations

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

CANONICAL_SETTLEMENT = to_checksum_address("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003")
CANONICAL_COLLECTOR = to_checksum_address("0x4020806089470a89826cB9fB1f4059150b550004")

# Dev-chain placements of the test token and the model registry (not x402 addresses).
DEV_TOKEN = to_checksum_address(keccak(b"paychan.dev.TestUSDC")[12:])
DEV_REGISTRY = to_checksum_address(keccak(b"paychan.dev.ModelRegistry")[12:])

# The well-known anvil/hardhat TEST keys, from the public mnemonic
# "test test test test test test test test test test test junk" (m/44'/60'/0'/0/i).
# Everyone knows them: they are for dev chains only and must never hold real funds.
DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
DEV_TEST_MNEMONIC = "test test test test test test test test test test test junk"

# What dev chains give each DEV_KEYS account.
DEV_ETH_WEI = 10_000 * 10**18
DEV_USDC_UNITS = 1_000_000 * 10**6  # 1,000,000 test USDC (6 decimals)
