"""``paychan models``: the model versions a gateway serves (GET /v1/models; free, no key).

    $ paychan models --gateway http://127.0.0.1:8402
    $ paychan models list --gateway http://127.0.0.1:8402 --json

Prints each version's id, architecture, content hash (the ``modelVersion`` every receipt
names) and which one answers by default. ``list`` is the default action.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli._common import add_json_flag, emit
from gateway.cli.channel import run_sdk

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "models",
        help="the model versions a gateway serves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _flags(p, None)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="list the versions (the default)",
                        description="example:\n  paychan models list --gateway "
                        "http://127.0.0.1:8402 --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    # a flag given after 'list' must not be reset by the sub-parser's default
    _flags(ls, argparse.SUPPRESS)
    p.set_defaults(handler=_list)


def _flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--gateway", "--url", dest="gateway", metavar="URL", default=default,
                        help="the gateway's base URL, e.g. http://127.0.0.1:8402")
    if default is argparse.SUPPRESS:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print one JSON document instead of text")
    else:
        add_json_flag(parser)


def _list(args: argparse.Namespace) -> int:
    from gateway.cli._common import EXIT_USAGE, CliError

    if not args.gateway:
        raise CliError("--gateway URL is required (e.g. http://127.0.0.1:8402)", EXIT_USAGE)
    from channels.sdk import PaymentClient

    async def work() -> list[dict[str, Any]]:
        from channels.protocol import Signer
        from channels.sdk import Payer

        # Listing is free: a throwaway in-memory payer, never asked to sign.
        payer = Payer(Signer(b"\x01" * 32), ":memory:")
        async with PaymentClient(payer, base_url=args.gateway) as client:
            try:
                return await client.models()
            finally:
                payer.close()

    models = run_sdk(work)
    emit(args, {"gateway": args.gateway, "models": models}, _human)
    return 0


def _human(data: dict[str, Any]) -> str:
    if not data["models"]:
        return f"{data['gateway']} serves no models"
    lines = []
    for m in data["models"]:
        mark = "*" if m.get("default") else " "
        lines.append(f"{mark} {m.get('id')}  {m.get('architecture', '')}  {m.get('version')}")
    return "\n".join(lines + ["(* answers by default)"])
