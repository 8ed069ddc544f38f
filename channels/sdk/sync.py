"""`PaymentClient` for scripts without asyncio: the same calls, blocking.

    >>> with SyncPaymentClient.from_key(key, base_url="http://127.0.0.1:8402") as client:
    ...     print(client.classify("cat.jpg").top.label)
    ...     results = client.classify_many(["a.jpg", "b.png"], concurrency=4)
    ...     client.refund()
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

from ..protocol import SettleResponse
from .client import PaymentClient
from .errors import ClientError, PaymentRefused, RequestFailed
from .inputs import DEFAULT_STATE, load_image
from .models import ChannelRecord, Classification, PaidResponse, SyncResult, WithdrawStatus
from .payer import Payer
from .samples import SampleResult

__all__ = ["SyncPaymentClient"]

T = TypeVar("T")


class SyncPaymentClient:
    """`PaymentClient` for scripts without asyncio: the same calls, blocking.

        >>> with SyncPaymentClient.from_key(key, base_url="http://127.0.0.1:8402") as client:
        ...     print(client.classify("cat.jpg").top.label)
        ...     client.refund()

    It runs its own event loop; do not use it inside a running one (use PaymentClient there).
    """

    def __init__(self, client: PaymentClient) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = client

    @classmethod
    def from_key(
        cls, key: str, state: str | Path = DEFAULT_STATE, **kwargs: Any
    ) -> SyncPaymentClient:
        """See `PaymentClient.from_key` (same arguments)."""
        return cls(PaymentClient.from_key(key, state, **kwargs))

    @property
    def payer(self) -> Payer:
        return self.client.payer

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coro)
        coro.close()
        raise RuntimeError("SyncPaymentClient cannot run inside an event loop: use PaymentClient")

    def classify(self, image: str | os.PathLike[str] | bytes, **kwargs: Any) -> Classification:
        return self._run(self.client.classify(image, **kwargs))

    def classify_many(
        self, images: list[str | os.PathLike[str] | bytes], *, concurrency: int = 4, **kwargs: Any
    ) -> list[Classification | ClientError]:
        """Classify several images, `concurrency` at a time on one channel; each entry is the
        result or the ClientError that image met (InputError is raised at once, before paying)."""
        for image in images:
            load_image(image)  # every input checked before the first payment
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(image: Any) -> Classification | ClientError:
            async with gate:
                try:
                    return await self.client.classify(image, **kwargs)
                except (PaymentRefused, RequestFailed) as exc:
                    return exc

        async def run() -> list[Classification | ClientError]:
            return list(await asyncio.gather(*(one(i) for i in images)))

        return self._run(run())

    def add_sample(self, image: str | os.PathLike[str] | bytes, **kwargs: Any) -> SampleResult:
        """A labelled image for retraining (`PaymentClient.add_sample`)."""
        return self._run(self.client.add_sample(image, **kwargs))

    def models(self, url: str | None = None) -> list[dict[str, Any]]:
        return self._run(self.client.models(url))

    def pricing(self, url: str | None = None) -> dict[str, Any]:
        return self._run(self.client.pricing(url))

    def channel(self, channel_id: bytes | str | None = None) -> ChannelRecord:
        return self._run(self.client.channel(channel_id))

    def channel_status(self, channel_id: bytes | str | None = None) -> dict[str, Any] | None:
        return self._run(self.client.channel_status(channel_id))

    def refund(self, amount: int | None = None, *, url: str | None = None) -> SettleResponse:
        return self._run(self.client.refund(url, amount))

    def sync(self, url: str | None = None) -> SyncResult:
        return self._run(self.client.sync(url))

    def withdraw(self, amount: int | None = None, **kwargs: Any) -> WithdrawStatus:
        return self._run(self.client.withdraw(amount, **kwargs))

    def finalize_withdraw(self, **kwargs: Any) -> WithdrawStatus:
        return self._run(self.client.finalize_withdraw(**kwargs))

    def request(self, method: str, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.request(method, url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.post(url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> PaidResponse:
        return self._run(self.client.get(url, **kwargs))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self.client.close())
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
