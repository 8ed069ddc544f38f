"""Fixtures for the contract tests: every lifecycle/attack test runs on the embedded chain and on anvil."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from contracts import DEV_KEYS, Anvil, embedded_chain
from contracts.testkit import Channel, SettlementKit

_salts = itertools.count(1)


@pytest.fixture(scope="session")
def anvil_node() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@dataclass
class Env:
    """One chain under test: the kit, the roles, and time travel."""

    kit: SettlementKit
    advance_time: Callable[[int], Awaitable[int]]
    name: str
    facilitator: str = DEV_KEYS[0]
    payer: str = DEV_KEYS[1]
    payer_authorizer: str = DEV_KEYS[2]
    receiver: str = DEV_KEYS[3]
    receiver_authorizer: str = DEV_KEYS[4]
    stranger: str = DEV_KEYS[5]

    def addr(self, key: str) -> str:
        return Account.from_key(key).address

    def channel(self, *, payer_authorizer: bool = True, receiver: str | None = None, **kw: Any) -> Channel:
        """A fresh channel (unique salt) between the env's roles."""
        return self.kit.channel(
            payer_key=kw.pop("payer_key", self.payer),
            payer_authorizer_key=self.payer_authorizer if payer_authorizer else None,
            receiver=self.addr(receiver or self.receiver),
            receiver_authorizer=kw.pop("receiver_authorizer", self.addr(self.receiver_authorizer)),
            salt=next(_salts).to_bytes(32, "big"),
            **kw,
        )

    async def funded(self, amount: int = 1_000_000, **kw: Any) -> Channel:
        ch = self.channel(**kw)
        await self.kit.deposit(self.facilitator, ch, amount)
        return ch


@pytest.fixture(params=["embedded", "anvil"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "embedded":
        chain = embedded_chain()
        yield Env(SettlementKit(chain.w3, chain.deployment), chain.advance_time, "embedded")
        return
    node: Anvil = request.getfixturevalue("anvil_node")
    w3 = AsyncWeb3(AsyncHTTPProvider(node.url))

    async def advance(seconds: int) -> int:
        await w3.provider.make_request("evm_increaseTime", [int(seconds)])
        await w3.provider.make_request("evm_mine", [])
        return int((await w3.eth.get_block("latest"))["timestamp"])

    yield Env(SettlementKit(w3, node.deployment), advance, "anvil")
    await w3.provider.disconnect()
