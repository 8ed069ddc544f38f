"""Journaled transactions: recorded before sending, fee-bumped while stuck, one nonce per job."""

from __future__ import annotations

import asyncio

import pytest
from web3.exceptions import TransactionNotFound
from chain_env import PROVIDER_KEY, ChainEnv, rpc

from channels.provider import ChainClient, SimulationFailed, TxPolicy
from channels.provider.txjournal import JournalEntry, SqliteKeyValue, TxJournal


async def test_stuck_transaction_is_fee_bumped_and_mined_once(env: ChainEnv) -> None:
    chain = ChainClient(
        env.w3,
        PROVIDER_KEY,
        journal=env.chain.journal,
        settlement=env.deployment.settlement,
        policy=TxPolicy(poll_s=0.05, bump_after_s=0.3),
    )
    rpc(env.node.url, "evm_setAutomine", [False])
    task = asyncio.create_task(chain.settle(env.provider.address, env.deployment.token))
    entry: JournalEntry | None = None
    for _ in range(400):
        pending = await chain.journal.pending()
        if pending and len(pending[0].attempts) >= 3:
            entry = pending[0]
            break
        await asyncio.sleep(0.02)
    assert entry is not None, "no fee bumps happened"
    fees = [a.max_fee_per_gas for a in entry.attempts]
    assert fees == sorted(fees) and fees[-1] >= fees[0] * 1.2  # each bump >= +10%
    rpc(env.node.url, "evm_setAutomine", [True])
    rpc(env.node.url, "evm_mine", [])
    result = await asyncio.wait_for(task, 30)
    done = await chain.journal.get(chain.address, entry.nonce)
    assert done.status == "mined" and result.tx_hash == done.mined_hash
    assert result.tx_hash in done.hashes
    assert int(result.receipt["effectiveGasPrice"]) > 0
    assert (
        await env.w3.eth.get_transaction_count(chain.address) == entry.nonce + 1
    )  # one nonce, one tx


async def test_a_reverting_call_is_never_sent(env: ChainEnv) -> None:
    cfg = env.config()  # never funded
    from channels.protocol import ClaimRow

    row = ClaimRow(cfg, 1_000, env.voucher("0x" + "22" * 32, cfg, 1_000).signature, 1_000)
    before = len(await env.chain.journal.entries())
    with pytest.raises(SimulationFailed) as err:
        await env.chain.claim([row], b"\x00" * 65)
    assert err.value.reason in {
        "InvalidSignature",
        "ClaimExceedsBalance",
        "ClaimExceedsCeiling",
        "InvalidChannel",
    }
    assert len(await env.chain.journal.entries()) == before


async def test_journal_entry_is_durable_before_the_node_sees_it(env: ChainEnv) -> None:
    """Record, then (only then) broadcast: with mining paused the entry is already on disk."""
    rpc(env.node.url, "evm_setAutomine", [False])
    task = asyncio.create_task(env.chain.settle(env.provider.address, env.deployment.token))
    for _ in range(200):
        if await env.chain.journal.pending():
            break
        await asyncio.sleep(0.02)
    raw = None
    for _ in range(200):  # journaled first, broadcast a moment later: wait for the node to see it
        (entry,) = await env.chain.journal.pending()
        try:
            raw = await env.w3.eth.get_raw_transaction(entry.attempts[0].tx_hash)
            break
        except (IndexError, TransactionNotFound):  # no attempt yet, or not broadcast yet
            await asyncio.sleep(0.02)
    assert raw is not None, "the journaled transaction never reached the node"
    assert "0x" + bytes(raw).hex() == entry.attempts[0].raw  # the exact bytes are journaled
    rpc(env.node.url, "evm_setAutomine", [True])
    rpc(env.node.url, "evm_mine", [])
    await asyncio.wait_for(task, 30)
    assert not await env.chain.journal.pending()


async def test_sqlite_journal_nonce_reservation(tmp_path) -> None:
    kv = SqliteKeyValue(tmp_path / "tx.sqlite3")
    journal = TxJournal(kv)
    a = JournalEntry.new("0xAbC", 7, "claim", {"channels": []})
    assert await kv.kv_cas(journal.namespace, a.key, None, a.to_bytes())
    assert not await kv.kv_cas(journal.namespace, a.key, None, a.to_bytes())  # nonce 7 is taken
    assert [e.nonce for e in await journal.pending("0xabc")] == [7]
    await journal.put(a.finished("mined", mined_hash="0x01", block_number=3, gas_used=21000))
    assert await journal.pending() == []
    assert await journal.prune(0, now=a.created_at + 1) == 1
    kv.close()
