"""Voucher verification cost, beside a bare coincurve recover and the x402 reference verifier.

All figures come from one run, interleaved in rounds so that noise from other processes hits
every contender alike. Writes bench/results/verify.json:

    .venv/bin/python bench/verify.py [--rounds 40] [--per-round 250] [--out FILE.json]

Measured per call (µs, p50/p99):
- `bare_recover`: coincurve `PublicKey.from_signature_and_message` of the same digest.
- `verify_voucher`: ours from the parsed payload (cached channel id and domain separator,
  digest, recover, address, 20-byte compare). Target: p50 <= 1.25 x bare_recover.
  Steady state: the channel id and the authorizer's public point are cached after the
  channel's first voucher.
- `verify_voucher_uncached_channel_id`: the same plus computing the channel id afresh.
- `verify_voucher_cold`: a first voucher: channel id computed, recovered point serialized
  and hashed to an address.
- `x402_reference`: `verify_batch_settlement_voucher_typed_data` from the `x402` package.
- `parse_payment_signature`: base64 + JSON + strict field checks of the header, separately.
- `parse_and_verify`: the gateway's whole hot path for a voucher.
- `sign_receipt`, `encode_payment_response`: the gateway's answering side (receipt digest +
  signature; the PAYMENT-RESPONSE header with channelState and receipt).
- `accept_commit_*`: the ledger's accept + commit round trip on its SQLite and Redis stores
  (the channels-ledger engineer's stores), when they are importable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coincurve import PublicKey
from redis.exceptions import RedisError
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)

import channels
from channels.protocol import eip712
from channels.protocol import verify as verify_module
from channels.sdk.payer import Payer
from channels.protocol import (
    BatchExtra,
    ChannelStateSnapshot,
    PaymentRequirements,
    Receipt,
    ResponseExtra,
    SettleResponse,
    SignedReceipt,
)
from _machine import cpu_model  # bench/ is on sys.path when a script runs

# Well-known anvil dev keys (mnemonic "test test ... junk"): #1 payer, #2 gateway.
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
GATEWAY_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
CHAIN = 31337
SETTLEMENT = channels.protocol.CANONICAL_SETTLEMENT_ADDRESS


def machine() -> dict[str, object]:
    cpu = cpu_model()

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "coincurve": version("coincurve"),
        "x402": version("x402"),
        "keccak": "safe-pysha3" if version("safe-pysha3") else "pycryptodome",
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "note": "shared machine: other jobs may run at the same time (see the load average)",
    }


def voucher_header() -> str:
    """A real voucher payment (second request on an open channel) as a client sends it."""
    payer = Payer(channels.Signer(PAYER_KEY), ":memory:", deposit_amount=10**9)
    offer = PaymentRequirements(
        f"eip155:{CHAIN}",
        bytes.fromhex("5FbDB2315678afecb367f032d93F642f64180aa3"),
        1_000,
        bytes.fromhex("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        300,
        BatchExtra(channels.Signer(GATEWAY_KEY).address_bytes, 900, "USD Coin", "2"),
    )
    first = payer.pay(offer)  # the deposit; answer it as a server would, then pay again
    state = ChannelStateSnapshot(first.channel_id, 10**9, 0, 0, 0, 1_000)
    payer.settle(
        first, SettleResponse(True, offer.network, "0x01", None, 10**9, ResponseExtra(1_000, state))
    )
    return payer.pay(offer).header


def timed(fn: Callable[[], object], n: int, out: list[float]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000)


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_us": round(statistics.median(samples), 2),
        "p99_us": round(q[98], 2),
        "mean_us": round(statistics.fmean(samples), 2),
        "n": len(samples),
    }


async def _store_round_trips(url: str, sequential: int, channels_n: int, per_channel: int) -> dict:
    """accept + commit through one store: one channel in sequence, then many channels at once."""
    from channels.protocol import AcceptInput, Rejection, Synced
    from channels.provider.store import open_store

    payer = channels.Signer(PAYER_KEY)
    store = await open_store(url, chain_id=CHAIN, contract=SETTLEMENT)
    price = 1_000

    async def open_channel(index: int) -> tuple[channels.ChannelConfig, bytes]:
        config = channels.ChannelConfig(
            payer.address_bytes,
            payer.address_bytes,
            bytes(19) + b"\x01",
            channels.Signer(GATEWAY_KEY).address_bytes,
            bytes(19) + b"\x02",
            900,
            os.urandom(32),  # a fresh channel per run and per index
        )
        cid = channels.protocol.channel_id(config, CHAIN, SETTLEMENT)
        await store.apply_fact(cid, Synced(balance=10**15, total_claimed=0), config=config)
        return config, cid

    def vouchers(cid: bytes, n: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(1, n + 1):
            digest = channels.voucher_digest(CHAIN, SETTLEMENT, cid, i * price)
            out.append((i * price, payer.sign_digest(digest)))
        return out

    async def run(cid: bytes, signed: list[tuple[int, bytes]], times: list[float]) -> None:
        for i, (ceiling, sig) in enumerate(signed):
            request_id = f"bench-{i}"
            t0 = time.perf_counter_ns()
            got = await store.accept(AcceptInput(cid, ceiling, sig, price, request_id, time.time()))
            if isinstance(got, Rejection):
                raise RuntimeError(f"{url}: rejected {got.code}: {got.message}")  # noqa: TRY004
            await store.commit(cid, request_id, price, time.time())
            times.append((time.perf_counter_ns() - t0) / 1000)

    try:
        _, cid = await open_channel(0)
        signed = vouchers(cid, sequential)
        await run(cid, signed[:20], [])  # warm-up
        one: list[float] = []
        await run(cid, signed[20:], one)
        many: list[float] = []
        opened = [await open_channel(i) for i in range(channels_n)]
        work = [(c, vouchers(c, per_channel)) for _, c in opened]
        t0 = time.perf_counter()
        await asyncio.gather(*(run(c, v, many) for c, v in work))
        wall = time.perf_counter() - t0
    finally:
        if hasattr(store, "drop_namespace"):
            await store.drop_namespace()  # only this run's prefix; never a FLUSHDB
        await store.close()
    return {
        "one_channel_sequential": summary(one),
        f"{channels_n}_channels_concurrent": {
            **summary(many),
            "round_trips_per_s": round(len(many) / wall, 1),
        },
    }


def ledger_round_trips(sequential: int = 1_000) -> dict[str, object]:
    """accept + commit (durable) on the channels-ledger SQLite and Redis stores."""
    out: dict[str, object] = {
        "what": "store.accept(AcceptInput) + store.commit(...) per paid request; the voucher"
        " itself is verified before (see verify_voucher)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "sqlite": f"sqlite:///{tmp}/bench-ledger.sqlite3",
            "redis": f"redis://127.0.0.1:6379/0?prefix=bench-verify-{os.getpid()}-{os.urandom(4).hex()}&durability=relaxed",
        }
        for name, url in urls.items():
            try:
                out[name] = asyncio.run(_store_round_trips(url, sequential, 16, 60))
            except (OSError, RedisError) as exc:  # a missing Redis is reported, not fatal
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=250)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/verify.json")
    args = parser.parse_args()

    header = voucher_header()
    payment = channels.parse_payment_signature(header)
    config, voucher = payment.payload.channel_config, payment.payload.voucher
    digest = channels.voucher_digest(
        CHAIN, SETTLEMENT, voucher.channel_id, voucher.max_claimable_amount
    )
    compact = voucher.signature[:64] + bytes((voucher.signature[64] - 27,))
    assert channels.recover_signer(digest, voucher.signature) == channels.protocol.checksum_address(
        config.payer_authorizer
    )
    cid_hex, sig_hex = "0x" + voucher.channel_id.hex(), "0x" + voucher.signature.hex()
    amount = str(voucher.max_claimable_amount)
    authorizer = channels.protocol.checksum_address(config.payer_authorizer)
    payer_addr = channels.protocol.checksum_address(config.payer)
    uncached_channel_id = eip712.channel_id.__wrapped__

    def bare_recover() -> object:
        return PublicKey.from_signature_and_message(compact, digest, hasher=None)

    def ours() -> None:
        channels.protocol.verify_voucher(config, voucher, CHAIN, SETTLEMENT)

    def ours_uncached() -> None:
        if voucher.channel_id != uncached_channel_id(config, CHAIN, SETTLEMENT):
            raise AssertionError
        channels.protocol.verify_voucher(config, voucher, CHAIN, SETTLEMENT)

    known_points = verify_module._KNOWN_POINTS

    def ours_cold() -> None:  # a channel and an authorizer seen for the first time
        known_points.clear()
        ours_uncached()

    def reference() -> None:
        ok = verify_batch_settlement_voucher_typed_data(
            None, cid_hex, amount, authorizer, payer_addr, sig_hex, CHAIN
        )
        if not ok:
            raise AssertionError("reference verifier rejected a valid voucher")

    def parse() -> object:
        return channels.parse_payment_signature(header)

    def parse_and_verify() -> None:
        p = channels.parse_payment_signature(header).payload
        channels.protocol.verify_voucher(p.channel_config, p.voucher, CHAIN, SETTLEMENT)

    gateway = channels.Signer(GATEWAY_KEY)
    receipt = Receipt(
        voucher.channel_id, os.urandom(32), os.urandom(32), os.urandom(32), 1_000, 2_000
    )
    state = ChannelStateSnapshot(voucher.channel_id, 10**9, 0, 0, 0, 2_000)

    def sign_receipt() -> bytes:
        return gateway.sign_digest(channels.protocol.receipt_digest(CHAIN, SETTLEMENT, receipt))

    signed_receipt = SignedReceipt(receipt, sign_receipt())

    def encode_response() -> str:
        extra = ResponseExtra(1_000, state, None, signed_receipt)
        return channels.protocol.encode_payment_response(
            SettleResponse(True, f"eip155:{CHAIN}", "", config.payer, None, extra)
        )

    contenders: dict[str, Callable[[], object]] = {
        "bare_recover": bare_recover,
        "verify_voucher": ours,
        "verify_voucher_uncached_channel_id": ours_uncached,
        "verify_voucher_cold": ours_cold,
        "x402_reference": reference,
        "parse_payment_signature": parse,
        "parse_and_verify": parse_and_verify,
        "sign_receipt": sign_receipt,
        "encode_payment_response": encode_response,
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm caches and code paths
        timed(fn, 50, [])
    gc.collect()
    started = time.time()
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            timed(fn, args.per_round, samples[name])
    elapsed = time.time() - started

    results = {name: summary(s) for name, s in samples.items()}
    bare = results["bare_recover"]["p50_us"]
    ratios = {
        name: round(r["p50_us"] / bare, 3)
        for name, r in results.items()
        if name not in ("bare_recover", "parse_payment_signature", "encode_payment_response")
    }
    report = {
        "benchmark": "voucher verification (x402 batch-settlement, EVM)",
        "machine": machine(),
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": (
            f"{args.rounds} interleaved rounds x {args.per_round} calls per contender, "
            "per-call perf_counter_ns; one process, one run"
        ),
        "header_bytes": len(header),
        "results_us": results,
        "p50_ratio_to_bare_recover": ratios,
        "target": {
            "verify_voucher_p50_over_bare_recover_max": 1.25,
            "met": ratios["verify_voucher"] <= 1.25,
        },
        "ledger_accept_commit": ledger_round_trips(),
        "elapsed_s": round(elapsed, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"results_us": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
