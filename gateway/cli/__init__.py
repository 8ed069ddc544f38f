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
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway.cli._common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    report_error,
)

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
    "samples",
    "earnings",
    "usage",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    import importlib

    parser = _Parser(
        prog="paychan",
        description="Pay-per-prediction image classification over x402 payment channels.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"gateway.cli.{name}").register(subparsers)
    return parser


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised to ``main`` (subcommand parsers are this class
    too), which reports it as text or, under ``--json``, as JSON on stdout."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``paychan``; returns the process exit code.

    No traceback reaches a user: a failure is one line on stderr (``paychan COMMAND: why``),
    or under ``--json`` one object on stdout, ``{"error": {"code", "message"}, "exit_code"}``.
    ``PAYCHAN_DEBUG=1`` lets an unexpected exception's traceback through.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        if not as_json:
            exc.parser.print_usage(sys.stderr)
        command = exc.parser.prog.removeprefix("paychan").strip()
        return report_error(command, str(exc), EXIT_USAGE, "usage", as_json=as_json)
    as_json = bool(getattr(args, "json", False))
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        return report_error(command, str(exc), exc.exit_code, exc.code, as_json=as_json)
    except KeyboardInterrupt:
        return report_error(command, "interrupted", 130, "interrupted", as_json=as_json)
    except Exception as exc:  # a bug or a case nobody named: still one line, never a traceback
        if os.environ.get("PAYCHAN_DEBUG"):
            raise
        return report_error(command, f"unexpected {type(exc).__name__}: {exc} (set PAYCHAN_DEBUG=1 "
                            "for the traceback, and please report it)", EXIT_FAILED, "internal",
                            as_json=as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
