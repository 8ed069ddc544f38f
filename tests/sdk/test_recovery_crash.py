"""The crash window, for real: a served gateway process (`paychan serve`, SQLite ledger, the
null model) is SIGKILLed while 8 paid requests are in flight, and started again on the same
port. Answers it had committed but not sent come back from the ledger (Idempotency-Key
replays), the others run afresh; each answer is charged exactly once and none is lost.

To land the kill inside the window every time, the ledger's writer process is frozen
(SIGSTOP) first: the 8 requests then wait on their commit's fsync; the gateway is killed; the
writer, thawed, makes durable the transaction it had already been handed (charges and stored
answers, never sent), then exits. That is a SIGKILL between the commit and the answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from channels import PaymentClient
from contracts import DEV_KEYS
from tests.gateway.serving import free_port
from tests.sdk.gateway_thread import PRICE

pytestmark = pytest.mark.anvil

WORKERS, EACH = 8, 6  # 8 requests in flight at all times, 48 in all


def serve_command(anvil, port: int, tmp_path: Path) -> list[str]:
    key_file = tmp_path / "provider.key"
    key_file.write_text(DEV_KEYS[0])  # the well-known anvil test key
    return [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))",
            "serve", "--rpc", anvil.url, "--key-file", str(key_file), "--token", anvil.deployment.token,
            "--price", str(PRICE), "--store", f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "--model", "null", "--port", str(port), "--samples-dir", str(tmp_path / "samples"),
            "--no-settler"]


async def started(cmd: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("paychan serve did not become ready")


def sqlite_writer_of(pid: int) -> int:
    """The pid of the SQLite ledger's writer process, a child of gateway process `pid`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"_sqlite_writer" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise AssertionError(f"no SQLite writer under process {pid}")


async def exited(pid: int, timeout_s: float = 20.0) -> None:
    """Wait for a process that is not our child to be gone (or a zombie nobody reaps)."""
    for _ in range(int(timeout_s / 0.05)):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


async def replays(url: str) -> int:
    """Answers this gateway process replayed from an Idempotency-Key (0 before the first)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        lines = [x for x in (await r.text()).splitlines()
                 if x.startswith("paychan_idempotent_replays_total")]
    return int(float(lines[0].split()[-1])) if lines else 0


async def test_sigkill_between_commit_and_answer_loses_nothing_and_charges_once(paid_gateway, tmp_path) -> None:
    import skimage.data
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).resize((64, 64)).save(image)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = serve_command(paid_gateway.anvil, port, tmp_path)
    proc = await started(cmd, url)
    try:
        async with PaymentClient.from_key(DEV_KEYS[3], tmp_path / "payer.sqlite", base_url=url,
                                          salt=os.urandom(32), deposit_requests=100, retries=8,
                                          retry_backoff_s=0.2) as client:
            opened = await client.classify(image, top_k=1)
            done = asyncio.Event()
            answered = 0

            async def worker() -> list[int]:
                nonlocal answered
                out = []
                for _ in range(EACH):
                    out.append((await client.classify(image, top_k=1)).cumulative_charged)
                    answered += 1
                    if answered >= WORKERS:
                        done.set()
                return out

            tasks = [asyncio.ensure_future(worker()) for _ in range(WORKERS)]
            await done.wait()  # the stream is flowing: 8 requests in flight
            writer = sqlite_writer_of(proc.pid)
            os.kill(writer, signal.SIGSTOP)  # commits now wait on the disk...
            await asyncio.sleep(0.5)
            killed_at = answered
            os.kill(proc.pid, signal.SIGKILL)  # ...when the gateway dies
            proc.wait()
            os.kill(writer, signal.SIGCONT)  # the handed-over transaction lands, then it exits
            await exited(writer)
            proc = await started(cmd, url)  # same port, same ledger file
            results = [c for t in tasks for c in await t]
            record = await client.channel()
            resent = client.resent
        recovered = await replays(url)
        async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/channels/{opened.channel_id}") as r:
            view = await r.json()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    total = 1 + WORKERS * EACH
    print(f"\nSIGKILL after {killed_at} answers: {resent} resends, {recovered} answers replayed "
          f"from the ledger, {total} of {total} answered, charged {view['chargedCumulativeAmount']}")
    assert resent >= 1  # the kill cut requests off, and the SDK sent them again
    assert recovered >= 1  # committed before the kill, never sent: replayed, not charged again
    # every answer arrived, each with its own place in the cumulative charge: none twice
    assert sorted(results) == [PRICE * k for k in range(2, total + 1)]
    assert view["chargedCumulativeAmount"] == str(total * PRICE) and view["reserved"] == "0"
    assert record.charged == total * PRICE
