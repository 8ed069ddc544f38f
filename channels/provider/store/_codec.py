"""Compact JSON encoding of ledger states and idempotency records (shared by every store)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

try:  # orjson: the state of a busy channel (dozens of reservations) encodes ~5x faster
    from orjson import dumps as _orjson_dumps

    def _dumps(d: Any) -> bytes:
        return _orjson_dumps(d)

except ImportError:  # pragma: no cover - same JSON, slower

    def _dumps(d: Any) -> bytes:
        return json.dumps(d, separators=(",", ":")).encode()

from channels.protocol import (
    ChannelConfig,
    ChannelState,
    ErrorCode,
    PendingSpend,
    Reservation,
)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What an Idempotency-Key holds: the request that owns it and, once done, its answer.

    `response is None` means the first request with this key is still in flight. `digest`
    fingerprints the request that took the key (the gateway hashes method, path, body and
    price), so a later request under the same key but with another body is told apart from
    a retry; "" for records written before digests existed (such a key replays as before).
    `owner` names the process that wrote a pending marker when that process keeps a
    heartbeat (the Redis store): a marker whose owner's heartbeat is gone can be taken over.

        >>> rec = IdempotencyRecord("req-1", time.time(), None, digest="9f86d0...")
        >>> rec.matches("9f86d0..."), rec.done
        (True, False)
    """

    request_id: str
    created_at: float
    response: bytes | None = None
    digest: str = ""
    owner: str = field(default="", compare=False)

    @property
    def done(self) -> bool:
        return self.response is not None

    def matches(self, digest: str) -> bool:
        """Whether a request with `digest` is the one this key was taken for (True when
        either side has no digest: nothing to compare)."""
        return not self.digest or not digest or self.digest == digest


def encode_state(s: ChannelState, *, reservations: bool = True) -> bytes:
    """The state as compact JSON; ``reservations=False`` leaves the requests in flight out
    (a store owned by one process: after a restart nothing is in flight, see SqliteStore)."""
    d: dict[str, Any] = {
        "id": s.channel_id.hex(),
        "b": str(s.balance),
        "tc": str(s.total_claimed),
        "wr": s.withdraw_requested_at,
        "rn": s.refund_nonce,
        "c": str(s.charged),
        "sm": str(s.signed_max_claimable),
        "sig": s.signature.hex(),
        "r": [
            [r.request_id, str(r.amount), str(r.ceiling), r.expires_at, str(r.deposit_amount)]
            for r in s.reservations
        ] if reservations else [],
        "us": s.unclaimed_since,
        "wd": s.withdraw_delay,
        "cfg": s.config.to_json() if s.config is not None else None,
        "wa": None if s.withdraw_amount is None else str(s.withdraw_amount),
    }
    if s.spend is not None:  # absent rather than null: states written before it decode alike
        p = s.spend
        d["sp"] = [p.kind, p.nonce, str(p.claim_total), str(p.amount), p.expires_at]
    return _dumps(d)


def decode_state(raw: bytes | str) -> ChannelState:
    d = json.loads(raw)
    cid = bytes.fromhex(d["id"])
    cfg = d["cfg"]
    return ChannelState(
        channel_id=cid,
        balance=int(d["b"]),
        total_claimed=int(d["tc"]),
        withdraw_requested_at=d["wr"],
        refund_nonce=d["rn"],
        charged=int(d["c"]),
        signed_max_claimable=int(d["sm"]),
        signature=bytes.fromhex(d["sig"]),
        reservations=tuple(
            Reservation(rid, cid, int(a), int(c), e, int(dep)) for rid, a, c, e, dep in d["r"]
        ),
        unclaimed_since=d["us"],
        withdraw_delay=d["wd"],
        config=ChannelConfig.from_json(cfg, "cfg", ErrorCode.INVALID_PAYLOAD) if cfg else None,
        withdraw_amount=None if d.get("wa") is None else int(d["wa"]),
        spend=_spend(d.get("sp")),
    )


def _spend(raw: list[Any] | None) -> PendingSpend | None:
    if raw is None:
        return None
    kind, nonce, claim_total, amount, expires_at = raw
    return PendingSpend(kind, nonce, int(claim_total), int(amount), expires_at)


def encode_idem(rec: IdempotencyRecord) -> bytes:
    """The record as compact JSON; `d` (the request digest) only when known, so records of
    either vintage decode alike (the Redis scripts read only `r`, `t` and `b`)."""
    body = rec.response.hex() if rec.response is not None else None
    d: dict[str, Any] = {"r": rec.request_id, "t": rec.created_at, "b": body}
    if rec.digest:
        d["d"] = rec.digest
    if rec.owner:
        d["o"] = rec.owner
    return json.dumps(d, separators=(",", ":")).encode()


def decode_idem(raw: bytes | str) -> IdempotencyRecord:
    d = json.loads(raw)
    body = bytes.fromhex(d["b"]) if d["b"] is not None else None
    return IdempotencyRecord(d["r"], d["t"], body, d.get("d", ""), d.get("o", ""))
