"""Gas per settlement operation (receipt gasUsed, calldata and 21,000 base included), on anvil.

Setup as in issue 2: our TestUSDC (signature-checking ERC-3009), payerAuthorizer set on every
channel, deposits through the ERC-3009 collector, claims relayed with the receiver authorizer's
batch signature. Writes bench/results/gas.json and prints a markdown table beside the canonical
x402BatchSettlement figures (measured by the issue author on anvil 1.7.1).

Run: ``.venv/bin/python bench/gas.py`` (or ``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account

from contracts import DEV_KEYS, Anvil, artifact
from contracts.testkit import SettlementKit, sign_hash
from _machine import cpu_model  # bench/ is on sys.path when a script runs

# Canonical x402BatchSettlement (solc 0.8.28, 200 runs, cancun) on anvil 1.7.1, from issue 2.
CANONICAL: dict[str, int] = {
    "deposit_erc3009_new_channel": 119_307,
    "deposit_erc3009_top_up": 98_339,
    "claim_10_channels_by_receiver_authorizer": 238_476,
    "claimWithSignature_10_channels": 272_548,
    "claimWithSignature_50_channels": 1_219_415,
    "claimWithSignature_100_channels": 2_410_858,
    "settle": 46_236,
    "initiateWithdraw": 52_425,
    "finalizeWithdraw": 49_370,
    "refund": 73_058,
    "refundWithSignature": 83_462,
}
TARGETS_PER_CHANNEL = {10: 19_500, 100: 17_000}
TARGET_DEPOSIT = 100_000

FACILITATOR, PAYER, PAYER_AUTH, RECEIVER, RECEIVER_AUTH = (DEV_KEYS[i] for i in (0, 1, 2, 3, 4))
DEPOSIT = 1_000_000  # 1 USDC


def _machine() -> dict[str, Any]:
    cpu = cpu_model()
    anvil = subprocess.run([str(ROOT / "node_modules/.bin/anvil"), "--version"], capture_output=True, text=True, check=False)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "anvil": anvil.stdout.splitlines()[0] if anvil.stdout else "?",
            "solc": artifact("BatchSettlement")["compiler"]["solc"],
            "settings": artifact("BatchSettlement")["compiler"]["settings"]}


async def measure(node: Anvil) -> dict[str, int]:
    kit = SettlementKit(node.w3, node.deployment)
    receiver = Account.from_key(RECEIVER).address
    receiver_auth = Account.from_key(RECEIVER_AUTH).address
    out: dict[str, int] = {}

    salts = iter(range(1, 1_000_000))

    def new_channel():
        # Small distinct salts: x402 clients default to a zero salt (channels differ by payer), so
        # calldata has as many zero bytes as in the canonical measurement (~4,070 gas per row).
        salt = next(salts).to_bytes(32, "big")
        return kit.channel(payer_key=PAYER, payer_authorizer_key=PAYER_AUTH, receiver=receiver,
                           receiver_authorizer=receiver_auth, salt=salt)

    # Warm the settlement's token balance and the receiver's totals, as on a live contract.
    warm = new_channel()
    await kit.deposit(FACILITATOR, warm, DEPOSIT)
    await kit.claim_with_signature(FACILITATOR, [kit.voucher_claim(warm, 10, 10)], RECEIVER_AUTH)

    ch = new_channel()
    out["deposit_erc3009_new_channel"] = (await kit.deposit(FACILITATOR, ch, DEPOSIT))["gasUsed"]
    out["deposit_erc3009_top_up"] = (await kit.deposit(FACILITATOR, ch, DEPOSIT))["gasUsed"]

    for n in (1, 10, 50, 100):
        chans = [new_channel() for _ in range(n)]
        for c in chans:
            await kit.deposit(FACILITATOR, c, DEPOSIT)
        rows = [kit.voucher_claim(c, 5_000, 5_000) for c in chans]
        out[f"claimWithSignature_{n}_channels"] = (
            await kit.claim_with_signature(FACILITATOR, rows, RECEIVER_AUTH))["gasUsed"]
        if n in (10, 100):
            # Random 32-byte salts instead: every salt byte nonzero in calldata (+~500 gas per row).
            rand = [kit.channel(payer_key=PAYER, payer_authorizer_key=PAYER_AUTH, receiver=receiver,
                                receiver_authorizer=receiver_auth) for _ in range(n)]
            for c in rand:
                await kit.deposit(FACILITATOR, c, DEPOSIT)
            rows = [kit.voucher_claim(c, 5_000, 5_000) for c in rand]
            out[f"claimWithSignature_{n}_channels_random_salts"] = (
                await kit.claim_with_signature(FACILITATOR, rows, RECEIVER_AUTH))["gasUsed"]
        if n == 10:
            rows = [kit.voucher_claim(c, 9_000, 9_000) for c in chans]
            out["claimWithSignature_10_channels_second_round"] = (
                await kit.claim_with_signature(FACILITATOR, rows, RECEIVER_AUTH))["gasUsed"]
            chans2 = [new_channel() for _ in range(10)]
            for c in chans2:
                await kit.deposit(FACILITATOR, c, DEPOSIT)
            rows = [kit.voucher_claim(c, 5_000, 5_000) for c in chans2]
            out["claim_10_channels_by_receiver_authorizer"] = (
                await kit.send(RECEIVER_AUTH, "claim", [rows]))["gasUsed"]

    out["settle"] = (await kit.send(FACILITATOR, "settle", [receiver, node.deployment.token]))["gasUsed"]

    ch = new_channel()
    await kit.deposit(FACILITATOR, ch, DEPOSIT)
    await kit.claim_with_signature(FACILITATOR, [kit.voucher_claim(ch, 1000, 1000)], RECEIVER_AUTH)
    out["initiateWithdraw"] = (await kit.send(PAYER, "initiateWithdraw", [ch.config, 500_000]))["gasUsed"]
    await node.advance_time(901)
    out["finalizeWithdraw"] = (await kit.send(PAYER, "finalizeWithdraw", [ch.config]))["gasUsed"]
    out["refund"] = (await kit.send(RECEIVER_AUTH, "refund", [ch.config, 100_000]))["gasUsed"]
    nonce = await kit.settlement.functions.refundNonce(ch.id).call()
    sig = sign_hash(RECEIVER_AUTH, kit.refund_digest(ch.id, nonce, 100_000))
    out["refundWithSignature"] = (
        await kit.send(FACILITATOR, "refundWithSignature", [ch.config, 100_000, nonce, sig]))["gasUsed"]
    return out


def table(ours: dict[str, int]) -> str:
    lines = ["| operation | paychan | canonical | saved |", "| --- | ---: | ---: | ---: |"]
    for name, gas in ours.items():
        canon = CANONICAL.get(name)
        saved = f"{100 * (canon - gas) / canon:.1f}%" if canon else ""
        lines.append(f"| {name} | {gas:,} | {canon:,} | {saved} |" if canon else f"| {name} | {gas:,} | | |")
    for n in (1, 10, 50, 100):
        key = f"claimWithSignature_{n}_channels"
        canon = CANONICAL.get(key)
        lines.append(f"| claimWithSignature per channel at {n} | {ours[key] // n:,} | "
                     f"{(canon // n if canon else 0):,} | |" if canon else
                     f"| claimWithSignature per channel at {n} | {ours[key] // n:,} | | |")
    return "\n".join(lines)


def main() -> int:
    with Anvil() as node:
        ours = asyncio.run(measure(node))
    per_channel = {n: ours[f"claimWithSignature_{n}_channels"] / n for n in (1, 10, 50, 100)}
    targets = {
        "claimWithSignature_per_channel_at_100 <= 17000": per_channel[100] <= TARGETS_PER_CHANNEL[100],
        "claimWithSignature_per_channel_at_10 <= 19500": per_channel[10] <= TARGETS_PER_CHANNEL[10],
        "deposit_erc3009_new_channel <= 100000": ours["deposit_erc3009_new_channel"] <= TARGET_DEPOSIT,
    }
    result = {
        "what": "receipt gasUsed on anvil (21,000 base and calldata included); payerAuthorizer set; TestUSDC",
        "machine": _machine(),
        "paychan": ours,
        "claimWithSignature_per_channel": {str(n): round(v, 1) for n, v in per_channel.items()},
        "canonical": CANONICAL,
        "canonical_source": "issue 2: x402BatchSettlement, solc 0.8.28, 200 runs, cancun, anvil 1.7.1",
        "targets_met": targets,
    }
    out = ROOT / "bench" / "results" / "gas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(ours))
    print()
    for k, v in targets.items():
        print(f"{'OK  ' if v else 'MISS'} {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
