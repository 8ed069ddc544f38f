"""Helpers shared by the ``paychan`` subcommands: keys, JSON output, errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PAYMENT = 3
EXIT_UNREACHABLE = 4

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the operation failed (chain, store or model error)
  2  bad usage or bad input (missing key, unreadable file, bad flag)
  3  payment refused by the server
  4  a service could not be reached (RPC, gateway, Redis)

keys are read from --key-file FILE (a file holding a hex private key) or the PAYCHAN_KEY
environment variable, never from the command line."""


class CliError(Exception):
    """A failure to report in one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def add_key_flag(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--key-file",
        type=Path,
        help="file holding a hex private key (default: the PAYCHAN_KEY environment variable)",
    )
    parser.set_defaults(_key_required=required)


def load_key(args: argparse.Namespace) -> str:
    """The hex private key from ``--key-file`` or ``PAYCHAN_KEY``; raises CliError if neither."""
    key_file: Path | None = getattr(args, "key_file", None)
    if key_file:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"--key-file: cannot read {key_file}: {exc.strerror}", EXIT_USAGE)
    else:
        key = os.environ.get("PAYCHAN_KEY", "").strip()
        if not key:
            raise CliError("no key: pass --key-file FILE or set PAYCHAN_KEY", EXIT_USAGE)
    body = key[2:] if key.startswith(("0x", "0X")) else key
    if len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise CliError("the key must be 32 bytes of hex (64 hex digits, optional 0x)", EXIT_USAGE)
    return "0x" + body.lower()


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else through ``human`` (or as JSON)."""
    if getattr(args, "json", False) or human is None:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(human(data))


# Fewer items than this get no progress bar: it would only flicker.
PROGRESS_FROM = 4


async def with_progress(tasks: Sequence[Awaitable[object]], title: str) -> None:
    """A transient progress bar on the terminal until every task is done (results: await them).

        await with_progress(tasks, "classifying")
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(title, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as progress:
        bar = progress.add_task(title, total=len(tasks))
        for done in asyncio.as_completed(tasks):
            await done
            progress.advance(bar)
