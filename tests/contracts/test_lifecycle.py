"""The whole channel lifecycle, on the embedded chain and on anvil (``env`` is parametrized)."""

from __future__ import annotations

from contract_helpers import assert_reverts
from web3.logs import DISCARD

from contracts.testkit import sign_hash


def _events(kit, receipt, name):
    return getattr(kit.settlement.events, name)().process_receipt(receipt, errors=DISCARD)


async def test_erc3009_deposit_opens_channel_and_tops_up(env) -> None:
    kit = env.kit
    ch = env.channel()
    payer_before = await kit.token_balance(ch.payer)
    settlement_before = await kit.token_balance(kit.deployment.settlement)
    r1 = await kit.deposit(env.facilitator, ch, 700_000)
    assert [e.args.channelId for e in _events(kit, r1, "ChannelCreated")] == [ch.id]
    assert _events(kit, r1, "Deposited")[0].args.newBalance == 700_000
    r2 = await kit.deposit(env.facilitator, ch, 300_000)
    assert _events(kit, r2, "ChannelCreated") == ()
    assert await kit.channel_state(ch) == (1_000_000, 0)
    assert await kit.token_balance(ch.payer) == payer_before - 1_000_000
    assert await kit.token_balance(kit.deployment.settlement) == settlement_before + 1_000_000
    assert await kit.token_balance(kit.deployment.collector) == 0
    assert await kit.settlement.functions.getChannelId(ch.config).call() == ch.id


async def test_claim_with_signature_many_channels_then_settle(env) -> None:
    kit = env.kit
    other_receiver = env.stranger
    chans = [await env.funded(100_000) for _ in range(6)]
    chans += [await env.funded(100_000, receiver=other_receiver) for _ in range(3)]
    chans.append(await env.funded(100_000))  # receiver switches back: a second run of the first receiver
    amounts = [1_000 * (i + 1) for i in range(len(chans))]
    rows = [kit.voucher_claim(c, a + 500, a) for c, a in zip(chans, amounts)]
    recv, other = env.addr(env.receiver), env.addr(other_receiver)
    before = await kit.settlement.functions.receivers(recv, kit.deployment.token).call()
    before_other = await kit.settlement.functions.receivers(other, kit.deployment.token).call()
    assert await kit.settlement.functions.getClaimBatchDigest(rows).call() == kit.claim_batch_digest(rows)
    receipt = await kit.claim_with_signature(env.stranger, rows, env.receiver_authorizer)
    claimed = _events(kit, receipt, "Claimed")
    assert [(e.args.channelId, e.args.claimAmount, e.args.newTotalClaimed) for e in claimed] == [
        (c.id, a, a) for c, a in zip(chans, amounts)
    ]
    for c, a in zip(chans, amounts):
        assert await kit.channel_state(c) == (100_000, a)
    mine = sum(amounts[:6]) + amounts[9]
    theirs = sum(amounts[6:9])
    after = await kit.settlement.functions.receivers(recv, kit.deployment.token).call()
    after_other = await kit.settlement.functions.receivers(other, kit.deployment.token).call()
    assert after[0] - before[0] == mine
    assert after_other[0] - before_other[0] == theirs

    # Replaying the same batch is a no-op: no event, no change.
    again = await kit.claim_with_signature(env.facilitator, rows, env.receiver_authorizer)
    assert _events(kit, again, "Claimed") == ()
    assert await kit.settlement.functions.receivers(recv, kit.deployment.token).call() == after

    # A later voucher claims only the difference.
    more = await kit.claim_with_signature(env.facilitator, [kit.voucher_claim(chans[0], 5_000, 4_000)],
                                          env.receiver_authorizer)
    assert _events(kit, more, "Claimed")[0].args.claimAmount == 3_000

    # settle sweeps everything claimed and not yet settled to the receiver; twice is a no-op.
    wallet_before = await kit.token_balance(recv)
    pending = (await kit.settlement.functions.receivers(recv, kit.deployment.token).call())
    s = await kit.send(env.stranger, "settle", [recv, kit.deployment.token])
    assert _events(kit, s, "Settled")[0].args.amount == pending[0] - pending[1]
    assert await kit.token_balance(recv) == wallet_before + pending[0] - pending[1]
    s2 = await kit.send(env.stranger, "settle", [recv, kit.deployment.token])
    assert _events(kit, s2, "Settled") == ()


