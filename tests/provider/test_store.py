"""One suite for every store: SQLite (a real file), the real Redis on 127.0.0.1:6379, a
three-master Redis Cluster started for the session (conftest `redis_cluster`), and memory.

Redis runs in DB 11 under a unique key prefix per test; only keys under that prefix are deleted.
The shared server keeps nothing on disk, so its URLs say `durability=relaxed`; the cluster's
masters fsync every write and are opened with the default (strict) check.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from dataclasses import replace
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels import ChannelConfig, ErrorCode
from channels.protocol import ledger
from channels.protocol import (
    AcceptInput,
    ChannelState,
    Charge,
    Claimed,
    Deposited,
    LedgerPolicy,
    Refunded,
    Rejection,
    Reservation,
    Synced,
    UnknownReservation,
    WithdrawInitiated,
)
from channels.provider.store import IdempotencyRecord, RedisStore, SqliteStore, Store, open_store
from redis_cluster import HAVE_REDIS_SERVER

REDIS_DB = 11
CHAIN = 31337
CONTRACT = "0x" + "4b" * 20
SIG = b"\x22" * 65
T0 = 1_800_000_000.0
POLICY = LedgerPolicy(reservation_timeout_s=60, withdraw_margin_s=300, max_in_flight=8)
CFG = ChannelConfig(
    b"\x01" * 20, b"\x02" * 20, b"\x03" * 20, b"\x04" * 20, b"\x05" * 20, 3600, b"\x06" * 32
)


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(db=REDIS_DB, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


BACKENDS = [
    "sqlite",
    pytest.param(
        "redis",
        marks=[
            pytest.mark.redis,
            pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379"),
        ],
    ),
    pytest.param(
        "redis-cluster",
        marks=pytest.mark.skipif(not HAVE_REDIS_SERVER, reason="no redis-server / redis-cli"),
    ),
    "memory",
]


def _drop_prefix(prefix: str) -> None:
    r = redis.Redis(db=REDIS_DB)
    for k in r.scan_iter(match=f"{prefix}:*", count=500):
        r.delete(k)
    r.close()


def _drop_cluster_prefix(port: int, prefix: str) -> None:
    r = redis.RedisCluster(host="127.0.0.1", port=port)
    for k in r.scan_iter(match=f"{prefix}:*", count=500):
        r.delete(k)
    r.close()


def make_url(kind: str, where: Path, request=None) -> tuple[str, Callable[[], None]]:
    """A fresh store URL of `kind` and its cleanup (`request`: for the session's cluster)."""
    prefix = f"paychan-test-{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return f"sqlite:///{where / 'ledger.sqlite3'}", lambda: None
    if kind == "redis":
        url = f"redis://127.0.0.1:6379/{REDIS_DB}?prefix={prefix}&durability=relaxed"
        return url, lambda: _drop_prefix(prefix)
    if kind == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return cluster.url(prefix), lambda: _drop_cluster_prefix(cluster.ports[0], prefix)
    return "memory://", lambda: None


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> AsyncIterator[str]:
    u, cleanup = make_url(request.param, tmp_path, request)
    yield u
    cleanup()


async def _open(url: str, contract: str = CONTRACT) -> Store:
    return await open_store(url, chain_id=CHAIN, contract=contract, policy=POLICY)


@pytest.fixture
async def store(url) -> AsyncIterator[Store]:
    s = await _open(url)
    yield s
    await s.close()


def cid_of(i: int) -> bytes:
    return i.to_bytes(32, "big")


def acc(cid: bytes, ceiling: int, price: int, rid: str, now: float = T0, **kw) -> AcceptInput:
    return AcceptInput(cid, ceiling, SIG, price, rid, now, **kw)


async def _reopen(store: Store, url: str) -> Store:
    """Close and open again from disk / the server (memory:// comes back empty)."""
    await store.close()
    return await _open(url)


def _restarted(url: str, state: ChannelState) -> ChannelState:
    """A state as a reopened store has it: SQLite belongs to one process, so after a restart
    nothing is in flight (its holds are not written); Redis keeps the other processes' holds."""
    return replace(state, reservations=()) if url.startswith("sqlite") else state


# --- behaviour ---------------------------------------------------------------------------------


async def test_accept_commit_release_and_corrective_snapshot(store):
    cid = cid_of(1)
    refused = await store.accept(acc(cid, 100, 100, "r0"))
    assert isinstance(refused, Rejection) and refused.code == ErrorCode.CHANNEL_NOT_FOUND
    assert await store.get(cid) is None  # a refused unknown channel leaves no record
    await store.apply_fact(cid, Synced(balance=10_000, total_claimed=0), config=CFG)
    assert isinstance(await store.accept(acc(cid, 100, 100, "r1")), Reservation)
    assert isinstance(await store.accept(acc(cid, 300, 100, "r2")), Reservation)
    charge = await store.commit(cid, "r1", 100, T0 + 1)
    assert (charge.amount, charge.cumulative) == (100, 100)
    assert (await store.release(cid, "r2")).request_id == "r2"
    assert await store.release(cid, "r2") is None
    bad = await store.accept(acc(cid, 150, 100, "r3"))
    assert bad.code == ErrorCode.CUMULATIVE_AMOUNT_MISMATCH
    assert bad.channel_state.charged_cumulative_amount == 100
    assert bad.voucher_state.signed_max_claimable == 300 and bad.voucher_state.signature == SIG
    with pytest.raises(UnknownReservation):
        await store.commit(cid, "r2", 100, T0)
    st_ = await store.get(cid)
    assert (st_.charged, st_.reserved, st_.config, st_.withdraw_delay) == (100, 0, CFG, 3600)


async def test_reload_equals_state(store, url):
    cids = [cid_of(i) for i in range(3)]
    for i, cid in enumerate(cids):
        await store.apply_fact(
            cid, Synced(balance=5_000 + i, total_claimed=0), config=CFG if i else None
        )
        await store.accept(acc(cid, 400, 100, "a"))
        await store.accept(acc(cid, 400, 200, "b"))
        await store.commit(cid, "a", 70 + i, T0 + 2, idempotency_key="k", response=b"answer")
    await store.apply_fact(cids[0], WithdrawInitiated(requested_at=int(T0)))
    await store.kv_put("cursor", "block", b"1234")
    before = {c: await store.get(c) for c in cids}
    again = await _reopen(store, url)
    try:
        if url.startswith("memory"):  # documented: the memory store is for tests and keeps nothing
            assert await again.channels() == [] and await again.kv_get("cursor", "block") is None
            return
        assert {c: await again.get(c) for c in cids} == {c: _restarted(url, s) for c, s in before.items()}
        assert sorted(s.channel_id for s in await again.channels()) == sorted(cids)
        assert (await again.get_idempotent(cids[1], "k")).response == b"answer"
        assert await again.kv_get("cursor", "block") == b"1234"
    finally:
        await again.close()


async def test_a_refund_lock_is_atomic_durable_and_ends_with_the_refund(store, url):
    """begin_refund decides the split and refuses new holds in one write; the lock survives a
    restart (the refund may still land); the fact that shows the refund landed ends it."""
    cid = cid_of(21)
    await store.apply_fact(cid, Synced(balance=5_000, total_claimed=0, refund_nonce=4), config=CFG)
    await store.accept(acc(cid, 300, 300, "a"))
    busy = await store.begin_refund(cid, None, T0)
    assert isinstance(busy, Rejection) and busy.code == ErrorCode.CHANNEL_BUSY
    await store.commit(cid, "a", 300, T0)
    plan = await store.begin_refund(cid, None, T0)
    assert (plan.nonce, plan.claim_total, plan.amount) == (4, 300, 4_700)
    refused = await store.accept(acc(cid, 600, 300, "b", now=T0 + 1))
    assert refused.code == ErrorCode.CHANNEL_BUSY
    store = await _reopen(store, url)
    try:
        if not url.startswith("memory"):
            assert (await store.get(cid)).spend.amount == 4_700
            assert (await store.accept(acc(cid, 600, 300, "b", now=T0 + 2))).code == ErrorCode.CHANNEL_BUSY
            await store.apply_fact(cid, Refunded(new_balance=300, refund_nonce=5))
            assert (await store.get(cid)).spend is None
            # released after a failed transaction: requests go on
            await store.apply_fact(cid, Deposited(new_balance=1_000))
            plan = await store.begin_refund(cid, 100, T0 + 3)
            assert await store.end_spend(cid, plan.nonce) is True
            assert isinstance(await store.accept(acc(cid, 600, 300, "c", now=T0 + 3)), Reservation)
    finally:
        await store.close()


async def test_idempotency_key_replays_and_never_charges_twice(store):
    cid = cid_of(7)
    await store.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
    assert await store.begin_idempotent(cid, "key-1", "r1", T0) is None
    dup = await store.begin_idempotent(cid, "key-1", "r9", T0 + 1)
    assert dup == IdempotencyRecord("r1", T0, None) and not dup.done
    await store.accept(acc(cid, 100, 100, "r1"))
    await store.commit(cid, "r1", 100, T0 + 2, idempotency_key="key-1", response=b'{"ok":1}')
    done = await store.begin_idempotent(cid, "key-1", "r9", T0 + 3)
    assert done.done and done.response == b'{"ok":1}' and done.request_id == "r1"
    assert (await store.get(cid)).charged == 100
    # a failed request drops its pending marker; another request's release does not
    assert await store.begin_idempotent(cid, "key-2", "r2", T0) is None
    await store.release(cid, "r-other", idempotency_key="key-2")
    assert (await store.get_idempotent(cid, "key-2")).request_id == "r2"
    await store.release(cid, "r2", idempotency_key="key-2")
    assert await store.get_idempotent(cid, "key-2") is None
    # a pending marker of a crashed process is taken over after the reservation timeout
    assert await store.begin_idempotent(cid, "key-3", "r3", T0) is None
    assert await store.begin_idempotent(cid, "key-3", "r4", T0 + 61) is None
    assert (await store.get_idempotent(cid, "key-3")).request_id == "r4"


async def test_expire_and_claim_targets(store):
    a, b = cid_of(10), cid_of(11)
    for c in (a, b):
        await store.apply_fact(c, Synced(balance=1_000, total_claimed=0))
    await store.accept(acc(a, 100, 100, "x", now=T0))
    await store.accept(acc(b, 100, 100, "y", now=T0 + 30))
    gone = await store.expire(T0 + 60)
    assert [r.request_id for r in gone] == ["x"]
    assert (await store.get(a)).reservations == () and len((await store.get(b)).reservations) == 1
    await store.accept(acc(a, 100, 100, "x2", now=T0 + 61))
    await store.commit(a, "x2", 100, T0 + 62)
    await store.commit(b, "y", 40, T0 + 63)
    await store.apply_fact(b, WithdrawInitiated(requested_at=int(T0)))
    targets = await store.claim_targets()
    assert [t.channel_id for t in targets] == [b, a]  # the pending withdrawal first
    assert [(t.total_claimed, t.max_claimable) for t in targets] == [(40, 100), (100, 100)]
    await store.apply_fact(a, Claimed(new_total_claimed=100))
    assert [t.channel_id for t in await store.claim_targets()] == [b]


async def test_many_tasks_on_one_channel(url):
    store = await open_store(
        url, chain_id=CHAIN, contract=CONTRACT, policy=LedgerPolicy(max_in_flight=100)
    )
    cid = cid_of(20)
    await store.apply_fact(cid, Synced(balance=10**12, total_claimed=0))

    async def one(i: int) -> int:
        got = await store.accept(acc(cid, 10**12, 1_000, f"t{i}"))
        assert isinstance(got, Reservation)
        if i % 3 == 0:
            await store.release(cid, f"t{i}")
            return 0
        return (await store.commit(cid, f"t{i}", 1_000 - i, T0)).amount

    charged = await asyncio.gather(*(one(i) for i in range(60)))
    final = await store.get(cid)
    await store.close()
    assert final.charged == sum(charged) and final.reservations == ()


async def test_kv_for_chain_sync(store):
    assert await store.kv_get("journal", "tx1") is None
    assert await store.kv_cas("journal", "tx1", None, b"pending")
    assert not await store.kv_cas("journal", "tx1", None, b"other")
    assert not await store.kv_cas("journal", "tx1", b"wrong", b"x")
    assert await store.kv_cas("journal", "tx1", b"pending", b"mined")
    await store.kv_put("journal", "tx2", b"\x00\xff")
    assert await store.kv_items("journal") == {"tx1": b"mined", "tx2": b"\x00\xff"}
    assert await store.kv_items("cursor") == {}
    assert await store.kv_cas("journal", "tx1", b"mined", None)
    await store.kv_delete("journal", "tx2")
    assert await store.kv_items("journal") == {}


async def test_namespaced_by_contract(url):
    s1 = await _open(url)
    try:
        await s1.apply_fact(cid_of(1), Synced(balance=5, total_claimed=0))
        await s1.kv_put("c", "k", b"v")
    finally:
        await s1.close()  # one owner at a time: a SQLite file is locked by the store that has it
    s2 = await _open(url, contract="0x" + "99" * 20)
    try:
        assert await s2.get(cid_of(1)) is None and await s2.channels() == []
        assert await s2.kv_get("c", "k") is None
    finally:
        await s2.close()


async def test_bad_urls_say_what_to_use():
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        await open_store("postgres://x", chain_id=1, contract=CONTRACT)
    with pytest.raises(ValueError, match="name a file"):
        await open_store("sqlite:///", chain_id=1, contract=CONTRACT)


@pytest.mark.redis
@pytest.mark.skipif(not _redis_up(), reason="no Redis")
async def test_redis_stale_cache_retries_and_keys_share_the_hash_tag(tmp_path):
    u, cleanup = make_url("redis", tmp_path)
    a, b = await _open(u), await _open(u)
    try:
        cid = cid_of(5)
        await a.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
        await b.accept(acc(cid, 100, 100, "b1"))  # b's cache is now ahead of a's
        got = await a.accept(acc(cid, 200, 100, "a1"))  # a's CAS conflicts, re-runs on b's state
        assert isinstance(got, Reservation) and a.conflicts >= 1
        await a.commit(cid, "b1", 100, T0)  # a reservation made by another process
        assert (await b.get(cid)).charged == 100
        await a.begin_idempotent(cid, "k", "a1", T0)
        keys = [k.decode() for k in redis.Redis(db=REDIS_DB).scan_iter(match=f"{a.prefix}:*:{{*")]
        assert keys and all(f"{{{cid.hex()}}}" in k for k in keys)
    finally:
        await a.close()
        await b.close()
        cleanup()


# --- the stores run the pure ledger exactly (differential, random sequences) ---------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("accept"),
            st.integers(0, 1),
            st.integers(0, 300),
            st.sampled_from(["exact", "above", "low"]),
            st.integers(0, 500),
            st.sampled_from([0, 0, 1_000]),
        ),
        st.tuples(st.just("commit"), st.integers(0, 1), st.integers(0, 9), st.floats(0, 1)),
        st.tuples(st.just("release"), st.integers(0, 1), st.integers(0, 9)),
        st.tuples(st.just("tick"), st.floats(0, 45)),
        st.tuples(
            st.just("fact"),
            st.integers(0, 1),
            st.sampled_from(["dep", "claim", "refund", "wd"]),
            st.floats(0, 1),
        ),
    ),
    max_size=25,
)


