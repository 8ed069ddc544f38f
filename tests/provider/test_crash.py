"""Kill -9 the settler between sending a claim and seeing its receipt; restart it: the journal
finishes the same transaction, nothing is claimed twice, and the job completes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain_env import PROVIDER_KEY, ChainEnv, rpc
from web3.logs import DISCARD

import channels
from channels.provider.txjournal import TxJournal

pytestmark = pytest.mark.slow
_SCRIPT = Path(__file__).with_name("settler_process.py")


def _start(env: ChainEnv, log: Path) -> subprocess.Popen[bytes]:
    d = env.deployment
    cmd = [
        sys.executable,
        str(_SCRIPT),
        "--rpc",
        env.node.url,
        "--store",
        env.store_url,
        "--settlement",
        d.settlement,
        "--collector",
        d.collector,
        "--token",
        d.token,
    ]
    with log.open("ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            env={**os.environ, "PAYCHAN_KEY": PROVIDER_KEY},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _nonce(url: str, address: str, block: str) -> int:
    return int(rpc(url, "eth_getTransactionCount", [address, block]), 16)


async def test_settler_killed_between_send_and_receipt_claims_once(
    env: ChainEnv, tmp_path: Path
) -> None:
    configs = [await env.open_channel(1_000_000) for _ in range(3)]
    charged = {env.cid(c): await env.charge(c, n) for c, n in zip(configs, (3, 5, 8), strict=True)}
    total = sum(charged.values())
    provider_before = await env.token_balance(env.provider.address)
    await env.store.close()  # the SQLite ledger belongs to one process: the settler's now
    url, me = env.node.url, env.provider.address
    start_block = _nonce(url, me, "latest")

    rpc(url, "evm_setAutomine", [False])  # transactions now wait in the mempool until we mine
    log = tmp_path / "settler.log"
    first = _start(env, log)
    try:
        deadline = time.monotonic() + 60
        while _nonce(url, me, "pending") == start_block:  # the claim is in the mempool, unmined
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()

    store = await channels.provider.open_store(
        env.store_url, chain_id=env.deployment.chain_id, contract=env.deployment.settlement
    )
    pending = await TxJournal(store).pending()
    assert [(e.kind, len(e.attempts)) for e in pending] == [("claim", 1)]
    sent_hash = pending[0].attempts[0].tx_hash
    await store.close()

    second = _start(env, log)
    try:
        await asyncio.sleep(
            3.0
        )  # the restarted settler recovers: finds the claim pending, waits on it
        assert _nonce(url, me, "pending") == start_block + 1, (
            "a second transaction was sent while the first pends"
        )
        rpc(url, "evm_setAutomine", [True])
        rpc(url, "evm_mine", [])
        deadline = time.monotonic() + 60
        while await env.token_balance(me) != provider_before + total:
            assert second.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
    finally:
        second.terminate()
        second.wait(20)

    store = await channels.provider.open_store(
        env.store_url, chain_id=env.deployment.chain_id, contract=env.deployment.settlement
    )
    try:
        entries = await TxJournal(store).entries()
        claims = [e for e in entries if e.kind == "claim"]
        assert [(e.status, e.mined_hash) for e in claims] == [("mined", sent_hash)]
        assert [e.kind for e in entries if e.kind != "deposit"] == ["claim", "settle"]
        for cid, amount in charged.items():
            assert (await store.get(cid)).total_claimed == amount
            assert (await env.chain.read_channel(cid)).total_claimed == amount
    finally:
        await store.close()
    logs = await env.w3.eth.get_logs(
        {"address": env.deployment.settlement, "fromBlock": 0, "toBlock": "latest"}
    )
    claimed_logs = env.chain.settlement.events.Claimed().process_receipt(
        {"logs": logs}, errors=DISCARD
    )
    assert sorted(bytes(ev["args"]["channelId"]) for ev in claimed_logs) == sorted(
        charged
    )  # one Claimed each
    assert {"0x" + bytes(ev["transactionHash"]).hex() for ev in claimed_logs} == {sent_hash}
