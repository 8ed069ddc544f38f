"""Every error the payer SDK raises on purpose, in one place.

    >>> try:
    ...     result = await client.classify("cat.jpg")
    ... except PaymentRefused as exc:            # the server's 402: exc.code is the spec's
    ...     print(exc.code)
    ... except ClientError as exc:               # any other SDK error
    ...     print(exc)

`ClientError` is the base of the HTTP client's errors. `ChannelHalted` (a paid answer broke
a client verification rule: sign nothing more on that channel) and `RecoveryRefused` (a
server's state failed the payer's checks) come from the `Payer` itself.
"""

from __future__ import annotations

from ..protocol import ErrorCode, PaymentError, PaymentRequired

__all__ = [
    "ChainError",
    "ChannelHalted",
    "ClientError",
    "GatewayUnreachable",
    "InputError",
    "PaymentRefused",
    "ReceiptInvalid",
    "RecoveryRefused",
    "RequestFailed",
]


class ChannelHalted(RuntimeError):
    """The server broke a client verification rule on this channel: sign nothing more on it.

    The spec's advice is to start a timed withdrawal (`initiateWithdraw`) for the rest.
    """

    def __init__(self, channel_id: bytes, reason: str) -> None:
        self.channel_id = channel_id
        self.reason = reason
        super().__init__(f"channel 0x{channel_id.hex()} halted: {reason}")


class RecoveryRefused(PaymentError):
    """A server's channel state failed the payer's checks, so nothing was adopted.

    `field` names the check (e.g. ``extra.voucherState.signature``: not this payer's own
    voucher; ``extra.channelState.chargedCumulativeAmount``: above what the payer signed).

        >>> try: payer.adopt(offer, state, proof)
        ... except RecoveryRefused as exc: print(exc.field, exc.message)
    """

    def __init__(self, channel_id: bytes, field: str, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PAYLOAD, field, message)
        self.channel_id = channel_id

    def __str__(self) -> str:
        return (f"channel 0x{self.channel_id.hex()}: the server's state was not adopted: "
                f"{self.field}: {self.message}")


class ClientError(Exception):
    """Base of every error the HTTP client raises on purpose."""


class InputError(ClientError, ValueError):
    """A bad argument (image, top_k, amount, channel): raised before anything is sent or paid."""


class GatewayUnreachable(ClientError, ConnectionError):
    """The server could not be reached or did not answer in time."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        super().__init__(f"cannot reach {url}: {type(cause).__name__}: {cause}".rstrip(": "))


class PaymentRefused(ClientError, PaymentError):
    """The server answered 402 to a payment: `code` is the spec's error code (e.g.
    ``invalid_batch_settlement_evm_cumulative_exceeds_balance``). Nothing was charged.

    Also a `PaymentError`, so callers that catch the protocol core's error catch it too.
    A code outside the spec's table is kept as the server's string.
    """

    def __init__(
        self, code: str | None, message: str, required: PaymentRequired | None = None
    ) -> None:
        # PaymentError types `code` as ErrorCode; a foreign server may send any string
        PaymentError.__init__(self, _code_of(code), "PAYMENT-REQUIRED", message)  # type: ignore[arg-type]
        self.required = required

    def __str__(self) -> str:
        return f"payment refused ({self.code}): {self.message}"

    # Rebuilt from (code, message), not PaymentError's (code, field, message): pickling
    # must call this class's own __init__.
    def __reduce__(self) -> tuple[type[PaymentRefused], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (str(self.code), self.message))


class RequestFailed(ClientError):
    """A non-2xx answer other than 402 (bad image, overload, server error): never charged."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(f"HTTP {status} {code or ''}: {message}".replace("  ", " "))


class ReceiptInvalid(ChannelHalted, ClientError):
    """A paid answer failed verification (receipt signature, charge, digests, model version).

    The channel is halted (no more vouchers on it); recover what is left with `withdraw`.
    """


class ChainError(ClientError):
    """An on-chain call of the payer's (initiateWithdraw, finalizeWithdraw) failed: `reason`
    is the contract's error name where it reverted (e.g. ``WithdrawDelayNotElapsed``)."""

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{action} failed: {reason}")


def _code_of(code: str | None) -> ErrorCode | str:
    """The spec's ErrorCode for a wire code, else the server's own string."""
    if not code:
        return "payment_refused"
    try:
        return ErrorCode(code)
    except ValueError:
        return code
