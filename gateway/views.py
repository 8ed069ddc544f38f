"""What the payment gate reports as JSON: one channel as the ledger holds it, and a settler
round (the forced one behind ``POST /admin/settle`` and ``paychan settle``)::

    view = await channel_view(store, "0x5e1f...")          # None when the channel is unknown
    out = await settle_now(sync.settler, chain)            # claim + settle everything, now
    out = settlement_json(report, chain)                   # any round's report, as JSON
"""

from __future__ import annotations

from typing import Any

from web3.logs import DISCARD

from channels.provider import ChainClient
from channels.provider import SettlementReport, Settler
from channels.provider.store import Store

__all__ = ["channel_view", "settle_now", "settlement_json"]


async def channel_view(store: Store, channel_hex: str) -> dict[str, Any] | None:
    """The server's view of a channel, as JSON (None when unknown): its ``channelState``,
    what is reserved by requests in flight, and the payer's last ``voucherState``."""
    state = await store.get(bytes.fromhex(channel_hex[2:]))
    if state is None:
        return None
    view = state.channel_state.to_json()
    view["reserved"] = str(state.reserved)
    view["inFlight"] = len(state.reservations)
    voucher = state.voucher_state
    if voucher is not None:
        view["voucherState"] = voucher.to_json()
    return view


async def settle_now(settler: Settler, chain: ChainClient) -> dict[str, Any]:
    """Claim everything charged now (every claimable channel, whatever the policy says),
    settle the claimed value to the receiver, and wait for the receipts.

    Safe beside the background sync (rounds never overlap in one process). Returns JSON::

        {"reason": "forced" | None,          # None: nothing was charged and unclaimed
         "channels": 2, "claimed": 21000,    # channels claimed, token units newly claimed
         "claims": [{"channel": "0x..", "amount": 12000, "total_claimed": 12000, "tx": "0x.."}],
         "claim_txs": ["0x.."], "settle_tx": "0x.." | None,
         "settled_amount": 21000,            # token units swept to the receiver
         "gas_used": 151234, "skipped": [],  # channels whose claim kept failing
         "receiver": "0x..", "token": "0x.."}

    Raises ``channels.provider.TxFailed`` when a claim or the settle fails on-chain.
    """
    report = await settler.run_once(force=True)
    out = settlement_json(report, chain)
    out["receiver"] = settler.receiver
    out["token"] = settler.token
    return out


def settlement_json(report: SettlementReport, chain: ChainClient) -> dict[str, Any]:
    """A settler round as JSON, with one row per claimed channel (from the Claimed events).

    ``{"reason", "channels", "claimed", "claims": [{"channel", "amount", "total_claimed",
    "tx"}], "claim_txs", "settle_tx", "settled_amount", "gas_used", "skipped"}``
    """
    out = report.to_json()
    out["settled_amount"] = out.pop("settled")
    rows = []
    for result in report.claims:
        for ev in chain.settlement.events.Claimed().process_receipt(result.receipt, errors=DISCARD):
            rows.append({
                "channel": "0x" + bytes(ev["args"]["channelId"]).hex(),
                "amount": int(ev["args"]["claimAmount"]),
                "total_claimed": int(ev["args"]["newTotalClaimed"]),
                "tx": result.tx_hash,
            })
    out["claims"] = rows
    return out
