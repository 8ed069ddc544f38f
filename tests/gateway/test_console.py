"""The operator console (`GET /admin/console`), in a real headless Chromium, against a gateway on
anvil that has served paid requests and settled through `POST /admin/settle`: the numbers on
the page are the chain's (receiver totals, each channel's totalClaimed, the receiver's token
balance) and the ledger's. It saves a desktop and a phone-width screenshot, console.png and
console-phone.png, under tmp_path, or under $PAYCHAN_SCREENSHOTS when set (the committed
docs/console*.png: `PAYCHAN_SCREENSHOTS=docs pytest tests/gateway/test_console.py`).

Without a token the console is 404 (it does not exist), without a session 401 with a login
form, a wrong token 403; the session cookie is HttpOnly, SameSite=Strict and never holds the
token.

Keys are the well-known anvil test keys (contracts.DEV_KEYS): #0 is the provider's
receiver-authorizer; the receiver is a fresh address, so its token balance is this test's alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import channels
from channels.sdk.payer import Payer
from contracts import DEV_KEYS
from gateway.app import create_app
from tests.gateway.serving import serve
from tests.gateway.test_paid import _read, onchain_channel, token_balance
from tests.gateway.test_provenance import _store

PRICE = 1000
TOKEN = "console-" + "7e" * 16
JPEG = {"Content-Type": "image/jpeg"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.anvil]


def _config(make_config, anvil, **overrides: Any):
    values: dict[str, Any] = {
        "payment": True, "key": DEV_KEYS[0], "token": anvil.deployment.token, "rpc_url": anvil.url,
        "price": PRICE, "model": "null", "settler": True, "chain_poll_s": 0.2,
        "claim_interval_s": 3600.0, "admin_token": TOKEN, "console_sample_s": 0.5,
        "token_symbol": "USDC", "token_decimals": 6}  # as `paychan serve` reads them from the token
    values.update(overrides)
    return make_config(**values)


async def test_console_is_off_without_a_token_and_asks_for_one(make_config, anvil, null_classifier) -> None:
    async with serve(create_app(_config(make_config, anvil, admin_token=None), classifier=null_classifier)) as url, \
            aiohttp.ClientSession() as s:
        for path in ("/admin/console", "/admin/earnings"):
            async with s.get(url + path) as r:
                assert r.status == 404  # no admin token: no console at all
    async with serve(create_app(_config(make_config, anvil), classifier=null_classifier)) as url, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # 127.0.0.1
        async with s.get(url + "/admin/console") as r:
            page = await r.text()
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            assert 'name="token"' in page and "--admin-token-file" in page
            assert "Charged" not in page  # nothing of the console leaks
        async with s.get(url + "/admin/earnings") as r:
            assert (r.status, (await r.json())["error"]) == (401, "unauthorized")
        async with s.get(url + "/admin/console", headers={"Authorization": "Bearer " + TOKEN[:-1] + "0"}) as r:
            assert r.status == 401
        async with s.post(url + "/admin/console/login", data={"token": TOKEN + "x"},
                          allow_redirects=False) as r:
            assert r.status == 403 and "Wrong admin token" in await r.text()
            assert "paychan_console" not in r.cookies
        async with s.post(url + "/admin/console/login", data={"token": TOKEN},
                          allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/admin/console")
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
            assert TOKEN not in cookie
        async with s.get(url + "/admin/console") as r:  # the session cookie is enough now
            assert r.status == 200 and 'data-testid="charged"' in await r.text()
        async with s.get(url + "/admin/earnings") as r:
            assert r.status == 200 and (await r.json())["charged"] == 0
        async with s.post(url + "/admin/console/logout", allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(url + "/admin/console") as r:
            assert r.status == 401


async def _metric(s: aiohttp.ClientSession, url: str, name: str) -> float:
    async with s.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def _registry_events(anvil, tx_hash: str) -> list[tuple[bytes, str, str, str]]:
    from web3 import AsyncHTTPProvider, AsyncWeb3

    from channels.provider.registry import ModelRegistry
    from gateway.chain_setup import close_web3

    w3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
    try:
        return list(await ModelRegistry(w3, anvil.deployment.registry).published_events(tx_hash))
    finally:
        await close_web3(w3)


def _browse(url: str, shots: Path) -> dict[str, Any]:
    """Sign in through the form in headless Chromium; the page's numbers; two screenshots."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url + "/admin/console")
        assert "needs the gateway's admin token" in driver.find_element(
            By.CSS_SELECTOR, '[data-testid="login-message"]').text
        driver.find_element(By.CSS_SELECTOR, '[data-testid="token"]').send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, '[data-testid="sign-in"]').click()
        assert driver.current_url == url + "/admin/console"  # the token is not in the URL

        def value(testid: str) -> int:
            return int(driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
                       .get_attribute("data-value"))

        page: dict[str, Any] = {k: value(k) for k in (
            "charged", "claimed", "settled", "unclaimed", "at-risk", "earned", "gas-balance")}
        shown = driver.find_element(By.CSS_SELECTOR, '[data-testid="charged"]')
        page["charged_text"] = (shown.text, shown.get_attribute("title"))
        page["channels"] = {}
        for row in driver.find_elements(By.CSS_SELECTOR, '[data-testid="channel-row"]'):
            cells = {k: int(row.find_element(By.CSS_SELECTOR, f'[data-testid="channel-{k}"]')
                            .get_attribute("data-value"))
                     for k in ("balance", "charged", "claimed", "unclaimed", "requests")}
            page["channels"][row.get_attribute("data-channel")] = cells
        page["txs"] = [(r.get_attribute("data-kind"), r.get_attribute("data-tx"))
                       for r in driver.find_elements(By.CSS_SELECTOR, '[data-testid="tx-row"]')]
        page["models"] = len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="model-row"]'))
        page["registry"] = {e.get_attribute("data-model"): e.get_attribute("data-tx") for e in
                            driver.find_elements(By.CSS_SELECTOR, '[data-testid="model-registry-tx"]')}
        page["svgs"] = len(driver.find_elements(By.CSS_SELECTOR, "svg.chart"))
        page["scripts"] = len(driver.find_elements(By.TAG_NAME, "script"))
        for name, width in (("console.png", 1280), ("console-phone.png", 390)):
            driver.set_window_size(width, 900)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, int(height) + 100)
            if width < 500:  # a phone: nothing wider than the screen but the tables' own scroll
                page["phone_overflow"] = driver.execute_script(
                    "return [...document.querySelectorAll('body *')].filter(e => "
                    "e.getBoundingClientRect().right > window.innerWidth + 1 && "
                    "!e.closest('.scroll')).map(e => e.tagName + '.' + e.className)")
            driver.save_screenshot(str(shots / name))
        return page
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.skipif((CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
                    reason="chromium and chromedriver are not installed (scripts/setup.sh "
                    "installs them with apt-get: chromium chromium-driver); CI runs it always")
async def test_console_in_chromium_shows_the_chains_numbers(
        make_config, anvil, jpeg, tmp_path: Path) -> None:
    receiver = channels.Signer(os.urandom(32)).address  # fresh: its balance is ours alone
    # A model store whose champion (weights no other test published) is published in the
    # ModelRegistry before it answers: the console lists its registry transaction.
    store, champion = _store(tmp_path)
    config = _config(make_config, anvil, receiver=receiver, model="tf_efficientnet_lite0",
                     models=str(store.root), batch_cap=8, registry=anvil.deployment.registry)
    app = create_app(config)
    payers = [Payer(channels.Signer(DEV_KEYS[k]), tmp_path / f"payer{k}.sqlite",
                    deposit_amount=50 * PRICE, salt=os.urandom(32)) for k in (5, 6)]
    async with serve(app) as url, channels.PaymentClient(payers[0]) as a, \
            channels.PaymentClient(payers[1]) as b, aiohttp.ClientSession() as s:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(2400):  # ready once the champion is loaded, warm and published
            async with s.get(url + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)
        for client, n in ((a, 3), (b, 2)):
            for _ in range(n):
                answer = await client.post(url + "/v1/classify", data=jpeg, headers=JPEG)
                assert answer.status == 200, answer.body[:300]
        async with s.post(url + "/admin/settle", headers=bearer) as r:
            settled_round = await r.json()
            assert r.status == 200 and settled_round["claimed"] == 5 * PRICE, settled_round
        for _ in range(2):  # charged after the settle: unclaimed
            assert (await a.post(url + "/v1/classify", data=jpeg, headers=JPEG)).status == 200
        # The watcher applies the claim and the settle from the chain (not from the settler).
        for _ in range(100):
            if await _metric(s, url, "paychan_settled_amount_total") >= 5 * PRICE:
                break
            await asyncio.sleep(0.1)
        assert await _metric(s, url, "paychan_claimed_amount_total") == 5 * PRICE
        assert await _metric(s, url, "paychan_settled_amount_total") == 5 * PRICE
        await asyncio.sleep(1.5)  # one more earnings sample for the plot

        shots = Path(os.environ.get("PAYCHAN_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        page = await asyncio.to_thread(_browse, url, shots)

    claimed, settled = await _read(anvil, anvil.deployment.settlement, "BatchSettlement",
                                   "receivers", receiver, anvil.deployment.token)
    assert (page["claimed"], page["settled"]) == (claimed, settled) == (5 * PRICE, 5 * PRICE)
    assert page["settled"] == await token_balance(anvil, receiver)
    assert page["charged"] == 7 * PRICE and page["unclaimed"] == 2 * PRICE
    # Shown in token units with the symbol; the base units are the figure's tooltip.
    assert page["charged_text"] == (f"{7 * PRICE / 1e6:g} USDC", f"{7 * PRICE:,} base units")
    assert page["earned"] == settled + 2 * PRICE and page["at-risk"] == 0
    assert page["gas-balance"] > 0
    assert len(page["channels"]) == 2
    for cid, row in page["channels"].items():
        balance, total_claimed = await onchain_channel(anvil, bytes.fromhex(cid[2:]))
        assert (row["balance"], row["claimed"]) == (balance, total_claimed)
        assert row["unclaimed"] == row["charged"] - total_claimed
        assert row["requests"] * PRICE == row["charged"]  # one usage row per paid answer
    assert sorted(r["charged"] for r in page["channels"].values()) == [2 * PRICE, 5 * PRICE]
    assert ("settle", settled_round["settle_tx"]) in page["txs"]
    assert ("claim", settled_round["claim_txs"][0]) in page["txs"]
    assert page["models"] >= 1 and page["svgs"] == 4 and page["scripts"] == 0
    publication = store.publication(champion)
    assert publication is not None and page["registry"]["0x" + champion] == publication["tx_hash"]
    events = await _registry_events(anvil, publication["tx_hash"])
    assert [e[0] for e in events] == [bytes.fromhex(champion)]  # weightsHash = the weights' sha256
    assert page["phone_overflow"] == []  # only the tables scroll sideways on a phone
    assert (shots / "console.png").stat().st_size > 10_000
