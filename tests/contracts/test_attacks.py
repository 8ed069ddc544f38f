"""The attack list of issue 2, on the embedded chain and on anvil (``env`` is parametrized)."""

from __future__ import annotations

from contract_helpers import assert_reverts

from contracts import artifact, deploy_contract, send_transaction
from contracts.testkit import SettlementKit, domain_separator, sign_hash, typed_hash

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _batch(kit, rows, key):
    return [rows, sign_hash(key, kit.claim_batch_digest(rows))]


async def test_voucher_from_the_wrong_key(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    row = kit.voucher_claim(ch, 1_000, 1_000, key=env.stranger)
    await assert_reverts(kit, env.facilitator, "claimWithSignature", _batch(kit, [row], env.receiver_authorizer),
                         "InvalidSignature")
    # with payerAuthorizer set, even the payer's own key is the wrong key
    row = kit.voucher_claim(ch, 1_000, 1_000, key=env.payer)
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[row]], "InvalidSignature")
    # without payerAuthorizer the payer signs; another key fails the ECDSA and the ERC-1271 fallback
    own = await env.funded(10_000, payer_authorizer=False)
    row = kit.voucher_claim(own, 1_000, 1_000, key=env.stranger)
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[row]], "InvalidSignature")


async def test_voucher_for_another_channel_contract_or_chain(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    other = await env.funded(10_000)
    # signed for `other`, presented for `ch`
    sig = sign_hash(env.payer_authorizer, kit.voucher_digest(other.id, 1_000))
    row = ((ch.config, 1_000), sig, 1_000)
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[row]], "InvalidSignature")
    # same channel config, but the domain of another contract or another chain
    for chain_id, contract in ((kit.chain_id, "0x" + "12" * 20), (kit.chain_id + 1, kit.deployment.settlement)):
        ds = domain_separator("x402 Batch Settlement", "1", chain_id, kit.w3.to_checksum_address(contract))
        foreign = SettlementKit.__new__(SettlementKit)
        foreign.ds = ds
        cid = foreign.channel_id(ch.config)
        sig = sign_hash(env.payer_authorizer, typed_hash(ds, _voucher_struct(cid, 1_000)))
        row = ((ch.config, 1_000), sig, 1_000)
        await assert_reverts(kit, env.receiver_authorizer, "claim", [[row]], "InvalidSignature")


def _voucher_struct(cid: bytes, amount: int) -> bytes:
    from eth_abi import encode
    from eth_utils import keccak

    from contracts.testkit import VOUCHER_TYPEHASH

    return keccak(encode(["bytes32", "bytes32", "uint128"], [VOUCHER_TYPEHASH, cid, amount]))


async def test_high_s_signature_is_rejected(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    sig = sign_hash(env.payer_authorizer, kit.voucher_digest(ch.id, 1_000))
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    malleable = r + (N - s).to_bytes(32, "big") + bytes([55 - v])  # the same signature, mirrored s
    row = ((ch.config, 1_000), malleable, 1_000)
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[row]], "InvalidSignature")
    # and for the batch signature too
    rows = [kit.voucher_claim(ch, 1_000, 1_000)]
    good = sign_hash(env.receiver_authorizer, kit.claim_batch_digest(rows))
    bad = good[:32] + (N - int.from_bytes(good[32:64], "big")).to_bytes(32, "big") + bytes([55 - good[64]])
    await assert_reverts(kit, env.facilitator, "claimWithSignature", [rows, bad], "InvalidSignature")


async def test_replayed_refund_signature(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    sig = sign_hash(env.receiver_authorizer, kit.refund_digest(ch.id, 0, 1_000))
    await kit.send(env.stranger, "refundWithSignature", [ch.config, 1_000, 0, sig])
    await assert_reverts(kit, env.stranger, "refundWithSignature", [ch.config, 1_000, 0, sig], "InvalidRefundNonce")
    await assert_reverts(kit, env.stranger, "refundWithSignature", [ch.config, 1_000, 1, sig], "InvalidSignature")
    # a signature from anyone but the receiverAuthorizer
    forged = sign_hash(env.payer, kit.refund_digest(ch.id, 1, 1_000))
    await assert_reverts(kit, env.stranger, "refundWithSignature", [ch.config, 1_000, 1, forged], "InvalidSignature")


async def test_claim_above_balance_ceiling_or_below_total(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[kit.voucher_claim(ch, 20_000, 10_001)]],
                         "ClaimExceedsBalance")
    await assert_reverts(kit, env.receiver_authorizer, "claim", [[kit.voucher_claim(ch, 5_000, 5_001)]],
                         "ClaimExceedsCeiling")
    await kit.send(env.receiver_authorizer, "claim", [[kit.voucher_claim(ch, 6_000, 6_000)]])
    # below (or at) totalClaimed: a no-op, never a refund of claimed funds
    receipt = await kit.send(env.receiver_authorizer, "claim", [[kit.voucher_claim(ch, 6_000, 2_000)]])
    assert receipt["status"] == 1
    assert await kit.channel_state(ch) == (10_000, 6_000)


