"""The payer's commands (`paychan classify`, `channel`, `models`) run in-process against a
real paid gateway on anvil with the real model (fixture `paid_gateway`, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts import DEV_KEYS
from gateway.cli import main
from tests.sdk.gateway_thread import PRICE, evm_increase_time

pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of four JPEGs (the cat three times, the astronaut once) and a text file."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for i in range(3):
        Image.fromarray(skimage.data.chelsea()).save(folder / f"cat{i}.jpg", "JPEG", quality=75)
    Image.fromarray(skimage.data.astronaut()).resize((160, 160)).save(folder / "astronaut.png")
    (folder / "notes.txt").write_text("skipped: not an image suffix")
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["classify"], ["channel"], ["channel", "list"],
                                     ["channel", "show"], ["channel", "refund"],
                                     ["channel", "withdraw"], ["channel", "sync"], ["models"]])
def test_help_has_an_example(capsys, command: list[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "paychan " + command[0] in out
    assert "example" in out.lower() or "$ paychan" in out


def test_classify_folder_then_channel_list_show_refund(paid_gateway, photos, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[8])
    state = str(tmp_path / "payer.sqlite")
    url = paid_gateway.url
    code, out, err = run(capsys, "classify", str(photos), "--gateway", url, "--top-k", "2",
                         "--deposit", str(20 * PRICE), "--state", state, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert len(data["images"]) == 4 and data["failed"] == 0 and data["charged"] == str(4 * PRICE)
    cats = [r for r in data["images"] if "cat" in Path(r["image"]).name]
    assert all(r["predictions"][0]["group"] == "cat" and len(r["predictions"]) == 2 for r in cats)
    assert all(r["animal"]["group"] == "cat" and r["animal"]["status"] == "animal" for r in cats)
    assert sum(r["deposited"] is not None for r in data["images"]) == 1
    channel = data["channel"]
    assert channel["remaining"] == str(16 * PRICE)

    code, out, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway", url,
                         "--state", state)  # human output: the animal, the labels, the cost
    assert code == 0, err
    assert "cat0.jpg: cat " in out and ("tiger cat" in out or "tabby" in out)
    assert f"cost {PRICE}" in out

    code, out, _ = run(capsys, "channel", "list", "--state", state, "--gateway", url, "--json")
    [row] = json.loads(out)["channels"]
    assert row["channelId"] == channel["channelId"] and row["charged"] == str(5 * PRICE)
    assert row["gateway"]["chargedCumulativeAmount"] == str(5 * PRICE)

    code, out, _ = run(capsys, "channel", "show", "--state", state, "--rpc", paid_gateway.anvil.url)
    assert code == 0 and f"balance {20 * PRICE}" in out  # the chain's view

    code, out, err = run(capsys, "channel", "refund", "--gateway", url, "--state", state, "--json")
    assert code == 0, err
    refund = json.loads(out)
    assert refund["refunded"] == str(15 * PRICE) and refund["balance"] == str(5 * PRICE)

    code, _, err = run(capsys, "channel", "refund", "--gateway", url, "--state", state)
    assert code == 3 and "refund_no_balance" in err  # nothing left: the gateway's refusal


def test_classify_bad_input_costs_nothing(paid_gateway, photos, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[9])
    state = tmp_path / "payer.sqlite"
    for argv, message in (([str(photos / "missing.jpg")], "no such file"),
                          ([str(photos / "notes.txt")], "not a JPEG"),
                          ([str(photos / "cat0.jpg"), "--top-k", "0"], "--top-k"),
                          ([str(photos / "cat0.jpg"), "--deposit", "-5"], "--deposit")):
        code, out, err = run(capsys, "classify", *argv, "--gateway", paid_gateway.url,
                             "--state", str(state))
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not state.exists()  # no channel, no signature, nothing sent
    monkeypatch.delenv("PAYCHAN_KEY")
    code, _, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway", paid_gateway.url,
                       "--state", str(state))
    assert code == 2 and "PAYCHAN_KEY" in err
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[9])
    code, _, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway",
                       "http://127.0.0.1:9", "--state", str(state))
    assert code == 4 and "cannot reach" in err


def test_models_lists_the_served_versions(paid_gateway, capsys) -> None:
    code, out, _ = run(capsys, "models", "--gateway", paid_gateway.url, "--json")
    assert code == 0
    [model] = json.loads(out)["models"]
    assert model["id"].startswith("tf_efficientnet_lite0") and model["version"].startswith("0x")
    code, out, _ = run(capsys, "models", "list", "--gateway", paid_gateway.url)
    assert code == 0 and f"* {model['id']}" in out
    code, _, err = run(capsys, "models")
    assert code == 2 and "--gateway" in err


def test_channel_withdraw_initiate_and_finalize(paid_gateway, photos, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[7])
    state = str(tmp_path / "payer.sqlite")
    with paid_gateway.isolated() as (node, url):
        code, _, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway", url,
                           "--state", state)
        assert code == 0, err
        code, out, err = run(capsys, "channel", "withdraw", "initiate", "--rpc", node.url,
                             "--state", state, "--json")
        assert code == 0, err
        started = json.loads(out)
        assert started["amount"] == str(9 * PRICE) and not started["finalized"]
        code, _, err = run(capsys, "channel", "withdraw", "finalize", "--rpc", node.url,
                           "--state", state)
        assert code == 1 and "withdrawal can be finalized in " in err
        evm_increase_time(node, 901)
        code, out, err = run(capsys, "channel", "withdraw", "finalize", "--rpc", node.url,
                             "--state", state)
        assert code == 0, err
        assert f"withdrew {9 * PRICE}" in out
    code, _, err = run(capsys, "channel", "withdraw", "initiate", "0x1234", "--rpc", node.url,
                       "--state", state)
    assert code == 2 and "CHANNEL_ID" in err


def _onchain(node, cid_hex: str) -> tuple[int, int, int]:
    """(balance, totalClaimed, withdrawRequestedAt) of a channel on `node`."""
    import asyncio

    from channels.sdk import read_onchain

    state = asyncio.run(read_onchain(node.url, cid_hex))
    return state.balance, state.total_claimed, state.withdraw_requested_at


def test_another_state_file_of_the_key_classifies_after_an_sdk_refund(paid_gateway, photos, tmp_path,
                                                                      capsys, monkeypatch) -> None:
    """The SDK pays and refunds from one state file (the refund claims its charges); the CLI,
    with ANOTHER state file of the same key, then classifies: its voucher is below what is
    claimed, the gateway's corrective 402 proves the charged total with the key's own voucher,
    the CLI adopts it and pays. Before, this was cumulative_below_claimed (exit 3), and the
    only way out a 15-minute withdrawal."""
    import channels

    key = DEV_KEYS[1]
    monkeypatch.setenv("PAYCHAN_KEY", key)
    with paid_gateway.isolated() as (node, url):
        with channels.SyncPaymentClient.from_key(key, tmp_path / "sdk.sqlite", base_url=url) as sdk:
            sdk.classify(photos / "cat0.jpg", top_k=1)
            sdk.classify(photos / "cat1.jpg", top_k=1)
            refund = sdk.refund()
            cid = "0x" + sdk.channel().channel_id.hex()
        assert refund.amount == 8 * PRICE and _onchain(node, cid) == (2 * PRICE, 2 * PRICE, 0)
        cli_state = str(tmp_path / "cli.sqlite")
        code, out, err = run(capsys, "classify", str(photos / "cat2.jpg"), "--gateway", url,
                             "--state", cli_state, "--rpc", node.url, "--json")
        assert code == 0, err
        data = json.loads(out)
        [image] = data["images"]
        assert image["channelId"] == cid and image["charged"] == str(PRICE)
        assert image["cumulativeCharged"] == str(3 * PRICE)
        assert image["deposited"] == str(10 * PRICE)  # the refunded channel needed a new deposit
        # the text form too, then the channel as the other file left it: no withdrawal anywhere
        code, out, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway", url,
                             "--state", cli_state)
        assert code == 0 and f"cost {PRICE}" in out, err
        assert paid_gateway.channel_view(url, cid)["chargedCumulativeAmount"] == str(4 * PRICE)
        assert _onchain(node, cid) == (12 * PRICE, 2 * PRICE, 0)


def test_channel_sync_rebuilds_a_lost_or_stale_state(paid_gateway, photos, tmp_path, capsys,
                                                     monkeypatch) -> None:
    key = DEV_KEYS[2]
    monkeypatch.setenv("PAYCHAN_KEY", key)
    with paid_gateway.isolated() as (node, url):
        first = str(tmp_path / "first.sqlite")
        code, out, err = run(capsys, "classify", str(photos), "--gateway", url, "--state", first,
                             "--json")
        assert code == 0, err
        cid = json.loads(out)["channel"]["channelId"]
        paid_gateway.settle_now(url)  # the gateway claims the 4: a new file would be below it
        code, _, err = run(capsys, "classify", str(photos / "cat0.jpg"), "--gateway", url,
                           "--state", first)
        assert code == 0, err  # a 5th, not claimed yet

        # a lost file: rebuilt from the gateway's proof, checked against the chain
        lost = str(tmp_path / "lost.sqlite")
        code, out, err = run(capsys, "channel", "sync", "--gateway", url, "--rpc", node.url,
                             "--state", lost, "--json")
        assert code == 0, err
        synced = json.loads(out)
        assert synced["channelId"] == cid and synced["source"] == "gateway+chain"
        assert (synced["charged"], synced["balance"], synced["remaining"]) == (
            str(5 * PRICE), str(10 * PRICE), str(5 * PRICE))
        assert synced["before"] is None and synced["state"] == lost
        assert synced["chain"]["totalClaimed"] == str(4 * PRICE)
        assert synced["gateway"]["chargedCumulativeAmount"] == str(5 * PRICE)
        code, out, _ = run(capsys, "channel", "list", "--state", lost, "--json")
        [row] = json.loads(out)["channels"]
        assert row["channelId"] == cid and row["charged"] == str(5 * PRICE)

        # another new file, synced without --rpc (the gateway's proof alone), pays a 6th: the
        # first file is stale now, and sync (text output) brings it from 5 to 6
        stale = str(tmp_path / "stale.sqlite")
        code, _, err = run(capsys, "channel", "sync", "--gateway", url, "--state", stale)
        assert code == 0, err
        code, _, err = run(capsys, "classify", str(photos / "cat1.jpg"), "--gateway", url,
                           "--state", stale)
        assert code == 0, err  # 6 now
        code, out, err = run(capsys, "channel", "sync", "--gateway", url, "--state", first)
        assert code == 0, err
        assert f"synced {cid}" in out and "proven by this key's own voucher" in out
        assert f"charged {6 * PRICE} base units" in out
        assert f"was balance {10 * PRICE} base units, charged {5 * PRICE} base units" in out

        # the refund from the rebuilt file returns exactly what was not charged
        code, out, err = run(capsys, "channel", "refund", "--gateway", url, "--state", lost, "--json")
        assert code == 0, err
        assert json.loads(out)["refunded"] == str(4 * PRICE)
        assert _onchain(node, cid) == (6 * PRICE, 6 * PRICE, 0)

    code, _, err = run(capsys, "channel", "sync", "--state", lost)  # a usage error: one line
    assert code == 2 and "--gateway" in err
