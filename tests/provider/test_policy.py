"""When the settler claims (pure rules, no chain)."""

from __future__ import annotations

import pytest

from channels.protocol import ClaimTarget
from channels.provider import SettlerPolicy, claim_reason


def _target(
    unclaimed: int, since: float | None = 100.0, deadline: int | None = None
) -> ClaimTarget:
    return ClaimTarget(b"\x01" * 32, None, unclaimed, b"", unclaimed, unclaimed, since, deadline)


POLICY = SettlerPolicy(claim_after_s=60, claim_threshold=10_000)


def test_nothing_to_claim() -> None:
    assert claim_reason([], 1e9, POLICY) is None


def test_young_and_small_waits() -> None:
    assert claim_reason([_target(500), _target(700, since=130.0)], 150.0, POLICY) is None


def test_a_withdrawal_claims_at_once() -> None:
    assert (
        claim_reason([_target(1, since=149.0), _target(1, deadline=2_000)], 150.0, POLICY)
        == "withdrawal"
    )


def test_the_oldest_charge_ages_out() -> None:
    assert claim_reason([_target(1, since=89.0), _target(1, since=None)], 150.0, POLICY) == "age"


def test_the_unclaimed_total_passes_the_threshold() -> None:
    assert (
        claim_reason([_target(6_000, since=149.0), _target(4_000, since=149.0)], 150.0, POLICY)
        == "threshold"
    )


def test_batch_size_is_capped_at_the_contract_friendly_limit() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SettlerPolicy(batch_size=101)
