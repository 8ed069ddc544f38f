"""`paychan earnings` and `paychan usage export` on a devnet run (anvil): a gateway serves paid
requests, settles through its admin route, serves more; then `paychan earnings --json` (from the
running gateway, and from the stopped gateway's ledger) says earned = the chain's settled amount
(the receiver's token balance) + the ledger's unclaimed charges, and the usage export holds one
row per paid answer whose charges add up to the ledger's charged total, within a date range.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the receiver-authorizer,
the receiver a fresh address (its balance is this test's alone).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS, Anvil
from gateway.cli import main
from gateway.cli._common import EXIT_USAGE
from gateway.config import GatewayConfig
from tests.cli.test_settle_cli import _token_balance

PRICE = 1000
TOKEN = "earnings-" + "3c" * 16
JPEG = {"Content-Type": "image/jpeg"}


async def _settled_of(anvil: Anvil, receiver: str) -> int:
    from contracts import artifact
    from gateway.chain_setup import close_web3, connect_rpc

    w3 = await connect_rpc(anvil.url)
    try:
        c = w3.eth.contract(address=anvil.deployment.settlement, abi=artifact("BatchSettlement")["abi"])
        return int((await c.functions.receivers(receiver, anvil.deployment.token).call())[1])
    finally:
        await close_web3(w3)


async def _run_gateway(config: GatewayConfig, payers: list[Payer], jpeg: bytes,
                       token_file: Path) -> dict[str, Any]:
    """Serve; 3 + 2 paid answers; settle; 2 more; `paychan earnings --gateway` meanwhile."""
    from gateway.app import create_app
    from inference import Classifier
    from tests.gateway.serving import serve

    clf = Classifier.null()
    await clf.start()
    try:
        async with serve(create_app(config, classifier=clf)) as url, \
                channels.PaymentClient(payers[0]) as a, channels.PaymentClient(payers[1]) as b, \
                aiohttp.ClientSession() as s:
            for client, n in ((a, 3), (b, 2)):
                for _ in range(n):
                    assert (await client.post(url + "/v1/classify", data=jpeg, headers=JPEG)).status == 200
            async with s.post(url + "/admin/settle", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200 and (await r.json())["settled_amount"] == 5 * PRICE
            for _ in range(2):
                assert (await a.post(url + "/v1/classify", data=jpeg, headers=JPEG)).status == 200
            # the CLI, as an operator runs it, in its own thread and event loop
            code, out = await asyncio.to_thread(_cli, ["earnings", "--gateway", url,
                                                       "--admin-token-file", str(token_file), "--json"])
            assert code == 0, out
            return json.loads(out)
    finally:
        await clf.close()


def _cli(argv: list[str]) -> tuple[int, str]:
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def test_earnings_equal_settled_plus_unclaimed(anvil: Anvil, tmp_path: Path, monkeypatch, jpeg: bytes) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    receiver = channels.Signer(os.urandom(32)).address
    config = GatewayConfig.from_mapping({
        "key": DEV_KEYS[0], "token": anvil.deployment.token, "rpc_url": anvil.url, "price": PRICE,
        "model": "null", "store": store, "settler": True, "chain_poll_s": 0.2,
        "claim_interval_s": 3600.0, "receiver": receiver, "admin_token": TOKEN,
        "samples_dir": tmp_path / "samples",
    })
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    payers = [Payer(channels.Signer(DEV_KEYS[k]), tmp_path / f"payer{k}.sqlite",
                    deposit_amount=50 * PRICE, salt=os.urandom(32)) for k in (7, 8)]
    started = time.time()
    live = asyncio.run(_run_gateway(config, payers, jpeg, token_file))

    settled = asyncio.run(_settled_of(anvil, receiver))
    assert settled == asyncio.run(_token_balance(anvil, receiver)) == 5 * PRICE
    assert live["unclaimed"] == 2 * PRICE and live["charged"] == 7 * PRICE
    assert live["earned"] == settled + live["unclaimed"]
    assert (live["claimed"], live["settled"], live["at_risk"]) == (5 * PRICE, 5 * PRICE, 0)

    # The stopped gateway's ledger, read directly: the same numbers.
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[0])
    code, out = _cli(["earnings", "--store", store, "--rpc", anvil.url, "--token",
                      anvil.deployment.token, "--receiver", receiver, "--json"])
    assert code == 0, out
    offline = json.loads(out)
    for key in ("charged", "claimed", "settled", "unclaimed", "at_risk", "earned"):
        assert offline[key] == live[key], key
    code, text = _cli(["earnings", "--store", store, "--rpc", anvil.url, "--token",
                       anvil.deployment.token, "--receiver", receiver])
    assert code == 0 and "earned" in text and f"{7 * PRICE:,}" in text

    # The usage export: one row per paid answer, adding up to the ledger's charged total.
    code, out = _cli(["usage", "export", "--store", store])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7 and sum(int(r["charge"]) for r in rows) == offline["charged"]
    assert {r["payer"] for r in rows} == {p.signer.address for p in payers}
    assert all(r["model"].startswith("0x") and int(r["images"]) == 1 for r in rows)
    by_channel: dict[str, list[int]] = {}
    for r in rows:
        by_channel.setdefault(r["channel"], []).append(int(r["receipt"]))
    assert sorted(sorted(v) for v in by_channel.values()) == [
        [1000, 2000], [1000, 2000, 3000, 4000, 5000]]  # each receipt's cumulativeCharged
    code, out = _cli(["usage", "export", "--store", store, "--format", "jsonl",
                      "--since", str(started), "--until", str(time.time() + 1)])
    assert code == 0 and len(out.splitlines()) == 7 and json.loads(out.splitlines()[0])["charge"] == PRICE
    code, out = _cli(["usage", "export", "--store", store, "--since", "2100-01-01"])
    assert code == 0 and out.splitlines() == ["time,channel,payer,images,charge,model,receipt"]
    try:
        code = main(["usage", "export", "--store", store, "--since", "yesterday"])
    except SystemExit as exc:  # argparse's own exit, where main does not turn it into a code
        code = int(exc.code or 0)
    assert code == EXIT_USAGE


def test_usage_log_survives_a_torn_line_and_is_read_incrementally(tmp_path: Path) -> None:
    """A crash mid-write leaves a torn last line: readers skip it; the next writer starts on a
    line of its own; the console's index reads only what was appended since."""
    from gateway.usage import UsageIndex, UsageLog, UsageRow, read_usage

    path = tmp_path / "usage.jsonl"

    def row(t: float, channel: str, cumulative: int) -> UsageRow:
        return UsageRow(t, channel, "0x" + "11" * 20, 2, 2 * PRICE, "0x" + "ab" * 32, str(cumulative))

    async def write(rows: list[UsageRow]) -> None:
        log = UsageLog(path, flush_s=3600)
        await log.start()
        for r in rows:
            log.record(r)
        await log.close()  # flushes and fsyncs

    asyncio.run(write([row(100.0, "0xaa", 2000), row(200.0, "0xaa", 4000)]))
    index = UsageIndex(path)
    index.refresh()
    assert (index.channels["0xaa"].requests, index.channels["0xaa"].last) == (2, 200.0)
    with path.open("ab") as f:
        f.write(b'{"time":250.0,"channel":"0xaa"')  # torn: the process died here
    assert [r.time for r in read_usage(path)] == [100.0, 200.0]
    index.refresh()
    assert index.channels["0xaa"].requests == 2
    asyncio.run(write([row(300.0, "0xbb", 2000)]))
    assert [r.time for r in read_usage(path)] == [100.0, 200.0, 300.0]
    assert [r.time for r in read_usage(path, since=200.0, until=300.0)] == [200.0]
    index.refresh()
    assert (index.channels["0xaa"].requests, index.channels["0xbb"].images) == (2, 2)
