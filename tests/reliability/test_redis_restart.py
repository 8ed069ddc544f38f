"""Redis faults (issue 17, item 2), on redis-server processes of the test's own (never the
shared 6379 one), with `appendonly yes` + `appendfsync always`.

- `test_redis_killed_mid_load_*`: a served gateway (`paychan serve`, its own process, anvil, the
  null model) under paid load from 8 SDK clients (Idempotency-Key resends on); Redis is
  SIGKILLed mid-load, `/readyz` answers 503 naming the store while it is down, Redis is
  started again on the same directory (its AOF), and the load goes on without restarting the
  gateway. Then the gateway settles: every 200 is charged exactly once, in the ledger and on
  chain (each client's received cumulative charges are exactly 1..n x price, equal to the
  ledger and to totalClaimed), so any charge without a 200 was recovered by a resend.
- `test_pending_key_of_a_dead_process_is_taken_over`: a process that began an Idempotency-Key
  and held the price is SIGKILLed; a resend gets 409 (pending) while its heartbeat lives and is
  served as soon as it is gone (seconds, not the 120 s reservation timeout), and the dead
  process's hold is released.
- `test_a_frozen_owner_cannot_charge_after_the_takeover`: the same, with the owner frozen
  (SIGSTOP) instead of killed: once its heartbeat lapses the key is taken over; thawed, its
  commit is refused (nothing charged), so the key is charged once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from channels import PaymentClient
from channels.protocol import AcceptInput, ChannelConfig, Synced
from channels.provider.store import RedisStore, is_redis_outage, open_store
from contracts import DEV_KEYS, Anvil
from gateway.cli import main
from tests.cli.test_settle_cli import PRICE, _claimed_on_chain, _serve_cmd
from tests.gateway.serving import free_port
from tests.provider.redis_cluster import HAVE_REDIS_SERVER, RedisServer
from tests.reliability.test_crash_load import _gateway_views, _ledger_charges, cat_png  # noqa: F401
from tests.sdk.test_recovery_crash import started

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAVE_REDIS_SERVER, reason="no redis-server / redis-cli")]

CLIENTS = 8
LOAD_S = 14.0  # the paid load, outage included
DOWN_AT_S, DOWN_FOR_S = 4.0, 4.0  # Redis is SIGKILLed at 4 s and started again 4 s later
ADMIN_TOKEN = "reliability-" + "7e" * 16
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(*DURABLE).start()
    yield server
    server.stop()


def _kill(server: RedisServer) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()


async def _metrics(url: str) -> tuple[int, int]:
    """This gateway's 503 answers and Idempotency-Key replays so far (its /metrics)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    unavailable = replays = 0
    for line in text.splitlines():
        if (line.startswith("paychan_http_requests_total{") and 'status="503"' in line
                and "classify" in line):
            unavailable += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("paychan_idempotent_replays_total "):
            replays = int(float(line.rsplit(" ", 1)[1]))
    return unavailable, replays


async def _readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url + "/readyz") as r:
        return r.status, await r.json()


