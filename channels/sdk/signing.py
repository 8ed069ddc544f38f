"""The payer's signatures: a voucher over a cumulative ceiling, an ERC-3009 deposit
authorization for the collector.

    >>> voucher = sign_voucher(payer.voucher_signer, 31337, settlement, cid, 4000)
    >>> deposit = sign_deposit(payer.signer, offer, collector, cid, 10_000, now=time.time())
"""

from __future__ import annotations

import os

from ..protocol import (
    Deposit,
    Erc3009Authorization,
    PaymentRequirements,
    Signer,
    Voucher,
    erc3009_deposit_nonce,
    receive_with_authorization_digest,
    voucher_digest,
)

__all__ = ["sign_deposit", "sign_voucher"]


def sign_voucher(signer: Signer, chain_id: int, settlement: bytes, cid: bytes, ceiling: int) -> Voucher:
    """`Voucher(channelId, maxClaimableAmount)` signed under the settlement contract's domain.

        >>> sign_voucher(signer, 31337, settlement, cid, 4000).max_claimable_amount
        4000
    """
    digest = voucher_digest(chain_id, settlement, cid, ceiling)
    return Voucher(cid, ceiling, signer.sign_digest(digest))


def sign_deposit(
    signer: Signer,
    requirements: PaymentRequirements,
    collector: bytes,
    cid: bytes,
    amount: int,
    *,
    now: float,
) -> Deposit:
    """A deposit of `amount` to the channel: `receiveWithAuthorization` from the payer to the
    collector, valid from now for the offer's maxTimeoutSeconds (at least 60 s), its nonce
    bound to the channel and a fresh salt.

        >>> sign_deposit(signer, offer, collector, cid, 10_000, now=time.time()).amount
        10000
    """
    valid_before = int(now) + max(requirements.max_timeout_seconds, 60)
    salt = os.urandom(32)
    digest = receive_with_authorization_digest(
        requirements.chain_id,
        requirements.asset,
        requirements.extra.name,
        requirements.extra.version,
        from_=signer.address_bytes,
        to=collector,
        value=amount,
        valid_after=0,
        valid_before=valid_before,
        nonce=erc3009_deposit_nonce(cid, salt),
    )
    auth = Erc3009Authorization(0, valid_before, salt, signer.sign_digest(digest))
    return Deposit(amount, auth)
