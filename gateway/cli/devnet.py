"""``paychan devnet``: a local anvil chain with the contracts at the canonical addresses.

    $ paychan devnet --port 8545 --state chain.json

The settlement and ERC-3009 collector sit at the x402 canonical addresses, TestUSDC and the
ModelRegistry at fixed dev addresses; the ten well-known anvil TEST accounts hold 10,000 ETH and
1,000,000 test USDC each. With ``--state`` the chain is saved on exit and reloaded next time.
Runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from gateway.cli._common import CliError, add_json_flag, emit

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("devnet", help="run anvil with the contracts placed and funded test accounts",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8545, help="port to listen on (default 8545)")
    p.add_argument("--state", type=Path, help="file to load the chain from and save it to")
    add_json_flag(p)
    p.set_defaults(handler=_handle)


def _human(d: dict[str, Any]) -> str:
    lines = [f"anvil listening on {d['rpc']} (chain id {d['chain_id']})"]
    lines += [f"  {k:10s} {d[k]}" for k in ("settlement", "collector", "token", "registry")]
    lines.append("  test accounts (well-known anvil TEST keys, 1,000,000 USDC each):")
    lines += [f"    {a}" for a in d["accounts"]]
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def _handle(args: argparse.Namespace) -> int:
    from contracts import Anvil, dev_accounts

    node = Anvil(args.port, state=args.state)
    try:
        node.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        # anvil's own stderr is multi-line: fold it into the one-line error
        raise CliError(f"anvil could not start on --port {args.port}: {' '.join(str(exc).split())}") from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        info = {"rpc": node.url, **node.deployment.as_dict(), "accounts": dev_accounts()}
        emit(args, info, _human)
        while not stop.wait(0.5):
            if not node.running:
                raise CliError("anvil exited unexpectedly; run it again (with --state to keep the chain)")
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    return 0