async def test_redis_killed_mid_load_gateway_unready_then_recovers(
    anvil: Anvil, tmp_path: Path, cat_png: Path, redis_server: RedisServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_url = f"{redis_server.url}?prefix=restart-{uuid.uuid4().hex[:8]}"  # durable: strict
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = _serve_cmd(anvil, tmp_path, store_url, port, "--admin-token-file", str(token_file))
    proc: subprocess.Popen[bytes] = await started(cmd, url)
    charges: list[list[int]] = [[] for _ in range(CLIENTS)]
    channels: list[bytes] = [b""] * CLIENTS
    stop = asyncio.Event()
    marks: dict[str, int] = {}

    async def buyer(i: int, sdk: PaymentClient) -> None:
        while not stop.is_set():
            answer = await sdk.classify(cat_png, top_k=1)  # a give-up raises and fails the test
            charges[i].append(answer.cumulative_charged)

    try:
        sdks = [PaymentClient.from_key(k, tmp_path / f"payer{i}.sqlite", base_url=url,
                                       salt=os.urandom(32), deposit_requests=1000, retries=30,
                                       retry_backoff_s=0.2)
                for i, k in enumerate(DEV_KEYS[1:1 + CLIENTS])]
        for i, sdk in enumerate(sdks):  # every channel open before the load starts
            await sdk.__aenter__()
            answer = await sdk.classify(cat_png, top_k=1)
            channels[i] = bytes.fromhex(answer.channel_id[2:])
            charges[i].append(answer.cumulative_charged)
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(buyer(i, sdk)) for i, sdk in enumerate(sdks)]
        await asyncio.sleep(DOWN_AT_S)
        _kill(redis_server)
        marks["before"] = sum(map(len, charges))
        down = time.monotonic()
        unready: tuple[int, dict] | None = None
        while time.monotonic() - down < DOWN_FOR_S:
            status, body = await _readyz(url)
            if status == 503 and unready is None:
                unready = (status, body)
            await asyncio.sleep(0.2)
        marks["during"] = sum(map(len, charges)) - marks["before"]
        redis_server.start()  # same port, same directory: it loads its AOF
        back = time.monotonic()
        while (await _readyz(url))[0] != 200:
            await asyncio.sleep(0.05)
        ready_after_s = time.monotonic() - back
        await asyncio.sleep(max(0.0, LOAD_S - (time.monotonic() - t0)))
        stop.set()
        await asyncio.gather(*tasks)
        marks["after"] = sum(map(len, charges)) - marks["before"] - marks["during"]
        resent = sum(sdk.resent for sdk in sdks)
        served = await _metrics(url)  # (503 answers, replays by Idempotency-Key) of this process
        for sdk in sdks:
            await sdk.__aexit__(None, None, None)
        assert proc.poll() is None  # the same gateway process all along

        capsys.readouterr()
        argv = ["settle", "--gateway", url, "--admin-token-file", str(token_file), "--json"]
        assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
        settled = json.loads(capsys.readouterr().out)
        views = await _gateway_views(url, channels)
        on_chain = {cid: await _claimed_on_chain(anvil, cid) for cid in channels}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ledger = await _ledger_charges(store_url, anvil, channels)

    assert unready is not None, "/readyz never said unready while Redis was down"
    assert unready[1]["checks"]["store"] is False and unready[1]["reasons"]["store"]
    assert marks["after"] > 0  # served again after the restart, by the same process
    answers = sum(map(len, charges))
    for i, cid in enumerate(channels):
        n = len(charges[i])
        assert charges[i] == [PRICE * k for k in range(1, n + 1)], charges[i]  # once each, no gap
        assert ledger[cid] == views[cid][0] == on_chain[cid] == n * PRICE
        assert views[cid][1] == 0  # nothing left reserved
    assert settled["claimed"] == answers * PRICE
    with capsys.disabled():
        print(f"\n[redis-restart] {LOAD_S:.0f} s, {CLIENTS} clients; Redis SIGKILLed at "
              f"{DOWN_AT_S:.0f} s for {DOWN_FOR_S:.0f} s: {answers} answers (200): "
              f"{marks['before']} before, {marks['during']} while down, {marks['after']} after; "
              f"{resent} resends ({served[0]} answers 503, {served[1]} replayed by key); /readyz {unready[0]} {unready[1]['reasons']}; ready again "
              f"{ready_after_s:.2f} s after Redis started; 0 charged twice, 0 lost; "
              f"ledger = on-chain totalClaimed = {answers} x price")


# ------------------------------------------------------------------ pending-key takeover

CHAIN, CONTRACT = 31337, "0x" + "4b" * 20
CFG = ChannelConfig(b"\x01" * 20, b"\x02" * 20, b"\x03" * 20, b"\x04" * 20, b"\x05" * 20, 3600,
                    b"\x06" * 32)
CID = b"\x7a" * 32

# The owner: begins the key, holds the price, says so, then commits when told (stdin).
_OWNER = """
import asyncio, sys, time
from channels.protocol import AcceptInput
from channels.provider.store import open_store
async def main(url, cid, key, rid):
    store = await open_store(url, chain_id=31337, contract="0x" + "4b" * 20)
    assert await store.begin_idempotent(cid, key, rid, time.time()) is None
    await store.accept(AcceptInput(cid, 100, b"\\x22" * 65, 100, rid, time.time()))
    print("held", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    try:
        await store.commit(cid, rid, 100, time.time(), idempotency_key=key, response=b"old")
        print("charged", flush=True)
    except Exception as exc:
        print("refused", type(exc).__name__, flush=True)
    await store.close()
asyncio.run(main(sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]))
"""


