"""Whether the chain node answers, and how much was charged since it last did (`ChainHealth`).

A charge on a channel whose state this process knows needs no chain; but until a claim lands,
charges are exposed (a withdrawal the watcher cannot see while the node is away could take the
unclaimed value), and nothing can be claimed while the node is away. So while the node is
unreachable the gateway keeps serving known channels only up to `max_exposure` token units
charged since the chain was last seen (per process), then refuses with 503 until it is back::

    health = ChainHealth(max_exposure=1_000_000, stale_after_s=5.0)
    health.start()                      # ChainSync: it polls the node from now on
    health.seen()                       # TxSender.rpc: a call reached the node
    health.failed()                     # TxSender.rpc: a call could not
    if not health.admits(price): ...    # the gate, before holding a price: 503 chain_unavailable
    health.charged(price)               # the gate, after a charge
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ChainHealth"]


class ChainHealth:
    """The chain's reachability as the chain sync saw it, and the exposure since (pure state:
    the sync and the gate feed it; no I/O)."""

    def __init__(
        self,
        *,
        max_exposure: int,
        stale_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_exposure < 0:
            raise ValueError(f"max_exposure must be 0 or more token units, got {max_exposure}")
        self.max_exposure = max_exposure
        self.stale_after_s = stale_after_s
        self._clock = clock
        self.tracking = False  # False until a chain sync reports: then nothing is refused
        self.last_seen: float | None = None
        self.failing = False
        self.exposure = 0  # units charged since the chain was last seen
        self.refused = 0  # requests refused for the limit (a figure)

    def start(self) -> None:
        """A chain sync now polls the node: from here on an outage is noticed (counted from
        now when no call has reached it yet)."""
        self.tracking = True
        if self.last_seen is None:
            self.last_seen = self._clock()

    def seen(self) -> None:
        """A call reached the node: what was charged before is claimable again."""
        self.failing = False
        self.last_seen = self._clock()
        self.exposure = 0

    def failed(self) -> None:
        """A call could not reach the node."""
        self.failing = True

    @property
    def reachable(self) -> bool:
        """True unless the last round failed or none succeeded for `stale_after_s`."""
        if not self.tracking:
            return True
        if self.failing or self.last_seen is None:
            return False
        return self._clock() - self.last_seen <= self.stale_after_s

    def down_for_s(self) -> float:
        """Seconds since the chain was last seen (0 while reachable)."""
        if self.reachable or self.last_seen is None:
            return 0.0
        return self._clock() - self.last_seen

    def admits(self, amount: int) -> bool:
        """Whether a charge of `amount` may be held now: always while the chain is reachable;
        while it is not, only within `max_exposure` (charges in flight come on top)."""
        if self.reachable or self.exposure + amount <= self.max_exposure:
            return True
        self.refused += 1
        return False

    def charged(self, amount: int) -> None:
        self.exposure += amount
