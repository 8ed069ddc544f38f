"""Unmodified x402 reference client payloads work against our contracts (both chains)."""

from __future__ import annotations

from eth_account import Account
from x402.mechanisms.evm.batch_settlement.client.eip3009 import (
    create_batch_settlement_eip3009_deposit_payload,
)
from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_collector_data
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas.payments import PaymentRequirements


async def test_reference_client_deposit_and_voucher_are_accepted(env) -> None:
    kit = env.kit
    payer = Account.from_key(env.payer)
    cfg = ChannelConfig(payer.address, "0x0000000000000000000000000000000000000000", env.addr(env.receiver),
                        env.addr(env.receiver_authorizer), kit.deployment.token, 900, "0x" + "00" * 31 + "2a")
    req = PaymentRequirements(scheme="batch-settlement", network=f"eip155:{kit.chain_id}", asset=kit.deployment.token,
                              amount="1000", pay_to=env.addr(env.receiver), max_timeout_seconds=365 * 86400,
                              extra={"name": "Test USDC", "version": "2"})
    payload = create_batch_settlement_eip3009_deposit_payload(EthAccountSigner(payer), req, cfg, 500_000, 1_000)
    auth = payload.deposit.authorization.erc3009_authorization
    data = build_erc3009_collector_data(auth.valid_after, auth.valid_before, auth.salt, auth.signature)
    config = (cfg.payer, cfg.payer_authorizer, cfg.receiver, cfg.receiver_authorizer, cfg.token, 900,
              bytes.fromhex(cfg.salt[2:]))
    channel_id = kit.channel_id(config)
    if kit.deployment.settlement.lower() == "0x4020074e9df2ce1dee5a9c1b5c3f541d02a10003":
        assert payload.voucher.channel_id.lower() == "0x" + channel_id.hex()  # x402 computes the same id
    await kit.send(env.facilitator, "deposit", [config, 500_000, kit.deployment.collector, data])
    assert await kit.settlement.functions.channels(channel_id).call() == [500_000, 0]
    row = ((config, int(payload.voucher.max_claimable_amount)), bytes.fromhex(payload.voucher.signature[2:]), 1_000)
    await kit.send(env.receiver_authorizer, "claim", [[row]])
    assert await kit.settlement.functions.channels(channel_id).call() == [500_000, 1_000]
