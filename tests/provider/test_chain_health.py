"""ChainHealth: what the gateway may serve while the chain node is unreachable (a fake clock;
the real outage is tests/reliability/test_chain_faults.py)."""

from __future__ import annotations

import pytest

from channels.provider import ChainHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_refused_until_a_chain_sync_polls() -> None:
    health = ChainHealth(max_exposure=0, clock=Clock())
    health.failed()
    assert health.reachable and health.admits(10**9)  # no poller: no judgement


def test_exposure_is_capped_while_down_and_reset_when_the_node_answers() -> None:
    clock = Clock()
    health = ChainHealth(max_exposure=3_000, stale_after_s=5, clock=clock)
    health.start()
    health.seen()
    health.charged(10_000)  # while reachable: no cap
    assert health.admits(1_000)
    health.failed()
    assert not health.reachable
    assert health.exposure == 10_000 and not health.admits(1_000)  # counted since last seen
    health.seen()
    health.failed()
    for _ in range(3):
        assert health.admits(1_000)
        health.charged(1_000)
    assert not health.admits(1_000) and health.refused == 2
    clock.now += 7
    assert health.down_for_s() == pytest.approx(7)
    health.seen()
    assert health.reachable and health.exposure == 0 and health.admits(1_000)


def test_silence_longer_than_stale_after_counts_as_down() -> None:
    clock = Clock()
    health = ChainHealth(max_exposure=0, stale_after_s=5, clock=clock)
    health.start()
    clock.now += 4.9
    assert health.reachable
    clock.now += 0.2
    assert not health.reachable and not health.admits(1)


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_exposure"):
        ChainHealth(max_exposure=-1)
