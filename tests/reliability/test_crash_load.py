"""Crash under load (issue 17, item 1): a served gateway (`paychan serve`, its own process, real
sockets, anvil, the null model) is SIGKILLed at random moments while 8 SDK clients buy answers
back to back (Idempotency-Key resends on), and started again on the same ledger — SQLite, then
Redis. After the load the gateway settles through its admin route.

The books are checked per channel (each client has its own channel and one request in flight):

- at each kill, once the dead gateway's last transaction has landed, the ledger's charge of a
  channel is either the last answer its client received (nothing lost) or one price more: that
  answer was committed but lost in flight;
- each lost answer comes back to its client, after the restart, by the SDK's resend with the
  same Idempotency-Key: with the very charge the ledger held at the kill (the stored answer,
  no second charge);
- the cumulative charges a client received are exactly 1..n x price: every 200 charged once,
  none twice, none skipped; ledger and on-chain totalClaimed after the settle equal n x price.

A request the dead gateway had begun but not committed can, on Redis, answer 409
idempotency_key_in_use to every resend (its pending key is taken over only after the reservation
timeout): counted as "blocked", and checked never to be charged (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from channels import PaymentClient
from channels.provider.store import open_store
from channels.sdk import RequestFailed
from contracts import DEV_KEYS, Anvil
from contracts.anvil import ANVIL_CHAIN_ID
from gateway.cli import main
from tests.cli.test_settle_cli import PRICE, _claimed_on_chain, _serve_cmd
from tests.gateway.serving import free_port
from tests.sdk.test_recovery_crash import exited, sqlite_writer_of, started

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

CLIENTS = 8  # concurrent clients, one channel each (DEV_KEYS[1..8])
LOAD_S = 12.0  # the bounded paid load, kills included
KILLS = 3  # SIGKILLs per run, at random moments
ADMIN_TOKEN = "reliability-" + "5a" * 16


@dataclass
class Client:
    key: str
    charges: list[int] = field(default_factory=list)  # cumulative charge of every 200 received
    blocked: int = 0  # requests whose key stayed "still running" (409) through every resend
    channel: bytes = b""


@dataclass
class Kill:
    at_s: float
    received: int  # 200s received by all clients when the ledger was read
    lost: dict[bytes, int] = field(default_factory=dict)  # channel -> charge of the lost answer


async def _ledger_charges(store_url: str, anvil: Anvil, cids: list[bytes]) -> dict[bytes, int]:
    store = await open_store(store_url, chain_id=ANVIL_CHAIN_ID, contract=anvil.deployment.settlement)
    try:
        out = {}
        for cid in cids:
            state = await store.get(cid)
            out[cid] = state.charged if state is not None else 0
        return out
    finally:
        await store.close()


async def _gateway_views(url: str, cids: list[bytes]) -> dict[bytes, tuple[int, int]]:
    """The running gateway's (charged, reserved) of each channel (its channel view)."""
    out = {}
    async with aiohttp.ClientSession() as s:
        for cid in cids:
            async with s.get(f"{url}/v1/channels/0x{cid.hex()}") as r:
                view = await r.json()
            out[cid] = int(view["chargedCumulativeAmount"]), int(view["reserved"])
    return out