async def _owner(url: str, key: str) -> subprocess.Popen[str]:
    proc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-c", _OWNER, url, CID.hex(), key, "dead-1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "held", line
    return proc


async def _store(url: str) -> RedisStore:
    store = await open_store(url, chain_id=CHAIN, contract=CONTRACT)
    assert isinstance(store, RedisStore)
    await store.apply_fact(CID, Synced(balance=1_000, total_claimed=0), config=CFG)
    return store


async def _retry_until_taken(store: RedisStore, key: str, rid: str) -> tuple[int, float]:
    """Resend (begin the key) until it is ours; returns (409-like answers, seconds waited)."""
    t0, pending = time.monotonic(), 0
    while (rec := await store.begin_idempotent(CID, key, rid, time.time())) is not None:
        assert not rec.done and rec.request_id == "dead-1"
        pending += 1
        assert time.monotonic() - t0 < 30, "the dead owner's key was not taken over"
        await asyncio.sleep(0.2)
    return pending, time.monotonic() - t0


async def test_pending_key_of_a_dead_process_is_taken_over(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=takeover"
    store = await _store(url)
    try:
        owner = await _owner(url, "k-dead")
        assert (await store.get(CID)).reserved == 100  # the owner's hold
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        pending, waited = await _retry_until_taken(store, "k-dead", "retry-1")
        assert pending > 0  # its heartbeat outlived it for a moment: 409, not a takeover
        assert waited < store.heartbeat_ttl_ms / 1000 + 5  # seconds, not the 120 s timeout
        assert (await store.get(CID)).reserved == 0  # the dead request's hold is gone
        assert store.takeovers == 1
        await store.accept(AcceptInput(CID, 100, b"\x22" * 65, 100, "retry-1", time.time()))
        await store.commit(CID, "retry-1", 100, time.time(), idempotency_key="k-dead",
                           response=b"new")
        assert (await store.get(CID)).charged == 100
        print(f"\n[takeover] dead owner's key taken over after {waited:.1f} s ({pending} x 409)")
    finally:
        await store.close()


async def test_a_frozen_owner_cannot_charge_after_the_takeover(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=frozen"
    store = await _store(url)
    owner = await _owner(url, "k-frozen")
    try:
        owner.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
        await _retry_until_taken(store, "k-frozen", "retry-2")
        await store.accept(AcceptInput(CID, 200, b"\x22" * 65, 100, "retry-2", time.time()))
        owner.send_signal(signal.SIGCONT)
        assert owner.stdin is not None and owner.stdout is not None
        owner.stdin.write("commit\n")
        owner.stdin.flush()
        said = (await asyncio.to_thread(owner.stdout.readline)).split()
        assert said == ["refused", "UnknownReservation"], said  # its hold was taken with the key
        await store.commit(CID, "retry-2", 100, time.time(), idempotency_key="k-frozen",
                           response=b"new")
        state = await store.get(CID)
        assert state.charged == 100 and state.reserved == 0  # one charge for the key
        assert (await store.get_idempotent(CID, "k-frozen")).response == b"new"
    finally:
        owner.send_signal(signal.SIGCONT)
        owner.wait(10)
        await store.close()


async def test_what_an_outage_left_held_is_released_once_redis_is_back(
    redis_server: RedisServer,
) -> None:
    """A request whose release met the outage (the gateway releases what an outage interrupted)
    leaves its hold and pending key in Redis's AOF; the store releases them by itself once Redis
    answers again, so the client's resend is not kept waiting on its own live process."""
    url = f"{redis_server.url}?prefix=orphans"
    store = await _store(url)
    try:
        assert await store.begin_idempotent(CID, "k-orphan", "live-1", time.time()) is None
        await store.accept(AcceptInput(CID, 100, b"\x22" * 65, 100, "live-1", time.time()))
        _kill(redis_server)
        with pytest.raises(Exception) as failed:
            await store.release(CID, "live-1", idempotency_key="k-orphan")
        assert is_redis_outage(failed.value)
        redis_server.start()  # the hold and the pending key come back from the AOF
        t0 = time.monotonic()
        while (await store.get_idempotent(CID, "k-orphan")) is not None:
            assert time.monotonic() - t0 < 30, "the pending key was never released"
            await asyncio.sleep(0.1)
        assert (await store.get(CID)).reserved == 0
        assert await store.begin_idempotent(CID, "k-orphan", "live-2", time.time()) is None
    finally:
        await store.close()
