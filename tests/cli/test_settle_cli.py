"""`paychan settle`: a forced claim + settle over a stopped gateway's ledger, on anvil after
real paid requests; one-line errors with the documented exit codes on bad input and on an
unreachable RPC.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

import channels
from channels.payer import Payer
from contracts import DEV_KEYS, Anvil
from gateway.cli import main
from gateway.cli._common import EXIT_UNREACHABLE, EXIT_USAGE
from gateway.config import GatewayConfig

PRICE = 1000


async def _serve_paid_requests(config: GatewayConfig, payer: Payer, n: int, jpeg: bytes) -> bytes:
    """Run the gateway (null model) on a real socket, buy `n` answers, stop it; the channel id."""
    from inference import Classifier
    from tests.gateway.serving import serve

    from gateway.app import create_app

    clf = Classifier.null()
    await clf.start()
    try:
        async with serve(create_app(config, classifier=clf)) as url, channels.PaymentClient(payer) as client:
            answers = [await client.post(url + "/v1/classify", data=jpeg,
                                         headers={"Content-Type": "image/jpeg"}) for _ in range(n)]
            assert [a.status for a in answers] == [200] * n, answers[0].body[:300]
            return answers[0].payment.channel_id
    finally:
        await clf.close()


async def _token_balance(anvil: Anvil, address: str) -> int:
    from contracts import artifact
    from gateway.payments import close_web3, connect_rpc

    w3 = await connect_rpc(anvil.url)  # its own connection: each asyncio.run has its own loop
    try:
        token = w3.eth.contract(address=anvil.deployment.token, abi=artifact("TestUSDC")["abi"])
        return int(await token.functions.balanceOf(address).call())
    finally:
        await close_web3(w3)


def test_settle_claims_what_the_gateway_charged(anvil: Anvil, tmp_path: Path, capsys,
                                                monkeypatch, jpeg: bytes) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    token = anvil.deployment.token
    config = GatewayConfig.from_mapping({
        "key": DEV_KEYS[0], "token": token, "rpc_url": anvil.url, "price": PRICE, "model": "null",
        "store": store, "settler": False, "samples_dir": tmp_path / "samples",
    })
    provider = channels.Signer(DEV_KEYS[0]).address
    payers = [Payer(channels.Signer(k), tmp_path / f"payer{i}.sqlite", deposit_amount=100 * PRICE)
              for i, k in enumerate(DEV_KEYS[1:3])]
    cids = [asyncio.run(_serve_paid_requests(config, payer, n, jpeg)) for payer, n in zip(payers, (3, 4))]
    before = asyncio.run(_token_balance(anvil, provider))

    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
    argv = ["settle", "--rpc", anvil.url, "--store", store, "--token", token]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["claimed"], result["channels"], result["settled_amount"]) == (7 * PRICE, 2, 7 * PRICE)
    assert sorted((c["channel"], c["amount"]) for c in result["claims"]) == sorted(
        [("0x" + cids[0].hex(), 3 * PRICE), ("0x" + cids[1].hex(), 4 * PRICE)])
    assert len(result["claim_txs"]) == 1  # both channels in one claimWithSignature
    assert result["settle_tx"].startswith("0x") and result["gas_used"] > 0
    assert result["receiver"] == provider and result["recovered"] == []
    assert asyncio.run(_token_balance(anvil, provider)) - before == 7 * PRICE

    # Again, as text: everything is claimed and settled already, so nothing is sent.
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "nothing to claim" in text and "nothing to settle" in text


@pytest.mark.parametrize(
    ("extra", "env_key", "needle"),
    [
        ([], None, "key: no receiver key; pass --key-file FILE or set PAYCHAN_KEY"),
        (["--token", "0x1234"], DEV_KEYS[0], "token: '0x1234' is not a 0x-prefixed 20-byte address"),
        (["--store", "sqlite:///{tmp}/missing.sqlite3"], DEV_KEYS[0], "--store: no ledger file at"),
        (["--claim-batch-size", "0"], DEV_KEYS[0], "claim_batch_size: must be 1..100 channels per claim, got 0; set --claim-batch-size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(anvil: Anvil, tmp_path: Path, capsys, monkeypatch,
                                          extra: list[str], env_key: str | None, needle: str) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    ledger.touch()
    monkeypatch.delenv("PAYCHAN_KEY", raising=False)
    if env_key:
        monkeypatch.setenv("PAYCHAN_KEY", env_key)
    argv = ["settle", "--rpc", anvil.url, "--store", f"sqlite:///{ledger}",
            "--token", anvil.deployment.token, *[a.format(tmp=tmp_path) for a in extra]]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_no_contract_at_the_settlement_address_is_bad_input(anvil: Anvil, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    ledger.touch()
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
    nowhere = "0x" + "ab" * 20
    argv = ["settle", "--rpc", anvil.url, "--store", f"sqlite:///{ledger}",
            "--token", anvil.deployment.token, "--settlement", nowhere, "--json"]
    assert main(argv) == EXIT_USAGE
    assert "--settlement: no contract at" in capsys.readouterr().err


def test_unreachable_rpc_exits_4(tmp_path: Path, capsys, monkeypatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ledger = tmp_path / "ledger.sqlite3"
    ledger.touch()
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
    argv = ["settle", "--rpc", f"http://127.0.0.1:{port}", "--store", f"sqlite:///{ledger}",
            "--token", "0x" + "cd" * 20]
    assert main(argv) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}" in err and err.count("\n") == 1, err
