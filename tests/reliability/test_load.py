"""Load (issue 17, item 6): a bounded 60 s loopback run of the served system at its measured
capacity: `paychan serve` in its own process with the real model (EfficientNet-Lite0 on the CPU),
payments on (anvil, a SQLite ledger), paid by 8 SDK clients on their own channels.

1. Capacity: a short closed-loop ramp (1, 2, 4, 8 requests in flight, `RAMP_STEP_S` each);
   the capacity is the best answers/s of the ramp.
2. The run: `LOAD_S` seconds of requests scheduled at that rate (one shared schedule, 8
   clients; a late client takes the next slot at once, so the offered rate is the capacity).
   Every answer must be 200 or 429 (`overloaded`, nothing charged); any other status fails.
3. Memory: the gateway's resident set (`VmRSS` of its main process) is sampled every second;
   start, after warm-up (`WARMUP_S`) and end are reported, and the end must not exceed the
   after-warm-up figure by more than `max(60 MB, 15 %)`: a leak check, not a timing one.
4. The books: each client's received cumulative charges are exactly 1..n x price and the
   ledger holds n x price per channel (no 429 was charged).

The figures are printed as one JSON line (`[load] {...}`); docs/reliability.md quotes a run.
`PAYCHAN_LOAD_S` shortens the run while developing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from channels import PaymentClient
from channels.sdk import RequestFailed
from contracts import DEV_KEYS, Anvil
from tests.cli.test_settle_cli import PRICE, _serve_cmd
from tests.gateway.serving import free_port
from tests.reliability.test_crash_load import _ledger_charges
from tests.sdk.test_recovery_crash import started

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

CLIENTS = 8
RAMP = (1, 2, 4, 8)  # requests in flight at each ramp step
RAMP_STEP_S = 4.0
LOAD_S = float(os.environ.get("PAYCHAN_LOAD_S", "60"))
WARMUP_S = min(10.0, LOAD_S / 3)
RSS_SLACK = (60 * 2**20, 0.15)  # bytes, fraction: the end may exceed the warm figure by the larger


def _rss(pid: int) -> int:
    """Resident set of `pid`, in bytes (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small photo-like JPEG (noise over a gradient, 160 x 120): the model resizes it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    base = np.linspace(0, 255, 160 * 120 * 3).reshape(120, 160, 3)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype("uint8")
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=85)
    return path


async def test_sixty_seconds_at_capacity_no_errors_but_429_memory_flat(
    anvil: Anvil, tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    cmd = _serve_cmd(anvil, tmp_path, store_url, port, "--no-access-log")
    cmd[cmd.index("--model") + 1] = "tf_efficientnet_lite0"  # the real model, not the null one
    proc: subprocess.Popen[bytes] = await started(cmd, url)
    statuses: dict[int, int] = {}
    charges: list[list[int]] = [[] for _ in range(CLIENTS)]
    cids: list[bytes] = []
    rss: list[tuple[float, int]] = []
    try:
        sdks = [PaymentClient.from_key(k, tmp_path / f"payer{i}.sqlite", base_url=url,
                                       salt=os.urandom(32), deposit_requests=100_000, retries=0)
                for i, k in enumerate(DEV_KEYS[1:1 + CLIENTS])]
        for i, sdk in enumerate(sdks):  # channels opened (deposits) before anything is timed
            await sdk.__aenter__()
            answer = await sdk.classify(photo, top_k=1)
            cids.append(bytes.fromhex(answer.channel_id[2:]))
            charges[i].append(answer.cumulative_charged)

        async def buy(i: int) -> None:
            try:
                answer = await sdks[i].classify(photo, top_k=1)
            except RequestFailed as e:
                statuses[e.status] = statuses.get(e.status, 0) + 1
                return
            statuses[200] = statuses.get(200, 0) + 1
            charges[i].append(answer.cumulative_charged)

        # 1. capacity: closed loop at 1, 2, 4, 8 in flight
        ramp: dict[int, float] = {}
        for inflight in RAMP:
            done = 0
            until = time.monotonic() + RAMP_STEP_S

            async def loop(i: int, until: float = until) -> None:
                nonlocal done
                while time.monotonic() < until:
                    await buy(i)
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*(loop(i) for i in range(inflight)))
            ramp[inflight] = round(done / (time.monotonic() - t0), 1)
        capacity = max(ramp.values())
        assert set(statuses) <= {200, 429}, statuses
        statuses.clear()

        # 2. the run: LOAD_S seconds scheduled at the capacity
        t0 = time.monotonic()
        slots = iter(range(10**9))
        stop = t0 + LOAD_S

        async def client(i: int) -> None:
            while True:
                at = t0 + next(slots) / capacity
                if at >= stop:
                    return
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                await buy(i)

        async def sampler() -> None:
            while time.monotonic() < stop:
                rss.append((time.monotonic() - t0, _rss(proc.pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(sampler(), *(client(i) for i in range(CLIENTS)))
        elapsed = time.monotonic() - t0
        for sdk in sdks:
            await sdk.__aexit__(None, None, None)
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ledger = await _ledger_charges(store_url, anvil, cids)

    start = rss[0][1]
    warm = next(b for t, b in rss if t >= WARMUP_S)
    end = rss[-1][1]
    peak_after_warm = max(b for t, b in rss if t >= WARMUP_S)
    served = statuses.get(200, 0)
    figures = {
        "load_s": round(elapsed, 1), "clients": CLIENTS, "ramp_answers_per_s": ramp,
        "capacity_answers_per_s": capacity, "offered": served + sum(
            n for s, n in statuses.items() if s != 200),
        "answers_per_s": round(served / elapsed, 1), "statuses": statuses,
        "rss_mb": {"start": round(start / 2**20, 1), "after_warmup": round(warm / 2**20, 1),
                   "end": round(end / 2**20, 1), "peak_after_warmup": round(peak_after_warm / 2**20, 1)},
        "load_average": os.getloadavg(),
    }
    with capsys.disabled():
        print(f"\n[load] {json.dumps(figures)}")
    assert set(statuses) <= {200, 429}, statuses  # no errors but 429
    assert served > 0
    assert end - warm <= max(RSS_SLACK[0], RSS_SLACK[1] * warm), figures["rss_mb"]
    for i, cid in enumerate(cids):
        n = len(charges[i])
        assert charges[i] == [PRICE * k for k in range(1, n + 1)]  # no 429 charged, none twice
        assert ledger[cid] == n * PRICE
