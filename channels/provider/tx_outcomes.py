"""What sending a transaction can come to, and how it is sent: the results, the failures
(each says whether anything reached the chain) and the sending policy::

    try:
        result = await chain.transact("claim", calldata)     # TxResult: mined, status 1
    except SimulationFailed: ...     # the estimate reverted: nothing was sent
    except TxReverted: ...           # mined with status 0
    except TxTimeout: ...            # still pending; the journal keeps it
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from .txjournal import JournalEntry

__all__ = [
    "SimulationFailed",
    "TxFailed",
    "TxPolicy",
    "TxResult",
    "TxReverted",
    "TxTimeout",
    "is_transport_error",
]

_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError)


def is_transport_error(exc: BaseException) -> bool:
    """True when `exc` says the node could not be reached (retry), not that it refused.

    >>> is_transport_error(ConnectionRefusedError())
    True
    """
    return isinstance(exc, _TRANSPORT_ERRORS)


# --------------------------------------------------------------------------- results & errors



class TxFailed(RuntimeError):
    """A transaction did not do what it was sent for; `.kind` names it, `.reason` says why."""

    def __init__(
        self, kind: str, reason: str, *, receipt: Any = None, entry: JournalEntry | None = None
    ) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason, self.receipt, self.entry = kind, reason, receipt, entry


class SimulationFailed(TxFailed):
    """The node's gas estimate reverted: nothing was signed or sent. `.reason` is the
    contract's custom error name when it has one (e.g. "ClaimExceedsBalance")."""


class TxReverted(TxFailed):
    """Mined with status 0 (the journal entry is closed as "reverted")."""


class TxTimeout(TxFailed):
    """No receipt within `TxPolicy.receipt_timeout_s`; the entry stays pending in the journal
    and `ChainClient.recover()` (or a later wait) finishes it."""


@dataclass(frozen=True, slots=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str
    receipt: Any
    entry: JournalEntry

    @property
    def gas_used(self) -> int:
        return int(self.receipt["gasUsed"])

    @property
    def block_number(self) -> int:
        return int(self.receipt["blockNumber"])


@dataclass(frozen=True, slots=True)
class TxPolicy:
    """How transactions are priced, bumped and retried (defaults suit a public L2 and anvil)."""

    gas_headroom: float = 1.25  # estimate x headroom + gas_extra
    gas_extra: int = 10_000
    priority_fee: int | None = None  # wei; None: eth_maxPriorityFeePerGas, else 1 gwei
    bump_after_s: float = 30.0  # unmined this long: re-sign the same nonce with higher fees
    bump_factor: float = 1.125  # nodes need >= +10% on both fee fields to replace
    max_fee_cap: int | None = None  # never bid more than this maxFeePerGas (wei)
    receipt_timeout_s: float = 600.0
    poll_s: float = 0.25
    backoff_s: float = 0.25  # first retry delay after an RPC failure; doubles up to backoff_max_s
    backoff_max_s: float = 5.0
