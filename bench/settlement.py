"""Real gas per charged request: 1,000 paid requests over 50 channels, claimed by the settler.

Fifty payers (the SDK's `channels.Payer`, one channel each) open their channels with an
ERC-3009 deposit through the in-process facilitator, then make 20 paid requests each; every
request is reserved and charged through the SQLite ledger exactly as the gateway does it.
The settler then claims all 50 channels in the fewest `claimWithSignature` transactions the
100-row batch limit allows (one) and settles to the receiver. Gas comes from the receipts.

    .venv/bin/python bench/settlement.py          # prints a summary, writes bench/results/settlement.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_typing import HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3

import channels
from channels.protocol import AcceptInput
from channels.provider import ProviderConfig, SettlerPolicy, TxPolicy, open_provider
from contracts import DEV_KEYS, Anvil, send_transaction
from _machine import cpu_model  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KEY = DEV_KEYS[0]  # anvil's well-known TEST key 0
PAYER_KEYS = DEV_KEYS[1:10]  # anvil TEST keys
PRICE = 1_000  # 0.001 USDC per request
DEPOSIT = 1_000_000  # 1 USDC


def _machine() -> dict[str, Any]:
    cpu = cpu_model()
    anvil = subprocess.run(
        [str(ROOT / "node_modules/.bin/anvil"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        from importlib.metadata import version

        torch = version("torch")
    except Exception:  # noqa: BLE001 - torch is not needed here; report what is installed
        torch = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch,
        "platform": platform.platform(),
        "anvil": anvil.stdout.splitlines()[0] if anvil.stdout else "?",
    }


async def run(n_channels: int, per_channel: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="paychan-bench-settlement-"))
    node = Anvil().start()
    try:
        w3 = AsyncWeb3(AsyncHTTPProvider(node.url, request_kwargs={"timeout": 30}))
        d = node.deployment
        token = d.token
        assert token is not None, "anvil's deployment always has the test token"
        wired = await open_provider(
            w3,
            ProviderConfig(
                key=PROVIDER_KEY,
                store=f"sqlite:///{tmp / 'ledger.sqlite3'}",
                token=token,
                settlement=d.settlement,
                collector=d.collector,
                tx_policy=TxPolicy(poll_s=0.02),
                settler_policy=SettlerPolicy(claim_threshold=PRICE),
            ),
        )
        store, chain, fac, provider = wired.store, wired.chain, wired.facilitator, wired.signer
        reqs = channels.PaymentRequirements(
            f"eip155:{d.chain_id}",
            channels.protocol.to_address(token),
            PRICE,
            provider.address_bytes,
            60,
            channels.protocol.BatchExtra(provider.address_bytes, 900, "Test USDC", "2"),
        )
        payers = [
            channels.Payer(
                channels.Signer(PAYER_KEYS[i % len(PAYER_KEYS)]),
                tmp / f"payer-{i}.sqlite3",
                salt=(i + 1).to_bytes(32, "big"),
                settlement=d.settlement,
                collector=d.collector,
                deposit_amount=DEPOSIT,
            )
            for i in range(n_channels)
        ]
        deposit_gas: list[int] = []
        started = time.perf_counter()
        for _ in range(per_channel):
            for payer in payers:
                payment = payer.pay(reqs)
                payload = payment.payload.payload
                if isinstance(payload, channels.protocol.DepositPayload):
                    done = await fac.submit_deposit(payload, reqs)
                    deposit_gas.append(done.result.gas_used)
                voucher = payload.voucher
                req_id = f"{payment.id}"
                got = await store.accept(
                    AcceptInput(
                        payment.channel_id,
                        voucher.max_claimable_amount,
                        voucher.signature,
                        PRICE,
                        req_id,
                        time.time(),
                        config=payload.channel_config,
                    )
                )
                assert isinstance(got, channels.protocol.Reservation), got
                charge = await store.commit(payment.channel_id, req_id, PRICE, time.time())
                payer.settle(
                    payment,
                    channels.protocol.SettleResponse(
                        True,
                        reqs.network,
                        extra=channels.protocol.ResponseExtra(
                            charged_amount=PRICE, channel_state=charge.channel_state
                        ),
                    ),
                )
        charging_s = time.perf_counter() - started
        requests = n_channels * per_channel
        charged = sum(s.charged for s in await store.channels())
        assert charged == requests * PRICE, (charged, requests)

        before = await chain.token_balance(token, provider.address)
        report = await wired.settler.run_once()
        received = await chain.token_balance(token, provider.address) - before
        assert received == charged == report.claimed == report.settled

        # Baseline: what one on-chain ERC-20 transfer per request would cost instead.
        transfer = (
            "0xa9059cbb"
            + bytes(12).hex()
            + provider.address[2:].lower()
            + PRICE.to_bytes(32, "big").hex()
        )
        transfer_receipt = await send_transaction(
            w3, PAYER_KEYS[0], {"to": token, "data": HexStr(transfer)}, what="transfer"
        )
        claim_gas = [r.gas_used for r in report.claims]
        settle_gas = report.settle.gas_used if report.settle else 0
        await wired.close()
        for p in payers:
            p.close()
        return {
            "what": f"{requests} charged requests over {n_channels} channels, claimed by the settler, gas from receipts",
            "machine": _machine(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "chain": "anvil (fresh, our BatchSettlement at the canonical address)",
            "requests": requests,
            "channels": n_channels,
            "price": PRICE,
            "deposit": DEPOSIT,
            "charged_total": charged,
            "provider_received": received,
            "deposits": {
                "txs": len(deposit_gas),
                "gas_total": sum(deposit_gas),
                "gas_per_channel": round(sum(deposit_gas) / len(deposit_gas)),
            },
            "claims": {
                "txs": len(claim_gas),
                "rows_per_tx": [n_channels] if len(claim_gas) == 1 else None,
                "gas": claim_gas,
                "gas_per_channel": round(sum(claim_gas) / n_channels),
            },
            "settle": {"txs": 1 if report.settle else 0, "gas": settle_gas},
            "gas_per_charged_request": {
                "claim_and_settle": round((sum(claim_gas) + settle_gas) / requests, 1),
                "including_deposits": round(
                    (sum(claim_gas) + settle_gas + sum(deposit_gas)) / requests, 1
                ),
            },
            "baseline_erc20_transfer_per_request": int(transfer_receipt["gasUsed"]),
            "ledger_charging_wall_s": round(charging_s, 2),
        }
    finally:
        node.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--per-channel", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/results/settlement.json"))
    args = ap.parse_args()
    result = asyncio.run(run(args.channels, args.per_channel))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    g = result["gas_per_charged_request"]
    print(
        f"{result['requests']} requests / {result['channels']} channels: claims {result['claims']['txs']} tx "
        f"({sum(result['claims']['gas'])} gas, {result['claims']['gas_per_channel']}/channel), settle "
        f"{result['settle']['gas']} gas -> {g['claim_and_settle']} gas per charged request "
        f"({g['including_deposits']} with the deposits); one ERC-20 transfer per request would be "
        f"{result['baseline_erc20_transfer_per_request']}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
