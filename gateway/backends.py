"""The gateway's bindings to what other packages own: chain access, the channel ledger and its
stores, the in-process facilitator (deposits) and the settler (claims and settles).

Everything the payment gate needs from them goes through this module, so the gate itself
stays about HTTP and money rules::

    chain = await connect_chain(config)          # AsyncWeb3 over config.rpc_url
    name, version = await token_domain(chain, config.token)
"""

from __future__ import annotations

from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from gateway.config import GatewayConfig

__all__ = ["chain_id", "close_chain", "connect_chain", "ping_chain", "token_domain"]

_DOMAIN_ABI = [
    {"type": "function", "name": "name", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "version", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "eip712Domain", "stateMutability": "view", "inputs": [],
     "outputs": [{"name": "fields", "type": "bytes1"}, {"name": "name", "type": "string"},
                 {"name": "version", "type": "string"}, {"name": "chainId", "type": "uint256"},
                 {"name": "verifyingContract", "type": "address"}, {"name": "salt", "type": "bytes32"},
                 {"name": "extensions", "type": "uint256[]"}]},
]


async def connect_chain(config: GatewayConfig) -> AsyncWeb3:
    """An AsyncWeb3 over ``config.rpc_url`` (checked to answer)."""
    w3 = AsyncWeb3(AsyncHTTPProvider(config.rpc_url, request_kwargs={"timeout": 30}))
    try:
        await w3.eth.chain_id
    except Exception as exc:  # any transport failure: say which URL and how to fix it
        await close_chain(w3)
        raise ConnectionError(
            f"rpc_url: cannot reach {config.rpc_url} ({type(exc).__name__}: {exc}); "
            "start the chain (paychan devnet) or pass --rpc URL"
        ) from exc
    return w3


async def chain_id(w3: AsyncWeb3) -> int:
    return int(await w3.eth.chain_id)


async def token_domain(w3: AsyncWeb3, token: str) -> tuple[str, str]:
    """The token's EIP-712 domain (name, version): ERC-5267 ``eip712Domain()``, else name()/version()."""
    contract = w3.eth.contract(address=AsyncWeb3.to_checksum_address(token), abi=_DOMAIN_ABI)
    try:
        domain = await contract.functions.eip712Domain().call()
        return str(domain[1]), str(domain[2])
    except Exception:  # not ERC-5267: fall back to the USDC-style getters
        name = await contract.functions.name().call()
        try:
            version = await contract.functions.version().call()
        except Exception:
            version = "1"
        return str(name), str(version)


async def ping_chain(w3: Any) -> bool:
    await w3.eth.block_number
    return True


async def close_chain(w3: Any) -> None:
    provider = getattr(w3, "provider", None)
    disconnect = getattr(provider, "disconnect", None)
    if disconnect is not None:
        await disconnect()


# --------------------------------------------------------------------------- the ledger store


async def open_store(config: GatewayConfig, terms: Any) -> Any:
    """The channel ledger store that ``config.store`` names, namespaced by chain and contract."""
    from channels.ledger import LedgerPolicy
    from channels.store import open_store as _open

    url = "memory://" if config.store == "memory" else config.store
    # The ledger's own per-channel cap matches ours; a hold outlives the slowest answer.
    policy = LedgerPolicy(
        reservation_timeout_s=max(120.0, 4 * config.request_timeout_s),
        max_in_flight=config.max_in_flight_per_channel,
    )
    return await _open(url, chain_id=terms.chain_id, contract=terms.settlement, policy=policy)


async def accept(store: Any, inp: Any) -> Any:
    return await store.accept(inp)


async def release(store: Any, channel_id: bytes, request_id: str, *, idempotency_key: str | None = None) -> None:
    await store.release(channel_id, request_id, idempotency_key=idempotency_key)


async def apply_fact(store: Any, channel_id: bytes, fact: Any, *, config: Any = None) -> Any:
    return await store.apply_fact(channel_id, fact, config=config)


async def begin_idempotent(store: Any, channel_id: bytes, key: str, request_id: str) -> Any:
    import time

    return await store.begin_idempotent(channel_id, key, request_id, time.time())


# --------------------------------------------------------------------------- deposits and settlement
# Interim bridge (until chain-sync's in-process facilitator and settler are mounted): the
# same on-chain calls, made with the receiver-authorizer key over the gateway's AsyncWeb3.


class _Facilitator:
    """Submits deposits and claims/settles with the gateway's own key (pays the gas)."""

    def __init__(self, w3: AsyncWeb3, key: str, terms: Any, collector: str) -> None:
        from contracts import artifact

        self.w3, self.key, self.terms, self.collector = w3, key, terms, AsyncWeb3.to_checksum_address(collector)
        self.settlement = w3.eth.contract(address=terms.settlement, abi=artifact("BatchSettlement")["abi"])
        import asyncio

        self.lock = asyncio.Lock()  # one sender key: serialize nonces


async def open_facilitator(config: GatewayConfig, chain: Any, signer: Any, terms: Any) -> Any:
    return _Facilitator(chain, config.key, terms, config.collector)


def _config_tuple(config: Any) -> tuple:
    from channels.eip712 import checksum_address

    return (checksum_address(config.payer), checksum_address(config.payer_authorizer),
            checksum_address(config.receiver), checksum_address(config.receiver_authorizer),
            checksum_address(config.token), config.withdraw_delay, config.salt)


