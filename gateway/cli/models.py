"""``paychan models``: the versions in a local model store, or the ones a gateway serves.

    $ paychan models list --models ./models [--json]      # or PAYCHAN_MODELS=./models
    $ paychan models promote 5793442 --models ./models    # id, unique prefix or alias
    $ paychan models rollback --models ./models           # champion <-> previous
    $ paychan models retire 5793442 --models ./models     # kept on disk, no longer servable
    $ paychan models list --gateway http://127.0.0.1:8402 # GET /v1/models (free, no key)

A store directory that holds no version yet is bootstrapped with the bundled ImageNet
tf_efficientnet_lite0 as its champion. A version's id is the sha256 of its weights file.
``list`` is the default action; without --models or PAYCHAN_MODELS it needs --gateway.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.cli._common import EXIT_FAILED, EXIT_USAGE, CliError, add_json_flag, emit
from gateway.cli.channel import run_sdk

__all__ = ["register"]

MODELS_ENV = "PAYCHAN_MODELS"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "models",
        help="model versions: a local store (list/promote/rollback/retire) or a gateway's",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _flags(p, None, gateway=True)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="list the versions (the default)",
                        description="examples:\n  paychan models list --models ./models --json\n"
                        "  paychan models list --gateway http://127.0.0.1:8402 --json",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    # a flag given after the action must not be reset by the sub-parser's default
    _flags(ls, argparse.SUPPRESS, gateway=True)
    promote = sub.add_parser("promote", help="make a version the champion (the old one: previous)")
    promote.add_argument("version", metavar="ID", help="version id, unique id prefix or alias")
    _flags(promote, argparse.SUPPRESS)
    promote.set_defaults(handler=_promote)
    rollback = sub.add_parser("rollback", help="swap champion and previous")
    _flags(rollback, argparse.SUPPRESS)
    rollback.set_defaults(handler=_rollback)
    retire = sub.add_parser("retire", help="keep a version on disk but stop serving it")
    retire.add_argument("version", metavar="ID", help="version id, unique id prefix or alias")
    _flags(retire, argparse.SUPPRESS)
    retire.set_defaults(handler=_retire)
    p.set_defaults(handler=_list)


def _flags(parser: argparse.ArgumentParser, default: str | None, *, gateway: bool = False) -> None:
    parser.add_argument("--models", type=Path, metavar="DIR", default=default,
                        help=f"the model store directory (default: ${MODELS_ENV})")
    if gateway:
        parser.add_argument("--gateway", "--url", dest="gateway", metavar="URL", default=default,
                            help="list a gateway's versions instead, e.g. http://127.0.0.1:8402")
    if default is argparse.SUPPRESS:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print one JSON document instead of text")
    else:
        add_json_flag(parser)


def _models_dir(args: argparse.Namespace) -> Path | None:
    given: Path | None = getattr(args, "models", None)
    if given is not None:
        return given
    env = os.environ.get(MODELS_ENV, "").strip()
    return Path(env) if env else None


def _store(args: argparse.Namespace) -> Any:
    from inference.versions import ModelStore, StoreError

    root = _models_dir(args)
    if root is None:
        raise CliError(f"no model store: pass --models DIR or set {MODELS_ENV}", EXIT_USAGE)
    try:
        return ModelStore.open(root)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _list(args: argparse.Namespace) -> int:
    gateway = getattr(args, "gateway", None)
    if gateway and getattr(args, "models", None) is not None:
        raise CliError("pass either --models DIR (a local store) or --gateway URL, not both",
                       EXIT_USAGE)
    if gateway:
        return _list_gateway(args)
    if _models_dir(args) is None:
        raise CliError(f"pass --models DIR (or set {MODELS_ENV}) for a local model store, "
                       "or --gateway URL (e.g. http://127.0.0.1:8402) for a gateway's",
                       EXIT_USAGE)
    store = _store(args)
    data = {"models_dir": str(store.root),
            "versions": [v.to_json() for v in store.list()]}
    emit(args, data, _human_store)
    return 0


def _change(args: argparse.Namespace, action: str) -> int:
    from inference.versions import StoreError

    store = _store(args)
    try:
        if action == "promote":
            version = store.promote(args.version)
        elif action == "rollback":
            version = store.rollback()
        else:
            version = store.retire(args.version)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    aliases = store.aliases()
    data = {"action": action, "version": version.to_json(), "aliases": aliases}
    emit(args, data, lambda d: f"{action}: {d['version']['id']}  "
         f"(champion {str(d['aliases']['champion'])[:12]}, previous {str(d['aliases']['previous'])[:12]})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    return _change(args, "promote")


def _rollback(args: argparse.Namespace) -> int:
    return _change(args, "rollback")


def _retire(args: argparse.Namespace) -> int:
    return _change(args, "retire")


def _human_store(data: dict[str, Any]) -> str:
    lines = [f"{data['models_dir']}:"]
    for v in data["versions"]:
        tags = ",".join(v["aliases"]) + (" retired" if v["retired"] else "")
        parent = (v["parent"] or "-")[:12]
        lines.append(f"  {v['id'][:16]}  {v['architecture']}  {v['num_classes']} classes  "
                     f"parent {parent}  {v['created_at']}  {tags}".rstrip())
    return "\n".join(lines)


def _list_gateway(args: argparse.Namespace) -> int:
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
