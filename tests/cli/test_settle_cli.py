"""`paychan settle`: a forced claim + settle over a stopped gateway's ledger, on anvil after
real paid requests; one-line errors with the documented exit codes on bad input and on an
unreachable RPC. A running gateway's SQLite file is refused (exit 1, naming the owner), the
running gateway is settled through its admin route (`--gateway URL --admin-token-file F`),
and a crashed gateway's file is settled at once.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS, Anvil
from gateway.cli import main
from gateway.cli._common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from gateway.config import GatewayConfig
from tests.gateway.serving import free_port

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
    from gateway.chain_setup import close_web3, connect_rpc

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
    error = json.loads(capsys.readouterr().out)  # under --json the error is JSON on stdout
    assert error["exit_code"] == EXIT_USAGE
    assert error["error"]["message"].startswith("--settlement: no contract at")


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


# ---------------------------------------------------------------------- a running SQLite gateway

ADMIN_TOKEN = "settle-cli-" + "7e" * 16


def _serve_cmd(anvil: Anvil, tmp_path: Path, store: str, port: int, *extra: str) -> list[str]:
    key_file = tmp_path / "provider.key"
    key_file.write_text(DEV_KEYS[0])  # the well-known anvil test key #0
    return [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))",
            "serve", "--rpc", anvil.url, "--key-file", str(key_file), "--token", anvil.deployment.token,
            "--price", str(PRICE), "--store", store, "--model", "null", "--port", str(port),
            "--samples-dir", str(tmp_path / "samples"), "--no-settler", *extra]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout_s} s")


async def _buy(url: str, payer: Payer, n: int, jpeg: bytes) -> bytes:
    async with channels.PaymentClient(payer) as client:
        answers = [await client.post(url + "/v1/classify", data=jpeg,
                                     headers={"Content-Type": "image/jpeg"}) for _ in range(n)]
    assert [a.status for a in answers] == [200] * n, answers[0].body[:300]
    return answers[0].payment.channel_id


async def _claimed_on_chain(anvil: Anvil, cid: bytes) -> int:
    from contracts import artifact
    from gateway.chain_setup import close_web3, connect_rpc

    w3 = await connect_rpc(anvil.url)
    try:
        settlement = w3.eth.contract(address=anvil.deployment.settlement,
                                     abi=artifact("BatchSettlement")["abi"])
        return int((await settlement.functions.channels(cid).call())[1])
    finally:
        await close_web3(w3)


def test_a_running_gateways_sqlite_ledger_is_refused_then_settled_through_it(
        anvil: Anvil, tmp_path: Path, capsys, monkeypatch, jpeg: bytes) -> None:
    """`paychan settle` on the file of a running gateway exits 1 naming the file, the gateway's
    process and the ways forward; `--gateway URL --admin-token-file F` settles it through the
    gateway; once the gateway stops, the plain settle works on the file."""
    import os

    ledger = tmp_path / "gateway.sqlite3"
    store, token = f"sqlite:///{ledger}", anvil.deployment.token
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    provider = channels.Signer(DEV_KEYS[0]).address
    cmd = _serve_cmd(anvil, tmp_path, store, port, "--admin-token-file", str(token_file))
    gateway = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait_ready(url, gateway)
        payer = Payer(channels.Signer(DEV_KEYS[5]), tmp_path / "payer.sqlite", deposit_amount=100 * PRICE,
                      salt=os.urandom(32))
        cid = asyncio.run(_buy(url, payer, 3, jpeg))
        before = asyncio.run(_token_balance(anvil, provider))

        # 1. the file is the running gateway's: refused, before anything is sent
        monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
        local = ["settle", "--rpc", anvil.url, "--store", store, "--token", token]
        assert main(local) == EXIT_FAILED
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        for needle in (str(ledger), f"process {gateway.pid}", "serve", f"{ledger}.lock",
                       "stop that gateway", "paychan settle --gateway URL --admin-token-file F",
                       "Redis store"):
            assert needle in err, (needle, err)
        assert asyncio.run(_claimed_on_chain(anvil, cid)) == 0

        # a second gateway on the same file does not start either
        second = subprocess.run(_serve_cmd(anvil, tmp_path, store, free_port()), capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == EXIT_FAILED and f"process {gateway.pid}" in second.stderr, second.stderr

        # 2. through the running gateway's admin route: it claims what it charged
        remote = ["settle", "--gateway", url, "--admin-token-file", str(token_file)]
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-admin-token-at-all")
        assert main(["settle", "--gateway", url, "--admin-token-file", str(wrong)]) == EXIT_USAGE
        assert "refused it (403: the token is wrong)" in capsys.readouterr().err
        assert main([*remote, "--store", store]) == EXIT_USAGE
        assert "--gateway: the gateway settles with its own key, store and chain; drop --store" in \
            capsys.readouterr().err
        assert main([*remote, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["claimed"], result["channels"], result["settled_amount"]) == (3 * PRICE, 1, 3 * PRICE)
        assert result["gateway"] == url and result["receiver"] == provider
        assert [c["channel"] for c in result["claims"]] == ["0x" + cid.hex()]
        assert asyncio.run(_claimed_on_chain(anvil, cid)) == 3 * PRICE
        assert asyncio.run(_token_balance(anvil, provider)) - before == 3 * PRICE
        assert main(remote) == 0  # as text: nothing left
        out = capsys.readouterr().out
        assert f"settled by the gateway at {url}" in out and "nothing to claim" in out

        asyncio.run(_buy(url, payer, 2, jpeg))  # charged after the claim: for the file settle
    finally:
        gateway.send_signal(signal.SIGTERM)
        output, _ = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, output.decode()[-2000:]

    # 3. the gateway stopped (its lock went with it): the file settle works
    assert main([*local, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["claimed"], result["settled_amount"]) == (2 * PRICE, 2 * PRICE)
    assert asyncio.run(_claimed_on_chain(anvil, cid)) == 5 * PRICE
    assert asyncio.run(_token_balance(anvil, provider)) - before == 5 * PRICE


def test_a_crashed_gateway_never_blocks_a_later_settle(anvil: Anvil, tmp_path: Path, capsys,
                                                      monkeypatch, jpeg: bytes) -> None:
    """SIGKILL the gateway: the kernel drops its lock (its writer's too, once that has
    committed), and `paychan settle` claims everything the dead gateway answered."""
    import os

    ledger = tmp_path / "crashed.sqlite3"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = subprocess.Popen(_serve_cmd(anvil, tmp_path, f"sqlite:///{ledger}", port),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, gateway)
        payer = Payer(channels.Signer(DEV_KEYS[6]), tmp_path / "payer.sqlite", deposit_amount=100 * PRICE,
                      salt=os.urandom(32))
        cid = asyncio.run(_buy(url, payer, 4, jpeg))
    finally:
        gateway.kill()
        gateway.communicate(timeout=30)
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
    argv = ["settle", "--rpc", anvil.url, "--store", f"sqlite:///{ledger}", "--token",
            anvil.deployment.token, "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["claimed"] == 4 * PRICE
    assert asyncio.run(_claimed_on_chain(anvil, cid)) == 4 * PRICE


@pytest.mark.parametrize(
    ("status", "body", "code", "needle"),
    [
        (404, None, EXIT_USAGE, "has no admin route (404); start the gateway with --admin-token-file F"),
        (401, {"error": "unauthorized"}, EXIT_USAGE, "refused it (401: no token was sent)"),
        (503, {"error": "chain_unavailable", "message": "the chain node cannot be reached"},
         EXIT_UNREACHABLE, "cannot settle now (503): the chain node cannot be reached"),
        (502, {"error": "settle_failed", "message": "claim failed on-chain: reverted"},
         EXIT_FAILED, "answered 502: claim failed on-chain: reverted"),
    ],
)
def test_gateway_refusals_are_one_line_with_the_fix(status: int, body: Any, code: int, needle: str) -> None:
    from gateway.cli._admin import gateway_error

    error = gateway_error("http://gw:8402", status, body, call="POST /admin/settle", what="settle")
    assert error.exit_code == code and needle in str(error), str(error)


def test_an_earnings_refusal_names_the_earnings_route() -> None:
    from gateway.cli._admin import gateway_error

    error = gateway_error("http://gw:8402", 404, None, call="GET /admin/earnings",
                          what="report earnings")
    assert str(error).endswith("to enable GET /admin/earnings")
    error = gateway_error("http://gw:8402", 503, {"message": "the chain node cannot be reached"},
                          call="GET /admin/earnings", what="report earnings")
    assert "cannot report earnings now (503): the chain node cannot be reached" in str(error)