async def submit_deposit(facilitator: _Facilitator, payload: Any, terms: Any) -> tuple[str, int]:
    """Submit a deposit payload's ERC-3009 deposit; returns (tx hash, channel balance after)."""
    from eth_abi import encode

    from channels.errors import ErrorCode, PaymentError
    from contracts import TransactionFailed, send_transaction

    auth = payload.deposit.authorization
    data = encode(["uint256", "uint256", "uint256", "bytes"],
                  [auth.valid_after, auth.valid_before, int.from_bytes(auth.salt, "big"), auth.signature])
    call = facilitator.settlement.functions.deposit(
        _config_tuple(payload.channel_config), payload.deposit.amount, facilitator.collector, data)
    try:
        async with facilitator.lock:
            tx = await call.build_transaction({"from": _address_of(facilitator.key), "gas": 400_000})
            receipt = await send_transaction(facilitator.w3, facilitator.key,
                                             {"to": tx["to"], "data": tx["data"]}, what="deposit", gas=400_000)
    except TransactionFailed as exc:
        raise PaymentError(ErrorCode.DEPOSIT_TRANSACTION_FAILED, "payload.deposit",
                           f"the deposit reverted on-chain ({exc})") from None
    balance = (await facilitator.settlement.functions.channels(payload.voucher.channel_id).call())[0]
    return "0x" + bytes(receipt["transactionHash"]).hex(), int(balance)


def _address_of(key: str) -> str:
    from channels.signing import Signer

    return Signer(key).address


async def settle_now(gate: Any) -> dict:
    """Claim every channel's charges (one claimWithSignature) and settle to the receiver."""
    from web3.logs import DISCARD

    from channels.eip712 import ClaimEntry, checksum_address, claim_batch_digest
    from channels.ledger import Claimed
    from channels.signing import Signer
    from contracts import send_transaction

    fac: _Facilitator = gate.facilitator
    targets = await gate.store.claim_targets()
    out: dict = {"claimed": 0, "channels": 0, "settled": None}
    if targets:
        rows = [((_config_tuple(t.config), t.max_claimable), t.signature, t.total_claimed) for t in targets]
        digest = claim_batch_digest(gate.terms.chain_id, gate.terms.settlement,
                                    [ClaimEntry(t.channel_id, t.max_claimable, t.total_claimed) for t in targets])
        sig = Signer(fac.key).sign_digest(digest)
        call = fac.settlement.functions.claimWithSignature(rows, sig)
        async with fac.lock:
            tx = await call.build_transaction({"from": _address_of(fac.key), "gas": 2_000_000})
            await send_transaction(fac.w3, fac.key, {"to": tx["to"], "data": tx["data"]},
                                   what="claimWithSignature", gas=2_000_000)
        for t in targets:
            await gate.store.apply_fact(t.channel_id, Claimed(t.total_claimed))
            out["claimed"] += t.unclaimed
        out["channels"] = len(targets)
        gate.metrics.claimed.inc((), out["claimed"])
    call = fac.settlement.functions.settle(checksum_address(gate.terms.receiver), checksum_address(gate.terms.token))
    async with fac.lock:
        tx = await call.build_transaction({"from": _address_of(fac.key), "gas": 300_000})
        receipt = await send_transaction(fac.w3, fac.key, {"to": tx["to"], "data": tx["data"]},
                                         what="settle", gas=300_000)
    out["settled"] = "0x" + bytes(receipt["transactionHash"]).hex()
    out["settled_amount"] = sum(int(ev["args"]["amount"]) for ev in
                                fac.settlement.events.Settled().process_receipt(receipt, errors=DISCARD))
    gate.metrics.settled.inc((), out["settled_amount"])
    return out


async def sync_channel(gate: Any, payment: Any) -> bool:
    """Mirror a channel's on-chain (balance, totalClaimed) into the store; False if unfunded."""
    from channels.ledger import Synced

    fac: _Facilitator = gate.facilitator
    balance, total_claimed = (await fac.settlement.functions.channels(payment.channel_id).call())[:2]
    if not balance:
        return False
    await gate.store.apply_fact(payment.channel_id, Synced(int(balance), int(total_claimed)),
                                config=payment.config)
    return True


async def start_settler(gate: Any) -> Any:
    """Claim and settle every ``claim_interval_s`` (and expire stale holds) in the background."""
    import asyncio
    import logging
    import time

    log = logging.getLogger("paychan.settler")

    async def loop() -> None:
        while True:
            await asyncio.sleep(gate.config.claim_interval_s)
            try:
                await gate.store.expire(time.time())
                if await gate.store.claim_targets():
                    result = await settle_now(gate)
                    log.info("claimed %s on %s channel(s), settle tx %s",
                             result["claimed"], result["channels"], result["settled"])
            except Exception:  # a failed round is retried next interval; never kill the loop
                log.exception("settlement round failed; retrying in %ss", gate.config.claim_interval_s)

    return asyncio.get_running_loop().create_task(loop(), name="paychan-settler")


async def stop_settler(task: Any) -> None:
    import asyncio

    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def close(kind: str, resource: Any) -> None:
    if kind == "chain":
        await close_chain(resource)
    elif kind == "store":
        await resource.flush()
        await resource.close()