async def _differential(url: str, ops: list[tuple]) -> None:
    store = await _open(url)
    model: dict[bytes, ChannelState] = {}
    now, n = T0, 0
    cids = [cid_of(100), cid_of(101)]
    for c in cids:
        model[c] = await store.apply_fact(c, Synced(balance=2_000, total_claimed=0))
    try:
        for op in ops:
            kind = op[0]
            if kind == "accept":
                _, ch, price, mode, extra, dep = op
                c, s, n = cids[ch], model[cids[ch]], n + 1
                need = s.charged + s.reserved + price
                ceiling = {"exact": need, "above": need + extra, "low": max(0, need - 1 - extra)}[
                    mode
                ]
                inp = AcceptInput(
                    c, ceiling, SIG[:-1] + bytes([n % 256]), price, f"q{n}", now, deposit_amount=dep
                )
                new, want = ledger.accept(s, inp, POLICY)
                got = await store.accept(inp)
                if isinstance(want, Reservation) or new.reservations != s.reservations:
                    model[c] = new
                assert got == want
            elif kind in ("commit", "release"):
                c, s = cids[op[1]], model[cids[op[1]]]
                if not s.reservations:
                    continue
                r = s.reservations[op[2] % len(s.reservations)]
                if kind == "commit":
                    model[c], want = ledger.commit(s, r.request_id, int(r.amount * op[3]), now)
                    assert await store.commit(c, r.request_id, int(r.amount * op[3]), now) == want
                else:
                    model[c], want = ledger.release(s, r.request_id)
                    assert await store.release(c, r.request_id) == want
            elif kind == "tick":
                now += op[1]
                want = []
                for c in cids:
                    model[c], gone = ledger.expire(model[c], now)
                    want += gone
                key = lambda r: (r.channel_id, r.request_id)
                assert sorted(await store.expire(now), key=key) == sorted(want, key=key)
            else:
                _, ch, what, frac = op
                c, s = cids[ch], model[cids[ch]]
                fact = {
                    "dep": Deposited(new_balance=s.balance + int(1_000 * frac)),
                    "claim": Claimed(
                        new_total_claimed=s.total_claimed
                        + int((s.claimable - s.total_claimed) * frac)
                    ),
                    "refund": Refunded(
                        new_balance=s.balance - int((s.balance - s.total_claimed) * frac),
                        refund_nonce=s.refund_nonce + 1,
                    ),
                    "wd": WithdrawInitiated(
                        requested_at=int(now - 600 * frac),
                        amount=None if frac < 0.5 else int((s.balance - s.total_claimed) * frac),
                    ),
                }[what]
                model[c] = ledger.apply_fact(s, fact)
                assert await store.apply_fact(c, fact) == model[c]
            for c in cids:
                assert await store.get(c) == model[c]
        store = await _reopen(store, url)
        if not url.startswith("memory"):
            for c in cids:
                assert await store.get(c) == _restarted(url, model[c])
    finally:
        if not store is None:
            await store.close()