async def _run(anvil: Anvil, tmp_path: Path, store_url: str, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = _serve_cmd(anvil, tmp_path, store_url, port, "--admin-token-file", str(token_file))
    proc: subprocess.Popen[bytes] = await started(cmd, url)
    clients = [Client(k) for k in DEV_KEYS[1:1 + CLIENTS]]
    kills: list[Kill] = []
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def buyer(c: Client, sdk: PaymentClient) -> None:
        while not stop.is_set():
            try:
                answer = await sdk.classify(image, top_k=1)
            except RequestFailed as e:
                # On Redis, a request the dead gateway had begun (key marked pending) but not
                # committed answers 409 until the dead process's heartbeat key expires (about
                # 5 s, then a resend takes the key over). Never charged: the books below prove it.
                if (e.status, e.code) != (409, "idempotency_key_in_use"):
                    raise
                c.blocked += 1
                continue
            c.channel = bytes.fromhex(answer.channel_id[2:])
            c.charges.append(answer.cumulative_charged)

    try:
        sdks = [PaymentClient.from_key(c.key, tmp_path / f"payer{i}.sqlite", base_url=url,
                                       salt=os.urandom(32), deposit_requests=1000, retries=8,
                                       retry_backoff_s=0.2) for i, c in enumerate(clients)]
        for c, sdk in zip(clients, sdks):  # every channel open before the load starts
            await sdk.__aenter__()
            c.channel = bytes.fromhex((await sdk.classify(image, top_k=1)).channel_id[2:])
            c.charges.append(PRICE)
        tasks = [asyncio.ensure_future(buyer(c, sdk)) for c, sdk in zip(clients, sdks)]
        moments = sorted(rng.uniform(1.0, LOAD_S - 2.0) for _ in range(KILLS))
        for at in moments:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            writer = sqlite_writer_of(proc.pid) if store_url.startswith("sqlite") else None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if writer is not None:
                await exited(writer)  # the transaction it was handed lands, then it exits
            await asyncio.sleep(0.3)  # answers already in the clients' sockets are read
            charged = await _ledger_charges(store_url, anvil, [c.channel for c in clients])
            kill = Kill(round(time.monotonic() - t0, 2), sum(len(c.charges) for c in clients))
            for c in clients:
                last = c.charges[-1]
                assert charged[c.channel] in (last, last + PRICE), (charged[c.channel], last)
                if charged[c.channel] == last + PRICE:
                    kill.lost[c.channel] = last + PRICE
            kills.append(kill)
            proc = await started(cmd, url)  # same port, same ledger
        await asyncio.sleep(max(0.0, LOAD_S - (time.monotonic() - t0)))
        stop.set()
        await asyncio.gather(*tasks)
        resent = sum(sdk.resent for sdk in sdks)
        for sdk in sdks:
            await sdk.__aexit__(None, None, None)

        capsys.readouterr()
        argv = ["settle", "--gateway", url, "--admin-token-file", str(token_file), "--json"]
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
        settled = json.loads(capsys.readouterr().out)
        views = await _gateway_views(url, [c.channel for c in clients])
        on_chain = {c.channel: await _claimed_on_chain(anvil, c.channel) for c in clients}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    answers = sum(len(c.charges) for c in clients)
    lost_count = sum(len(k.lost) for k in kills)
    blocked = sum(c.blocked for c in clients)
    for c in clients:
        n = len(c.charges)
        # every 200 charged once: the cumulative charges received are 1..n x price, in order
        assert c.charges == [PRICE * i for i in range(1, n + 1)], c.charges
        assert views[c.channel][0] == on_chain[c.channel] == n * PRICE
        # nothing left reserved, but the reservation of a blocked request (expires by itself)
        assert views[c.channel][1] <= c.blocked * PRICE, (views[c.channel], c.blocked)
    # every lost answer was recovered with the charge the ledger held at the kill
    recovered = sum(1 for k in kills for cid, amount in k.lost.items()
                    if amount in next(c.charges for c in clients if c.channel == cid))
    assert recovered == lost_count
    assert settled["claimed"] == answers * PRICE and settled["channels"] == CLIENTS
    with capsys.disabled():
        print(f"\n[crash-load {store_url.split(':')[0]}] {LOAD_S:.0f} s, {CLIENTS} clients, "
              f"{len(kills)} SIGKILLs at {[k.at_s for k in kills]} s: {answers} answers (200), "
              f"{lost_count} lost in flight {[len(k.lost) for k in kills]}, "
              f"{recovered} recovered by resend, {resent} resends, "
              f"{blocked} blocked by a pending key (409, not charged), "
              f"0 charged twice; ledger = on-chain totalClaimed = {answers} x price")


@pytest.fixture
def cat_png(tmp_path: Path) -> Path:
    """A small photo-sized PNG (the null model answers any decodable image)."""
    from PIL import Image

    path = tmp_path / "cat.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(path)
    return path


async def test_sigkill_under_load_sqlite(anvil: Anvil, tmp_path: Path, cat_png: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    await _run(anvil, tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", cat_png, capsys)


@pytest.mark.redis
async def test_sigkill_under_load_redis(anvil: Anvil, tmp_path: Path, cat_png: Path, redis_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    await _run(anvil, tmp_path, redis_url, cat_png, capsys)
