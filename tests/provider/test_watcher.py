"""The watcher follows events from a stored cursor, resumes after a restart, and repairs the
ledger after a reorg (anvil evm_snapshot/evm_revert: the block under the cursor changes)."""

from __future__ import annotations

from chain_env import PAYER_KEYS, WITHDRAW_DELAY, ChainEnv, rpc

from channels.provider import config_tuple
from channels.protocol import Synced
from channels.provider import ChainEvent, Watcher


async def test_events_reach_the_ledger_and_the_cursor_resumes(env: ChainEnv) -> None:
    seen: list[ChainEvent] = []
    watcher = Watcher(env.chain, env.store, receiver=env.provider.address, start_block=0)
    watcher.listeners.append(seen.append)
    cfg = await env.open_channel(50_000)
    cid = env.cid(cfg)
    await env.store.kv_delete("watcher", "cursor")
    await env.store.apply_fact(cid, Synced(0, 0))  # pretend the ledger missed the deposit
    assert await watcher.poll_once() == 1
    assert (await env.store.get(cid)).balance == 50_000
    cursor = await watcher.cursor()
    assert cursor is not None and cursor[0] == await env.chain.block_number()

    receipt = await env.payer_send(PAYER_KEYS[0], "initiateWithdraw", config_tuple(cfg), 20_000)
    started = (await env.w3.eth.get_block(receipt["blockNumber"]))["timestamp"]
    restarted = Watcher(
        env.chain, env.store, receiver=env.provider.address
    )  # a new process: cursor from the store
    assert await restarted.poll_once() == 1
    st = await env.store.get(cid)
    assert st.withdraw_requested_at == started and st.withdraw_amount == 20_000
    assert st.withdraw_deadline == started + WITHDRAW_DELAY

    await env.node.advance_time(WITHDRAW_DELAY + 1)
    await env.payer_send(PAYER_KEYS[0], "finalizeWithdraw", config_tuple(cfg))
    assert await restarted.poll_once() == 1
    st = await env.store.get(cid)
    assert st.balance == 30_000 and st.withdraw_requested_at == 0
    assert await restarted.poll_once() == 0  # nothing new: nothing applied twice
    assert [e.name for e in seen] == ["Deposited"]


async def test_foreign_channels_are_ignored(env: ChainEnv) -> None:
    watcher = Watcher(env.chain, env.store, receiver="0x" + "11" * 20, start_block=0)
    await env.open_channel(10_000)
    await env.store.kv_delete("watcher", "cursor")
    before = await env.store.channels()
    assert await watcher.poll_once() == 1  # known channel (the facilitator recorded it): followed
    unknown = env.config()
    payload = env.deposit_payload(PAYER_KEYS[0], unknown, 10_000)
    await env.chain.deposit(payload)  # not through the facilitator: the store has never heard of it
    assert await watcher.poll_once() == 0
    assert len(await env.store.channels()) == len(before)


async def test_reorg_under_the_cursor_is_repaired(env: ChainEnv) -> None:
    cfg = await env.open_channel(40_000)
    cid = env.cid(cfg)
    watcher = Watcher(env.chain, env.store, receiver=env.provider.address, confirmations=0)
    await watcher.poll_once()
    snapshot = rpc(env.node.url, "evm_snapshot", [])
    top_up = env.deposit_payload(PAYER_KEYS[0], cfg, 25_000, ceiling=1_000)
    await env.chain.deposit(top_up)
    assert await watcher.poll_once() == 1
    assert (await env.store.get(cid)).balance == 65_000

    rpc(env.node.url, "evm_revert", [snapshot])  # the top-up's block is orphaned
    for _ in range(3):
        rpc(env.node.url, "evm_mine", [])
    await watcher.poll_once()
    assert watcher.reorgs == 1
    assert (
        await env.store.get(cid)
    ).balance == 40_000  # the orphaned deposit is gone from the ledger
