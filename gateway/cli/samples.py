"""``paychan samples``: send labelled images for retraining, or count a sample store's.

    $ export PAYCHAN_KEY=0x...                      # the payer key of a channel at the gateway
    $ paychan samples add cat.jpg --label tabby --gateway http://127.0.0.1:8402
    $ paychan samples add okapi/ --label "okapi calf" --group other_mammal \\
          --gateway http://127.0.0.1:8402 --json
    $ paychan samples list --samples ./paychan-samples      # counts per label (no key)

``add`` sends each IMAGE (files, or the JPEG, PNG and WebP files of a folder) to the
gateway's POST /v1/samples, signed by the payer's channel key (the ``SAMPLE-SIGNATURE``
header, docs/protocol.md). Samples are free, but the gateway takes them only from a payer
with a funded channel there: classify an image first (``paychan classify``). ``--label`` is an
ImageNet class name ("tabby") or index, or a new name; a new name needs ``--group`` (dog, cat,
other_mammal, bird, fish, reptile, amphibian, invertebrate, not_animal) the first time.
The gateway's rate limit is waited out. Prints what was stored, what was already there and
what was refused, with the reason; exits 2 when any image was refused.

``list`` reads a samples directory (``--samples``, default $PAYCHAN_SAMPLES_DIR or
./paychan-samples): samples per label with their group, the total and the training-data digest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._common import (
    EXIT_USAGE,
    PROGRESS_FROM,
    CliError,
    add_json_flag,
    add_key_flag,
    emit,
    expand_images,
    with_progress,
)
from gateway.cli.channel import add_gateway_flag, add_state_flag, open_client, run_sdk

if TYPE_CHECKING:  # the SDK loads aiohttp and web3: only inside the handler at run time
    from channels.sdk import PaymentClient

__all__ = ["register"]

_SAMPLES_ENV = "PAYCHAN_SAMPLES_DIR"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "samples",
        help="send labelled images for retraining (add), or count a sample store (list)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser(
        "add", help="send labelled images to a gateway, signed by the payer",
        description="examples:\n  paychan samples add cat.jpg --label tabby --gateway URL\n"
        "  paychan samples add okapi/ --label 'okapi calf' --group other_mammal --gateway URL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders")
    add.add_argument("--label", required=True, metavar="NAME",
                     help="ImageNet class name or index, or a new name (then --group)")
    add.add_argument("--group", metavar="GROUP",
                     help="the label's animal group (needed the first time for a new label)")
    add_gateway_flag(add, required=True)
    add.add_argument("--concurrency", type=int, default=4,
                     help="samples in flight at once (default 4)")
    add_key_flag(add)
    add_state_flag(add)
    add_json_flag(add)
    add.set_defaults(handler=_add)
    ls = sub.add_parser(
        "list", help="samples per label in a samples directory",
        description="example:\n  paychan samples list --samples ./paychan-samples --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--samples", type=Path, metavar="DIR",
                    help=f"the samples directory (default ${_SAMPLES_ENV} or ./paychan-samples)")
    add_json_flag(ls)
    ls.set_defaults(handler=_list)


# --------------------------------------------------------------------------- add


def _add(args: argparse.Namespace) -> int:
    from channels.sdk import InputError
    from channels.sdk.inputs import load_image

    if not args.label.strip():
        raise CliError("--label: give an ImageNet class name or a new name", EXIT_USAGE)
    if args.concurrency < 1:
        raise CliError("--concurrency: must be at least 1", EXIT_USAGE)
    paths = expand_images(args.images)
    for path in paths:  # every image checked before the first is sent
        try:
            load_image(path)
        except InputError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    client = open_client(args)
    data = run_sdk(lambda: _send_all(args, client, paths))
    emit(args, data, _human)
    return EXIT_USAGE if data["refused"] else 0


async def _send_all(args: argparse.Namespace, client: PaymentClient, paths: list[Path]) -> dict[str, Any]:
    from channels.sdk import RequestFailed

    gate = asyncio.Semaphore(args.concurrency)

    async def one(path: Path) -> dict[str, Any]:
        async with gate:
            try:
                result = await client.add_sample(path, label=args.label, group=args.group)
            except RequestFailed as exc:  # this image refused; a 5xx stops the run
                if exc.status >= 500 and exc.status != 507:
                    raise
                return {"image": str(path), "status": exc.status, "error": exc.code,
                        "message": str(exc)}
            return result.to_json()

    async with client:
        await client.channel()  # no channel with this gateway: one clear error, nothing sent
        tasks = [asyncio.ensure_future(one(p)) for p in paths]
        try:
            if not args.json and len(tasks) >= PROGRESS_FROM:
                await with_progress(tasks, "sending samples")
            results = [await t for t in tasks]
        finally:
            for t in tasks:
                t.cancel()
    refused = [r for r in results if "error" in r]
    return {
        "gateway": args.gateway,
        "samples": results,
        "stored": sum("error" not in r and not r["duplicate"] for r in results),
        "duplicates": sum("error" not in r and r["duplicate"] for r in results),
        "refused": len(refused),
    }


def _human(data: dict[str, Any]) -> str:
    lines = []
    for r in data["samples"]:
        if "error" in r:
            lines.append(f"{r['image']}: refused ({r['status']} {r['error']}): {r['message']}")
        else:
            what = "already stored" if r["duplicate"] else "stored"
            lines.append(f"{r['image']}: {what} as {r['label']!r} ({r['group']})")
    lines.append(f"{data['stored']} stored, {data['duplicates']} already there, "
                 f"{data['refused']} refused")
    return "\n".join(lines)


# --------------------------------------------------------------------------- list


def _list(args: argparse.Namespace) -> int:
    from inference.samples import SampleStore

    root: Path = args.samples or Path(os.environ.get(_SAMPLES_ENV, "").strip() or "paychan-samples")
    if not root.is_dir():
        raise CliError(f"--samples {root}: no such directory (pass the gateway's --samples-dir)",
                       EXIT_USAGE)
    store = SampleStore(root)
    records = store.records()
    labels: dict[str, dict[str, Any]] = {}
    for r in records:
        row = labels.setdefault(r.label, {"label": r.label, "group": r.group,
                                          "imagenetIndex": r.imagenet_index, "samples": 0,
                                          "payers": set()})
        row["samples"] += 1
        row["payers"].add(r.payer)
    rows = sorted(labels.values(), key=lambda row: (-row["samples"], row["label"]))
    for row in rows:
        row["payers"] = len(row["payers"])
    emit(args, {"samples": str(root), "labels": rows, "total": len(records),
                "bytes": sum(r.bytes for r in records), "digest": store.digest()}, _human_list)
    return 0


def _human_list(data: dict[str, Any]) -> str:
    lines = [f"{row['samples']:6d}  {row['label']} ({row['group']}"
             + (", new label)" if row["imagenetIndex"] is None else ")")
             for row in data["labels"]]
    lines.append(f"{data['total']} sample(s), {data['bytes']} bytes, in {data['samples']}; "
                 f"digest {data['digest'][:16]}…")
    return "\n".join(lines)
