"""``paychan channel``: the payer's channels (list, show, refund, withdraw, sync).

    $ paychan channel list                                   # from ~/.paychan/payer.sqlite
    $ paychan channel show --gateway http://127.0.0.1:8402 --rpc http://127.0.0.1:8545
    $ paychan channel refund --gateway http://127.0.0.1:8402 --key-file payer.key
    $ paychan channel sync --gateway http://127.0.0.1:8402 --rpc http://127.0.0.1:8545 --key-file payer.key
    $ paychan channel withdraw initiate --rpc http://127.0.0.1:8545 --key-file payer.key
    $ paychan channel withdraw finalize --rpc http://127.0.0.1:8545 --key-file payer.key

``list`` and ``show`` read the payer state file (no key needed) and, with ``--gateway``, the
gateway's view (GET /v1/channels/ID), with ``--rpc`` the chain's. ``refund`` asks the gateway
for a cooperative refund of everything not charged (or ``--amount``). ``withdraw`` is the
on-chain escape hatch: ``initiate`` starts the timed withdrawal, ``finalize`` completes it once
the channel's withdrawDelay has passed; the payer key pays the gas. ``sync`` rebuilds the
state file's record of the payer's channel with the gateway (a lost file, or a stale one after
another file of the same key paid): the gateway's charged total is adopted only with its
proof, the payer's own last voucher, checked against the key; with ``--rpc`` it is floored
at the chain's totalClaimed and funded by the chain's balance, and without a proof at the
gateway the chain's totalClaimed is the baseline. Amounts are token base units (6 decimals
for USDC: 1000 = 0.001 USDC).

This module also holds the helpers the other payer commands (classify, models) share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.cli._common import (
    EXIT_FAILED,
    EXIT_PAYMENT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    add_json_flag,
    add_key_flag,
    emit,
    load_key,
    show_amount,
)

if TYPE_CHECKING:  # the SDK loads aiohttp and web3: only inside the handlers at run time
    from channels.sdk import ChannelRecord, PaymentClient, WithdrawStatus

__all__ = ["add_gateway_flag", "add_rpc_flag", "add_state_flag", "gateway_token", "http_url",
           "open_client", "register", "run_sdk"]

T = TypeVar("T")


# --------------------------------------------------------------------------- shared helpers


def add_state_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help="the payer state file (default ~/.paychan/payer.sqlite)")


GATEWAY_ENV = "PAYCHAN_GATEWAY"  # the gateway's URL when --gateway is not given (as in the SDK's examples)


def http_url(flag: str) -> Callable[[str], str]:
    """An argparse ``type`` for a URL flag: refuses one without http:// or https:// in words
    that say what to write, instead of a stack trace from the HTTP client later."""

    def check(text: str) -> str:
        url = text.strip()
        if not url.startswith(("http://", "https://")):
            what = "is not an HTTP URL" if "://" in url else "has no scheme"
            raise argparse.ArgumentTypeError(
                f"{url!r} {what}; write it as http://{url.split('://')[-1]} (or https://)")
        return url.rstrip("/")

    check.__name__ = flag  # argparse names the flag in its message ("invalid --gateway value")
    return check


def add_gateway_flag(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--gateway URL``, defaulting to ``$PAYCHAN_GATEWAY`` (then not required)."""
    default = os.environ.get(GATEWAY_ENV, "").strip() or None
    parser.add_argument("--gateway", "--url", dest="gateway", type=http_url("gateway URL"),
                        required=required and default is None, default=default, metavar="URL",
                        help=f"the gateway's base URL, e.g. http://127.0.0.1:8402 (default: "
                        f"${GATEWAY_ENV})")


