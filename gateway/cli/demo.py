"""``paychan demo``: the whole system, end to end, in one process tree.

    $ paychan demo                       # every demo photo twice, 4 requests in flight
    $ paychan demo --json                # one JSON summary (requests, charged, provider_received, ...)
    $ paychan demo --photos ~/pics --rounds 1 --concurrency 8

The embedded py-evm chain starts with our contracts at the canonical x402 addresses, the real
classifier loads, the gateway listens on a free loopback port, and a client (anvil test key
#1) deposits into a payment channel and classifies the photos (animals, and one thing that is
not) concurrently, paying each request with a signed voucher; each line leads with the animal
answer ("dog 97%", "not an animal 99%"), then the top-3 labels. The gateway then claims the charges and settles them to the
provider (anvil test key #0), and the client takes back the rest of its deposit with a
cooperative refund. Balances are read from the chain before and after. Nothing is
kept: the chain and the ledgers live in memory and a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from gateway.cli._common import EXIT_USAGE, CliError, add_json_flag, emit

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("demo", help="run chain, gateway, model, paying client and settlement end to end",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, help="folder of .jpg/.png/.webp images (default: the bundled photos)")
    p.add_argument("--rounds", type=int, default=2, help="how many times to classify each photo (default 2)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight on the channel (default 4)")
    p.add_argument("--price", type=int, default=1_000, help="token units per image (default 1000 = 0.001 USDC)")
    p.add_argument("--deposit", type=int, default=100_000,
                   help="the channel's deposit in token units (default 100000 = 0.1 USDC)")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from gateway.demo import DEMO_PHOTOS, DemoOptions, run_demo

    photos = args.photos or DEMO_PHOTOS
    if not photos.is_dir():
        raise CliError(f"--photos: {photos} is not a folder", EXIT_USAGE)
    for flag in ("rounds", "concurrency", "price", "deposit"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag} must be at least 1", EXIT_USAGE)
    if args.deposit < args.price:
        raise CliError("--deposit must cover at least one image (--price)", EXIT_USAGE)
    options = DemoOptions(photos=photos, rounds=args.rounds, concurrency=args.concurrency,
                          price=args.price, deposit=args.deposit)
    try:
        options.images()
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    report = (lambda _: None) if args.json else (lambda line: print(line, flush=True))
    summary = asyncio.run(run_demo(options, report=report))
    emit(args, summary, _verdict)
    return 0


def _verdict(s: dict[str, Any]) -> str:
    ok = s["provider_received"] == s["charged"] and s["payer_balance_change"] + s["channel_remaining"] == -s["charged"]
    return (f"\n{s['answered']} of {s['requests']} images classified in {s['seconds']} s; the provider received "
            f"exactly what was charged ({s['charged']} units) and the payer paid nothing more: "
            + ("checked on-chain." if ok else "MISMATCH, please report."))
