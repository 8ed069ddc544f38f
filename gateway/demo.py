"""The embedded end-to-end run behind ``paychan demo``: every real part in one process tree.

    summary = await run_demo(DemoOptions(rounds=2), report=print)
    summary["provider_received"] == summary["charged"]          # read back from the chain

What happens, in order: the embedded py-evm chain starts with our contracts at the canonical
x402 addresses; the real classifier loads; the gateway listens on a free loopback port and
publishes the served version to the ModelRegistry (owned by the provider key); a
payer (anvil test key #1) deposits into a channel and classifies the demo photos (animals,
and one thing that is not) concurrently over HTTP, paying each request with a voucher; each
answer leads with the animal ("dog 97%", "not an animal 99%") before the top-k labels; the gateway claims the charges
and settles them to the provider (anvil test key #0), and the payer takes back what it did not
spend with a cooperative refund. Token balances are read from the chain
before and after, so the summary states what the chain says, not what the client counted.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli._animal import animal_line

if TYPE_CHECKING:  # the chain and the SDK load web3: inside run_demo at run time
    from channels.sdk import PaymentClient
    from contracts import EmbeddedChain

__all__ = ["DEMO_PHOTOS", "DemoOptions", "run_demo"]

DEMO_PHOTOS = Path(__file__).with_name("demo_photos")

_PROVIDER, _PAYER = 0, 1  # indexes into contracts.DEV_KEYS (well-known anvil TEST keys)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo buys: every photo in ``photos`` ``rounds`` times, ``concurrency`` at once."""

    photos: Path = DEMO_PHOTOS
    rounds: int = 2
    concurrency: int = 4
    price: int = 1_000  # token units per image: 0.001 test USDC
    deposit: int = 100_000  # the channel's first deposit: 0.1 test USDC, 100 images
    top_k: int = 3
    model: str = "tf_efficientnet_lite0"
    workdir: Path | None = None  # ledger, payer state and samples; a temporary folder if None
    extra: dict[str, Any] = field(default_factory=dict)  # more GatewayConfig settings

    def images(self) -> list[Path]:
        """The photos to classify, sorted; raises ValueError naming the folder if there are none."""
        suffixes = {".jpg", ".jpeg", ".png", ".webp"}
        found = sorted(p for p in self.photos.iterdir() if p.suffix.lower() in suffixes)
        if not found:
            raise ValueError(f"--photos: no .jpg/.png/.webp images in {self.photos}")
        return found


Report = Callable[[str], None]


async def run_demo(
    options: DemoOptions = DemoOptions(), report: Report = lambda _: None, *,
    chain: EmbeddedChain | None = None,
) -> dict[str, Any]:
    """Run the whole demo; ``report`` receives one human line per step. Returns the summary.

    ``chain`` (a ``contracts.EmbeddedChain``) lets a caller keep the chain to check the
    summary against it afterwards; by default a fresh one is started.
    """
    if options.rounds < 1 or options.concurrency < 1:
        raise ValueError("rounds and concurrency must be at least 1")
    photos = options.images()
    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        return await _run(options, photos, options.workdir, report, chain)
    with tempfile.TemporaryDirectory(prefix="paychan-demo-") as tmp:
        return await _run(options, photos, Path(tmp), report, chain)


async def _run(options: DemoOptions, photos: list[Path], work: Path, report: Report,
               chain: EmbeddedChain | None) -> dict[str, Any]:
    from aiohttp import web

    from channels.protocol import Signer
    from channels.sdk import Payer, PaymentClient
    from contracts import DEV_KEYS, embedded_chain
    from gateway.app import create_app
    from gateway.config import GatewayConfig
    from gateway.keys import MODEL_WATCH, PAYMENTS
    from inference import Classifier

    started = time.monotonic()
    chain = chain or embedded_chain()
    dep = chain.deployment
    provider = Signer(DEV_KEYS[_PROVIDER]).address
    payer_signer = Signer(DEV_KEYS[_PAYER])
    report(f"chain      embedded py-evm, chain id {await chain.w3.eth.chain_id}")
    report(f"contracts  settlement {dep.settlement} (canonical x402 address), token {dep.token}")

    before = {
        "provider": await _balance(chain, provider),
        "payer": await _balance(chain, payer_signer.address),
    }
    report(f"balances   provider {_usdc(before['provider'])}, payer {_usdc(before['payer'])} (test USDC)")

    report(f"model      loading {options.model} on cpu ...")
    classifier = Classifier.load(model=options.model, device="cpu", max_batch=8, queue_size=64)
    await classifier.start()
    try:
        port = _free_port()
        config = GatewayConfig.from_mapping({
            "payment": True,
            "key": DEV_KEYS[_PROVIDER],
            "token": dep.token,
            "price": options.price,
            "model": options.model,
            "store": f"sqlite:///{work / 'gateway-ledger.sqlite3'}",
            "samples_dir": work / "samples",
            "settler": False,  # the demo settles once, explicitly, at the end
            # The served version is published to the ModelRegistry (owned by the provider key)
            # before the gateway reports ready, as a production gateway does.
            "registry": dep.registry,
            "port": port,
            **options.extra,
        })
        app = create_app(config, classifier=classifier, chain=chain.w3)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v1/classify?top_k={options.top_k}"
        report(f"gateway    http://127.0.0.1:{port} ({classifier.version.id}), price {_usdc(options.price)} per image")
        publication = await _published(app[MODEL_WATCH], classifier.version.content_hash.hex())
        report(f"registry   {classifier.version.id} published in {dep.registry} "
               f"(tx {str(publication.get('tx_hash'))[:10]}...)")
        try:
            payer = Payer(payer_signer, work / "payer.sqlite3", deposit_amount=options.deposit)
            async with PaymentClient(payer) as client:
                results = await _classify_all(client, url, photos * options.rounds, options, report)
                charged = sum(r["cost"] for r in results if r["status"] == 200)
                report(f"client     {len(results)} requests, {sum(r['status'] == 200 for r in results)} "
                       f"answered, charged {_usdc(charged)}")
                settled = await app[PAYMENTS].settle_now()
                report(f"settlement claimed {_usdc(int(settled['claimed']))} on {settled['channels']} channel(s), "
                       f"settled {_usdc(int(settled.get('settled_amount', 0)))} to the provider")
                # The cooperative close: the payer asks for what it did not spend, on the paid route.
                refund = await client.refund(url)
                refunded = int(refund.amount or 0)
                report(f"refund     {_usdc(refunded)} back to the payer (tx {refund.transaction[:10]}...)")
            channel_id = results[0]["channel_id"]
        finally:
            await runner.cleanup()
    finally:
        await classifier.close()

    after = {
        "provider": await _balance(chain, provider),
        "payer": await _balance(chain, payer_signer.address),
    }
    remaining = await _channel_remaining(chain, channel_id)
    summary = {
        "requests": len(results),
        "answered": sum(r["status"] == 200 for r in results),
        "charged": charged,
        "price": options.price,
        "deposit": options.deposit,
        "provider_received": after["provider"] - before["provider"],
        "payer_balance_change": after["payer"] - before["payer"],
        "refunded": refunded,
        "channel_remaining": remaining,
        "balances_before": before,
        "balances_after": after,
        "channel_id": channel_id,
        "settlement": settled,
        "chain_id": await chain.w3.eth.chain_id,
        "contracts": dep.as_dict(),
        "model": results[0].get("model"),
        "publication": publication,
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
    }
    report(f"balances   provider {_usdc(after['provider'])} ({_signed(summary['provider_received'])}), "
           f"payer {_usdc(after['payer'])} ({_signed(summary['payer_balance_change'])}), "
           f"{_usdc(remaining)} left in the channel")
    return summary