def add_rpc_flag(parser: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    parser.add_argument("--rpc", metavar="URL", type=http_url("RPC URL"), required=required, help=help)


async def gateway_token(gateway: str | None) -> dict[str, Any] | None:
    """The token a gateway is paid in, for showing amounts (``{"address", "symbol",
    "decimals"}`` from its GET /v1/pricing); None when there is no gateway, it does not say,
    or it cannot be asked (the amounts are then shown in base units alone)."""
    if not gateway:
        return None
    import aiohttp

    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
                    s.get(f"{gateway.rstrip('/')}/v1/pricing") as r):
            body = await r.json() if r.status == 200 else {}
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None
    token = body.get("token") if isinstance(body, dict) else None
    if (isinstance(token, dict) and isinstance(token.get("symbol"), str)
            and isinstance(token.get("decimals"), int)):
        return token
    return None


def state_path(args: argparse.Namespace) -> Path:
    from channels.sdk.inputs import DEFAULT_STATE

    return (args.state or DEFAULT_STATE).expanduser()


def open_client(args: argparse.Namespace, **kwargs: Any) -> PaymentClient:
    """A `channels.PaymentClient` for the key of ``--key-file`` / PAYCHAN_KEY and ``--state``."""
    from channels.sdk import InputError, PaymentClient

    key = load_key(args)
    try:
        return PaymentClient.from_key(key, state_path(args),
                                      base_url=getattr(args, "gateway", None),
                                      rpc_url=getattr(args, "rpc", None), **kwargs)
    except InputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def run_sdk(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an SDK coroutine, turning its typed errors into one-line CliErrors with exit codes."""
    from channels import PaymentError
    from channels.sdk import (
        ChainError,
        ChannelHalted,
        GatewayUnreachable,
        InputError,
        PaymentRefused,
        RequestFailed,
    )

    try:
        return asyncio.run(work())
    except InputError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except GatewayUnreachable as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except (PaymentRefused, ChannelHalted, PaymentError) as exc:
        raise CliError(str(exc), EXIT_PAYMENT) from None
    except RequestFailed as exc:
        code = EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED
        raise CliError(str(exc), code) from None
    except ChainError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of token base units")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


# --------------------------------------------------------------------------- the command


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "channel",
        help="the payer's channels: list, show, refund, withdraw, sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    ls = sub.add_parser("list", help="channels in the payer state file", formatter_class=fmt,
                        description="List the payer's channels (no key needed).\n\nexample:\n"
                        "  paychan channel list --gateway http://127.0.0.1:8402 --json")
    add_gateway_flag(ls, required=False)
    add_state_flag(ls)
    add_json_flag(ls)
    ls.set_defaults(handler=_list)

    show = sub.add_parser("show", help="one channel: payer, gateway and chain views",
                          formatter_class=fmt,
                          description="Show one channel (default: the only one, or the one with "
                          "--gateway).\n\nexample:\n  paychan channel show 0x3f...e1 --gateway "
                          "http://127.0.0.1:8402 --rpc http://127.0.0.1:8545")
    show.add_argument("channel_id", nargs="?", metavar="CHANNEL_ID", help="0x + 64 hex digits")
    add_gateway_flag(show, required=False)
    add_rpc_flag(show, "JSON-RPC URL: also show the on-chain state")
    add_state_flag(show)
    add_json_flag(show)
    show.set_defaults(handler=_show)

    refund = sub.add_parser("refund", help="cooperative refund of the unspent balance",
                            formatter_class=fmt,
                            description="Ask the gateway to refund what was not charged (it "
                            "claims its charges in the same transaction).\n\nexample:\n"
                            "  paychan channel refund --gateway http://127.0.0.1:8402 "
                            "--key-file payer.key --amount 5000")
    add_gateway_flag(refund, required=True)
    refund.add_argument("--amount", type=_amount, help="base units (default: everything unspent)")
    add_key_flag(refund)
    add_state_flag(refund)
    add_json_flag(refund)
    refund.set_defaults(handler=_refund)

    wd = sub.add_parser("withdraw", help="the timed on-chain withdrawal (initiate, finalize)",
                        formatter_class=fmt,
                        description="The escape hatch without the gateway: 'initiate' starts "
                        "initiateWithdraw, 'finalize' completes it after the channel's "
                        "withdrawDelay. The payer key pays gas.\n\nexample:\n"
                        "  paychan channel withdraw initiate --rpc http://127.0.0.1:8545 "
                        "--key-file payer.key\n  paychan channel withdraw finalize --rpc "
                        "http://127.0.0.1:8545 --key-file payer.key")
    wd.add_argument("step", choices=("initiate", "finalize"), help="which transaction to send")
    wd.add_argument("channel_id", nargs="?", metavar="CHANNEL_ID",
                    help="0x + 64 hex digits (default: the only channel)")
    add_rpc_flag(wd, "JSON-RPC URL of the chain", required=True)
    add_gateway_flag(wd, required=False)
    wd.add_argument("--amount", type=_amount,
                    help="initiate: base units (default: the balance not charged)")
    add_key_flag(wd)
    add_state_flag(wd)
    add_json_flag(wd)
    wd.set_defaults(handler=_withdraw)

    sync = sub.add_parser("sync", help="rebuild the local channel state from the gateway and chain",
                          formatter_class=fmt,
                          description="Rebuild the state file's record of this key's channel "
                          "with the gateway: after losing the file, or when another file of the "
                          "same key paid since. The gateway's charged total is adopted only with "
                          "the payer's own last voucher as proof (checked against the key, never "
                          "above what it signed); --rpc floors it at the chain's totalClaimed, "
                          "or rebuilds from the chain alone when the gateway has no proof.\n\n"
                          "example:\n  paychan channel sync --gateway http://127.0.0.1:8402 "
                          "--rpc http://127.0.0.1:8545 --key-file payer.key")
    add_gateway_flag(sync, required=True)
    add_rpc_flag(sync, "JSON-RPC URL of the chain: check against on-chain totalClaimed")
    add_key_flag(sync)
    add_state_flag(sync)
    add_json_flag(sync)
    sync.set_defaults(handler=_sync)


def _records(args: argparse.Namespace) -> list[ChannelRecord]:
    from channels.sdk import Payer

    path = state_path(args)
    try:
        return Payer.read_channels(path)
    except FileNotFoundError:
        raise CliError(f"--state: no payer state at {path}: classify an image first "
                       "(paychan classify) or pass --state FILE", EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(f"--state: {exc}", EXIT_USAGE) from None


def _record_json(rec: ChannelRecord) -> dict[str, Any]:
    from channels.protocol import checksum_address

    return {
        "channelId": "0x" + rec.channel_id.hex(),
        "chainId": rec.chain_id,
        "payer": checksum_address(rec.config.payer),
        "receiver": checksum_address(rec.config.receiver),
        "token": checksum_address(rec.config.token),
        "withdrawDelay": rec.config.withdraw_delay,
        "balance": str(rec.balance),
        "charged": str(rec.charged),
        "remaining": str(max(rec.balance - rec.charged, 0)),
        "signedMax": str(rec.signed_max),
        "halted": rec.halted,
    }


async def _gateway_view(gateway: str, channel_hex: str) -> dict[str, Any] | None:
    import aiohttp

    from channels.sdk import GatewayUnreachable

    url = f"{gateway.rstrip('/')}/v1/channels/{channel_hex}"
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
                    s.get(url) as r):
            view: dict[str, Any] | None = await r.json() if r.status == 200 else None
            return view
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise GatewayUnreachable(url, exc) from exc


def _list(args: argparse.Namespace) -> int:
    rows = [_record_json(r) for r in _records(args)]
    token = None
    if args.gateway:
        async def views() -> tuple[list[dict[str, Any] | None], dict[str, Any] | None]:
            return ([await _gateway_view(args.gateway, row["channelId"]) for row in rows],
                    await gateway_token(args.gateway))

        found, token = run_sdk(views)
        for row, view in zip(rows, found):
            row["gateway"] = view
    emit(args, {"state": str(state_path(args)), "token": token, "channels": rows}, _human_list)
    return 0


def _human_list(data: dict[str, Any]) -> str:
    if not data["channels"]:
        return f"no channels in {data['state']}"
    token = data["token"]
    lines = []
    for row in data["channels"]:
        cid = row["channelId"]
        status = "halted: " + row["halted"] if row["halted"] else "open"
        view = row.get("gateway")
        if "gateway" in row:
            status += (f", gateway charged {show_amount(view['chargedCumulativeAmount'], token)}"
                       if view else ", unknown to the gateway")
        lines.append(f"{cid[:10]}…{cid[-8:]}  balance {show_amount(row['balance'], token)}, "
                     f"charged {show_amount(row['charged'], token)}, remaining "
                     f"{show_amount(row['remaining'], token)}; {status}")
    return "\n".join(lines)


def _pick(args: argparse.Namespace) -> ChannelRecord:
    """The channel named on the command line, else the only one in the state file."""
    from channels.sdk import InputError
    from channels.sdk.inputs import parse_channel_id

    records = _records(args)
    if args.channel_id:
        try:
            cid = parse_channel_id(args.channel_id)
        except InputError as exc:
            raise CliError(f"CHANNEL_ID: {exc}", EXIT_USAGE) from None
        for rec in records:
            if rec.channel_id == cid:
                return rec
        raise CliError(f"CHANNEL_ID: {args.channel_id} is not in {state_path(args)}", EXIT_USAGE)
    if len(records) != 1:
        raise CliError(f"{len(records)} channels in {state_path(args)}: name one (CHANNEL_ID); "
                       "see paychan channel list", EXIT_USAGE)
    return records[0]


def _show(args: argparse.Namespace) -> int:
    rec = _pick(args)
    data = _record_json(rec)

    async def views() -> None:
        data["token"] = await gateway_token(args.gateway)
        if args.gateway:
            data["gateway"] = await _gateway_view(args.gateway, data["channelId"])
        if args.rpc:
            from channels.sdk.onchain import read_onchain

            onchain = await read_onchain(args.rpc, rec.channel_id, settlement=rec.settlement)
            data["chain"] = {"balance": str(onchain.balance),
                             "totalClaimed": str(onchain.total_claimed),
                             "withdrawAmount": str(onchain.withdraw_amount),
                             "withdrawRequestedAt": onchain.withdraw_requested_at,
                             "refundNonce": str(onchain.refund_nonce)}

    run_sdk(views)
    emit(args, data, _human_show)
    return 0


_AMOUNT_KEYS = ("balance", "charged", "remaining", "signedMax")


def _human_show(data: dict[str, Any]) -> str:
    token = data.get("token")

    def amt(value: str) -> str:
        return show_amount(value, token)

    lines = [f"{k}: {amt(v) if k in _AMOUNT_KEYS else v}" for k, v in data.items()
             if k not in ("gateway", "chain", "token")]
    if "gateway" in data:
        view = data["gateway"]
        lines.append("gateway: " + ("unknown channel" if view is None else
                                    f"charged {amt(view['chargedCumulativeAmount'])}, balance "
                                    f"{amt(view['balance'])}, claimed {amt(view['totalClaimed'])}"))
    if "chain" in data:
        c = data["chain"]
        pending = (f", withdrawal of {amt(c['withdrawAmount'])} pending since "
                   f"{c['withdrawRequestedAt']}" if c["withdrawRequestedAt"] else "")
        lines.append(f"chain: balance {amt(c['balance'])}, claimed {amt(c['totalClaimed'])}{pending}")
    return "\n".join(lines)


def _refund(args: argparse.Namespace) -> int:
    async def work() -> dict[str, Any]:
        async with open_client(args) as client:
            settlement = await client.refund(amount=args.amount)
            rec = await client.channel()
        return {"channelId": "0x" + rec.channel_id.hex(), "refunded": str(settlement.amount or 0),
                "transaction": settlement.transaction, "balance": str(rec.balance),
                "charged": str(rec.charged), "token": await gateway_token(args.gateway)}

    data = run_sdk(work)
    emit(args, data, lambda d: (f"refunded {show_amount(d['refunded'], d['token'])} from "
                                f"{d['channelId']} (tx {d['transaction']}); balance now "
                                f"{show_amount(d['balance'], d['token'])}, charged "
                                f"{show_amount(d['charged'], d['token'])}"))
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    if args.step == "finalize" and args.amount is not None:
        raise CliError("--amount: only for 'withdraw initiate' (finalize takes what was asked)",
                       EXIT_USAGE)
    cid = _pick(args).channel_id if args.channel_id or not args.gateway else None

    async def work() -> tuple[WithdrawStatus, dict[str, Any] | None]:
        from channels.sdk import ChainError

        token = await gateway_token(args.gateway)
        async with open_client(args) as client:
            if args.step == "initiate":
                return await client.withdraw(args.amount, channel_id=cid), token
            try:
                return await client.finalize_withdraw(channel_id=cid), token
            except ChainError as exc:
                if "WithdrawDelayNotElapsed" not in exc.reason:
                    raise
                raise CliError(await _too_early(client, cid), EXIT_FAILED, "withdraw_delay") from None

    status, token = run_sdk(work)
    emit(args, {**status.to_json(), "token": token}, _human_withdraw)
    return 0


async def _too_early(client: PaymentClient, cid: bytes | None) -> str:
    """How long until a pending withdrawal may be finalized, by the chain's clock."""
    from web3 import AsyncHTTPProvider, AsyncWeb3

    rec = await client.channel(cid)
    onchain = await client.onchain(rec.channel_id)
    ready_at = onchain.withdraw_requested_at + rec.config.withdraw_delay
    w3 = AsyncWeb3(AsyncHTTPProvider(client.rpc_url, request_kwargs={"timeout": 30}))
    try:
        now = int((await w3.eth.get_block("latest"))["timestamp"])
    finally:
        await w3.provider.disconnect()
    return (f"withdrawal can be finalized in {_duration(ready_at - now)} (at {_utc(ready_at)}, "
            f"by the chain's clock); run paychan channel withdraw finalize again then")


def _duration(seconds: int) -> str:
    """``14m 32s``, ``2h 05m``, ``3d 4h``: how long, to the precision that matters."""
    seconds = max(seconds, 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _utc(unix: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _human_withdraw(d: dict[str, Any]) -> str:
    if d["finalized"]:
        return (f"withdrew {show_amount(d['amount'], d['token'])} from {d['channelId']} "
                f"(tx {d['transaction']}); on-chain balance now {show_amount(d['balance'], d['token'])}")
    return (f"withdrawal of {show_amount(d['amount'], d['token'])} started on {d['channelId']} "
            f"(tx {d['transaction']}); finalize after {_utc(d['readyAt'])} with: paychan channel "
            "withdraw finalize")


def _sync(args: argparse.Namespace) -> int:
    async def work() -> dict[str, Any]:
        async with open_client(args) as client:
            result = await client.sync()
        return {"state": str(state_path(args)), **result.to_json(),
                "token": await gateway_token(args.gateway)}

    emit(args, run_sdk(work), _human_sync)
    return 0


def _human_sync(d: dict[str, Any]) -> str:
    proof = {"gateway": "the gateway's charged total, proven by this key's own voucher",
             "gateway+chain": "the gateway's charged total, proven by this key's own voucher, "
                              "checked against the chain",
             "chain": "the chain's totalClaimed (the gateway holds no proof)"}[d["source"]]
    before = d["before"]

    def amt(value: str) -> str:
        return show_amount(value, d["token"])

    was = ("the file had no record of it" if before is None else
           f"was balance {amt(before['balance'])}, charged {amt(before['charged'])}")
    lines = [f"synced {d['channelId']} into {d['state']} from {proof}",
             (f"  balance {amt(d['balance'])}, charged {amt(d['charged'])}, remaining "
              f"{amt(d['remaining'])}, signed max {amt(d['signedMax'])} ({was})")]
    if d["chain"] is not None:
        c = d["chain"]
        lines.append(f"  chain: balance {amt(c['balance'])}, claimed {amt(c['totalClaimed'])}")
    return "\n".join(lines)
