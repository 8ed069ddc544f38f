"""The one claim-batch builder: rows, their signed entries and the ClaimBatch digest agree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from channels.protocol import (
    ChannelConfig,
    ClaimEntry,
    ClaimRow,
    Signer,
    channel_id,
    claim_batch,
    claim_batch_digest,
    recover_signer,
    sign_claim_batch,
)

SETTLEMENT = "0x" + "ab" * 20
AUTHORIZER = Signer("0x" + "07" * 32)
u128 = st.integers(min_value=0, max_value=2**128 - 1)
configs = st.builds(
    ChannelConfig,
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=20, max_size=20),
    st.just(AUTHORIZER.address_bytes),
    st.binary(min_size=20, max_size=20),
    st.integers(min_value=0, max_value=2**40 - 1),
    st.binary(min_size=32, max_size=32),
)
rows = st.builds(ClaimRow, configs, u128, st.binary(min_size=65, max_size=65), u128)


@settings(max_examples=50, deadline=None)
@given(batch_rows=st.lists(rows, max_size=5), chain_id=st.integers(min_value=1, max_value=2**32))
def test_the_entries_are_the_rows_under_their_channel_ids(
    batch_rows: list[ClaimRow], chain_id: int
) -> None:
    batch = claim_batch(batch_rows, chain_id, SETTLEMENT)
    assert batch.rows == tuple(batch_rows)
    assert batch.entries == tuple(
        ClaimEntry(channel_id(r.config, chain_id, SETTLEMENT), r.max_claimable, r.total_claimed)
        for r in batch_rows
    )
    assert batch.digest == claim_batch_digest(chain_id, SETTLEMENT, batch.entries)


@settings(max_examples=20, deadline=None)
@given(batch_rows=st.lists(rows, min_size=1, max_size=3))
def test_the_signature_recovers_to_the_authorizer(batch_rows: list[ClaimRow]) -> None:
    batch = claim_batch(batch_rows, 8453, SETTLEMENT)
    signature = sign_claim_batch(AUTHORIZER, batch)
    assert recover_signer(batch.digest, signature) == AUTHORIZER.address


def test_a_generator_of_rows_is_read_once() -> None:
    row = ClaimRow(
        ChannelConfig(b"\x01" * 20, b"\x01" * 20, b"\x02" * 20, b"\x03" * 20, b"\x04" * 20, 900,
                      bytes(32)),
        900,
        bytes(65),
        800,
    )
    batch = claim_batch((r for r in [row, row]), 1, SETTLEMENT)
    assert len(batch.rows) == len(batch.entries) == 2
