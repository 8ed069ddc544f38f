"""A payer's signature on a labelled sample: the EIP-712 ``Sample`` type, its digest and the
``SAMPLE-SIGNATURE`` header (base64 of JSON, like the x402 headers). Pure: no I/O, no clock.

A sample (an image with a label, sent to ``POST /v1/samples`` for retraining) is attributed
to the payer of a channel: the channel's payerAuthorizer key signs the image's sha256 with
its label, the label's animal group and the time of signing. The domain is the payment
channel's (chain id, settlement contract), and ``channelId`` binds the signature to that
channel's receiver, so a signature for one gateway's channel is refused by every other::

    >>> auth = SampleAuthorization(channel_id=cid, image_sha256=hashlib.sha256(jpeg).digest(),
    ...                            label="tabby", group="", signed_at=int(time.time()))
    >>> header = encode_sample_signature(auth.signed(signer, chain_id, settlement))
    >>> parsed = parse_sample_signature(header)          # SampleAuthError on any bad field
    >>> parsed.signer(chain_id, settlement) == signer.address_bytes
    True
    >>> check_sample_age(parsed.signed_at, now=time.time(), max_age_s=600)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ._fields import b64, b64_json, hex_bytes, hx, json_object, string, uint
from .eip712 import domain_separator, hash_typed_data, keccak256
from .errors import ErrorCode, PaymentError
from .signing import Signer
from .verify import recover_address
from .wire import SAMPLE_SIGNATURE as _HEADER

__all__ = [
    "MAX_SAMPLE_FUTURE_S",
    "SAMPLE_DOMAIN_NAME",
    "SAMPLE_DOMAIN_VERSION",
    "SAMPLE_TYPE",
    "SampleAuthError",
    "SampleAuthorization",
    "check_sample_age",
    "encode_sample_signature",
    "parse_sample_signature",
    "sample_digest",
]

SAMPLE_TYPE = (
    "Sample(bytes32 channelId,bytes32 imageSha256,string label,string group,uint64 signedAt)"
)
SAMPLE_DOMAIN_NAME = "paychan Sample"
SAMPLE_DOMAIN_VERSION = "1"
#: How far ahead of the server's clock a ``signedAt`` may be (clock skew between machines).
MAX_SAMPLE_FUTURE_S = 60
_MAX_TEXT = 256  # label and group, in characters: the gateway's own rules are stricter

_SAMPLE_TYPEHASH = keccak256(SAMPLE_TYPE.encode())
_U64 = 1 << 64


class SampleAuthError(ValueError):
    """A sample signature that is refused: ``code`` (wire string), ``field`` (JSON key or
    None) and a message that says how to fix it."""

    def __init__(self, code: str, field: str | None, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


@dataclass(frozen=True, slots=True)
class SampleAuthorization:
    """The signed fields of a sample (``group`` is "" when the signer gave none)."""

    channel_id: bytes
    image_sha256: bytes
    label: str
    group: str
    signed_at: int  # unix seconds
    signature: bytes = b""

    def digest(self, chain_id: int, settlement: str | bytes) -> bytes:
        """The EIP-712 digest the payer signs (see `sample_digest`)."""
        return sample_digest(chain_id, settlement, self.channel_id, self.image_sha256,
                             self.label, self.group, self.signed_at)

    def signed(self, signer: Signer, chain_id: int, settlement: str | bytes) -> SampleAuthorization:
        """This authorization with ``signer``'s signature (the channel's payerAuthorizer)."""
        return replace(self, signature=signer.sign_digest(self.digest(chain_id, settlement)))

    def signer(self, chain_id: int, settlement: str | bytes) -> bytes:
        """The 20-byte address that signed; SampleAuthError for a malformed signature."""
        try:
            return recover_address(self.digest(chain_id, settlement), self.signature)
        except PaymentError as exc:
            raise SampleAuthError("bad_sample_signature", "signature", exc.message) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "channelId": hx(self.channel_id),
            "imageSha256": hx(self.image_sha256),
            "label": self.label,
            "group": self.group,
            "signedAt": self.signed_at,
            "signature": hx(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any) -> SampleAuthorization:
        """Strict parse; SampleAuthError(``bad_sample_signature``, field, fix) when malformed."""
        code = ErrorCode.INVALID_PAYLOAD
        try:
            d = json_object(data, _HEADER, code)
            label = string(d.get("label"), "label", code)
            group = string(d.get("group", ""), "group", code)
            auth = cls(
                channel_id=hex_bytes(d.get("channelId"), "channelId", code, 32),
                image_sha256=hex_bytes(d.get("imageSha256"), "imageSha256", code, 32),
                label=label,
                group=group,
                signed_at=uint(d.get("signedAt"), "signedAt", code, _U64),
                signature=hex_bytes(d.get("signature"), "signature", code, 65),
            )
        except PaymentError as exc:
            raise SampleAuthError("bad_sample_signature", exc.field, exc.message) from None
        for name, text in (("label", label), ("group", group)):
            if len(text) > _MAX_TEXT:
                raise SampleAuthError("bad_sample_signature", name,
                                      f"at most {_MAX_TEXT} characters, got {len(text)}")
        return auth


def sample_digest(
    chain_id: int,
    settlement: str | bytes,
    channel_id: bytes,
    image_sha256: bytes,
    label: str,
    group: str,
    signed_at: int,
) -> bytes:
    """EIP-712 ``Sample(bytes32 channelId,bytes32 imageSha256,string label,string group,uint64
    signedAt)`` under {"paychan Sample", "1", chainId, the settlement contract}; strings are
    hashed as EIP-712 says (keccak256 of their UTF-8), so eth-account's ``encode_typed_data``
    gives the same digest.

    >>> sample_digest(31337, settlement, cid, sha256(jpeg).digest(), "tabby", "", 1_765_000_000)
    """
    if len(channel_id) != 32 or len(image_sha256) != 32:
        raise ValueError("channelId and imageSha256 must be 32 bytes each")
    if not 0 <= signed_at < _U64:
        raise ValueError(f"signedAt must be a uint64, got {signed_at}")
    struct_hash = keccak256(
        _SAMPLE_TYPEHASH
        + channel_id
        + image_sha256
        + keccak256(label.encode())
        + keccak256(group.encode())
        + signed_at.to_bytes(32, "big")
    )
    separator = domain_separator(chain_id, settlement, SAMPLE_DOMAIN_NAME, SAMPLE_DOMAIN_VERSION)
    return hash_typed_data(separator, struct_hash)


def encode_sample_signature(auth: SampleAuthorization) -> str:
    """The ``SAMPLE-SIGNATURE`` header value: base64 of the compact JSON."""
    return b64(auth.to_json())


def parse_sample_signature(header: str | bytes) -> SampleAuthorization:
    """The authorization a ``SAMPLE-SIGNATURE`` header carries; SampleAuthError if malformed."""
    try:
        data = b64_json(header, _HEADER)
    except PaymentError as exc:
        raise SampleAuthError("bad_sample_signature", None, f"{_HEADER} {exc.message}") from None
    return SampleAuthorization.from_json(data)


def check_sample_age(signed_at: int, *, now: float, max_age_s: float,
                     max_future_s: float = MAX_SAMPLE_FUTURE_S) -> None:
    """Refuse a signature older than ``max_age_s`` or more than ``max_future_s`` ahead of
    ``now`` (SampleAuthError ``sample_signature_expired`` / ``sample_signature_in_future``)."""
    age = now - signed_at
    if age > max_age_s:
        raise SampleAuthError(
            "sample_signature_expired", "signedAt",
            f"signed {int(age)} s ago; this gateway takes signatures up to {int(max_age_s)} s "
            "old: sign the sample again (check the clock of the signing machine)")
    if -age > max_future_s:
        raise SampleAuthError(
            "sample_signature_in_future", "signedAt",
            f"{int(-age)} s ahead of the gateway's clock (at most {int(max_future_s)} s): set "
            "the signing machine's clock right and sign again")
