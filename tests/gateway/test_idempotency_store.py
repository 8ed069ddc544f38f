"""The request digest an Idempotency-Key is bound to survives in every store: in the pending
marker (`begin_idempotent`), with the committed answer (`commit(..., request_digest=)`), across
a SQLite reopen, and on the real Redis (127.0.0.1:6379, DB 11, a key prefix of its own).
Records written before digests existed still decode, and replay as before."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from channels.protocol import AcceptInput, LedgerPolicy, Synced
from channels.provider.store import IdempotencyRecord, open_store
from channels.provider.store._codec import decode_idem, encode_idem
from gateway.paid_answers import request_digest

REDIS_DB = 11
CONTRACT = "0x" + "4c" * 20
CID = b"\x07" * 32
T0 = 1_800_000_000.0
POLICY = LedgerPolicy(reservation_timeout_s=60, withdraw_margin_s=300, max_in_flight=8)


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(db=REDIS_DB, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=[
    pytest.mark.redis, pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")])])
async def store_url(request, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    else:
        prefix = f"paychan-test-{uuid.uuid4().hex[:12]}"
        yield f"redis://127.0.0.1:6379/{REDIS_DB}?prefix={prefix}&durability=relaxed"
        r = redis.Redis(db=REDIS_DB)
        for key in r.scan_iter(match=f"{prefix}:*", count=500):
            r.delete(key)
        r.close()


async def test_the_digest_is_kept_pending_and_with_the_answer(store_url: str) -> None:
    first = request_digest("POST", "/v1/classify?top_k=3", b"jpeg-1", 1000)
    other = request_digest("POST", "/v1/classify?top_k=3", b"jpeg-2", 1000)
    store = await open_store(store_url, chain_id=31337, contract=CONTRACT, policy=POLICY)
    try:
        await store.apply_fact(CID, Synced(balance=10_000, total_claimed=0))
        assert await store.begin_idempotent(CID, "k", "r1", T0, digest=first) is None
        pending = await store.begin_idempotent(CID, "k", "r2", T0 + 1, digest=other)
        assert pending.digest == first and not pending.done
        assert pending.matches(first) and not pending.matches(other)
        await store.accept(AcceptInput(CID, 1000, b"\x22" * 65, 1000, "r1", T0))
        await store.commit(CID, "r1", 1000, T0 + 2, idempotency_key="k", request_digest=first,
                           response=b'{"ok":1}')
        done = await store.begin_idempotent(CID, "k", "r3", T0 + 3, digest=other)
        assert done.done and done.digest == first and not done.matches(other)
        assert (await store.get(CID)).charged == 1000  # the refused reuse charged nothing
    finally:
        await store.close()
    if store_url.startswith("sqlite"):  # the digest is on disk with the answer
        again = await open_store(store_url, chain_id=31337, contract=CONTRACT, policy=POLICY)
        try:
            rec = await again.get_idempotent(CID, "k")
            assert rec.digest == first and rec.response == b'{"ok":1}'
        finally:
            await again.close()


def test_records_without_a_digest_still_decode_and_match() -> None:
    old = b'{"r":"req-1","t":1800000000.0,"b":"7b7d"}'  # written before digests existed
    rec = decode_idem(old)
    assert rec == IdempotencyRecord("req-1", 1_800_000_000.0, b"{}", "")
    assert rec.matches("a" * 64)  # nothing to compare: replayed as before
    assert encode_idem(rec) == old
    new = IdempotencyRecord("req-2", T0, None, "b" * 64)
    assert decode_idem(encode_idem(new)) == new


def test_the_digest_covers_method_path_query_body_and_price() -> None:
    base = request_digest("POST", "/v1/classify", b"x", 1000)
    assert len(base) == 64 and base == request_digest("POST", "/v1/classify", b"x", 1000)
    for changed in (("PUT", "/v1/classify", b"x", 1000), ("POST", "/v1/classify?top_k=1", b"x", 1000),
                    ("POST", "/v1/classify", b"y", 1000), ("POST", "/v1/classify", b"x", 2000)):
        assert request_digest(*changed) != base, changed


async def test_sqlite_reopen_forgets_pending_markers_of_a_dead_process(tmp_path: Path) -> None:
    """One process owns a SQLite ledger: a pending marker on disk is a request that died with
    it, uncharged. After a restart its retry runs at once instead of getting 409 until the
    marker timed out (reservation_timeout_s, 120 s by default); finished answers stay."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    store = await open_store(url, chain_id=31337, contract=CONTRACT, policy=POLICY)
    await store.apply_fact(CID, Synced(balance=10_000, total_claimed=0))
    assert await store.begin_idempotent(CID, "done", "r1", T0, digest="a" * 64) is None
    await store.accept(AcceptInput(CID, 1000, b"\x22" * 65, 1000, "r1", T0))
    await store.commit(CID, "r1", 1000, T0, idempotency_key="done", request_digest="a" * 64,
                       response=b"answer")
    assert await store.begin_idempotent(CID, "cut", "r2", T0, digest="b" * 64) is None
    await store.flush()
    assert (await store.get_idempotent(CID, "cut")).done is False
    await store.close()  # the process is gone with "cut" in flight
    again = await open_store(url, chain_id=31337, contract=CONTRACT, policy=POLICY)
    try:
        assert await again.get_idempotent(CID, "cut") is None
        assert await again.begin_idempotent(CID, "cut", "r3", T0 + 1, digest="b" * 64) is None
        kept = await again.begin_idempotent(CID, "done", "r4", T0 + 1, digest="a" * 64)
        assert kept.done and kept.response == b"answer"
    finally:
        await again.close()
