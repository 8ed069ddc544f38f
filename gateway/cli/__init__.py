"""The ``paychan`` command line.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` to a function ``(args) -> int``. Heavy imports
(torch, web3) happen inside handlers, so ``paychan --help`` stays instant.

Exit codes (also in ``paychan --help``):

====  ==========================================================
0     success
1     the operation failed (chain, store or model error)
2     bad usage or bad input (missing key, unreadable file, bad flag)
3     payment refused by the server
4     a service could not be reached (RPC, gateway, Redis)
====  ==========================================================

Example::

    $ paychan classify-local photo.jpg --top-k 3 --json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli._common import CliError, EXIT_CODES_HELP

# One module per subcommand; add yours here.
_COMMAND_MODULES: list[str] = [
    "serve",
    "classify_local",
    "deploy",
    "devnet",
    "demo",
    "settle",
    "classify",
    "channel",
    "models",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="paychan",
        description="Pay-per-prediction image classification over x402 payment channels.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"gateway.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``paychan``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        print(f"paychan {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"paychan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
