"""``paychan usage export``: the paid answers, one row each, for accounting.

    $ paychan usage export --store sqlite:///paychan-gateway.sqlite3 --since 2026-12-01 --until 2026-12-02
    $ paychan usage export --usage-log /var/lib/paychan/usage.jsonl --format jsonl -o usage.jsonl

Columns: ``time`` (unix seconds, UTC), ``channel``, ``payer``, ``images``, ``charge`` (token base
units), ``model`` (0x sha256 of the weights that answered), ``receipt`` (the signed receipt's
``cumulativeCharged``: with the channel it names one receipt, the one the payer holds).
``--format csv`` (default, with a header) or ``jsonl``; ``--since`` / ``--until`` take a date,
an ISO time (UTC unless it says otherwise) or unix seconds, ``since <= time < until``.

The rows come from the gateway's usage log (``--usage-log``; by default
``<SQLite ledger>.usage.jsonl`` next to ``--store``). It may be read while the gateway runs.
The ledger stays the source of truth for amounts: the log may miss the last second of rows
of a gateway that crashed, never a charge (``paychan earnings`` reads the ledger).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from gateway.cli._common import EXIT_USAGE, CliError

__all__ = ["parse_time", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "usage",
        help="export the paid answers (CSV or JSON lines) from the usage log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write the rows in a date range",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--usage-log", type=Path,
                    help="the gateway's usage log (default: <ledger>.usage.jsonl of --store)")
    ex.add_argument("--store", help="the gateway's ledger URL, to find its usage log")
    ex.add_argument("--config", type=Path, help="TOML file with settings (flags override it)")
    ex.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="default csv")
    ex.add_argument("--since", type=parse_time, help="first time included (date, ISO time, unix s)")
    ex.add_argument("--until", type=parse_time, help="first time excluded")
    ex.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    ex.set_defaults(handler=_export)


def parse_time(text: str) -> float:
    """Unix seconds from ``1733270400``, ``2026-12-04`` or ``2026-12-04T10:00[:00][+02:00]``
    (UTC when no offset is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)  # 3.11: "Z" and offsets too
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; pass a date (2026-12-04), an ISO time "
            "(2026-12-04T10:00:00Z) or unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _log_path(args: argparse.Namespace) -> Path:
    from gateway.config import ConfigError, GatewayConfig
    from gateway.usage import usage_log_path

    if args.usage_log is not None:
        path: Path | None = args.usage_log
    else:
        try:
            config = GatewayConfig.load({"store": args.store, "config": args.config, "payment": False},
                                        env=os.environ)
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        path = usage_log_path(config.usage_log, config.store)
        if path is None:
            raise CliError(f"--usage-log: the ledger {config.store} is not a SQLite file, so the "
                           "usage log has no default place; pass the --usage-log the gateway "
                           "writes (paychan serve --usage-log F)", EXIT_USAGE)
    assert path is not None
    if not path.is_file():
        raise CliError(f"--usage-log: no usage log at {path}; pass the --usage-log (or --store) "
                       "the gateway uses; a gateway writes it from its first paid answer",
                       EXIT_USAGE)
    return path


def _export(args: argparse.Namespace) -> int:
    from gateway.usage import read_usage, write_csv

    if args.since is not None and args.until is not None and args.until <= args.since:
        raise CliError("--until: must be after --since", EXIT_USAGE)
    path = _log_path(args)
    rows = read_usage(path, since=args.since, until=args.until)
    out: TextIO
    if args.output is not None:
        out = args.output.open("w", newline="")
    else:
        out = sys.stdout
    try:
        if args.format == "csv":
            count = write_csv(rows, out)
        else:
            count = 0
            for row in rows:
                out.write(json.dumps(row.to_json(), separators=(",", ":")) + "\n")
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output is not None:
        print(f"wrote {count} row(s) to {args.output}", file=sys.stderr)
    return 0
