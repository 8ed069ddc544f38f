"""Helpers for the chain-sync tests: the provider's ChainClient over a SQLite ledger store, and
helpers that open channels (real ERC-3009 deposits) and charge them
through the ledger exactly as the gateway does."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_typing import HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3

import channels
from channels.protocol import AcceptInput
from channels.provider import ChainClient, Facilitator, ProviderConfig, TxPolicy, open_provider
from contracts import DEV_KEYS, Anvil, send_transaction
from gateway.chain_setup import close_web3

PROVIDER_KEY = DEV_KEYS[0]  # anvil's well-known TEST key 0: receiver, receiverAuthorizer, gas payer
PAYER_KEYS = DEV_KEYS[1:4]  # anvil TEST keys
PRICE = 1_000
WITHDRAW_DELAY = 900
TOKEN_NAME, TOKEN_VERSION = "Test USDC", "2"

_salts = itertools.count(int(time.time() * 1000) % 10**9)


def rpc(url: str, method: str, params: list[Any]) -> Any:
    import json
    import urllib.request

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.loads(resp.read())
    if "error" in out:
        raise RuntimeError(f"{method}: {out['error']}")
    return out.get("result")


@dataclass
class ChainEnv:
    """One anvil, the provider's client/store/facilitator, and payer helpers."""

    node: Anvil
    w3: AsyncWeb3[Any]
    store: Any
    chain: ChainClient
    facilitator: Facilitator
    store_url: str
    tmp: Path
    provider: channels.Signer = field(default_factory=lambda: channels.Signer(PROVIDER_KEY))

    @property
    def deployment(self) -> Any:
        return self.node.deployment

    async def close(self) -> None:
        """Close the store and the web3 provider's HTTP session (an unclosed one is reported
        as a ResourceWarning, in whichever later test the garbage collector finds it)."""
        await self.store.close()
        await close_web3(self.w3)

    def requirements(self, *, price: int = PRICE) -> channels.PaymentRequirements:
        d = self.deployment
        extra = channels.protocol.BatchExtra(
            self.provider.address_bytes, WITHDRAW_DELAY, TOKEN_NAME, TOKEN_VERSION
        )
        return channels.PaymentRequirements(
            f"eip155:{d.chain_id}",
            channels.protocol.to_address(d.token),
            price,
            self.provider.address_bytes,
            60,
            extra,
        )

    def config(
        self, payer_key: str = PAYER_KEYS[0], salt: int | None = None
    ) -> channels.ChannelConfig:
        payer = channels.Signer(payer_key)
        return channels.ChannelConfig(
            payer.address_bytes,
            payer.address_bytes,
            self.provider.address_bytes,
            self.provider.address_bytes,
            channels.protocol.to_address(self.deployment.token),
            WITHDRAW_DELAY,
            (salt if salt is not None else next(_salts)).to_bytes(32, "big"),
        )

    def voucher(
        self, payer_key: str, config: channels.ChannelConfig, ceiling: int
    ) -> channels.protocol.Voucher:
        d = self.deployment
        cid = channels.protocol.channel_id(config, d.chain_id, d.settlement)
        sig = channels.Signer(payer_key).sign_digest(
            channels.voucher_digest(d.chain_id, d.settlement, cid, ceiling)
        )
        return channels.protocol.Voucher(cid, ceiling, sig)

    def deposit_payload(
        self, payer_key: str, config: channels.ChannelConfig, amount: int, ceiling: int = PRICE
    ) -> channels.protocol.DepositPayload:
        d = self.deployment
        voucher = self.voucher(payer_key, config, ceiling)
        salt = os.urandom(32)
        valid_before = (
            int(time.time()) + 10 * 365 * 86400
        )  # anvil's clock runs ahead in these tests
        digest = channels.protocol.receive_with_authorization_digest(
            d.chain_id,
            d.token,
            TOKEN_NAME,
            TOKEN_VERSION,
            from_=config.payer,
            to=d.collector,
            value=amount,
            valid_after=0,
            valid_before=valid_before,
            nonce=channels.protocol.erc3009_deposit_nonce(voucher.channel_id, salt),
        )
        auth = channels.protocol.Erc3009Authorization(
            0, valid_before, salt, channels.Signer(payer_key).sign_digest(digest)
        )
        return channels.protocol.DepositPayload(config, voucher, channels.protocol.Deposit(amount, auth))

    async def open_channel(
        self, amount: int = 1_000_000, payer_key: str = PAYER_KEYS[0]
    ) -> channels.ChannelConfig:
        """A new channel funded by a real deposit submitted through the facilitator."""
        config = self.config(payer_key)
        await self.facilitator.submit_deposit(
            self.deposit_payload(payer_key, config, amount), self.requirements()
        )
        return config

    def cid(self, config: channels.ChannelConfig) -> bytes:
        return channels.protocol.channel_id(config, self.deployment.chain_id, self.deployment.settlement)

    async def charge(
        self,
        config: channels.ChannelConfig,
        n: int,
        *,
        price: int = PRICE,
        payer_key: str = PAYER_KEYS[0],
        store: Any = None,
    ) -> int:
        """n paid requests as the gateway runs them (voucher -> accept -> commit); returns charged total."""
        store = store or self.store
        cid = self.cid(config)
        st = await store.get(cid)
        charged: int = st.charged
        for _ in range(n):
            v = self.voucher(payer_key, config, charged + price)
            req = os.urandom(8).hex()
            got = await store.accept(
                AcceptInput(
                    cid, v.max_claimable_amount, v.signature, price, req, time.time(), config=config
                )
            )
            assert isinstance(got, channels.protocol.Reservation), got
            charged = (await store.commit(cid, req, price, time.time())).cumulative
        return charged

    async def token_balance(self, address: str | bytes) -> int:
        return await self.chain.token_balance(
            self.deployment.token, channels.protocol.checksum_address(address)
        )

    async def payer_send(self, payer_key: str, fn: str, *args: Any) -> Any:
        data = self.chain.encode(fn, *args)
        return await send_transaction(
            self.w3,
            payer_key,
            {"to": self.deployment.settlement, "data": HexStr("0x" + data.hex())},
            what=fn,
        )


async def make_env(
    node: Anvil, tmp: Path, *, policy: TxPolicy | None = None, store_url: str | None = None
) -> ChainEnv:
    """One gateway's chain-side objects (default store: a SQLite file in `tmp`)."""
    w3 = AsyncWeb3(AsyncHTTPProvider(node.url, request_kwargs={"timeout": 10}))
    url = store_url or f"sqlite:///{tmp / 'ledger.sqlite3'}"
    provider = await open_provider(w3, provider_config(node.deployment, url, policy=policy))
    return ChainEnv(node, w3, provider.store, provider.chain, provider.facilitator, url, tmp)


def provider_config(
    d: Any, store_url: str, *, policy: TxPolicy | None = None, **options: Any
) -> ProviderConfig:
    """The provider side of these tests on deployment `d` (PROVIDER_KEY sends and signs)."""
    return ProviderConfig(
        key=PROVIDER_KEY,
        store=store_url,
        token=d.token,
        settlement=d.settlement,
        collector=d.collector,
        tx_policy=policy or TxPolicy(poll_s=0.05, bump_after_s=30),
        **options,
    )

