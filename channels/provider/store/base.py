"""The Store interface: the pure ledger behind durable, async persistence.

Every store runs the SAME transition functions from `channels.protocol.ledger`; a store only decides
how a channel's state is loaded and how the new state is written atomically (SQLite: one
writer process, group-committed transactions; Redis: a Lua compare-and-set on a version).

    >>> store = await open_store("sqlite:///var/paychan/ledger.sqlite3", chain_id=8453,
    ...                          contract=settlement)
    >>> got = await store.accept(AcceptInput(cid, ceiling, sig, price, "req-1", now))
    >>> if isinstance(got, Rejection): ...   # 402 with got.code, got.channel_state, got.voucher_state
    >>> charge = await store.commit(cid, "req-1", price, now)   # durable when it returns
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypeVar

from channels.protocol import (
    AcceptInput,
    ChainFact,
    ChannelConfig,
    ChannelState,
    Charge,
    ClaimTarget,
    ErrorCode,
    LedgerPolicy,
    RefundPlan,
    Rejection,
    Reservation,
    ledger,
    spending,
)
from ._codec import IdempotencyRecord

__all__ = ["IdempotencyRecord", "Store"]

T = TypeVar("T")
Transition = Callable[[ChannelState | None], tuple[ChannelState | None, T]]


@dataclass(slots=True)
class _IdemOp:
    """Written atomically with a channel transition: set `record` (filled in by the transition
    itself when the answer is built from the new state), or drop a pending one of `request_id`
    (kind "drop")."""

    kind: str  # "set" | "drop"
    key: str
    record: IdempotencyRecord | None = None
    request_id: str = ""


class Store(ABC):
    """Async persistence of channel ledgers, namespaced by (chain_id, settlement contract).

    Channel transitions (accept, commit, release, expire, apply_fact) are atomic per channel;
    `commit` and `apply_fact` are durable when they return; `accept`, `release` and `expire`
    no later than the channel's next commit/apply_fact, `flush()` or `close()` (their loss in
    a crash charges nothing: a commit always writes the voucher that covers its charge).
    """

    chain_id: int
    contract: str
    policy: LedgerPolicy
    idempotency_ttl_s: float = 24 * 3600.0

    # --- ledger transitions --------------------------------------------------------------

    async def accept(self, inp: AcceptInput) -> Reservation | Rejection:
        """Reserve inp.price against a verified voucher (see channels.protocol.ledger.accept)."""

        def fn(s: ChannelState | None) -> tuple[ChannelState | None, Reservation | Rejection]:
            new, got = ledger.accept(s, inp, self.policy)
            if isinstance(got, Rejection) and s is None:
                return None, got  # never create a record for a refused voucher
            if isinstance(got, Rejection) and new.reservations == s.reservations:  # type: ignore[union-attr]
                return s, got
            return new, got

        return await self._transact(inp.channel_id, fn, durable=False)

    async def commit(
        self,
        channel_id: bytes,
        request_id: str,
        actual: int,
        now: float,
        *,
        idempotency_key: str | None = None,
        request_digest: str = "",
        response: bytes | Callable[[ChannelState, Charge], bytes] = b"",
        on_charge: Callable[[Charge], object] | None = None,
    ) -> Charge:
        """Charge `actual` for a live reservation; durable when it returns.

        With `idempotency_key`, `response` (the serialized answer) is stored in the same atomic
        write, so a retry finds the answer and never a second charge. `response` may be a pure,
        deterministic function `(new_state, charge) -> bytes` run inside the transition (it may
        run more than once on Redis; if it raises, nothing is written), so the stored answer
        and its receipt come from the committed state itself. Raises
        ledger.UnknownReservation when the reservation is gone (expired/released).

            >>> charge = await store.commit(cid, "req-1", price, time.time(),
            ...     idempotency_key=key, response=lambda st, ch: build_answer(st, ch))

        `on_charge(charge)` is called once, as soon as the charge is decided and before the
        store waits for the disk (SQLite's fsync), so work that needs only the charge (the
        gateway's receipt) overlaps the write. If the write then fails, `commit` raises as
        usual and that work must be dropped: nothing was charged.
        """
        op = _IdemOp("set", idempotency_key) if idempotency_key is not None else None

        def fn(s: ChannelState | None) -> tuple[ChannelState, Charge]:
            if s is None:
                raise ledger.UnknownReservation(f"no channel 0x{channel_id.hex()}")
            new, charge = ledger.commit(s, request_id, actual, now)
            if op is not None:
                body = response(new, charge) if callable(response) else response
                op.record = IdempotencyRecord(request_id, now, bytes(body), request_digest)
            return new, charge

        return await self._transact(channel_id, fn, idem=op, durable=True, decided=on_charge)

    async def release(
        self, channel_id: bytes, request_id: str, *, idempotency_key: str | None = None
    ) -> Reservation | None:
        """Drop a reservation uncharged (and the pending Idempotency-Key marker it holds)."""

        def fn(s: ChannelState | None) -> tuple[ChannelState | None, Reservation | None]:
            if s is None:
                return None, None
            return ledger.release(s, request_id)

        op = _IdemOp("drop", idempotency_key, request_id=request_id) if idempotency_key else None
        return await self._transact(channel_id, fn, idem=op, durable=False)

    async def begin_refund(
        self, channel_id: bytes, requested: int | None, now: float
    ) -> RefundPlan | Rejection:
        """Decide a refund and lock the channel against new holds, atomically and durably
        (see channels.protocol.spending.begin_refund); a Rejection says why not."""

        def fn(s: ChannelState | None) -> tuple[ChannelState | None, RefundPlan | Rejection]:
            if s is None:
                return None, Rejection(ErrorCode.CHANNEL_NOT_FOUND, "no such channel here")
            return spending.begin_refund(s, requested=requested, now=now, policy=self.policy)

        return await self._transact(channel_id, fn, durable=True)

    async def end_spend(self, channel_id: bytes, nonce: int) -> bool:
        """Release the refund lock taken at `nonce` (its transaction failed)."""

        def fn(s: ChannelState | None) -> tuple[ChannelState | None, bool]:
            return (None, False) if s is None else spending.end_spend(s, nonce)

        return await self._transact(channel_id, fn, durable=True)

    async def expire(self, now: float) -> list[Reservation]:
        """Release every reservation that timed out (call it every few seconds)."""
        out: list[Reservation] = []
        for st in await self.channels():
            if any(r.expires_at <= now for r in st.reservations):

                def fn(
                    s: ChannelState | None,
                ) -> tuple[ChannelState | None, tuple[Reservation, ...]]:
                    return (None, ()) if s is None else ledger.expire(s, now)

                out.extend(await self._transact(st.channel_id, fn, durable=False))
        return out

    async def apply_fact(
        self, channel_id: bytes, fact: ChainFact, *, config: ChannelConfig | None = None
    ) -> ChannelState:
        """Mirror an on-chain fact (creates the record for a channel not seen before)."""

        def fn(s: ChannelState | None) -> tuple[ChannelState, ChannelState]:
            s = (
                ledger.new_channel(channel_id, config)
                if s is None
                else ledger.with_config(s, config)
            )
            new = ledger.apply_fact(s, fact)
            return new, new

        return await self._transact(channel_id, fn, durable=True)

    # --- reads -----------------------------------------------------------------------------

    @abstractmethod
    async def get(self, channel_id: bytes) -> ChannelState | None:
        """The channel as stored now (None: never seen)."""

    @abstractmethod
    async def channels(self) -> list[ChannelState]:
        """Every channel of this (chain, contract), for the settler and listings."""

    async def claim_targets(self) -> list[ClaimTarget]:
        """Channels with something to claim, most urgent first (nearest withdrawal deadline,
        then oldest unclaimed charge)."""
        targets = [t for t in map(ledger.claim_target, await self.channels()) if t is not None]
        inf = float("inf")
        targets.sort(
            key=lambda t: (
                t.withdraw_deadline if t.withdraw_deadline is not None else inf,
                t.unclaimed_since if t.unclaimed_since is not None else inf,
            )
        )
        return targets

    # --- idempotency -------------------------------------------------------------------------

    @abstractmethod
    async def begin_idempotent(
        self, channel_id: bytes, key: str, request_id: str, now: float, *, digest: str = ""
    ) -> IdempotencyRecord | None:
        """Claim an Idempotency-Key for `request_id`, atomically; `digest` fingerprints the
        request (kept with the answer by commit(..., request_digest=digest)).

        None: it is yours now (a pending marker is stored; finish with commit(...,
        idempotency_key=key, response=...) or release(..., idempotency_key=key)).
        A record with `.done`: replay `record.response`, charge nothing.
        A record not done: the same key is in flight in another request: answer 409/429.
        A pending marker older than the reservation timeout is taken over.
        """

    @abstractmethod
    async def get_idempotent(self, channel_id: bytes, key: str) -> IdempotencyRecord | None:
        """The record stored under this key, if any."""

    # --- small durable key/value (watcher cursor, transaction journal, ...) -----------------

    @abstractmethod
    async def kv_get(self, namespace: str, key: str) -> bytes | None: ...

    @abstractmethod
    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        """Durable when it returns."""

    @abstractmethod
    async def kv_cas(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        """Set (value None: delete) only if the current value is `expected` (None: absent)."""

    @abstractmethod
    async def kv_delete(self, namespace: str, key: str) -> None: ...

    @abstractmethod
    async def kv_items(self, namespace: str) -> dict[str, bytes]: ...

    # --- lifecycle -----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every write so far is durable."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the one primitive a store implements ---------------------------------------------------

    @abstractmethod
    async def _transact(
        self, channel_id: bytes, fn: Transition[T], *, idem: _IdemOp | None = None, durable: bool,
        decided: Callable[[T], object] | None = None,
    ) -> T:
        """Run `fn` on the current state and store its new state (and `idem`) atomically.

        `fn` returns (new state, result); returning the input state object unchanged (and no
        idem) means nothing to write. `fn` may run more than once (Redis retries on conflict).
        `decided(result)` runs once, when the result is final and before waiting for the disk.
        """
