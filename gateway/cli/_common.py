"""Helpers shared by the ``paychan`` subcommands: keys, JSON output, errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
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


#: The ``error.code`` of a ``--json`` error for each exit code.
ERROR_CODES = {EXIT_FAILED: "failed", EXIT_USAGE: "usage", EXIT_PAYMENT: "payment_refused",
               EXIT_UNREACHABLE: "unreachable", 130: "interrupted"}


class CliError(Exception):
    """A failure to report in one line, with the exit code to return (``code``: the JSON
    error's code; default from the exit code)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code or ERROR_CODES.get(exit_code, "failed")


def report_error(command: str, message: str, exit_code: int, code: str, *, as_json: bool) -> int:
    """Say why ``paychan COMMAND`` failed, in one line; returns ``exit_code``.

    Text goes to stderr as ``paychan COMMAND: MESSAGE``; under ``--json`` one JSON object goes
    to stdout instead, so a script reads every outcome from the same stream::

        {"error": {"code": "usage", "message": "--price: ..."}, "exit_code": 2}
    """
    if as_json:
        json.dump({"error": {"code": code, "message": message}, "exit_code": exit_code}, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
    else:
        prefix = f"paychan {command}: " if command else "paychan: "
        print(prefix + " ".join(message.split()), file=sys.stderr)
    return exit_code


def show_amount(units: int | str, token: Mapping[str, Any] | None) -> str:
    """Base units as people read them, ``0.001 USDC (1000 base units)``; base units alone
    when the token (``{"symbol", "decimals"}``, e.g. from the gateway's /v1/pricing) is unknown."""
    from gateway.tokens import format_amount

    if token is None:
        return format_amount(int(units))
    return format_amount(int(units), int(token["decimals"]), str(token["symbol"]))


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


def expand_images(items: Sequence[Path]) -> list[Path]:
    """Files as given, folders as their images of the kinds the gateway accepts (sorted);
    a folder with none is a CliError. ``expand_images([Path("photos/"), Path("cat.jpg")])``."""
    from gateway.uploads import ACCEPTED_IMAGES, ACCEPTED_IMAGES_TEXT

    suffixes = {suffix for names in ACCEPTED_IMAGES.values() for suffix in names}
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise CliError(f"{item}: no {ACCEPTED_IMAGES_TEXT} files in this folder "
                               f"({', '.join(sorted(suffixes))})", EXIT_USAGE)
            paths.extend(found)
        else:
            paths.append(item)
    return paths
