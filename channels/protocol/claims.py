"""The claim batch, built once: the `VoucherClaim` rows a `claimWithSignature` sends, the
`ClaimEntry` rows the receiverAuthorizer signs, and their `ClaimBatch` digest.

The settler (periodic claims), the facilitator's refund (claim before refunding) and its
x402 `/settle` claim action all build the same batch; doing it here keeps the signed entries
and the submitted rows from ever disagreeing::

    >>> rows = [ClaimRow(config, 900, payer_signature, 800)]
    >>> batch = claim_batch(rows, 8453, settlement)       # ClaimBatch(rows, entries, digest)
    >>> signature = sign_claim_batch(authorizer, batch)   # the receiverAuthorizer's ClaimBatch
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# From the package (not its modules): channels/protocol/__init__ binds these before it imports
# this module, and the modules behind them are free to move.
from . import ChannelConfig, ClaimEntry, Signer, channel_id, claim_batch_digest

__all__ = ["ClaimBatch", "ClaimRow", "claim_batch", "sign_claim_batch"]


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """One `VoucherClaim`: the payer's voucher (ceiling + signature) and the new totalClaimed.

    >>> ClaimRow(config, max_claimable=900, signature=payer_sig, total_claimed=800)
    """

    config: ChannelConfig
    max_claimable: int
    signature: bytes
    total_claimed: int


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    """Rows to submit, the entries they sign as (same order), and the `ClaimBatch` digest."""

    rows: tuple[ClaimRow, ...]
    entries: tuple[ClaimEntry, ...]
    digest: bytes


def claim_batch(rows: Iterable[ClaimRow], chain_id: int, settlement: str | bytes) -> ClaimBatch:
    """The batch for `rows` on (chain_id, settlement): each entry's channel id is the one the
    contract derives from the row's config, so what is signed is what the contract checks.

    >>> claim_batch([ClaimRow(config, 900, sig, 800)], 8453, settlement).digest  # 32 bytes
    """
    rows = tuple(rows)
    entries = tuple(
        ClaimEntry(channel_id(r.config, chain_id, settlement), r.max_claimable, r.total_claimed)
        for r in rows
    )
    return ClaimBatch(rows, entries, claim_batch_digest(chain_id, settlement, entries))


def sign_claim_batch(authorizer: Signer, batch: ClaimBatch) -> bytes:
    """The receiverAuthorizer's 65-byte signature over `batch.digest`.

    >>> sign_claim_batch(Signer(key), claim_batch(rows, 8453, settlement))
    """
    return authorizer.sign_digest(batch.digest)
