"""``paychan classify``: pay a gateway for predictions, one image at a time, over one channel.

    $ export PAYCHAN_KEY=0x...                      # or --key-file payer.key
    $ paychan classify cat.jpg --gateway http://127.0.0.1:8402
    $ paychan classify photos/ --gateway http://127.0.0.1:8402 --top-k 3 --deposit 50000 --json

IMAGE may be files or folders (their JPEG, PNG and WebP files: what the gateway accepts).
Every image is checked before the first payment, so a bad path costs nothing. The first image opens a
channel with one deposit (``--deposit`` base units; default 10 x the price, at least the
gateway's minimum); later images pay with vouchers, and the channel is topped up when its
balance runs out. Each answer's signed receipt is verified. The payer's channels live in
``--state`` (default ~/.paychan/payer.sqlite); see ``paychan channel``.

Each image is sent with an ``Idempotency-Key``; an answer lost on the way (connection cut,
502/504) or refused for now (503) is asked for again with the same key and payment
(``--retries``), and the gateway replays a charged answer instead of charging again. A ``--state`` file that is new or stale (the same key
paid from another file, and the gateway claimed since) adopts the gateway's charged total
from its corrective 402 once the payer's own voucher in it checks out (``--rpc``: and the
chain agrees), so no withdrawal is needed; see also ``paychan channel sync``.

Prints one line per image: the animal answer (every class's probability summed per animal
group: "cat 92%", "not an animal 99%" or "unsure (dog? 7%)"; thresholds in
docs/protocol.md), the top-k labels, and what it cost (in the token's units with base units
beside, when the gateway names its token), then the total and what the channel still holds.
Exit code 2 when any image was refused (nothing is charged for it)::

    cat.jpg: cat 92% (tiger cat 39%, Egyptian cat 36%, tabby 17%)  cost 0.001 USDC (1000 base units)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._animal import animal_line
from gateway.cli._common import (
    EXIT_USAGE,
    PROGRESS_FROM,
    CliError,
    add_json_flag,
    add_key_flag,
    emit,
    expand_images,
    show_amount,
    with_progress,
)
from gateway.cli.channel import (
    add_gateway_flag,
    add_rpc_flag,
    add_state_flag,
    gateway_token,
    open_client,
    run_sdk,
)

if TYPE_CHECKING:  # the SDK loads aiohttp and web3: only inside the handler at run time
    from channels.sdk import PaymentClient

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "classify",
        help="pay a gateway for predictions (the SDK's classify)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders")
    add_gateway_flag(p, required=True)
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--deposit", type=int, metavar="UNITS",
                   help="deposit size in token base units (default: 10 x the price)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="images in flight at once on the channel (default 4)")
    add_rpc_flag(p, "JSON-RPC URL of the chain: a state adopted from the gateway (a new or "
                    "stale --state file) is also checked against on-chain totalClaimed")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="resends of an image whose answer was lost (connection cut, 502/504) "
                        "or transient (503), with the same Idempotency-Key and payment: the "
                        "gateway replays a charged answer, never charges twice (default 3)")
    add_key_flag(p)
    add_state_flag(p)
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from channels.sdk import InputError
    from channels.sdk.inputs import MAX_TOP_K, load_image

    if not 1 <= args.top_k <= MAX_TOP_K:
        raise CliError(f"--top-k {args.top_k}: must be between 1 and {MAX_TOP_K}", EXIT_USAGE)
    if args.deposit is not None and args.deposit <= 0:
        raise CliError(f"--deposit {args.deposit}: must be a positive number of base units",
                       EXIT_USAGE)
    if args.concurrency < 1:
        raise CliError("--concurrency: must be at least 1", EXIT_USAGE)
    if args.retries < 0:
        raise CliError(f"--retries {args.retries}: must be 0 or more", EXIT_USAGE)
    from gateway.uploads import ACCEPTED_IMAGES, ACCEPTED_IMAGES_TEXT

    paths = expand_images(args.images)
    for path in paths:  # every image checked before the first payment
        try:
            _data, content_type, _name = load_image(path)
        except InputError as exc:
            raise CliError(str(exc).replace("JPEG, PNG, WebP, GIF or BMP", ACCEPTED_IMAGES_TEXT),
                           EXIT_USAGE) from None
        if content_type not in ACCEPTED_IMAGES:  # the gateway would refuse it (415)
            kind = content_type.removeprefix("image/").upper()
            raise CliError(f"{path}: a {kind} image; the gateway accepts {ACCEPTED_IMAGES_TEXT} "
                           "(convert it first; nothing was paid)", EXIT_USAGE, "unsupported_format")
    client = open_client(args, deposit=args.deposit, retries=args.retries)
    data = run_sdk(lambda: _classify_all(args, client, paths))
    # Any image refused (the gateway's 4xx, uncharged) is a failure a script must see.
    data["exit_code"] = EXIT_USAGE if data["failed"] else 0
    emit(args, data, _human)
    return int(data["exit_code"])


async def _classify_all(args: argparse.Namespace, client: PaymentClient, paths: list[Path]) -> dict[str, Any]:
    from channels.sdk import RequestFailed

    gate = asyncio.Semaphore(args.concurrency)

    async def one(path: Path) -> dict[str, Any]:
        async with gate:
            try:
                result = await client.classify(path, top_k=args.top_k)
            except RequestFailed as exc:  # refused before payment (bad image, top_k): uncharged
                if exc.status >= 500 or exc.status == 429:
                    raise
                return {"image": str(path), "error": str(exc), "status": exc.status,
                        "charged": "0"}
            return result.to_json()

    token = await gateway_token(args.gateway)  # for showing amounts; base units if unknown
    async with client:
        tasks = [asyncio.ensure_future(one(p)) for p in paths]
        try:
            if not args.json and len(tasks) >= PROGRESS_FROM:
                await with_progress(tasks, "paying & classifying")
            results = [await t for t in tasks]
        finally:
            for t in tasks:
                t.cancel()
        record = await client.channel() if any("channelId" in r for r in results) else None
    total = sum(int(r["charged"]) for r in results)
    out: dict[str, Any] = {"gateway": args.gateway, "token": token, "images": results,
                           "charged": str(total), "failed": sum("error" in r for r in results)}
    if record is not None:
        out["channel"] = {"channelId": "0x" + record.channel_id.hex(),
                          "balance": str(record.balance), "charged": str(record.charged),
                          "remaining": str(max(record.balance - record.charged, 0))}
    return out


def _human(data: dict[str, Any]) -> str:
    token = data.get("token")
    lines = []
    for r in data["images"]:
        if "error" in r:
            lines.append(f"{r['image']}: refused, not charged: {r['error']}")
            continue
        paid = f"cost {show_amount(r['charged'], token)}" + (
            f" (+ deposit {show_amount(r['deposited'], token)})" if r["deposited"] else "")
        lines.append(f"{r['image']}: {animal_line(r)}  {paid}")
    ch = data.get("channel")
    tail = (f"{len(data['images']) - data['failed']} image(s), charged "
            f"{show_amount(data['charged'], token)}")
    if data["failed"]:
        tail += f"; {data['failed']} refused, not charged"
    if ch:
        tail += f"; channel {ch['channelId'][:10]}… holds {show_amount(ch['remaining'], token)} unspent"
    return "\n".join(lines + [tail])
