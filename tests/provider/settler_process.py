"""A settler as its own OS process (the kill -9 test starts, kills and restarts it).

    python tests/provider/settler_process.py --rpc URL --store sqlite:///PATH --settlement ADDR \\
        --collector ADDR --token ADDR   # key: PAYCHAN_KEY (anvil's well-known TEST key 0 by default)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from web3 import AsyncHTTPProvider, AsyncWeb3

from channels.provider import ProviderConfig, SettlerPolicy, TxPolicy, open_provider


async def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("rpc", "store", "settlement", "collector", "token"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--threshold", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--bump-after", type=float, default=3600.0)
    args = ap.parse_args()
    key = os.environ["PAYCHAN_KEY"]
    w3 = AsyncWeb3(AsyncHTTPProvider(args.rpc, request_kwargs={"timeout": 10}))
    provider = await open_provider(
        w3,
        ProviderConfig(
            key=key,
            store=args.store,
            token=args.token,
            settlement=args.settlement,
            collector=args.collector,
            tx_policy=TxPolicy(poll_s=0.05, bump_after_s=args.bump_after),
            settler_policy=SettlerPolicy(claim_threshold=args.threshold, interval_s=args.interval),
            start_block=0,
            poll_s=0.1,
        ),
    )
    sync = provider.sync
    task = asyncio.get_running_loop().create_task(sync.run())
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, task.cancel
    )  # SIGTERM: close the store cleanly
    print("ready", flush=True)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await provider.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
