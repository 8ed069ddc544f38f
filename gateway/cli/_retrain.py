"""``paychan models retrain``: train a candidate on the stored samples, gate it, promote it.

    $ paychan models retrain --models ./models --samples ./paychan-samples
    $ paychan models retrain --models ./models --samples ./paychan-samples --replay ./photos \\
          --epochs 60 --device cuda --no-promote --json

Exit 0: the candidate passed the gate (and is the champion unless --no-promote); 1: the
gate refused it (it stays in the store, not served; the reasons are printed and kept in
``<models>/<id>/report.json``); 2: bad input (no samples, too few of a label, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.cli._common import EXIT_FAILED, EXIT_USAGE, CliError, emit

__all__ = ["SAMPLES_ENV", "add_retrain_parser"]

SAMPLES_ENV = "PAYCHAN_SAMPLES_DIR"  # the gateway's --samples-dir setting


def add_retrain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``retrain`` under ``paychan models``; ``flags`` adds --models and --json."""
    p = sub.add_parser("retrain", help="train a candidate on the samples; promote it if it "
                       "passes the gate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, metavar="DIR", default=None,
                   help=f"the samples directory (default: ${SAMPLES_ENV}, else ./paychan-samples)")
    p.add_argument("--replay", type=Path, metavar="DIR", action="append", default=[],
                   help="photos of classes the model already serves, to keep it from forgetting "
                   "them (repeatable; <models>/replay/ is always used when present)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="training passes over the samples (default 40)")
    p.add_argument("--last-stage", action="store_true",
                   help="also fine-tune the backbone's last stage (slower)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when torch sees one (default)")
    p.add_argument("--golden", type=Path, metavar="DIR", default=None,
                   help="another golden set directory (default: the shipped inference/golden/)")
    p.add_argument("--no-promote", action="store_true",
                   help="gate and report, but leave the champion as it is")
    flags(p)
    p.set_defaults(handler=_retrain)


def _retrain(args: argparse.Namespace) -> int:
    from gateway.cli.models import _store
    from inference.golden_set import GoldenSetError
    from inference.retraining import RetrainOptions, retrain
    from inference.training import RetrainError, TrainOptions
    from inference.versions import StoreError

    store = _store(args)
    samples = args.samples or Path(os.environ.get(SAMPLES_ENV, "").strip() or "paychan-samples")
    try:
        train = TrainOptions(device=args.device, last_stage=args.last_stage,
                             **({} if args.epochs is None else {"epochs": args.epochs}))
        options = RetrainOptions(train=train, promote=not args.no_promote,
                                 replay_dirs=tuple(args.replay), golden_dir=args.golden)
        for path in args.replay:
            if not path.is_dir():
                raise RetrainError(f"--replay: {path} is not a directory of photos")
        with _progress(enabled=not getattr(args, "json", False)) as progress:
            outcome = retrain(store, samples, options, progress=progress)
    except (RetrainError, GoldenSetError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except StoreError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    data = {**outcome.report, "report_path": str(outcome.candidate.path / "report.json")}
    emit(args, data, _human)
    return 0 if outcome.passed else EXIT_FAILED


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar per stage on stderr (rich; transient), or nothing under --json."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield advance
    if not console.is_terminal:
        sys.stderr.flush()


def _human(data: dict[str, Any]) -> str:
    cand, parent = data["candidate_scores"], data["parent_scores"]
    d = data["data"]
    new = ", ".join(f"{label} ({d['label_groups'][label]})" for label in d["new_labels"]) or "none"
    lines = [
        f"retrain: candidate {data['candidate'][:16]} from {data['parent'][:16]}: {data['decision']}",
        (f"  held-out samples: {parent['heldout']['accuracy']:.1f}% -> "
         f"{cand['heldout']['accuracy']:.1f}% ({cand['heldout']['total']} photos)"),
        (f"  golden top-1:     {parent['golden']['top1_accuracy']:.1f}% -> "
         f"{cand['golden']['top1_accuracy']:.1f}% ({cand['golden']['total']} photos)"),
        (f"  new labels: {new}; {d['train']} training samples, {d['replay_photos']} replay photos; "
         f"{data['seconds']['total']:.0f} s on {data['device']}"),
    ]
    label = "why" if not data["verdict"]["passed"] else "gate"
    lines += [f"  {label}: {reason}" for reason in data["verdict"]["reasons"]]
    lines.append(f"  report: {data['report_path']}")
    return "\n".join(lines)