async def test_claim_by_receiver_side_and_payer_without_authorizer(env) -> None:
    kit = env.kit
    a = await env.funded(50_000)
    b = await env.funded(50_000, payer_authorizer=False)  # voucher signed by the payer itself
    rows = [kit.voucher_claim(a, 10_000, 10_000), kit.voucher_claim(b, 20_000, 15_000)]
    await kit.send(env.receiver_authorizer, "claim", [rows])
    assert await kit.channel_state(a) == (50_000, 10_000)
    assert await kit.channel_state(b) == (50_000, 15_000)
    await kit.send(env.receiver, "claim", [[kit.voucher_claim(b, 20_000, 20_000)]])
    assert await kit.channel_state(b) == (50_000, 20_000)


async def test_timed_withdrawal_with_claim_racing_the_delay(env) -> None:
    kit = env.kit
    ch = await env.funded(100_000)
    await kit.claim_with_signature(env.facilitator, [kit.voucher_claim(ch, 10_000, 10_000)], env.receiver_authorizer)
    r = await kit.send(env.payer, "initiateWithdraw", [ch.config, 90_000])
    ev = _events(kit, r, "WithdrawInitiated")[0].args
    assert ev.amount == 90_000
    await assert_reverts(kit, env.payer, "finalizeWithdraw", [ch.config], "WithdrawDelayNotElapsed")
    await assert_reverts(kit, env.payer, "initiateWithdraw", [ch.config, 1], "WithdrawalAlreadyPending")
    # During the delay the receiver claims what it earned; the withdrawal is capped to what is left.
    await env.advance_time(600)
    await kit.claim_with_signature(env.facilitator, [kit.voucher_claim(ch, 30_000, 30_000)], env.receiver_authorizer)
    await env.advance_time(301)
    payer_before = await kit.token_balance(ch.payer)
    f = await kit.send(env.payer, "finalizeWithdraw", [ch.config])
    assert _events(kit, f, "WithdrawFinalized")[0].args.amount == 70_000
    assert await kit.token_balance(ch.payer) == payer_before + 70_000
    assert await kit.channel_state(ch) == (30_000, 30_000)
    assert await kit.settlement.functions.pendingWithdrawals(ch.id).call() == [0, 0]


async def test_refund_and_refund_with_signature_advance_the_nonce(env) -> None:
    kit = env.kit
    ch = await env.funded(100_000)
    await kit.send(env.payer, "initiateWithdraw", [ch.config, 50_000])
    payer_before = await kit.token_balance(ch.payer)
    r = await kit.send(env.receiver_authorizer, "refund", [ch.config, 30_000])
    assert _events(kit, r, "Refunded")[0].args.amount == 30_000
    assert await kit.settlement.functions.refundNonce(ch.id).call() == 1
    # the pending withdrawal shrinks by the refund
    assert (await kit.settlement.functions.pendingWithdrawals(ch.id).call())[0] == 20_000
    sig = sign_hash(env.receiver_authorizer, kit.refund_digest(ch.id, 1, 500_000))
    assert await kit.settlement.functions.getRefundDigest(ch.id, 1, 500_000).call() == kit.refund_digest(ch.id, 1, 500_000)
    r2 = await kit.send(env.stranger, "refundWithSignature", [ch.config, 500_000, 1, sig])
    assert _events(kit, r2, "Refunded")[0].args.amount == 70_000  # capped to the unclaimed escrow
    assert [e.args.channelId for e in _events(kit, r2, "ChannelClosed")] == [ch.id]
    assert await kit.token_balance(ch.payer) == payer_before + 100_000
    assert await kit.settlement.functions.refundNonce(ch.id).call() == 2
    assert await kit.settlement.functions.pendingWithdrawals(ch.id).call() == [0, 0]
    assert await kit.channel_state(ch) == (0, 0)

    # Re-deposit into the drained channel: same id, a new ChannelCreated, claims work again.
    r3 = await kit.deposit(env.facilitator, ch, 40_000)
    assert [e.args.channelId for e in _events(kit, r3, "ChannelCreated")] == [ch.id]
    await kit.claim_with_signature(env.facilitator, [kit.voucher_claim(ch, 1_000, 1_000)], env.receiver_authorizer)
    assert await kit.channel_state(ch) == (40_000, 1_000)


async def test_multicall_batches_calls(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    recv = env.addr(env.receiver)
    calls = [
        kit.settlement.encode_abi("claim", [[kit.voucher_claim(ch, 2_000, 2_000)]]),
        kit.settlement.encode_abi("settle", [recv, kit.deployment.token]),
    ]
    before = await kit.token_balance(recv)
    await kit.send(env.receiver, "multicall", [calls])
    assert await kit.token_balance(recv) > before