@pytest.mark.parametrize("kind", BACKENDS)
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
def test_store_runs_the_pure_ledger_exactly(kind, ops, request):
    with tempfile.TemporaryDirectory() as d:
        u, cleanup = make_url(kind, Path(d), request)
        try:
            asyncio.run(_differential(u, ops))
        finally:
            cleanup()


def test_sqlite_group_commit_shares_fsyncs(tmp_path):
    async def run() -> tuple[int, int]:
        s = await SqliteStore.open(
            tmp_path / "g.sqlite3", chain_id=CHAIN, contract=CONTRACT, policy=POLICY
        )
        cid = cid_of(3)
        await s.apply_fact(cid, Synced(balance=10**9, total_claimed=0))
        before = s.transactions

        async def one(i: int) -> None:
            await s.accept(acc(cid, 10**9, 10, f"g{i}"))
            await s.commit(cid, f"g{i}", 10, T0)

        await asyncio.gather(*(one(i) for i in range(200)))
        used = s.transactions - before
        await s.close()
        return used, (await _check(tmp_path))

    async def _check(p: Path) -> int:
        s = await SqliteStore.open(p / "g.sqlite3", chain_id=CHAIN, contract=CONTRACT)
        charged = (await s.get(cid_of(3))).charged
        await s.close()
        return charged

    used, charged = asyncio.run(run())
    assert charged == 2_000
    assert used < 200  # 200 concurrent commits, fewer fsynced transactions