async def test_unauthorized_claimer_and_batch_signer(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    row = kit.voucher_claim(ch, 1_000, 1_000)
    for key in (env.stranger, env.payer, env.facilitator):
        await assert_reverts(kit, key, "claim", [[row]], "NotAuthorizedToClaim")
    # claimWithSignature: batch signed by someone else than the receiverAuthorizer
    await assert_reverts(kit, env.facilitator, "claimWithSignature", _batch(kit, [row], env.stranger),
                         "InvalidSignature")
    # rows of different receiverAuthorizers cannot share one batch signature
    foreign = await env.funded(10_000, receiver_authorizer=env.addr(env.stranger))
    rows = [row, kit.voucher_claim(foreign, 1_000, 1_000)]
    await assert_reverts(kit, env.facilitator, "claimWithSignature", _batch(kit, rows, env.receiver_authorizer),
                         "NotReceiverAuthorizer")
    await assert_reverts(kit, env.facilitator, "claimWithSignature", [[], b""], "EmptyBatch")
    # nothing moved
    assert await kit.channel_state(ch) == (10_000, 0)


async def test_withdraw_and_refund_permissions(env) -> None:
    kit = env.kit
    ch = await env.funded(10_000)
    await assert_reverts(kit, env.stranger, "initiateWithdraw", [ch.config, 1_000], "InvalidChannel")
    await assert_reverts(kit, env.payer, "initiateWithdraw", [ch.config, 10_001], "WithdrawAmountExceedsAvailable")
    await assert_reverts(kit, env.payer, "finalizeWithdraw", [ch.config], "WithdrawalNotPending")
    await kit.send(env.payer_authorizer, "initiateWithdraw", [ch.config, 1_000])
    await assert_reverts(kit, env.payer, "finalizeWithdraw", [ch.config], "WithdrawDelayNotElapsed")
    await assert_reverts(kit, env.stranger, "finalizeWithdraw", [ch.config], "NotAuthorizedToFinalizeWithdraw")
    await assert_reverts(kit, env.payer, "refund", [ch.config, 1_000], "NotAuthorizedToRefund")
    await assert_reverts(kit, env.receiver, "refund", [ch.config, 0], "ZeroRefund")


async def test_deposit_checks(env) -> None:
    kit = env.kit
    ch = env.channel()
    data = kit.collector_data(ch, 1_000)
    # the authorization is bound to amount and channel: a different amount or channel fails in the token
    await assert_reverts(kit, env.facilitator, "deposit", [ch.config, 2_000, kit.deployment.collector, data],
                         "InvalidSignature")
    other = env.channel()
    await assert_reverts(kit, env.facilitator, "deposit", [other.config, 1_000, kit.deployment.collector, data],
                         "InvalidSignature")
    bad_delay = env.channel(withdraw_delay=899)
    await assert_reverts(kit, env.facilitator, "deposit",
                         [bad_delay.config, 1_000, kit.deployment.collector, kit.collector_data(bad_delay, 1_000)],
                         "WithdrawDelayOutOfRange")
    # the collector only answers the settlement: a relayer cannot redirect an observed authorization
    collector = kit.w3.eth.contract(address=kit.deployment.collector, abi=artifact("ERC3009DepositCollector")["abi"])
    await assert_reverts(kit, env.stranger, "collect", [ch.payer, kit.deployment.token, 1_000, ch.id, data],
                         "OnlyX402BatchSettlement", to=collector)
    await kit.deposit(env.facilitator, ch, 1_000, collector_data=data)
    # the same authorization cannot be used twice
    await assert_reverts(kit, env.facilitator, "deposit", [ch.config, 1_000, kit.deployment.collector, data],
                         "AuthorizationUsedOrCanceled")


async def test_reentrancy_through_a_malicious_token(env) -> None:
    kit = env.kit
    deployer = env.facilitator
    token = await deploy_contract(kit.w3, deployer, "ReentrantToken")
    evil = kit.w3.eth.contract(address=token, abi=artifact("ReentrantToken")["abi"])
    await send_transaction(kit.w3, deployer, {"to": token, "data": evil.encode_abi("mint", [env.addr(env.payer), 10**9])})
    ch = env.channel(token=token)
    await kit.deposit(env.facilitator, ch, 100_000, collector_data=kit.collector_data(ch, 100_000))
    await kit.send(env.receiver_authorizer, "claim", [[kit.voucher_claim(ch, 40_000, 40_000)]])
    recv = env.addr(env.receiver)

    # settle: the token's transfer calls settle again
    reenter = kit.settlement.encode_abi("settle", [recv, token])
    await send_transaction(kit.w3, deployer, {"to": token, "data": evil.encode_abi("arm", [kit.deployment.settlement, reenter])})
    await kit.send(env.stranger, "settle", [recv, token])
    assert await evil.functions.reentryAttempted().call()
    assert not await evil.functions.reentrySucceeded().call()
    guard = bytes.fromhex("3ee5aeb5")  # ReentrancyGuardReentrantCall()
    assert (await evil.functions.reentryResult().call())[:4] == guard
    assert await evil.functions.balanceOf(recv).call() == 40_000

    # refund: the token's transfer tries a second refund
    reenter = kit.settlement.encode_abi("refund", [ch.config, 60_000])
    await send_transaction(kit.w3, deployer, {"to": token, "data": evil.encode_abi("arm", [kit.deployment.settlement, reenter])})
    payer_before = await evil.functions.balanceOf(ch.payer).call()
    await kit.send(env.receiver_authorizer, "refund", [ch.config, 30_000])
    assert not await evil.functions.reentrySucceeded().call()
    assert await evil.functions.balanceOf(ch.payer).call() == payer_before + 30_000
    assert await kit.channel_state(ch) == (70_000, 40_000)


async def test_collector_that_does_not_deliver_and_malformed_collector_data(env) -> None:
    """The settlement trusts no collector: its own token balance must grow by exactly the deposit."""
    kit = env.kit
    ch = env.channel()
    data = kit.collector_data(ch, 1_000)
    # an address without code "collects" nothing: the balance check fails, nothing is credited
    await assert_reverts(kit, env.facilitator, "deposit", [ch.config, 1_000, env.addr(env.stranger), data],
                         "DepositCollectionFailed")
    # collectorData that is not abi.encode(uint256, uint256, uint256, bytes) is refused by the collector
    for bad in (data[:0x60], data[:0x80] + (10**6).to_bytes(32, "big"), data[:-40]):
        await assert_reverts(kit, env.facilitator, "deposit", [ch.config, 1_000, kit.deployment.collector, bad],
                             "InvalidCollectorData")
    assert await kit.channel_state(ch) == (0, 0)
    await kit.deposit(env.facilitator, ch, 1_000, collector_data=data)
    assert await kit.channel_state(ch) == (1_000, 0)


async def test_token_rejects_authorizations_that_recover_to_nothing(env) -> None:
    """TestUSDC's assembly ecrecover yields zero for bad signatures; that must never pass for from = 0."""
    kit = env.kit
    zero = "0x0000000000000000000000000000000000000000"
    to = env.addr(env.receiver)
    for sig in (b"\x00" * 65, b"\x11" * 64 + b"\x1d", b"\x11" * 32 + N.to_bytes(32, "big") + b"\x1b"):
        await assert_reverts(kit, env.stranger, "transferWithAuthorization",
                             [zero, to, 0, 0, 2**40, b"\x01" * 32, sig], "InvalidSignature", to=kit.token)
    # high-s twin of a valid signature: rejected as OpenZeppelin ECDSA does
    ch = env.channel()
    good = kit.collector_data(ch, 1_000)
    from eth_abi import decode

    va, vb, salt, sig = decode(["uint256", "uint256", "uint256", "bytes"], good)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (N - s).to_bytes(32, "big") + bytes([55 - v])
    bad = kit.collector_data(ch, 1_000, salt=salt, valid_after=va, valid_before=vb)[:-96] + twin + b"\x00" * 31
    await assert_reverts(kit, env.facilitator, "deposit", [ch.config, 1_000, kit.deployment.collector, bad],
                         "InvalidSignature")
