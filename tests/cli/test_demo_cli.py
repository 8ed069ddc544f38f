"""``paychan demo``: the README's first command runs to the end and what it prints is true."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import DEV_KEYS, artifact, embedded_chain
from gateway.cli import main
from gateway.demo import DEMO_PHOTOS, DemoOptions, run_demo

pytestmark = pytest.mark.slow


async def _usdc(chain, address: str) -> int:
    token = chain.w3.eth.contract(address=chain.deployment.token, abi=artifact("TestUSDC")["abi"])
    return int(await token.functions.balanceOf(address).call())


async def test_demo_summary_matches_the_chain(tmp_path: Path) -> None:
    """Balances, claims and the channel's remainder are read back from the chain the demo used."""
    from channels import Signer

    chain = embedded_chain()
    provider, payer = Signer(DEV_KEYS[0]).address, Signer(DEV_KEYS[1]).address
    provider0, payer0 = await _usdc(chain, provider), await _usdc(chain, payer)
    lines: list[str] = []

    s = await run_demo(DemoOptions(rounds=2, concurrency=4, workdir=tmp_path), lines.append, chain=chain)

    photos = len(list(DEMO_PHOTOS.glob("*.jpg")))
    assert s["requests"] == s["answered"] == 2 * photos
    assert s["charged"] == s["requests"] * s["price"]
    assert await _usdc(chain, provider) - provider0 == s["provider_received"] == s["charged"]
    # the payer deposited, then took back what it did not spend: it paid exactly the charges
    assert s["refunded"] == s["deposit"] - s["charged"]
    assert await _usdc(chain, payer) - payer0 == s["payer_balance_change"] == -s["charged"]
    settlement = chain.w3.eth.contract(address=chain.deployment.settlement,
                                       abi=artifact("BatchSettlement")["abi"])
    balance, total_claimed = (await settlement.functions.channels(bytes.fromhex(s["channel_id"][2:])).call())[:2]
    assert (balance, total_claimed) == (s["charged"], s["charged"])
    assert s["channel_remaining"] == 0
    # The printed story names each photo with its animal answer, its labels and its cost.
    assert sum("cost 0.001000 USDC" in line for line in lines) == s["requests"]
    assert any("chelsea.jpg" in line and " cat " in line for line in lines)
    assert {r["label"] for r in s["results"] if r["image"] == "chelsea.jpg"} <= {
        "tabby", "tiger cat", "Egyptian cat"}
    # The photos are animals and one thing that is not: each answer says which.
    statuses = {r["image"]: r["animal"]["status"] for r in s["results"]}
    assert list(statuses.values()).count("not_animal") == 1
    assert sorted(set(statuses.values())) == ["animal", "not_animal"]
    assert {r["animal"]["group"] for r in s["results"] if r["image"] == "chelsea.jpg"} == {"cat"}
    # The served version was published to the ModelRegistry by the provider key, under the
    # sha256 of the bundled weights file, in the transaction the demo printed.
    from channels.provider.registry import ModelRegistry
    from inference.weights import bundled_weights_path, file_digest

    pub = s["publication"]
    registry = ModelRegistry(chain.w3, chain.deployment.registry)
    weights_hash = bytes.fromhex(pub["weights_hash"].removeprefix("0x"))
    assert weights_hash == file_digest(bundled_weights_path("tf_efficientnet_lite0"))
    assert await registry.is_published(weights_hash)
    assert await registry.owner() == provider == pub["publisher"]
    receipt = await chain.w3.eth.get_transaction_receipt(pub["tx_hash"])
    assert receipt["status"] == 1 and receipt["to"] == chain.deployment.registry
    assert any(line.startswith("registry ") and pub["tx_hash"][:10] in line for line in lines)


def test_demo_command_prints_a_json_summary() -> None:
    """The installed command, as a newcomer runs it (one round to keep CI short)."""
    paychan = Path(sys.executable).with_name("paychan")  # the console script beside this Python
    out = subprocess.run([str(paychan), "demo", "--json", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout)
    assert s["requests"] == s["answered"] == len(list(DEMO_PHOTOS.glob("*.jpg")))
    assert s["provider_received"] == s["charged"] == s["requests"] * s["price"] > 0
    assert s["payer_balance_change"] == -s["charged"] and s["channel_remaining"] == 0
    # Unmodified x402 clients find the contracts: they sit at the canonical addresses.
    assert s["contracts"]["settlement"] == "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
    assert set(s["contracts"]) >= {"chain_id", "settlement", "collector", "token", "registry"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--photos", "/nonexistent"], "--photos: /nonexistent is not a folder"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--deposit", "10", "--price", "1000"], "--deposit must cover at least one image"),
    ],
)
def test_demo_refuses_bad_input_in_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_demo_refuses_a_folder_without_images(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    assert main(["demo", "--photos", str(tmp_path)]) == 2
    assert "no .jpg/.png/.webp images" in capsys.readouterr().err