async def test_sqlite_restart_frees_the_holds_of_the_dead_process(tmp_path):
    """Holds of requests that were in flight when the process died are not restored: the
    payer's next voucher (signed for charged + price) is accepted at once, not CHANNEL_BUSY."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    s = await _open(url)
    cid = cid_of(7)
    await s.apply_fact(cid, Synced(balance=10_000, total_claimed=0))
    assert isinstance(await s.accept(acc(cid, 100, 100, "done")), Reservation)
    await s.commit(cid, "done", 100, T0)
    for i in range(3):  # in flight at the crash
        assert isinstance(await s.accept(acc(cid, 200 + 100 * i, 100, f"lost{i}")), Reservation)
    s = await _reopen(s, url)
    try:
        state = await s.get(cid)
        assert (state.charged, state.reserved, state.signed_max_claimable) == (100, 0, 400)
        assert isinstance(await s.accept(acc(cid, 200, 100, "next")), Reservation)
    finally:
        await s.close()


def test_redis_url_prefix_is_split_off():
    from channels.provider.store.redis import split_redis_url

    assert split_redis_url("redis://h:1/3?prefix=gw1&socket_timeout=2") == (
        "redis://h:1/3?socket_timeout=2",
        "gw1",
    )
    assert split_redis_url("redis://h:1/0") == ("redis://h:1/0", "paychan")
    assert split_redis_url("redis://h:1?cluster=yes&durability=relaxed&prefix=p") == (
        "redis://h:1", "p"
    )
    assert RedisStore  # re-exported
    assert os  # keep imports honest


def _commit_then_die(path: str) -> None:
    """Child process: charge, store an idempotent answer, then die without closing."""

    async def run() -> None:
        s = await SqliteStore.open(path, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
        cid = cid_of(9)
        await s.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
        await s.accept(acc(cid, 300, 100, "r1"))
        await s.commit(cid, "r1", 100, T0, idempotency_key="k", response=b"paid")
        await s.accept(acc(cid, 300, 100, "r2"))  # in flight when the process dies
        os._exit(0)  # no close(), no flush(): only what commit made durable survives

    asyncio.run(run())


def test_sqlite_commit_survives_a_killed_process(tmp_path):
    import multiprocessing

    path = str(tmp_path / "crash.sqlite3")
    p = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(path,))
    p.start()
    p.join(60)
    assert p.exitcode == 0

    async def check() -> None:
        s = await SqliteStore.open(path, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
        st_ = await s.get(cid_of(9))
        assert (st_.charged, st_.signed_max_claimable, st_.signature) == (100, 300, SIG)
        assert (await s.get_idempotent(cid_of(9), "k")).response == b"paid"
        await s.close()

    asyncio.run(check())


async def test_commit_builds_the_stored_answer_from_the_committed_state(store):
    cid = cid_of(30)
    await store.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
    await store.accept(acc(cid, 100, 100, "r1"))

    def answer(st_: ChannelState, charge: Charge) -> bytes:
        assert charge.channel_state == st_.channel_state
        return f"{charge.cumulative}/{st_.balance}".encode()

    charge = await store.commit(cid, "r1", 90, T0, idempotency_key="k", response=answer)
    assert charge.channel_state.charged_cumulative_amount == 90
    assert (await store.get_idempotent(cid, "k")).response == b"90/1000"


async def test_on_charge_sees_the_charge_once_before_the_disk_has_it(store):
    """`commit(on_charge=...)` hands the charge over as soon as it is decided: on SQLite while
    the writer still holds the transaction (the gateway signs the receipt meanwhile)."""
    cid = cid_of(31)
    await store.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
    await store.accept(acc(cid, 100, 100, "r1"))
    seen: list[tuple[Charge, int | None]] = []
    fsynced = lambda: getattr(store, "transactions", None)  # noqa: E731 - SQLite's fsync count
    before = fsynced()
    charge = await store.commit(cid, "r1", 100, T0, on_charge=lambda c: seen.append((c, fsynced())))
    assert seen == [(charge, before)]
    if isinstance(store, SqliteStore):
        assert store.transactions == before + 1  # the commit returned after its fsync


async def test_old_idempotency_answers_are_forgotten(store):
    if isinstance(store, RedisStore):
        store.idempotency_ttl_s = 10.0  # Redis expires them itself (PX); check the TTL is set
        await store.begin_idempotent(cid_of(1), "old", "r0", T0)
        ttl = await store._r.pttl(store._idem_key(cid_of(1), "old"))
        assert 0 < ttl <= 10_000
        return
    await store.begin_idempotent(cid_of(1), "old", "r0", T0)
    for i in range(1023):
        await store.begin_idempotent(cid_of(1), f"k{i}", f"r{i}", T0 + 2 * store.idempotency_ttl_s)
    assert await store.get_idempotent(cid_of(1), "old") is None
    assert await store.get_idempotent(cid_of(1), "k5") is not None


async def test_sqlite_writer_process_outlives_a_stop_and_its_death_fails_writes_loudly(tmp_path):
    """The writer ignores SIGTERM (a stop sent to the whole process group must not cut the
    gateway's final flush); once it is killed, writes raise instead of pretending to be
    durable, and what it had committed is on disk."""
    import signal

    path = tmp_path / "killed.sqlite3"
    s = await SqliteStore.open(path, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
    cid = cid_of(11)
    try:
        await s.apply_fact(cid, Synced(balance=1_000, total_claimed=0))
        os.kill(s.writer_pid, signal.SIGTERM)
        for i in range(2):
            await s.accept(acc(cid, 100 * (i + 1), 100, f"r{i}"))
            await s.commit(cid, f"r{i}", 100, T0)
        os.kill(s.writer_pid, signal.SIGKILL)
        await s.accept(acc(cid, 300, 100, "r2"))
        with pytest.raises(RuntimeError, match="SQLite writer"):
            await s.commit(cid, "r2", 100, T0)
        with pytest.raises(RuntimeError, match="SQLite writer"):
            await s.kv_put("space", "key", b"value")
    finally:
        await s.close()
    s = await SqliteStore.open(path, chain_id=CHAIN, contract=CONTRACT, policy=POLICY)
    try:
        assert (await s.get(cid)).charged == 200
        assert s.writer_pid is not None
    finally:
        await s.close()
    assert s.writer_pid is None
