"""The chain helpers: anvil stop/restart with saved state, embedded time travel, registry, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from contract_helpers import revert_data, selector
from web3 import AsyncHTTPProvider, AsyncWeb3

from contracts import (
    DEV_KEYS,
    DEV_USDC_UNITS,
    Anvil,
    artifact,
    dev_accounts,
    embedded_chain,
    send_transaction,
)

_CLI = "import sys; from gateway.cli import main; sys.exit(main())"


async def _usdc(w3: AsyncWeb3, token: str, who: str) -> int:
    return await w3.eth.contract(address=token, abi=artifact("TestUSDC")["abi"]).functions.balanceOf(who).call()


async def test_anvil_restart_keeps_state(tmp_path) -> None:
    state = tmp_path / "chain.json"
    node = Anvil(state=state)
    node.start()
    try:
        w3 = AsyncWeb3(AsyncHTTPProvider(node.url))
        d = node.deployment
        a, b = dev_accounts()[6], dev_accounts()[7]
        token = w3.eth.contract(address=d.token, abi=artifact("TestUSDC")["abi"])
        await send_transaction(w3, DEV_KEYS[6], {"to": d.token, "data": token.encode_abi("transfer", [b, 123])})
        await w3.provider.disconnect()
        node.stop()
        assert not node.running and state.exists()
        node.start()  # same port, state reloaded, contracts not re-placed over it
        w3 = AsyncWeb3(AsyncHTTPProvider(node.url))
        assert await _usdc(w3, d.token, a) == DEV_USDC_UNITS - 123
        assert await _usdc(w3, d.token, b) == DEV_USDC_UNITS + 123
        assert await w3.eth.get_code(d.settlement) == bytes.fromhex(artifact("BatchSettlement")["deployedBytecode"][2:])
        await w3.provider.disconnect()
    finally:
        node.stop()


async def test_embedded_chain_funds_accounts_and_travels_in_time() -> None:
    chain = embedded_chain()
    w3, d = chain.w3, chain.deployment
    for a in dev_accounts():
        assert await _usdc(w3, d.token, a) == DEV_USDC_UNITS
        assert await w3.eth.get_balance(a) > 0
    t0 = (await w3.eth.get_block("latest"))["timestamp"]
    t1 = await chain.advance_time(3600)
    assert t1 == t0 + 3600 == (await w3.eth.get_block("latest"))["timestamp"]


async def test_model_registry_publishes_versions() -> None:
    chain = embedded_chain()
    w3, d = chain.w3, chain.deployment
    reg = w3.eth.contract(address=d.registry, abi=artifact("ModelRegistry")["abi"])
    h = b"\x42" * 32
    receipt = await send_transaction(w3, DEV_KEYS[0], {"to": d.registry, "data": reg.encode_abi(
        "publish", ["tf_efficientnet_lite0", "v1", h, "file://weights/v1.pth"])})
    ev = reg.events.ModelPublished().process_receipt(receipt)[0].args
    assert (ev.weightsHash, ev.model, ev.version) == (h, "tf_efficientnet_lite0", "v1")
    assert await reg.functions.hashOf("tf_efficientnet_lite0", "v1").call() == h
    assert (await reg.functions.get(h).call())[:3] == ["tf_efficientnet_lite0", "v1", "file://weights/v1.pth"]
    assert await reg.functions.count().call() == 1
    # only the owner publishes, and never twice
    for key, args, error in ((DEV_KEYS[1], ["m", "v2", b"\x43" * 32, ""], "NotOwner"),
                             (DEV_KEYS[0], ["m", "v9", h, ""], "AlreadyPublished(bytes32)")):
        assert selector(error) in await revert_data(None, key, "publish", args, to=reg)


def test_cli_deploy_on_anvil(tmp_path, anvil_node) -> None:
    key = tmp_path / "deployer.key"
    key.write_text(DEV_KEYS[8])
    out = subprocess.run([sys.executable, "-c", _CLI, "deploy", "--rpc", anvil_node.url, "--key-file",
                          str(key), "--test-token", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["chain_id"] == 31337 and data["token"] and data["settlement"] != anvil_node.deployment.settlement