async def _published(watch: Any, key: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The served version's ModelRegistry record, once the gateway's model watch has sent it."""
    deadline = time.monotonic() + timeout_s
    while key not in watch.publications:
        if time.monotonic() > deadline:
            error = watch.status()["last_error"]
            raise RuntimeError(f"the served version was not published to the ModelRegistry "
                               f"within {timeout_s:.0f} s: {error}")
        await asyncio.sleep(0.05)
    return dict(watch.publications[key])


async def _classify_all(client: PaymentClient, url: str, images: list[Path], options: DemoOptions,
                        report: Report) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(options.concurrency)
    # The first request opens the channel (the deposit); the rest ride it concurrently.
    first = await _classify_one(client, url, images[0], report)
    if first["status"] != 200:
        raise RuntimeError(f"the first paid request failed: {first['status']} {first.get('error')}")

    async def one(path: Path) -> dict[str, Any]:
        async with gate:
            return await _classify_one(client, url, path, report)

    return [first, *await asyncio.gather(*(one(p) for p in images[1:]))]


async def _classify_one(client: PaymentClient, url: str, path: Path, report: Report) -> dict[str, Any]:
    answer = await client.post(url, data=path.read_bytes(), headers={"Content-Type": _mime(path)})
    row: dict[str, Any] = {"image": path.name, "status": answer.status, "cost": 0}
    if answer.status != 200:
        row["error"] = answer.body[:200].decode("utf-8", "replace")
        report(f"  {path.name:16s} HTTP {answer.status}: {row['error']}")
        return row
    # A 200 on the paid route was paid: the client sent a payment and read its settlement.
    assert answer.payment is not None, "a paid answer without the payment that bought it"
    extra = answer.settlement.extra if answer.settlement else None
    body = answer.json()
    result = body["results"][0]
    best = result["predictions"][0]
    row.update(
        animal=result["animal"],
        label=best["label"],
        score=best["probability"],
        model=body["model"]["id"],
        cost=int(extra.charged_amount) if extra is not None and extra.charged_amount is not None else 0,
        channel_id="0x" + answer.payment.channel_id.hex(),
    )
    report(f"  {path.name:16s} {animal_line(result):68s} cost {_usdc(row['cost'])}")
    return row


async def _balance(chain: EmbeddedChain, address: str) -> int:
    from contracts import artifact

    token = chain.w3.eth.contract(address=chain.deployment.token, abi=artifact("TestUSDC")["abi"])
    return int(await token.functions.balanceOf(address).call())


async def _channel_remaining(chain: EmbeddedChain, channel_id: str) -> int:
    from contracts import artifact

    settlement = chain.w3.eth.contract(address=chain.deployment.settlement,
                                       abi=artifact("BatchSettlement")["abi"])
    balance, total_claimed = (await settlement.functions.channels(bytes.fromhex(channel_id[2:])).call())[:2]
    return int(balance) - int(total_claimed)


def _mime(path: Path) -> str:
    return {".png": "image/png", ".webp": "image/webp"}.get(path.suffix.lower(), "image/jpeg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _usdc(units: int) -> str:
    return f"{units / 10**6:,.6f} USDC"


def _signed(units: int) -> str:
    return ("+" if units >= 0 else "-") + _usdc(abs(units))
