"""``paychan models``: the versions in a local model store, or the ones a gateway serves.

    $ paychan models list --models ./models [--json]      # or PAYCHAN_MODELS=./models
    $ paychan models promote 5793442 --models ./models    # id, unique prefix or alias
    $ paychan models rollback --models ./models           # champion <-> previous
    $ paychan models retire 5793442 --models ./models     # kept on disk, no longer servable
    $ paychan models retrain --models ./models --samples ./paychan-samples  # train, gate, promote
    $ paychan models publish champion --models ./models --rpc URL --key-file provider.key \
          --registry 0x...                                # to the ModelRegistry, once
    $ paychan models list --gateway http://127.0.0.1:8402 # GET /v1/models (free, no key)

A gateway serving the store (``paychan serve --models DIR``) follows ``promote`` and
``rollback`` by itself within a second (``gateway.model_watch``): no restart.
A store directory that holds no version yet is bootstrapped with the bundled ImageNet
tf_efficientnet_lite0 as its champion. A version's id is the sha256 of its weights file.
``list`` is the default action; without --models or PAYCHAN_MODELS it needs --gateway.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    add_json_flag,
    add_key_flag,
    emit,
    load_key,
)
from gateway.cli._retrain import add_retrain_parser
from gateway.cli.channel import run_sdk

__all__ = ["register"]

MODELS_ENV = "PAYCHAN_MODELS"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "models",
        help="model versions: a local store (list/promote/rollback/retire/retrain) or a gateway's",
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
    add_retrain_parser(sub, lambda parser: _flags(parser, argparse.SUPPRESS))
    publish = sub.add_parser(
        "publish", help="publish a version to the ModelRegistry (weights hash, manifest digest)",
        description="examples:\n  paychan models publish champion --models ./models --rpc "
        "http://127.0.0.1:8545 --key-file provider.key --registry 0x...\n\nThe key must own the "
        "registry. A published version is left as is; the record goes to <id>/publication.json.\n\n"
        "A gateway serving with --registry publishes every version it serves by itself; use "
        "this for a version before it is served, not while that gateway is sending claims with "
        "the same key (two senders of one key can take the same nonce).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    publish.add_argument("version", metavar="ID", nargs="?", default="champion",
                         help="version id, unique id prefix or alias (default: champion)")
    publish.add_argument("--rpc", dest="rpc_url", metavar="URL", default=None,
                         help="EVM JSON-RPC URL (default: PAYCHAN_RPC_URL, else http://127.0.0.1:8545)")
    publish.add_argument("--registry", metavar="ADDRESS", default=None,
                         help="ModelRegistry address (default: PAYCHAN_REGISTRY)")
    add_key_flag(publish)
    _flags(publish, argparse.SUPPRESS)
    publish.set_defaults(handler=_publish)
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
    if not gateway and _models_dir(args) is None:  # PAYCHAN_GATEWAY, as for every --gateway
        args.gateway = gateway = os.environ.get("PAYCHAN_GATEWAY", "").strip() or None
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


def _publish(args: argparse.Namespace) -> int:
    import asyncio

    from inference.versions import StoreError

    store = _store(args)
    try:
        version = store.servable(args.version)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    registry = args.registry or os.environ.get("PAYCHAN_REGISTRY", "").strip()
    if not registry:
        raise CliError("no registry: pass --registry ADDRESS (the ModelRegistry contract; "
                       "contracts.DEV_REGISTRY on dev chains) or set PAYCHAN_REGISTRY", EXIT_USAGE)
    rpc = args.rpc_url or os.environ.get("PAYCHAN_RPC_URL", "").strip() or "http://127.0.0.1:8545"
    key = load_key(args)

    async def work() -> dict[str, Any]:
        from eth_account import Account

        from channels.provider.registry import ModelRegistry
        from gateway.chain_setup import close_web3, connect_rpc
        from gateway.provenance import Publisher, key_sender

        w3 = await connect_rpc(rpc)
        try:
            contract = ModelRegistry(w3, registry)
            publisher = Publisher(contract, key_sender(w3, key, contract.address),
                                  publisher=Account.from_key(key).address,
                                  chain_id=int(await w3.eth.chain_id))
            return await publisher.ensure(version, store)
        finally:
            await close_web3(w3)

    try:
        record = asyncio.run(work())
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise CliError(f"publish: {exc}", EXIT_FAILED) from None
    emit(args, {"version": version.id, "publication": record},
         lambda d: f"published {d['version'][:16]} in {d['publication']['registry']} "
         f"(tx {d['publication']['tx_hash']}, block {d['publication']['block_number']})")
    return 0


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
