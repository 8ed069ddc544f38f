"""Automatic retraining: after every N new samples, ``paychan models retrain`` in a subprocess.

    retrainer = Retrainer(models=Path("models"), samples=Path("paychan-samples"), every=100)
    await retrainer.run()        # polls the sample count; one retrain at a time; logs outcomes
    retrainer.last               # the last outcome: exit code, decision, reasons, candidate

    app.cleanup_ctx.append(retraining_ctx)   # what create_app does with --retrain-after N

The training runs in another process, at a lower CPU priority (nice 10), never in the
serving one: it would take the CPU from paid requests. Its report goes to the model store
(``<models>/<id>/report.json``); a promoted candidate becomes ``champion`` there, and the
serving gateway swaps it in by itself (``gateway.model_watch``). The sample count at the
last run is kept in ``<models>/retrain-state.json``, so a restart does not retrain the same
samples again, and a flock on ``<models>/.retrain.lock`` lets one process of several
(``--workers N``, or two gateways on one store) run a given retrain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.keys import CONFIG

__all__ = ["RetrainRun", "Retrainer", "retraining_ctx"]

log = logging.getLogger("paychan.retraining")

STATE_FILE = "retrain-state.json"
LOCK_FILE = ".retrain.lock"
# The child: `paychan models retrain`, niced so that serving keeps the CPU it needs.
# SIGTERM becomes SystemExit, so the child removes its temporary files on the way out.
_CHILD = ("import os, signal, sys; os.nice(10); "
          "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); "
          "from gateway.cli import main; sys.exit(main(sys.argv[1:]))")


@dataclasses.dataclass(frozen=True, slots=True)
class RetrainRun:
    """One finished retrain: exit code (0 promoted, 1 refused, 2 bad input), what the report
    said, and the sample count it started from."""

    exit_code: int
    samples: int
    decision: str
    reasons: tuple[str, ...]
    candidate: str | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Retrainer:
    """Polls the sample store and starts a retrain after ``every`` new samples."""

    def __init__(self, models: Path, samples: Path, every: int, *, poll_s: float = 10.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        if every < 1:
            raise ValueError(f"every: {every} must be at least 1 sample")
        self.models = Path(models)
        self.samples = Path(samples)
        self.every = every
        self.poll_s = poll_s
        self.extra_args = extra_args
        self.last: RetrainRun | None = None
        self.runs = 0
        self._child: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        """A retrain child is running now."""
        return self._child is not None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Poll forever (until cancelled); a retrain that fails is logged, never raised."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad samples dir must not end the loop: log, try again later
                log.exception("retraining: check failed; trying again in %.0f s", self.poll_s)
            await asyncio.sleep(self.poll_s)

    async def check(self) -> RetrainRun | None:
        """One poll: retrain (and wait for it) if ``every`` samples arrived since the last
        run and no other process is retraining this store. Returns the run, if any."""
        count = await asyncio.to_thread(self._count)
        if count - self._state().get("samples", 0) < self.every:
            return None
        with self._lock() as held:
            if not held:
                return None  # another process is on it
            since = self._state().get("samples", 0)  # re-read under the lock
            if count - since < self.every:
                return None
            run = await self._retrain(count)
            self._save_state({"samples": count, "last": run.to_json(),
                              "at": time.time()})
        self.last = run
        self.runs += 1
        return run

    # ------------------------------------------------------------------ internals

    def _count(self) -> int:
        from inference.samples import MANIFEST, SampleStore

        if not (self.samples / MANIFEST).is_file():
            return 0
        return SampleStore(self.samples).count()

    async def _retrain(self, count: int) -> RetrainRun:
        args = [sys.executable, "-c", _CHILD, "models", "retrain", "--models", str(self.models),
                "--samples", str(self.samples), "--json", *self.extra_args]
        log.info("retraining: %d samples (%d new); starting `paychan models retrain`", count,
                 count - self._state().get("samples", 0))
        started = time.monotonic()
        self._child = child = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
        try:
            out, err = await child.communicate()
        except asyncio.CancelledError:  # the gateway is stopping: so does the retrain
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            await child.wait()
            raise
        finally:
            self._child = None
        seconds = round(time.monotonic() - started, 2)
        code = child.returncode if child.returncode is not None else -1
        try:
            data = json.loads(out)
        except ValueError:
            data = {}
        if "verdict" in data:
            run = RetrainRun(exit_code=code, samples=count, decision=str(data["decision"]),
                             reasons=tuple(data["verdict"]["reasons"]),
                             candidate=data.get("candidate"), seconds=seconds)
        else:  # bad input or a crash: the error is the JSON error or the stderr tail
            message = (data.get("error", {}).get("message") if isinstance(data, dict) else None)
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            run = RetrainRun(exit_code=code, samples=count, decision="failed",
                             reasons=(message or " / ".join(tail) or f"exit {code}",),
                             candidate=None, seconds=seconds)
        level = logging.INFO if code in (0, 1) else logging.WARNING
        log.log(level, "retraining: %s (candidate %s, %.0f s): %s", run.decision,
                (run.candidate or "-")[:16], seconds, "; ".join(run.reasons))
        return run

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.models / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        path = self.models / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        self.models.mkdir(parents=True, exist_ok=True)
        with open(self.models / LOCK_FILE, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


async def retraining_ctx(app: web.Application) -> AsyncIterator[None]:
    """With ``retrain_after`` (and a model store): the retrainer's poll loop, for the app's
    lifetime. A retrain in progress at shutdown is stopped; its candidate is not imported."""
    config = app[CONFIG]
    if not config.retrain_after or config.models is None:
        yield
        return
    retrainer = Retrainer(config.models, config.samples_dir, config.retrain_after,
                          poll_s=config.retrain_poll_s)
    task = asyncio.create_task(retrainer.run(), name="paychan-retraining")
    log.info("retraining: after every %d new samples in %s", config.retrain_after,
             config.samples_dir)
    yield
    task.cancel()  # a running child is terminated (see Retrainer._retrain)
    with contextlib.suppress(asyncio.CancelledError):
        await task
