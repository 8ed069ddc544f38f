"""Sending labelled samples for retraining, signed by the payer's channel key.

`SampleOps` is a base of `channels.sdk.PaymentClient`; call it on the client::

    >>> async with PaymentClient.from_key(key, "payer.sqlite", base_url=url) as client:
    ...     await client.classify("cat.jpg")                   # opens the channel (a deposit)
    ...     sample = await client.add_sample("cat.jpg", label="tabby")
    ...     sample.label, sample.group, sample.duplicate
    ('tabby', 'cat', False)
    ...     await client.add_sample("okapi.jpg", label="okapi calf", group="other_mammal")

A sample is free, but the gateway takes it only from a payer with a funded channel there
(anyone can make a key; not everyone has paid): the channel's payerAuthorizer key signs the
image's sha256, the label, its group and the time (EIP-712 ``Sample``,
`channels.protocol.sample_auth`), sent as the ``SAMPLE-SIGNATURE`` header. A 429 (the
payer's rate limit) is waited out and sent again, freshly signed, within `wait_s`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..protocol import SAMPLE_SIGNATURE, SampleAuthorization, encode_sample_signature
from .answers import error_code, error_text, header
from .channel_ops import ChannelOps
from .errors import InputError, RequestFailed
from .inputs import load_image

__all__ = ["SampleOps", "SampleResult"]

_DEFAULT_WAIT_S = 120.0  # how long add_sample waits out the payer's rate limit in all


@dataclass(frozen=True, slots=True)
class SampleResult:
    """What the gateway stored (``duplicate``: the same bytes and label were already there)."""

    image: str | None  # the file name given, if any
    sha256: str
    label: str
    group: str | None
    imagenet_index: int | None
    payer: str
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SampleOps(ChannelOps):
    """`add_sample` (see the module)."""

    async def add_sample(
        self,
        image: str | os.PathLike[str] | bytes,
        *,
        label: str,
        group: str | None = None,
        url: str | None = None,
        wait_s: float = _DEFAULT_WAIT_S,
    ) -> SampleResult:
        """Send one labelled image (a path or its bytes) for retraining; see the module.

        `label` is an ImageNet class name ("tabby") or index, or a new name; a new name needs
        `group` (an animal group: dog, cat, other_mammal, bird, fish, reptile, amphibian,
        invertebrate, not_animal) the first time. `url` is the samples endpoint (default:
        base_url + "/v1/samples"). Raises InputError before sending for a missing/unreadable/
        non-image file or no channel with the gateway yet, RequestFailed with the gateway's
        code for a refusal (400 ``bad_label``, 403 ``unknown_payer``, 422 a broken image, 429
        ``rate_limited`` past `wait_s`, 507 ``sample_quota_exceeded``...), GatewayUnreachable.
        """
        body, content_type, name = load_image(image)
        if not label or not label.strip():
            raise InputError("label is empty: give an ImageNet class name or a new name")
        endpoint = url or self._endpoint("/v1/samples")
        record = await self.channel()  # InputError when there is none: classify first
        digest = hashlib.sha256(body).digest()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            auth = SampleAuthorization(
                channel_id=record.channel_id, image_sha256=digest, label=label,
                group=group or "", signed_at=int(time.time()),
            ).signed(self.payer.voucher_signer, record.chain_id, record.settlement)
            status, headers, raw = await self._send("POST", endpoint, body, {
                "Content-Type": content_type, SAMPLE_SIGNATURE: encode_sample_signature(auth),
            })
            if status == 429:
                wait = _seconds(header(headers, "Retry-After"))
                if loop.time() + wait <= deadline:
                    await asyncio.sleep(wait)
                    continue
            if status not in (200, 201):
                raise RequestFailed(status, error_code(raw), error_text(raw))
            return _result_of(raw, name, endpoint)


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def _result_of(raw: bytes, name: str | None, endpoint: str) -> SampleResult:
    try:
        sample = json.loads(raw)["sample"]
        return SampleResult(
            image=name, sha256=str(sample["sha256"]), label=str(sample["label"]),
            group=sample.get("group"), imagenet_index=sample.get("imagenetIndex"),
            payer=str(sample["payer"]), duplicate=bool(sample["duplicate"]),
        )
    except (ValueError, KeyError, TypeError):
        raise RequestFailed(200, None, f"{endpoint} did not answer a sample") from None
